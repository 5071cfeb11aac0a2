"""A router lab for firewall tests: the translator's TUN replaced by a veth of the same name.

Until the daemon runs in these tests, a namespace ``dev6`` stands behind the
router's ``rn64t0`` and plays the translator: it holds the mapped IPv6
addresses (so IPv6 traffic the firewall lets into "the TUN" is answered there)
and pool4 addresses (so it can send IPv4 out of "the TUN" the way translated
packets leave it).  Documentation addresses only::

    client --c0-- isp --r0/wan0-- router --rn64t0/t0-- dev6 (mapped IPv6, pool4)
    2001:db8:1::2,3    2001:db8:2::/64    \\--lan0-- dev4 192.0.2.50,.51,.52,.99,.129

isp's route back to the client has MTU 1280, so large packets from dev6 to the
client make isp send ICMPv6 Packet Too Big through the router's firewall.
"""

from __future__ import annotations

import json
import sys
import textwrap
from dataclasses import dataclass

from tests.netlab import Lab, Netns, wait_for

TUN = "rn64t0"
CLIENT_A = "2001:db8:1::2"
CLIENT_B = "2001:db8:1::3"
CAM6, NAS6, LIMITED6, UNMAPPED6 = (
    "2001:db8:200::50",
    "2001:db8:200::51",
    "2001:db8:200::52",
    "2001:db8:200::99",
)
RANGE6 = "2001:db8:200:1::1"
CAM4, NAS4, LIMITED4, UNMAPPED4, RANGE4 = (
    "192.0.2.50",
    "192.0.2.51",
    "192.0.2.52",
    "192.0.2.99",
    "192.0.2.129",
)
ROUTER_LAN4 = "192.0.2.1"
POOL_CLIENT4 = "198.51.100.7"
FOREIGN4 = "203.0.113.5"
TCP_PORTS = (22, 80, 443, 8000, 8001, 8002, 8080, 9000)
UDP_PORTS = (5353, 7000, 7001)
BULK_PORT = 8002
BULK_BYTES = 300_000

CONFIG = f"""\
translator:
  tun_device: {TUN}
  ipv4_address: 198.51.100.1
  ipv6_address: 2001:db8:200::1
  pool4: 198.51.100.0/24
wan: {{interface: wan0}}
lan: {{interface: lan0}}
mappings:
  - name: cam
    ipv6: {CAM6}
    ipv4: {CAM4}
    allow: [tcp/80, tcp/8000-8002, udp/7000, icmp]
  - name: nas
    ipv6: {NAS6}
    ipv4: {NAS4}
    allow: [tcp/443, udp/5353]
    sources: [{CLIENT_A}/128]
    masquerade: true
  - name: limited
    ipv6: {LIMITED6}
    ipv4: {LIMITED4}
    allow: [udp/7001]
    rate_limit: 1/hour
  - name: lab-range
    ipv6: 2001:db8:200:1::/126
    ipv4: 192.0.2.128/30
    allow: [tcp/8080]
"""

# Serves every port on every address: "ok <port> <peer>" per TCP connection or UDP datagram;
# BULK_PORT sends BULK_BYTES after the greeting (the PMTU test).
SERVER = textwrap.dedent(
    """
    import socket, sys, threading
    tcp_ports, udp_ports, bulk_port, bulk = (eval(a) for a in sys.argv[1:5])
    def serve_tcp(port):
        s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        s.bind(("::", port)); s.listen(64)
        while True:
            conn, peer = s.accept()
            threading.Thread(target=answer, args=(conn, port, peer), daemon=True).start()
    def answer(conn, port, peer):
        try:
            conn.sendall(f"ok {port} {peer[0].removeprefix('::ffff:')}\\n".encode())
            if port == bulk_port:
                conn.sendall(b"x" * bulk)
        except OSError:
            pass
        finally:
            conn.close()
    def serve_udp(port):
        s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        s.bind(("::", port))
        while True:
            data, peer = s.recvfrom(2048)
            s.sendto(f"ok {port} {peer[0].removeprefix('::ffff:')}".encode(), peer)
    for p in tcp_ports:
        threading.Thread(target=serve_tcp, args=(p,), daemon=True).start()
    for p in udp_ports:
        threading.Thread(target=serve_udp, args=(p,), daemon=True).start()
    print("ready", flush=True)
    threading.Event().wait()
    """
)

# Runs probes in parallel (each bounded by its timeout) and prints one JSON result list:
# the first reply line, "pong" for an answered ping, or null when nothing came back.
PROBE = textwrap.dedent(
    """
    import json, socket, subprocess, sys
    from concurrent.futures import ThreadPoolExecutor
    def one(p):
        dst, src, proto = p["dst"], p.get("src"), p["proto"]
        if proto == "icmp":
            cmd = ["ping", "-n", "-c", "1", "-W", "2", dst] + (["-I", src] if src else [])
            return "pong" if subprocess.run(cmd, capture_output=True).returncode == 0 else None
        fam = socket.AF_INET6 if ":" in dst else socket.AF_INET
        kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
        with socket.socket(fam, kind) as s:
            s.settimeout(p.get("timeout", 2))
            if src:
                s.bind((src, 0))
            try:
                if proto == "udp":
                    s.sendto(b"probe", (dst, p["port"]))
                    return s.recvfrom(2048)[0].decode()
                s.connect((dst, p["port"]))
                data = b""
                while True:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                line, _, rest = data.partition(b"\\n")
                return line.decode() + (f" +{len(rest)}" if rest else "")
            except OSError:
                return None
    probes = json.loads(sys.argv[1])
    with ThreadPoolExecutor(len(probes) or 1) as ex:
        print(json.dumps(list(ex.map(one, probes))))
    """
)


@dataclass
class FirewallLab:
    lab: Lab
    client: Netns
    isp: Netns
    router: Netns
    dev6: Netns
    dev4: Netns

    def probe(self, ns: Netns, probes: list[dict[str, object]]) -> list[str | None]:
        out = ns.run([sys.executable, "-c", PROBE, json.dumps(probes)], timeout=60).stdout
        result: list[str | None] = json.loads(out)
        return result

    def nft(self, *args: str) -> str:
        return str(self.router.run(["nft", *args]).stdout)


def _start_server(ns: Netns) -> None:
    proc = ns.popen(
        [sys.executable, "-c", SERVER, repr(TCP_PORTS), repr(UDP_PORTS), str(BULK_PORT)]
        + [str(BULK_BYTES)]
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if line.strip() != b"ready":
        raise RuntimeError(f"listener in {ns.name} did not start: {proc.stderr.read()!r}")  # type: ignore[union-attr]


def build_firewall_lab(lab: Lab) -> FirewallLab:
    client, isp, router = lab.netns("cl"), lab.netns("isp"), lab.netns("rt")
    dev6, dev4 = lab.netns("d6"), lab.netns("d4")
    lab.veth(client, "c0", isp, "c0")
    lab.veth(isp, "r0", router, "wan0")
    lab.veth(router, TUN, dev6, "t0")
    lab.veth(router, "lan0", dev4, "lan0")
    for ns in (client, isp, router, dev6, dev4):
        ns.sysctl("net.ipv6.conf.all.accept_dad", 0)
        ns.sysctl("net.ipv6.conf.default.accept_dad", 0)
    for ns in (isp, router):
        ns.sysctl("net.ipv6.conf.all.forwarding", 1)
    router.sysctl("net.ipv4.ip_forward", 1)
    for key in ("all", "default", "lan0", TUN):
        router.sysctl(f"net.ipv4.conf.{key}.rp_filter", 0)

    for addr in (CLIENT_A, CLIENT_B):
        client.run(f"ip -6 addr add {addr}/64 dev c0 nodad")
    client.run("ip -6 route add default via 2001:db8:1::1 dev c0")
    isp.run("ip -6 addr add 2001:db8:1::1/64 dev c0 nodad")
    isp.run("ip -6 route add 2001:db8:1::/120 dev c0 mtu lock 1280")  # beats the /64
    isp.run("ip -6 addr add 2001:db8:2::1/64 dev r0 nodad")
    isp.run("ip -6 route add 2001:db8:200::/48 via 2001:db8:2::2 dev r0")

    router.run("ip -6 addr add 2001:db8:2::2/64 dev wan0 nodad")
    router.run("ip -6 route add default via 2001:db8:2::1 dev wan0")
    router.run(f"ip -6 addr add fe80::1/64 dev {TUN} nodad")
    router.run(f"ip -6 route add 2001:db8:200::/48 dev {TUN}")
    router.run(f"ip addr add 198.51.100.1/24 dev {TUN}")
    router.run(f"ip route add 203.0.113.0/24 dev {TUN}")
    router.run(f"ip addr add {ROUTER_LAN4}/24 dev lan0")

    for addr in (CAM6, NAS6, LIMITED6, UNMAPPED6, RANGE6):
        dev6.run(f"ip -6 addr add {addr}/128 dev t0 nodad")
    dev6.run("ip -6 route add default via fe80::1 dev t0")
    dev6.run(f"ip addr add {POOL_CLIENT4}/24 dev t0")
    dev6.run(f"ip addr add {FOREIGN4}/32 dev t0")
    dev6.run("ip route add 192.0.2.0/24 via 198.51.100.1 dev t0")

    for addr in (CAM4, NAS4, LIMITED4, UNMAPPED4, RANGE4):
        dev4.run(f"ip addr add {addr}/24 dev lan0")
    dev4.run(f"ip route add default via {ROUTER_LAN4} dev lan0")

    _start_server(dev6)
    _start_server(dev4)
    fl = FirewallLab(lab, client, isp, router, dev6, dev4)
    # Neighbour discovery settles before any test counts drops or answers.
    wait_for(
        lambda: (
            fl.probe(client, [{"proto": "tcp", "dst": CAM6, "port": 80, "src": CLIENT_A}])
            == [f"ok 80 {CLIENT_A}"]
        ),
        timeout=20,
        what="the lab to forward client -> dev6",
    )
    return fl
