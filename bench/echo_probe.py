"""The least a Python program can do to carry a ping through a TUN: a latency floor.

    python bench/echo_probe.py [--blocking] TUN CLIENT6 DEVICE6 CLIENT4 DEVICE4

This is a measuring instrument, not a translator.  It serves one flow, ICMP
echo between CLIENT6 and DEVICE6 (seen on the IPv4 side as CLIENT4 and
DEVICE4), on a plain TUN.  It checks nothing, so it accepts only what the
benchmark lab sends it.  Everything that depends on the addresses is summed once
at start, and each packet costs a few lines of arithmetic between one ``read``
and one ``write``.  No Python translator can do less per packet, so
``bench/latency_floor.py`` uses its added round-trip time as the floor for
revnat64's, beside Tayga's.

It waits the way revnat64's worker does: ``poll``, then non-blocking reads
until the queue is empty.  With ``--blocking`` it sleeps in a blocking
``read`` instead: about 25 us faster here (docs/benchmarks.md), but a real
daemon sleeping that way hears from its supervisor and its timers only
through signals.

Checksums are right (RFC 1624 updates), so the probe also works in the
strict-checksum lab, where the end hosts verify them.
"""

from __future__ import annotations

import fcntl
import os
import select
import socket
import struct
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from translator.checksum import fold, ones_sum  # noqa: E402

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
ICMPV6 = 58


def serve(tun: str, client6: str, device6: str, client4: str, device4: str, blocking: bool) -> None:
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", tun.encode(), IFF_TUN | IFF_NO_PI))
    os.set_blocking(fd, blocking)
    c6 = socket.inet_pton(socket.AF_INET6, client6)
    d6 = socket.inet_pton(socket.AF_INET6, device6)
    c4 = socket.inet_pton(socket.AF_INET, client4)
    d4 = socket.inet_pton(socket.AF_INET, device4)
    # The ICMPv6 pseudo-header sum without the length, which each packet adds.
    pseudo = fold(ones_sum(c6 + d6) + ICMPV6)
    # IPv4 header sum without total length and TTL: version/IHL, DF, protocol 1, addresses.
    ip4_sum = fold(0x4500 + 0x4000 + 1 + ones_sum(c4 + d4))
    head4 = struct.Struct("!BBHHHBBH4s4s")
    head6 = struct.Struct("!IHBB16s16s")
    icmp_head = struct.Struct("!BBH")
    read, write = os.read, os.write
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    print("ready", flush=True)
    while True:
        if not blocking:
            poller.poll()
        while True:
            try:
                pkt = read(fd, 2048)  # with --blocking: sleeps here when the queue is empty
            except BlockingIOError:
                break
            if pkt[0] >> 4 == 6:  # echo request, client -> device
                size = len(pkt) - 40
                old = pkt[42] << 8 | pkt[43]
                # Checksum loses the pseudo-header; type 128 -> 8 (RFC 1624 eqn. 3).
                m = fold((~fold(pseudo + size) & 0xFFFF) + (~0x8000 & 0xFFFF) + 0x0800)
                csum = ~fold((~old & 0xFFFF) + m) & 0xFFFF
                ttl = pkt[7] - 1
                total = 20 + size
                hsum = ~fold(ip4_sum + total + (ttl << 8)) & 0xFFFF
                write(
                    fd,
                    head4.pack(0x45, 0, total, 0, 0x4000, ttl, 1, hsum, c4, d4)
                    + icmp_head.pack(8, 0, csum)
                    + pkt[44:],
                )
            else:  # echo reply, device -> client
                size = len(pkt) - 20
                old = pkt[22] << 8 | pkt[23]
                # Checksum gains the pseudo-header; type 0 -> 129.
                csum = ~fold((~old & 0xFFFF) + pseudo + size + 0x8100) & 0xFFFF
                write(
                    fd,
                    head6.pack(0x60000000, size, ICMPV6, pkt[8] - 1, d6, c6)
                    + icmp_head.pack(129, 0, csum)
                    + pkt[24:],
                )


if __name__ == "__main__":
    args = sys.argv[1:]
    blocking = args[:1] == ["--blocking"]
    serve(*args[blocking:][:5], blocking=blocking)
