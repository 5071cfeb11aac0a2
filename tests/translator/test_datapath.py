"""DataPath's vnet loop over a datagram socketpair standing in for the TUN.

A SOCK_DGRAM socketpair keeps packet boundaries like a TUN fd: each read is
one frame, each writev one frame. That makes the loop's own logic (UDP
trains, what is merged and what is not, counters) testable without a kernel
device; the namespace tests cover the real TUN.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import ICMPv6DestUnreach, IPv6
from scapy.packet import Raw, raw
from test_offload import partial, vnet
from tr_testlib import CAM6, CLIENT6, make_translator

from translator import DropReason, Translator
from translator import tun as tun_module
from translator.offload import GSO_NONE, GSO_UDP_L4, VNET_HDR
from translator.tun import DIRECTION_6TO4, Counters, DataPath

UNMAPPED6 = "2001:db8:200::99"


def frame6(i: int, dst: str = CAM6, size: int = 64) -> bytes:
    pkt = raw(
        IPv6(src=CLIENT6, dst=dst, hlim=64) / UDP(sport=40000, dport=5201) / Raw(bytes([i]) * size)
    )
    return vnet(GSO_NONE, 40, 6) + partial(pkt, 40, 6)


@pytest.fixture
def tun() -> Iterator[tuple[DataPath, socket.socket]]:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    ours.setblocking(False)
    theirs.setblocking(False)
    for s in (ours, theirs):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 22)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    tr = make_translator()
    gso = Translator.for_super_packets(tr.settings, tr.tables, tr.pool)
    path = DataPath(ours.fileno(), tr, Counters(len(tr.tables.eam)), gso)
    path.udp_trains = True
    try:
        yield path, theirs
    finally:
        ours.close()
        theirs.close()


def written(theirs: socket.socket) -> list[bytes]:
    out = []
    while True:
        try:
            out.append(theirs.recv(1 << 17))
        except BlockingIOError:
            return out


def test_a_queued_run_of_one_flow_is_written_once_as_uso(
    tun: tuple[DataPath, socket.socket],
) -> None:
    path, theirs = tun
    for i in range(10):
        theirs.send(frame6(i))
    assert path.run_batch(1.0) == 10
    [frame] = written(theirs)
    flags, gso, _hl, gso_size, _start, _off = VNET_HDR.unpack_from(frame, 0)
    assert (gso, gso_size) == (GSO_UDP_L4, 64)
    assert IP(frame[VNET_HDR.size :])[UDP].len == 8 + 10 * 64
    assert sum(path.counters.packets[DIRECTION_6TO4]) == 10  # wire packets


def test_a_long_run_of_quic_sized_datagrams_is_cut_to_fit_64_kib(
    tun: tuple[DataPath, socket.socket],
) -> None:
    """64 x 1200 bytes is 76,800 bytes of payload: one super-packet would overflow
    the 16-bit lengths (the whole run was lost as malformed). Two trains instead."""
    path, theirs = tun
    for i in range(64):
        theirs.send(frame6(i, size=1200))
    assert path.run_batch(1.0) == 64
    out = written(theirs)
    assert len(out) == 2
    payload = b""
    for frame in out:
        ip = IP(frame[VNET_HDR.size :])
        assert ip.len == len(frame) - VNET_HDR.size <= 65535
        assert VNET_HDR.unpack_from(frame, 0)[3] == 1200  # gso_size
        payload += bytes(ip[UDP].payload)
    assert payload == b"".join(bytes([i]) * 1200 for i in range(64))
    assert sum(path.counters.packets[DIRECTION_6TO4]) == 64
    assert path.counters.dropped[DropReason.MALFORMED] == 0


def test_empty_datagrams_are_never_merged(tun: tuple[DataPath, socket.socket]) -> None:
    path, theirs = tun
    for _ in range(3):
        theirs.send(frame6(0, size=0))
    path.run_batch(1.0)
    out = written(theirs)
    assert len(out) == 3 and all(VNET_HDR.unpack_from(f, 0)[1] == GSO_NONE for f in out)


def test_a_run_that_is_not_forwarded_is_dropped_and_answered_per_datagram(
    tun: tuple[DataPath, socket.socket],
) -> None:
    path, theirs = tun
    for i in range(10):
        theirs.send(frame6(i, dst=UNMAPPED6))
    assert path.run_batch(1.0) == 10
    assert path.counters.dropped[DropReason.NO_MAPPING] == 10
    errors = written(theirs)
    assert len(errors) == 10  # one Destination Unreachable per datagram (no rate limit here)
    for i, frame in enumerate(errors):
        err = IPv6(frame[VNET_HDR.size :])
        assert ICMPv6DestUnreach in err and err.dst == CLIENT6
        quoted = err[ICMPv6DestUnreach].payload
        assert quoted.plen == 8 + 64 and bytes(quoted)[48:] == bytes([i]) * 64


def test_runs_break_at_a_new_flow_or_size_and_order_is_kept(
    tun: tuple[DataPath, socket.socket],
) -> None:
    path, theirs = tun
    frames = [frame6(0), frame6(1), frame6(2, size=65), frame6(3), frame6(4)]
    for f in frames:
        theirs.send(f)
    path.run_batch(1.0)
    out = written(theirs)
    sizes = [len(IP(f[VNET_HDR.size :])[UDP].payload) for f in out]
    assert sizes == [128, 65, 128]  # a run of 2, a single, a run of 2
    payload = b"".join(bytes(IP(f[VNET_HDR.size :])[UDP].payload) for f in out)
    assert (
        payload
        == bytes([0]) * 64 + bytes([1]) * 64 + bytes([2]) * 65 + bytes([3]) * 64 + bytes([4]) * 64
    )


def test_without_uso_every_datagram_goes_alone(tun: tuple[DataPath, socket.socket]) -> None:
    path, theirs = tun
    path.udp_trains = False
    for i in range(5):
        theirs.send(frame6(i))
    path.run_batch(1.0)
    assert len(written(theirs)) == 5
    assert os.get_blocking(path.fd) is False


def test_an_edge_error_on_one_frame_is_counted_and_the_loop_goes_on(
    tun: tuple[DataPath, socket.socket], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Stands in for a virtio-header edge case nobody foresaw (the core itself never raises).
    path, theirs = tun
    real_key = tun_module.udp_train_key

    def key_or_crash(frame: bytes) -> bytes | None:
        if frame[-1] == 3:
            raise IndexError("unforeseen frame")
        return real_key(frame)

    monkeypatch.setattr(tun_module, "udp_train_key", key_or_crash)
    for i in range(6):
        theirs.send(frame6(i, size=64 + i))  # distinct sizes: no trains
    assert path.run_batch(1.0) == 6
    assert path.counters.dropped[DropReason.MALFORMED] == 1
    assert len(written(theirs)) == 5
