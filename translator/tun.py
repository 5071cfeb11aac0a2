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

from translator import Action, DropReason, Translator, Verdict
from translator.offload import (
    TUN_F_CSUM,
    TUN_F_TSO4,
    TUN_F_TSO6,
    TUN_F_TSO_ECN,
    TUN_F_USO4,
    TUN_F_USO6,
    VNET_HDR_LEN,
    coalesce_udp,
    df_free_segments_v4,
    finish,
    gso_size_of,
    prepare,
    segment_ids_v4,
    udp_train_cap,
    udp_train_key,
)

# linux/if_tun.h
TUNSETIFF = 0x400454CA
TUNSETOFFLOAD = 0x400454D0
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
IFF_MULTI_QUEUE = 0x0100
IFF_VNET_HDR = 0x4000

TUN_PATH = "/dev/net/tun"
READ_SIZE = 65536 + 64
BATCH_LIMIT = 256  # packets per batch before the caller gets to look at signals
EDGE_ERRORS = (IndexError, ValueError, struct.error)

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


# Richest first.  USO (UDP super-packets, Linux 6.2+) is accepted only with
# both families set; older kernels refuse the unknown bits with EINVAL.
OFFLOAD_SETS = (
    TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN | TUN_F_USO4 | TUN_F_USO6,
    TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN,
    TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6,
    TUN_F_CSUM,
)


def open_tun(name: str, multi_queue: bool = False, offloads: bool = False) -> tuple[int, int]:
    """Create (or attach to) TUN device ``name``: IFF_TUN, no packet-info header.

    With ``offloads`` the device gets a virtio-net header and the richest
    offload set the kernel accepts (it refuses masks it does not know).
    Returns ``(fd, offload_flags)``; the flags are 0 when offloads are off.
    """
    flags = IFF_TUN | IFF_NO_PI | (IFF_MULTI_QUEUE if multi_queue else 0)
    if offloads:
        flags |= IFF_VNET_HDR
    fd = os.open(TUN_PATH, os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), flags))
        enabled = 0
        if offloads:
            for mask in OFFLOAD_SETS:
                try:
                    fcntl.ioctl(fd, TUNSETOFFLOAD, mask)
                except OSError:
                    continue
                enabled = mask
                break
    except OSError:
        os.close(fd)
        raise
    if offloads and not enabled:
        # No offload accepted: a virtio-net header would only cost; start over without.
        os.close(fd)
        return open_tun(name, multi_queue, offloads=False)
    os.set_blocking(fd, False)
    return fd, enabled


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


def describe_offloads(mask: int) -> str:
    names = [
        n
        for bit, n in (
            (TUN_F_CSUM, "csum"),
            (TUN_F_TSO4, "tso4"),
            (TUN_F_TSO6, "tso6"),
            (TUN_F_TSO_ECN, "tso_ecn"),
            (TUN_F_USO4, "uso4"),
            (TUN_F_USO6, "uso6"),
        )
        if mask & bit
    ]
    return ", ".join(names) if names else "none (the kernel refused them)"


class DataPath:
    """Reads, translates, writes and counts for one TUN queue.

    Two loops share the counting: :meth:`run_batch` for a plain TUN and
    :meth:`run_batch_vnet` for one opened with a virtio-net header, where a
    TCP or UDP super-packet goes through ``gso_translator`` (the same tables and pool,
    but MTU rules lifted: the kernel segments it to the real MTU afterwards).
    """

    def __init__(
        self,
        fd: int,
        translator: Translator,
        counters: Counters,
        gso_translator: Translator | None = None,
    ) -> None:
        self.fd = fd
        self.translator = translator
        self.gso_translator = gso_translator
        self.udp_trains = False
        """Merge queued UDP trains into USO super-packets (needs a TUN with USO)."""
        self.counters = counters
        self.run_batch = self.run_batch_plain
        self.select_loop()

    def select_loop(self) -> None:
        """Pick the loop that matches how the TUN was opened (after any translator swap)."""
        vnet = self.gso_translator is not None
        self.run_batch = self.run_batch_vnet if vnet else self.run_batch_plain

    def run_batch_plain(self, now: float) -> int:
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

    def run_batch_vnet(self, now: float) -> int:
        """Like :meth:`run_batch_plain`, with a virtio-net header on every read and write.

        With ``udp_trains`` (the TUN takes USO), consecutive same-flow,
        same-size UDP datagrams in the queue are merged into one super-packet
        first (offload.udp_train_key): one translation and one write for up to
        udp_train_cap of them. Only what is already queued is merged, so
        nothing waits for a train to fill.
        """
        fd = self.fd
        read = os.read
        send = self.send_frame
        train_key_of = udp_train_key if self.udp_trains else None
        train: list[bytes] = []
        train_key: bytes | None = None
        train_cap = 0
        count = 0
        while count < BATCH_LIMIT:
            try:
                data = read(fd, READ_SIZE)
            except BlockingIOError:
                break
            except OSError:
                self.counters.read_errors += 1
                break
            count += 1
            try:
                if train_key_of is None:
                    send(data, now)
                    continue
                key = train_key_of(data)
                if key is not None and key == train_key and len(train) < train_cap:
                    train.append(data)
                    continue
                if train:
                    sending, train, train_key = train, [], None
                    self.send_train(sending, now)
                if key is None:
                    send(data, now)
                else:
                    train, train_key, train_cap = [data], key, udp_train_cap(data)
            except EDGE_ERRORS:
                # The core never raises; this guards the virtio-header edge
                # against a frame nobody foresaw: counted, dropped, loop goes on.
                self.counters.dropped[DropReason.MALFORMED] += 1
        if train:
            try:
                self.send_train(train, now)
            except EDGE_ERRORS:
                self.counters.dropped[DropReason.MALFORMED] += 1
        return count

    def send_train(self, train: list[bytes], now: float) -> None:
        """Send a UDP train: alone if it is one datagram, else as one USO super-packet.

        A train the translator does not forward (no mapping, a refused lease,
        hop limit...) is sent again datagram by datagram, so that drops are
        counted and ICMP errors quote packets exactly as without trains.
        """
        if len(train) == 1:
            self.send_frame(train[0], now)
            return
        merged = coalesce_udp(train)
        pkt, csum_offset, gso = prepare(merged, self.translator.lowest_ipv6_mtu)
        assert self.gso_translator is not None
        verdict = self.gso_translator.translate(pkt, now)
        if verdict[0] is not Action.FORWARD:
            for frame in train:
                self.send_frame(frame, now)
            return
        self.emit(verdict, pkt, csum_offset, gso, gso_size_of(merged))

    def send_frame(self, data: bytes, now: float) -> None:
        """Translate one frame read with a virtio-net header, write and count the result."""
        if len(data) <= VNET_HDR_LEN:
            self.counters.dropped[DropReason.MALFORMED] += 1
            return
        pkt, csum_offset, gso = prepare(data, self.translator.lowest_ipv6_mtu)
        assert self.gso_translator is not None
        verdict = (
            self.gso_translator.translate(pkt, now) if gso else self.translator.translate(pkt, now)
        )
        self.emit(verdict, pkt, csum_offset, gso, gso_size_of(data) if gso else 0)

    def emit(self, verdict: Verdict, pkt: bytes, csum_offset: int, gso: int, gso_size: int) -> None:
        """Write and count what the translator made of ``pkt`` (read with a vnet header).

        An IPv4 super-packet whose segments are small enough for DF to be
        clear (offload.df_free_segments_v4: a UDP train, or TCP from a client
        behind a 1280-byte link) gets DF clear and one Identification per
        segment, as each would have had on its own.
        """
        c = self.counters
        action = verdict[0]
        if action is Action.DROP:
            c.dropped[verdict[2]] += 1
            return
        forward = action is Action.FORWARD
        direction = DIRECTION_6TO4 if pkt[0] >> 4 == 6 else DIRECTION_4TO6
        mapping = verdict[3]
        for out in verdict[1]:
            if gso_size and forward:
                small = df_free_segments_v4(out, gso_size)
                if small:
                    out = segment_ids_v4(out, self.translator.reserve_idents(small))
            iov = finish(out, csum_offset if forward else 0, gso, gso_size)
            try:
                os.writev(self.fd, iov)
            except OSError as exc:
                c.write_errors += 1
                if exc.errno not in (errno.EAGAIN, errno.ENOBUFS, errno.EINVAL, errno.EIO):
                    raise
                continue
            if forward:
                if gso_size:
                    # Count wire packets: the kernel cuts this into segments.
                    hdr = iov[0]
                    hdr_len = hdr[2] | hdr[3] << 8
                    segments = -(-(len(out) - hdr_len) // gso_size)
                    c.packets[direction][mapping] += segments
                    c.bytes[direction][mapping] += len(out) + (segments - 1) * hdr_len
                else:
                    c.packets[direction][mapping] += 1
                    c.bytes[direction][mapping] += len(out)
        if not forward:
            c.dropped[verdict[2]] += 1
            self._count_icmp_error(verdict[1])

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
