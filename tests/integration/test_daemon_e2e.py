"""End to end: the real daemon, a real TUN, real TCP/UDP/ICMP through namespaces.

Checksum offloads are off on the router's veths (tx) and the hosts (rx), so
every checksum the translator writes is verified by a receiving kernel, and
each test ends by asserting that no host counted a checksum error.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import sys
import time
from pathlib import Path

import pytest

from tests.integration.daemon_lab import ROOT, DaemonLab, base_config
from tests.netlab import CLIENT6, DEVICE4, DEVICE6, TRANSLATOR6, Lab, wait_for

pytestmark = pytest.mark.integration


def assert_no_checksum_errors(d: DaemonLab) -> None:
    for ns in (d.client, d.device, d.router):
        errors = {k: v for k, v in ns.nstat_csum_errors().items() if v}
        assert not errors, f"checksum errors in {ns.name}: {errors}"


def serve_http(d: DaemonLab, size: int, port: int = 8080) -> str:
    """Serve a random file of ``size`` bytes from the device; return its SHA-256."""
    root = d.tmp / "www"
    root.mkdir(exist_ok=True)
    data = Path("/dev/urandom").open("rb").read(size)
    (root / "blob").write_bytes(data)
    d.device.popen(
        [
            sys.executable,
            "-m",
            "http.server",
            str(port),
            "--bind",
            "0.0.0.0",
            "--directory",
            str(root),
        ]
    )
    wait_for(
        lambda: (
            d.device.run(
                ["curl", "-sf", "-o", "/dev/null", f"http://127.0.0.1:{port}/blob"], check=False
            ).returncode
            == 0
        ),
        what="http server on the device",
    )
    return hashlib.sha256(data).hexdigest()


def download_sha(
    d: DaemonLab, url: str, extra: list[str] | None = None, timeout: float = 60
) -> str:
    out = d.client.run(
        [
            "sh",
            "-c",
            f"curl -sf -g --max-time {int(timeout)} {' '.join(extra or [])} '{url}' | sha256sum",
        ],
        timeout=timeout + 5,
    )
    return out.stdout.split()[0]


def test_http_download_1mib_through_mapped_address(dlab: DaemonLab) -> None:
    dlab.start()
    expected = serve_http(dlab, 1536 * 1024)
    assert download_sha(dlab, f"http://[{DEVICE6}]:8080/blob") == expected
    assert_no_checksum_errors(dlab)


def test_ping6_echo(dlab: DaemonLab) -> None:
    dlab.start()
    out = dlab.client.run(["ping", "-6", "-c", "3", "-i", "0.2", "-W", "2", DEVICE6])
    assert "3 received" in out.stdout
    assert_no_checksum_errors(dlab)


@pytest.mark.parametrize("size", [8, 1400, 3000, 9000])
def test_udp_echo_including_fragments_both_ways(dlab: DaemonLab, size: int) -> None:
    dlab.start()
    dlab.start_udp_echo()
    assert dlab.udp_echo(size, count=3) == 3
    assert_no_checksum_errors(dlab)


def test_device_sees_client_as_pool4_address(dlab: DaemonLab) -> None:
    dlab.start()
    dlab.start_udp_echo()
    code = (
        f"import socket;s=socket.socket(socket.AF_INET6,socket.SOCK_DGRAM);s.settimeout(3);"
        f"s.sendto(b'WHO',('{DEVICE6}',7));print(s.recv(100).decode())"
    )
    seen = dlab.client.run([sys.executable, "-c", code]).stdout.strip()
    assert seen.startswith("198.51.100."), seen
    assert seen != "198.51.100.1"  # the translator's own address is never leased


def test_proxy_ndp_for_mapping_on_link_on_wan(lab: Lab, tmp_path: Path) -> None:
    d = DaemonLab(lab, tmp_path)
    try:
        cfg = base_config(tmp_path, d.tun)
        cfg["mappings"].append(
            {"name": "onlink", "ipv6": "2001:db8:1::50", "ipv4": "192.0.2.51", "allow": ["icmp"]}
        )
        d.write_config(cfg)
        d.device.run("ip addr add 192.0.2.51/24 dev lan0")
        d.start()
        proxies = d.router.run("ip -6 neigh show proxy").stdout
        assert "2001:db8:1::50 dev wan0" in proxies
        assert d.router.run("sysctl -n net.ipv6.conf.wan0.proxy_ndp").stdout.strip() == "1"
        out = d.client.run(["ping", "-6", "-c", "2", "-i", "0.2", "-W", "2", "2001:db8:1::50"])
        assert "2 received" in out.stdout
        d.stop()
        assert d.router.run("ip -6 neigh show proxy").stdout.strip() == ""
        assert d.router.run("sysctl -n net.ipv6.conf.wan0.proxy_ndp").stdout.strip() == "0"
    finally:
        d.close()


def test_pmtu_small_wan_link_while_downloading(lab: Lab, tmp_path: Path) -> None:
    """Packet Too Big from the router's 1280 WAN link reaches the device as Frag Needed."""
    d = DaemonLab(lab, tmp_path)
    try:
        d.router.run("ip link set wan0 mtu 1280")  # the client's end stays at 1500
        d.start()
        expected = serve_http(d, 1024 * 1024)
        assert download_sha(d, f"http://[{DEVICE6}]:8080/blob") == expected
        routes = (
            d.device.run("ip -4 route show cache").stdout
            + d.device.run(
                ["sh", "-c", "for a in $(seq 2 20); do ip -4 route get 198.51.100.$a; done"]
            ).stdout
        )
        mtus = {int(m) for m in re.findall(r"mtu (\d+)", routes)}
        assert 1260 in mtus, routes  # 1280 - 20: RFC 7915 §4.2 PTB -> Frag Needed
        assert_no_checksum_errors(d)
    finally:
        d.close()


def test_pmtu_small_lan_link_while_uploading(lab: Lab, tmp_path: Path) -> None:
    """Frag Needed from the router's 1400 LAN link reaches the client as Packet Too Big."""
    d = DaemonLab(lab, tmp_path)
    try:
        d.router.run("ip link set lan0 mtu 1400")  # the device's end stays at 1500
        d.start()
        sink = d.device.popen(
            [
                sys.executable,
                "-c",
                "import socket,hashlib,sys\n"
                "s=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n"
                "s.bind(('0.0.0.0',9000));s.listen(1);c,_=s.accept();h=hashlib.sha256()\n"
                "while True:\n  b=c.recv(65536)\n  if not b: break\n  h.update(b)\n"
                "c.sendall(h.hexdigest().encode());c.close()\n",
            ]
        )
        time.sleep(0.5)
        code = (
            "import os,socket,hashlib\n"
            "data=os.urandom(1024*1024)\n"
            f"c=socket.create_connection(('{DEVICE6}',9000),timeout=30)\n"
            "c.sendall(data);c.shutdown(socket.SHUT_WR)\n"
            "print(c.recv(100).decode()==hashlib.sha256(data).hexdigest())\n"
        )
        out = d.client.run([sys.executable, "-c", code], timeout=60)
        assert out.stdout.strip() == "True", out.stdout + out.stderr
        sink.wait(timeout=10)
        route = d.client.run(f"ip -6 route get {DEVICE6}").stdout
        assert "mtu 1420" in route, route  # 1400 + 20: RFC 7915 §4.2 Frag Needed -> PTB
        assert_no_checksum_errors(d)
    finally:
        d.close()


def test_hop_limit_expiry_answers_time_exceeded_from_translator(dlab: DaemonLab) -> None:
    dlab.start()
    # hop limit 2: the router's kernel takes one, the translator the last.
    out = dlab.client.run(["ping", "-6", "-c", "1", "-t", "2", "-W", "2", DEVICE6], check=False)
    assert f"From {TRANSLATOR6}" in out.stdout and "Time exceeded" in out.stdout, out.stdout


def test_unmapped_address_in_published_prefix_is_unreachable(lab: Lab, tmp_path: Path) -> None:
    d = DaemonLab(lab, tmp_path)
    try:
        cfg = base_config(tmp_path, d.tun)
        cfg["translator"]["publish_prefix"] = "2001:db8:200::/64"
        d.write_config(cfg)
        d.start()
        out = d.client.run(["ping", "-6", "-c", "1", "-W", "2", "2001:db8:200::99"], check=False)
        assert "Destination unreachable: Address unreachable" in out.stdout, out.stdout
        assert "1 received" in d.client.run(["ping", "-6", "-c", "1", "-W", "2", DEVICE6]).stdout
    finally:
        d.close()


SLOW_DOWNLOAD = """
import hashlib, sys, time, urllib.request
h = hashlib.sha256()
with urllib.request.urlopen(sys.argv[1], timeout=30) as r:
    for _ in range(10000):
        chunk = r.read(65536)
        if not chunk:
            break
        h.update(chunk)
        time.sleep(0.02)  # a slow reader: the transfer spans the reload
print(h.hexdigest())
"""


def test_reload_adds_mapping_while_download_in_flight(dlab: DaemonLab) -> None:
    dlab.device.run("ip addr add 192.0.2.51/24 dev lan0")
    dlab.start()
    expected = serve_http(dlab, 8 * 1024 * 1024)  # about 2.5 s at the reader's pace
    download = dlab.client.popen(
        [sys.executable, "-c", SLOW_DOWNLOAD, f"http://[{DEVICE6}]:8080/blob"]
    )
    time.sleep(0.5)
    cfg = dict(dlab.config)
    cfg["mappings"] = [
        *cfg["mappings"],
        {"name": "nas", "ipv6": "2001:db8:200::51", "ipv4": "192.0.2.51", "allow": ["icmp"]},
    ]
    dlab.write_config(cfg)
    dlab.reload()
    assert download.poll() is None, "the download should still be running during the reload"
    assert (
        "1 received"
        in dlab.client.run(["ping", "-6", "-c", "1", "-W", "2", "2001:db8:200::51"]).stdout
    )
    stdout, stderr = download.communicate(timeout=60)
    assert stdout.decode().strip() == expected, stderr.decode()
    assert "reloaded: 2 mappings" in dlab.logs()


def test_reload_with_broken_config_keeps_serving(dlab: DaemonLab) -> None:
    dlab.start()
    good = dlab.config_path.read_text()
    dlab.config_path.write_text(good.replace(DEVICE4, "192.0.2.999"))
    dlab.reload()
    logs = dlab.logs()
    assert "reload rejected" in logs and "mappings[0].ipv4" in logs and "192.0.2.999" in logs
    assert "1 received" in dlab.client.run(["ping", "-6", "-c", "1", "-W", "2", DEVICE6]).stdout
    assert dlab.proc is not None and dlab.proc.poll() is None


def _router_state(d: DaemonLab) -> dict[str, str]:
    r = d.router
    return {
        "links": r.run("ip -o link show").stdout.count(d.tun),
        "routes6": r.run("ip -6 route show proto 164").stdout,
        "routes4": r.run("ip -4 route show proto 164").stdout,
        "proxies": r.run("ip -6 neigh show proxy").stdout,
        "fwd6": r.run("sysctl -n net.ipv6.conf.all.forwarding").stdout,
        "fwd4": r.run("sysctl -n net.ipv4.ip_forward").stdout,
    }  # type: ignore[return-value]


def test_sigterm_removes_everything_it_created(dlab: DaemonLab) -> None:
    before = _router_state(dlab)
    dlab.start()
    during = _router_state(dlab)
    assert during["links"] == 1 and DEVICE6 in during["routes6"] and during["fwd6"].strip() == "1"
    started = time.monotonic()
    assert dlab.stop() == 0
    assert time.monotonic() - started < 5
    assert _router_state(dlab) == before


def test_sigkill_then_restart_comes_up_clean_and_keeps_leases(dlab: DaemonLab) -> None:
    before = _router_state(dlab)
    dlab.start()
    dlab.start_udp_echo()
    who = (
        f"import socket;s=socket.socket(socket.AF_INET6,socket.SOCK_DGRAM);s.settimeout(3);"
        f"s.sendto(b'WHO',('{DEVICE6}',7));print(s.recv(100).decode())"
    )
    first = dlab.client.run([sys.executable, "-c", who]).stdout.strip()
    lease_file = dlab.tmp / "state" / "leases.json"
    wait_for(
        lambda: lease_file.exists() and CLIENT6 in lease_file.read_text(),
        timeout=5,
        what="the lease to be saved",
    )
    dlab.stop(signal.SIGKILL)
    dlab.start()
    assert "crash recovery" in dlab.logs()
    second = dlab.client.run([sys.executable, "-c", who]).stdout.strip()
    assert first == second and first.startswith("198.51.100.")
    assert dlab.stop() == 0
    assert _router_state(dlab) == before


def test_startup_failure_after_setup_removes_everything(dlab: DaemonLab) -> None:
    """A failure late in start-up (here: the control socket cannot be created) must
    still remove the TUN, routes and sysctl changes made before it."""
    before = _router_state(dlab)
    cfg = dict(dlab.config)
    cfg["daemon"] = dict(cfg["daemon"], control_socket="/proc/revnat64-nowhere/control.sock")
    dlab.write_config(cfg)
    with pytest.raises(RuntimeError, match="daemon exited with 1"):
        dlab.start(timeout=20)
    assert "cannot start" in dlab.logs() and "/proc/revnat64-nowhere" in dlab.logs()
    assert _router_state(dlab) == before


HOLD_TUN = """
import sys, time
from translator.tun import open_tun
fd, _ = open_tun(sys.argv[1])
print("held", flush=True)
time.sleep(60)
"""


def _refused_start(dlab: DaemonLab) -> str:
    before = _router_state(dlab)
    with pytest.raises(RuntimeError, match="daemon exited with 1"):
        dlab.start(timeout=20)
    assert _router_state(dlab) == before
    return dlab.logs()


@pytest.mark.parametrize("workers", [1, 2])
def test_a_tun_device_held_by_another_program_is_left_alone(dlab: DaemonLab, workers: int) -> None:
    """A Tayga still running on the device name: the daemon refuses to start, says
    why, and neither deletes the device nor undoes anything (it used to delete it)."""
    cfg = dict(dlab.config)
    cfg["translator"] = dict(cfg["translator"], workers=workers)
    dlab.write_config(cfg)
    holder = dlab.router.popen([sys.executable, "-c", HOLD_TUN, dlab.tun], cwd=str(ROOT))
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"held\n"
        logs = _refused_start(dlab)
        assert (
            f"translator.tun_device: {dlab.tun} already exists as a TUN device that revnat64 "
            "did not make (is Tayga still running?)"
        ) in logs
        assert holder.poll() is None
        assert dlab.router.run(["ip", "link", "show", dlab.tun], check=False).returncode == 0
    finally:
        holder.kill()
        holder.wait()


def test_an_interface_of_another_kind_with_the_tun_name_is_left_alone(dlab: DaemonLab) -> None:
    dlab.router.run(["ip", "link", "add", dlab.tun, "type", "bridge"])
    logs = _refused_start(dlab)
    assert (
        f"translator.tun_device: {dlab.tun} already exists as an interface (bridge) that is "
        "not revnat64's TUN; revnat64 will not touch it"
    ) in logs
    assert dlab.router.run(["ip", "link", "show", dlab.tun], check=False).returncode == 0


def test_a_tun_left_by_our_own_crash_is_still_removed(dlab: DaemonLab) -> None:
    """The other side of the rule: a device our state file names is ours to replace
    (here a persistent TUN stands in for one an orphaned worker still holds)."""
    dlab.start()
    assert dlab.stop(signal.SIGKILL) == -signal.SIGKILL
    gone = ["ip", "link", "show", dlab.tun]
    wait_for(lambda: dlab.router.run(gone, check=False).returncode != 0, what="the old TUN gone")
    dlab.router.run(["ip", "tuntap", "add", "mode", "tun", "name", dlab.tun])
    dlab.start()
    assert f"crash recovery: removed stale device {dlab.tun}" in dlab.logs()
    out = dlab.client.run(["ping", "-6", "-c", "2", "-i", "0.2", "-W", "2", DEVICE6])
    assert "2 received" in out.stdout


def test_a_second_daemon_on_the_same_config_changes_nothing(dlab: DaemonLab) -> None:
    """`revnat64 run` typed while the service runs must not tear the first one's
    TUN, routes and proxy entries down on its way to finding out."""
    dlab.start()
    during = _router_state(dlab)
    index = dlab.router.run(["cat", f"/sys/class/net/{dlab.tun}/ifindex"]).stdout
    second = dlab.router.run(
        [sys.executable, "-m", "publisher.cli", "run", "-c", str(dlab.config_path)],
        check=False,
        cwd=str(ROOT),
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )

    assert second.returncode == 1
    assert "another revnat64 is running with state directory" in second.stderr
    assert _router_state(dlab) == during
    assert dlab.router.run(["cat", f"/sys/class/net/{dlab.tun}/ifindex"]).stdout == index
    out = dlab.client.run(["ping", "-6", "-c", "2", "-i", "0.2", "-W", "2", DEVICE6])
    assert "2 received" in out.stdout
    assert dlab.stop() == 0


def test_an_unreadable_state_file_is_said_so_not_called_undone(dlab: DaemonLab) -> None:
    """A state file cut short (a full disk, before atomic_write checked its writes):
    the next start says what it could and could not undo, and comes up."""
    dlab.start()
    assert dlab.stop(signal.SIGKILL) == -signal.SIGKILL
    state = dlab.tmp / "state" / "netstate.json"
    state.write_text(state.read_text()[:10])
    dlab.start()
    logs = dlab.logs()
    assert "was unreadable: routes of ours are found by their protocol and removed" in logs
    assert "undid the previous run's changes" not in logs.split("was unreadable")[-1]
    out = dlab.client.run(["ping", "-6", "-c", "2", "-i", "0.2", "-W", "2", DEVICE6])
    assert "2 received" in out.stdout


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_a_signal_during_start_up_ends_in_a_clean_stop_or_a_reload(
    dlab: DaemonLab, sig: int
) -> None:
    """procd's reload trigger at boot, `systemctl stop` while starting: the signal
    used to kill the half-started supervisor with its default action, leaving the
    TUN's routes, forwarding and proxy_ndp changed."""
    before = _router_state(dlab)
    cfg = dict(dlab.config)
    cfg["firewall"] = {"enabled": True, "backend": "nftables"}
    dlab.write_config(cfg)
    proc = dlab.launch()
    wait_for(lambda: "TUN offloads" in dlab.logs(), timeout=20, what="start-up under way")
    os.kill(proc.pid, sig)
    if sig == signal.SIGHUP:
        wait_for(lambda: "reloaded" in dlab.logs(), timeout=20, what="the reload after start")
        assert proc.poll() is None
        out = dlab.client.run(["ping", "-6", "-c", "2", "-i", "0.2", "-W", "2", DEVICE6])
        assert "2 received" in out.stdout
        os.kill(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=20) == 0, dlab.logs()
    assert "revnat64 stopped" in dlab.logs()
    assert _router_state(dlab) == before
    assert "revnat64" not in dlab.router.run("nft list tables").stdout
