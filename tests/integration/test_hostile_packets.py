"""Hostile packets from the internet reach the real daemon: counted, dropped, never a crash.

scapy in the client namespace sends malformed and fuzzed IPv6 packets to the
published address (bad extension-header chains, lying lengths, truncated and
nested ICMPv6 errors, random fields from scapy's ``fuzz``). Afterwards the
daemon must still be alive and translating, and its counters must show the
junk as drops rather than as translated traffic.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.integration.daemon_lab import DaemonLab
from tests.netlab import DEVICE6

pytestmark = pytest.mark.integration

SENDER = r"""
import random, sys
from scapy.all import (IPv6, IPv6ExtHdrFragment, IPv6ExtHdrRouting, IPv6ExtHdrHopByHop,
    IPv6ExtHdrDestOpt, ICMPv6EchoRequest, ICMPv6DestUnreach, ICMPv6PacketTooBig,
    ICMPv6TimeExceeded, ICMPv6ParamProblem, UDP, TCP, Raw, fuzz, raw, conf, L3RawSocket6)
conf.verb = 0
random.seed(int(sys.argv[2]))
dst = sys.argv[1]
src = "2001:db8:1::2"
base = IPv6(src=src, dst=dst)
crafted = [
    base / IPv6ExtHdrRouting(segleft=3, addresses=["2001:db8::1"]) / UDP(),
    base / IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt() / IPv6ExtHdrHopByHop() / TCP(),
    base / IPv6ExtHdrFragment(offset=100, m=1, id=7) / Raw(b"x" * 16),
    base / IPv6ExtHdrFragment(offset=0, m=1, id=8) / ICMPv6EchoRequest() / Raw(b"y" * 8),
    base / ICMPv6DestUnreach() / IPv6(src=dst, dst=src) / UDP(),
    base / ICMPv6PacketTooBig(mtu=0) / IPv6(src=dst, dst=src) / TCP(),
    base / ICMPv6TimeExceeded() / IPv6(src=dst, dst=src) / ICMPv6DestUnreach() / Raw(b"z"),
    base / ICMPv6ParamProblem(ptr=0xFFFFFFFF) / IPv6(src=dst, dst=src, nh=44) / Raw(b"q" * 4),
    base / ICMPv6DestUnreach() / Raw(b"\x60"),
    base / UDP(len=5000) / Raw(b"short"),
    base / TCP(dataofs=15) / Raw(b"t"),
]
packets = [raw(p) for p in crafted]
# Lengths that lie in both directions, and truncations of every crafted packet.
for p in list(packets):
    packets.append(p[:4] + (len(p) + 200).to_bytes(2, "big") + p[6:])
    packets += [p[:n] for n in (41, 44, 48, 56) if n < len(p)]
for _ in range(int(sys.argv[3])):
    layer = random.choice([UDP(), TCP(), ICMPv6EchoRequest(), ICMPv6DestUnreach(),
                           ICMPv6PacketTooBig(), IPv6ExtHdrFragment(), IPv6ExtHdrRouting()])
    p = raw(IPv6(src=src, dst=dst) / fuzz(layer))
    packets.append(p[:40] + bytes(random.getrandbits(8) for _ in range(len(p) - 40)))
sock = L3RawSocket6()
sent = 0
for p in packets:
    try:
        sock.send(IPv6(p))
        sent += 1
    except Exception:
        pass  # the client's own stack refused to build it: nothing reached the router
print(sent)
"""


def status_json(d: DaemonLab) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-m", "publisher.cli", "status", "-c", str(d.config_path), "--json"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def test_fuzzed_and_malformed_packets_are_dropped_and_counted(dlab: DaemonLab) -> None:
    dlab.start()
    before = status_json(dlab)
    sent = int(
        dlab.client.run(
            [sys.executable, "-c", SENDER, DEVICE6, "7", "600"], timeout=120
        ).stdout.strip()
    )
    assert sent > 500
    ping = dlab.client.run(["ping", "-6", "-c", "3", "-i", "0.2", "-W", "2", DEVICE6])
    assert "3 received" in ping.stdout
    assert dlab.proc is not None and dlab.proc.poll() is None, dlab.logs()
    after = status_json(dlab)
    dropped_before = sum(before["dropped"].values())  # type: ignore[union-attr]
    dropped_after = sum(after["dropped"].values())  # type: ignore[union-attr]
    assert dropped_after - dropped_before > 100, (before["dropped"], after["dropped"])
    assert "Traceback" not in dlab.logs()
    assert dlab.stop() == 0


FORGER = r"""
import sys
from scapy.all import IPv6, UDP, Raw, conf, L3RawSocket6
conf.verb = 0
dst, prefix_form_of_lan_host, legit = sys.argv[1:4]
sock = L3RawSocket6()
for src in [prefix_form_of_lan_host] * 5 + [legit]:
    sock.send(IPv6(src=src, dst=dst) / UDP(sport=4444, dport=9999) / Raw(b"who"))
"""

LISTENER = r"""
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 9999))
s.settimeout(0.2)
print("ready", flush=True)
seen, deadline = [], time.monotonic() + float(sys.argv[1])
while time.monotonic() < deadline:
    try:
        seen.append(s.recvfrom(100)[1][0])
    except socket.timeout:
        pass
print(" ".join(seen) or "-", flush=True)
"""


def test_a_source_in_the_rfc6052_prefix_never_reaches_the_lan(lab, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """With translator.prefix set, an internet host sending from the prefix form of
    another LAN host's address (192.0.2.60, say the NAS) reached the device as that
    host, which IP-based access lists trust. Firewall off and no strict reverse-path
    filter on the router (OpenWrt and many others): the translator alone must refuse it."""
    from tests.integration.daemon_lab import base_config

    prefix = "2001:db8:64::/96"
    d = DaemonLab(lab, tmp_path)
    try:
        cfg = base_config(tmp_path, d.tun)
        cfg["translator"]["prefix"] = prefix
        d.write_config(cfg)
        for conf in ("all", "default", "lan0", d.tun):
            d.router.run(["sysctl", "-qw", f"net.ipv4.conf.{conf}.rp_filter=0"], check=False)
        d.start()
        d.router.run(["sysctl", "-qw", f"net.ipv4.conf.{d.tun}.rp_filter=0"])
        listener = d.device.popen([sys.executable, "-c", LISTENER, "4"], stdout=subprocess.PIPE)
        assert listener.stdout is not None and listener.stdout.readline() == b"ready\n"
        before = status_json(d)["dropped"]
        d.client.run(
            [sys.executable, "-c", FORGER, DEVICE6, "2001:db8:64::c000:23c", "2001:db8:1::2"],
            timeout=60,
        )
        seen = listener.stdout.readline().decode().split()
        listener.wait(timeout=10)
        assert len(seen) == 1 and seen[0].startswith("198.51.100."), seen  # the lease only
        after = status_json(d)["dropped"]
        assert after.get("spoofed_source", 0) - before.get("spoofed_source", 0) == 5  # type: ignore[union-attr]
        assert d.stop() == 0
    finally:
        d.close()
