"""End to end: a spoofed one-way flood cannot lock real clients out of a small pool4.

The client host sends UDP to the published device from 1,500 spoofed sources,
each in its own /64 (raw socket, forged source addresses), so the per-prefix
limit never applies.  The device echoes every datagram; the router routes the
translated answers back to the client host, which drops them, as a spoofer
would never see them.  Each spoofed source sends once, so its lease is answered
but never confirmed.  Meanwhile a client that confirmed its lease before the
flood keeps its address and its answers, and a new client that arrives while
the 13-address pool is full of flood leases gets an address and keeps it.
With two workers the spoofed flows spread over both, on one shared lease table.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from publisher.control import request
from publisher.snapshot import Snapshot
from tests.integration.daemon_lab import DaemonLab, base_config
from tests.netlab import CLIENT6, DEVICE6, ROUTER_WAN6, wait_for

pytestmark = pytest.mark.integration

POOL = "198.51.100.0/28"  # 14 hosts, minus the translator's own 198.51.100.1: 13 leases
FLOOD_ROUTE = "2001:db8:f000::/48"  # spoofed sources 2001:db8:f000:N::1, one /64 each
NEWCOMER6 = "2001:db8:1::3"
SOURCES = 1500
RATE = 150.0  # packets per second: the pool turns over every 13 / 150 s, ~80 ms
MAX_SECONDS = 30.0

FLOOD = r"""
import socket, sys, time
from scapy.compat import raw
from scapy.layers.inet import UDP
from scapy.layers.inet6 import IPv6
dst, count, rate, limit = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_RAW)  # IPV6_HDRINCL
start = time.monotonic()
sent = 0
for i in range(count):
    delay = start + i / rate - time.monotonic()
    if delay > 0:
        time.sleep(delay)
    if time.monotonic() - start > limit:
        break
    pkt = IPv6(src=f"2001:db8:f000:{i:x}::1", dst=dst) / UDP(sport=40000, dport=7) / b"spoof"
    s.sendto(raw(pkt), (dst, 0))
    sent += 1
print(sent)
"""


def echoes_from(d: DaemonLab, source: str, count: int) -> int:
    """``count`` UDP echoes from the client's ``source`` address; how many came back."""
    code = (
        "import socket\n"
        "s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)\n"
        f"s.bind(('{source}', 0)); s.settimeout(2)\n"
        "ok = 0\n"
        f"for i in range({count}):\n"
        "    data = b'real %d' % i\n"
        f"    s.sendto(data, ('{DEVICE6}', 7))\n"
        "    try:\n"
        "        ok += s.recv(2048) == data\n"
        "    except OSError:\n"
        "        pass\n"
        "print(ok)\n"
    )
    return int(d.client.run([sys.executable, "-c", code], timeout=5 + 3 * count).stdout)


def status(d: DaemonLab) -> Snapshot:
    return Snapshot.from_json(request(str(d.tmp / "control.sock"), "status"))


def lease_of(snap: Snapshot, client: str) -> str | None:
    return next((v4 for v6, v4, _ in snap.leases if v6 == client), None)


@pytest.mark.parametrize("workers", [1, 2])  # Pool4, and SharedPool4 over two workers
def test_spoofed_flood_does_not_lock_out_confirmed_or_new_clients(
    dlab: DaemonLab, workers: int
) -> None:
    cfg = base_config(dlab.tmp, dlab.tun)
    cfg["translator"]["pool4"] = POOL
    cfg["translator"]["workers"] = workers
    dlab.write_config(cfg)
    dlab.start()
    dlab.start_udp_echo(7)
    dlab.router.run(f"ip -6 route add {FLOOD_ROUTE} via {CLIENT6} dev wan0")
    dlab.client.run(f"ip -6 addr add {NEWCOMER6}/64 dev wan0 nodad")
    for address in (CLIENT6, NEWCOMER6):  # neighbour discovery done before the flood
        dlab.client.run(
            ["ping", "-6", "-c", "3", "-i", "0.2", "-W", "2", "-I", address, ROUTER_WAN6]
        )

    # A real client: the device answers, it speaks again: its lease is confirmed.
    assert echoes_from(dlab, CLIENT6, 2) == 2
    before = status(dlab)
    address = lease_of(before, CLIENT6)
    assert address is not None and before.pool_size == 13

    flood = dlab.client.popen(
        [sys.executable, "-c", FLOOD, DEVICE6, str(SOURCES), str(RATE), str(MAX_SECONDS)],
        stdout=subprocess.PIPE,
    )
    try:
        # The pool is full of flood leases and the flood is taking them from each other.
        wait_for(
            lambda: status(dlab).leases_reclaimed_unconfirmed >= 50,
            timeout=MAX_SECONDS,
            interval=0.2,
            what="the flood to fill the pool",
        )
        during = status(dlab)
        assert during.pool_in_use == during.pool_size == 13
        # The confirmed client keeps being answered on the same address ...
        assert echoes_from(dlab, CLIENT6, 5) == 5
        # ... and a new client gets an address in the middle of the flood and keeps it.
        assert echoes_from(dlab, NEWCOMER6, 5) == 5
        newcomer = lease_of(status(dlab), NEWCOMER6)
        assert newcomer is not None
        assert echoes_from(dlab, NEWCOMER6, 5) == 5
        mid = status(dlab)
        assert lease_of(mid, NEWCOMER6) == newcomer
        assert lease_of(mid, CLIENT6) == address
        out, _ = flood.communicate(timeout=MAX_SECONDS + 10)
    finally:
        if flood.poll() is None:
            flood.kill()
            flood.wait()
    assert int(out) == SOURCES
    after = status(dlab)
    assert lease_of(after, CLIENT6) == address
    assert lease_of(after, NEWCOMER6) == newcomer
    assert after.pool_refused.get("exhausted", 0) == 0
    assert after.leases_reclaimed_unconfirmed > mid.leases_reclaimed_unconfirmed
    assert echoes_from(dlab, CLIENT6, 3) == 3
