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
