"""UDP super-packets (USO) through the TUN, and ``translator.udp_gro_forwarding``.

Strict checksum mode is on (tx off on the router's veths, rx off on the
hosts), so the kernel cuts each UDP super-packet the translator writes into
datagrams, completes every checksum in software from the seed the translator
wrote, and the receiving host verifies it (nstat must stay at zero).

Two ways make super-packets here:

* senders using ``UDP_SEGMENT`` (one sendmsg of 40 datagrams): veth passes
  the GSO packet through as-is and the router forwards it whole to the TUN.
  That is deterministic, so it carries the every-datagram-intact check in
  both directions;
* GRO forwarding, switched on by the daemon (``udp_gro_forwarding: true``).
  On veth a sender in the next namespace runs the NAPI poll right after each
  send, one datagram per poll, so GRO only merges when the router's wan0 runs
  threaded NAPI; the test sets that (as a NIC's interrupt coalescing would
  batch) and retries bounded bursts until super-packets show up.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.daemon_lab import DaemonLab, base_config
from tests.integration.test_daemon_e2e import assert_no_checksum_errors
from tests.netlab import DEVICE6, Lab, wait_for

pytestmark = pytest.mark.integration

DATAGRAM = 64
PER_SEND = 40
SENDS = 100  # 4,000 datagrams each way
SO_RCVBUFFORCE = 33  # asm-generic/socket.h; Python has no constant for it
UDP_SEGMENT = 103  # linux/udp.h
FEATURES = ("generic-receive-offload", "rx-udp-gro-forwarding")

# Each datagram: 4-byte sequence number, then a pattern derived from it.
DATAGRAM_CODE = (
    "def datagram(i):\n"
    "    head = i.to_bytes(4, 'big')\n"
    f"    return head + bytes((i * 7 + k) & 255 for k in range({DATAGRAM} - 4))\n"
)

SINK = DATAGRAM_CODE + (
    "import socket, sys\n"
    "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
    f"s.setsockopt(socket.SOL_SOCKET, {SO_RCVBUFFORCE}, 1 << 24)\n"
    "s.bind(('0.0.0.0', 9100)); s.settimeout(5)\n"
    "seen, bad, peer = set(), 0, None\n"
    "total = int(sys.argv[1])\n"
    "print('ready', flush=True)\n"
    "while len(seen) < total:\n"
    "    try:\n"
    "        data, peer = s.recvfrom(65535)\n"
    "    except socket.timeout:\n"
    "        break\n"
    "    i = int.from_bytes(data[:4], 'big')\n"
    "    if data == datagram(i): seen.add(i)\n"
    "    else: bad += 1\n"
    "print(len(seen), bad, flush=True)\n"
    # Answer with super-packets the same way: the 4->6 direction.
    f"s.setsockopt(socket.SOL_UDP, {UDP_SEGMENT}, {DATAGRAM})\n"
    f"for n in range(0, total, {PER_SEND}):\n"
    f"    s.sendto(b''.join(datagram(i) for i in range(n, min(n + {PER_SEND}, total))), peer)\n"
)

SENDER = DATAGRAM_CODE + (
    "import socket, sys, time\n"
    "total, gso = int(sys.argv[1]), sys.argv[2] == 'gso'\n"
    "s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)\n"
    f"s.setsockopt(socket.SOL_SOCKET, {SO_RCVBUFFORCE}, 1 << 24)\n"
    f"s.connect(('{DEVICE6}', 9100)); s.settimeout(5)\n"
    f"if gso: s.setsockopt(socket.SOL_UDP, {UDP_SEGMENT}, {DATAGRAM})\n"
    f"for n in range(0, total, {PER_SEND}):\n"
    f"    batch = [datagram(i) for i in range(n, min(n + {PER_SEND}, total))]\n"
    "    if gso: s.send(b''.join(batch))\n"
    "    else:\n"
    "        for b in batch: s.send(b)\n"
    "    time.sleep(0.002)\n"
    "seen, bad = set(), 0\n"
    "while len(seen) < total:\n"
    "    try:\n"
    "        data = s.recv(65535)\n"
    "    except socket.timeout:\n"
    "        break\n"
    "    i = int.from_bytes(data[:4], 'big')\n"
    "    if data == datagram(i): seen.add(i)\n"
    "    else: bad += 1\n"
    "print(len(seen), bad, flush=True)\n"
)


def udp_lengths_on_tun(d: DaemonLab, action: Callable[[], None], towards: str = "") -> list[int]:
    """UDP payload lengths tcpdump reports on the TUN while ``action()`` runs
    (only packets to ``towards``, an address as tcpdump prints it, when given)."""
    cap = d.router.popen(
        ["tcpdump", "-i", d.tun, "-nn", "-l", "-c", "20000", "udp"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(0.5)
    try:
        action()
        time.sleep(0.3)
    finally:
        cap.terminate()
        out = cap.communicate(timeout=10)[0].decode(errors="replace")
    return [
        int(n)
        for dst, n in re.findall(r"> (\S+): UDP, length (\d+)", out)
        if dst.startswith(towards)
    ]


def exchange(d: DaemonLab, total: int, mode: str) -> tuple[str, str]:
    """Client -> device (``mode`` 'gso' or 'plain'), then device -> client with UDP_SEGMENT.

    Returns the sink's and the sender's "intact bad" lines.
    """
    sink = d.device.popen([sys.executable, "-c", SINK, str(total)], stdout=subprocess.PIPE)
    assert sink.stdout is not None
    assert sink.stdout.readline().strip() == b"ready"
    sender = d.client.run([sys.executable, "-c", SENDER, str(total), mode], timeout=60)
    sink_out = sink.communicate(timeout=30)[0].decode().strip()
    return sink_out, sender.stdout.strip()


def features(d: DaemonLab, dev: str) -> dict[str, str]:
    out = d.router.run(["ethtool", "-k", dev]).stdout
    found = {}
    for line in out.splitlines():
        name, _, rest = line.strip().partition(":")
        if name in FEATURES:
            found[name] = rest.split()[0]
    return found


def gro_config(d: DaemonLab, tmp: Path) -> None:
    cfg = base_config(tmp, d.tun)
    cfg["translator"]["udp_gro_forwarding"] = True
    d.write_config(cfg)


def test_udp_superpackets_cross_the_tun_and_every_datagram_arrives_intact(
    dlab: DaemonLab,
) -> None:
    dlab.start()
    assert "TUN offloads: csum, tso4, tso6, tso_ecn, uso4, uso6" in dlab.logs()
    results: list[tuple[str, str]] = []
    total = PER_SEND * SENDS
    lengths = udp_lengths_on_tun(dlab, lambda: results.append(exchange(dlab, total, "gso")))
    assert results == [(f"{total} 0", f"{total} 0")]
    # A UDP payload above the MTU on the TUN can only be a super-packet (both directions).
    assert max(lengths) == PER_SEND * DATAGRAM > 1500, lengths[:20]
    assert lengths.count(PER_SEND * DATAGRAM) >= 2 * SENDS - 2
    assert_no_checksum_errors(dlab)


def test_gro_forwarding_builds_superpackets_and_features_come_back(
    dlab: DaemonLab, tmp_path: Path
) -> None:
    before = {dev: features(dlab, dev) for dev in ("wan0", "lan0")}
    assert before["wan0"]["rx-udp-gro-forwarding"] == "off"
    gro_config(dlab, tmp_path)
    dlab.start()
    for dev in ("wan0", "lan0"):
        assert features(dlab, dev) == {f: "on" for f in FEATURES}
    dlab.router.run(["sh", "-c", "echo 1 > /sys/class/net/wan0/threaded"])
    merged: list[int] = []
    outcomes: list[tuple[str, str]] = []
    total = PER_SEND * SENDS
    for _ in range(5):  # bounded: GRO merges only what is queued when NAPI polls
        lengths = udp_lengths_on_tun(
            dlab, lambda: outcomes.append(exchange(dlab, total, "plain")), towards=DEVICE6
        )
        # Client -> device lengths above one datagram on the way in are GRO's work
        # (the worker's own UDP trains leave towards the device's IPv4 address).
        merged += [n for n in lengths if n > DATAGRAM]
        if merged:
            break
    assert merged, "no UDP super-packet from GRO forwarding reached the TUN"
    assert outcomes[-1] == (f"{total} 0", f"{total} 0")
    assert_no_checksum_errors(dlab)
    dlab.router.run(["sh", "-c", "echo 0 > /sys/class/net/wan0/threaded"])
    assert dlab.stop() == 0
    assert {dev: features(dlab, dev) for dev in ("wan0", "lan0")} == before


def test_features_are_restored_after_sigkill_by_the_next_start(lab: Lab, tmp_path: Path) -> None:
    d = DaemonLab(lab, tmp_path)
    try:
        before = {dev: features(d, dev) for dev in ("wan0", "lan0")}
        gro_config(d, tmp_path)
        d.start()
        assert features(d, "wan0")["rx-udp-gro-forwarding"] == "on"
        d.stop(signal.SIGKILL)
        # The worker may outlive its supervisor for a moment; the TUN goes with it.
        assert features(d, "wan0")["rx-udp-gro-forwarding"] == "on"  # left behind
        cfg = base_config(tmp_path, d.tun)  # the option is off now: recovery must undo it
        d.write_config(cfg)
        d.start()
        assert {dev: features(d, dev) for dev in ("wan0", "lan0")} == before
        assert d.stop() == 0
        assert {dev: features(d, dev) for dev in ("wan0", "lan0")} == before
    finally:
        d.close()


# 59 x 1110 bytes: the IPv4 super-packet is 65,518 bytes, so its IPv6 form (65,538)
# is over 64 KiB. The worker's super-packet translator must not apply an MTU to it.
# (Bigger ones are cut up by the device's veth already: it counts its 14-byte
# Ethernet header against gso_max_size.)
BIG_SEGMENT, BIG_COUNT = 1110, 59

BIG_DEVICE = (
    "import socket, sys\n"
    "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
    "s.bind(('0.0.0.0', 9300)); s.settimeout(10)\n"
    "print('ready', flush=True)\n"
    "_, peer = s.recvfrom(100)\n"
    f"s.setsockopt(socket.SOL_UDP, {UDP_SEGMENT}, {BIG_SEGMENT})\n"
    f"s.sendto(b''.join(bytes([i]) * {BIG_SEGMENT} for i in range({BIG_COUNT})), peer)\n"
)

BIG_CLIENT = (
    "import socket\n"
    "s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)\n"
    f"s.setsockopt(socket.SOL_SOCKET, {SO_RCVBUFFORCE}, 1 << 24)\n"
    f"s.connect(('{DEVICE6}', 9300)); s.settimeout(3)\n"
    "s.send(b'go')\n"
    "got = []\n"
    "try:\n"
    f"    while len(got) < {BIG_COUNT}: got.append(s.recv(65535))\n"
    "except socket.timeout:\n"
    "    pass\n"
    f"print(sum(d == bytes([i]) * {BIG_SEGMENT} for i, d in enumerate(got)), len(got))\n"
)


def test_a_superpacket_whose_ipv6_form_exceeds_64_kib_still_arrives(dlab: DaemonLab) -> None:
    dlab.start()
    device = dlab.device.popen([sys.executable, "-c", BIG_DEVICE], stdout=subprocess.PIPE)
    try:
        assert device.stdout is not None and device.stdout.readline().strip() == b"ready"
        out = dlab.client.run([sys.executable, "-c", BIG_CLIENT], timeout=30).stdout.split()
        assert device.wait(timeout=10) == 0
    finally:
        device.kill()
    assert out == [str(BIG_COUNT), str(BIG_COUNT)], dlab.logs()[-2000:]
    assert_no_checksum_errors(dlab)


def test_gro_forwarding_waits_for_a_wan_that_appears_later(dlab: DaemonLab, tmp_path: Path) -> None:
    """ppp0 exists only once the PPPoE session is up: with udp_gro_forwarding the
    daemon refused to start ("no device matches name"); now the features follow."""
    cfg = base_config(tmp_path, dlab.tun)
    cfg["translator"]["udp_gro_forwarding"] = True
    cfg["wan"]["interface"] = "pppx0"
    dlab.write_config(cfg)
    dlab.start()
    assert "wan.interface pppx0 does not exist (yet)" in dlab.logs()
    # Waiting costs nothing: other link events neither log it again nor rewrite
    # the state file (router flash).
    state = dlab.tmp / "state" / "netstate.json"
    written = state.stat().st_mtime_ns
    for _ in range(2):
        dlab.router.run("ip link add other0 type veth peer name other0peer")
        dlab.router.run("ip link del other0")
        time.sleep(1.5)
    assert dlab.logs().count("pppx0 does not exist yet") == len(FEATURES)
    assert state.stat().st_mtime_ns == written
    dlab.router.run("ip link add pppx0 type veth peer name pppx0peer")
    dlab.router.run("ip link set pppx0 up")
    wait_for(
        lambda: features(dlab, "pppx0") == {f: "on" for f in FEATURES},
        timeout=10,
        what="GRO forwarding switched on for the new WAN",
    )
    assert dlab.stop() == 0
    assert features(dlab, "pppx0")["rx-udp-gro-forwarding"] == "off"
