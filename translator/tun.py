"""The I/O shell around the translator: the only module that touches the TUN fd.

It opens the TUN device, drains it in batches (non-blocking reads until the
queue is empty, so a busy link costs one poll per batch, not per packet),
hands each packet to :meth:`Translator.translate` and writes whatever the
verdict says back to the same TUN; the kernel routes translated packets and
ICMP errors alike.  Counting is plain integer arithmetic on preallocated
lists indexed by mapping and drop reason; the control plane reads them on
scrape, so the packet path never calls into a metrics library.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
from dataclasses import dataclass, field

from translator import Action, DropReason, Translator

# linux/if_tun.h
TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
IFF_MULTI_QUEUE = 0x0100
IFF_VNET_HDR = 0x4000

TUN_PATH = "/dev/net/tun"
READ_SIZE = 65536 + 64
BATCH_LIMIT = 256  # packets per batch before the caller gets to look at signals

DIRECTION_6TO4 = 0
DIRECTION_4TO6 = 1

# ICMP type numbers of the errors the translator sends, for per-type counting.
ICMPV4_ERROR_NAMES = {3: "destination_unreachable", 11: "time_exceeded", 12: "parameter_problem"}
ICMPV6_ERROR_NAMES = {
    1: "destination_unreachable",
    2: "packet_too_big",
    3: "time_exceeded",
    4: "parameter_problem",
}


def open_tun(name: str, multi_queue: bool = False) -> int:
    """Create (or attach to) TUN device ``name``: IFF_TUN, no packet-info header."""
    flags = IFF_TUN | IFF_NO_PI | (IFF_MULTI_QUEUE if multi_queue else 0)
    fd = os.open(TUN_PATH, os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), flags))
    except OSError:
        os.close(fd)
        raise
    os.set_blocking(fd, False)
    return fd


@dataclass
class Counters:
    """Plain-integer counters the data path bumps; sized once per table generation.

    ``packets[direction][mapping]`` with one extra slot at the end for
    ``mapping == -1`` (traffic that no mapping owns, e.g. via the RFC 6052 prefix).
    """

    mapping_count: int
    packets: list[list[int]] = field(init=False)
    bytes: list[list[int]] = field(init=False)
    dropped: list[int] = field(init=False)
    icmp_errors: dict[tuple[str, int], int] = field(default_factory=dict)
    read_errors: int = 0
    write_errors: int = 0

    def __post_init__(self) -> None:
        n = self.mapping_count + 1
        self.packets = [[0] * n, [0] * n]
        self.bytes = [[0] * n, [0] * n]
        self.dropped = [0] * (max(int(r) for r in DropReason) + 1)


class DataPath:
    """Reads, translates, writes and counts for one TUN queue."""

    def __init__(self, fd: int, translator: Translator, counters: Counters) -> None:
        self.fd = fd
        self.translator = translator
        self.counters = counters

    def run_batch(self, now: float) -> int:
        """Drain up to BATCH_LIMIT packets; return how many were read (0: queue empty)."""
        fd = self.fd
        read = os.read
        write = os.write
        translate = self.translator.translate
        c = self.counters
        packets, nbytes, dropped = c.packets, c.bytes, c.dropped
        forward = Action.FORWARD
        drop = Action.DROP
        count = 0
        while count < BATCH_LIMIT:
            try:
                pkt = read(fd, READ_SIZE)
            except BlockingIOError:
                break
            except OSError:
                c.read_errors += 1
                break
            count += 1
            verdict = translate(pkt, now)
            action = verdict[0]
            if action is drop:
                dropped[verdict[2]] += 1
                continue
            direction = DIRECTION_6TO4 if pkt[0] >> 4 == 6 else DIRECTION_4TO6
            for out in verdict[1]:
                try:
                    write(fd, out)
                except OSError as exc:
                    c.write_errors += 1
                    if exc.errno not in (errno.EAGAIN, errno.ENOBUFS, errno.EINVAL, errno.EIO):
                        raise
                    continue
                if action is forward:
                    packets[direction][verdict[3]] += 1
                    nbytes[direction][verdict[3]] += len(out)
            if action is not forward:
                dropped[verdict[2]] += 1
                self._count_icmp_error(verdict[1])
        return count

    def _count_icmp_error(self, outs: tuple[bytes, ...]) -> None:
        for out in outs:
            if not out:
                continue
            if out[0] >> 4 == 6 and len(out) > 40:
                key = ("icmpv6", out[40])
            elif len(out) > 20:
                key = ("icmpv4", out[(out[0] & 0x0F) * 4])
            else:
                continue
            errors = self.counters.icmp_errors
            errors[key] = errors.get(key, 0) + 1
