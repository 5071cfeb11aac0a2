"""virtio-net offload wrapping: partial checksums stay correct through translation.

The kernel hands the translator packets whose L4 checksum field holds the
pseudo-header seed (VIRTIO_NET_HDR_F_NEEDS_CSUM).  These tests build such
packets with scapy, push them through prepare -> translate -> finish, then
complete the checksum the way a NIC (or the kernel's software fallback) would
and let scapy verify it from scratch.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP, IPOption
from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment
from scapy.packet import Raw, raw
from tr_testlib import CAM4, CAM6, CLIENT6, make_translator

from translator import Action, Translator
from translator.checksum import ones_sum
from translator.offload import (
    F_NEEDS_CSUM,
    GSO_ECN,
    GSO_NONE,
    GSO_TCPV4,
    GSO_TCPV6,
    GSO_UDP_L4,
    NO_VNET,
    UDP_TRAIN_MAX,
    VNET_HDR,
    coalesce_udp,
    complete_checksum,
    df_free_segments_v4,
    finish,
    prepare,
    segment_ids_v4,
    udp_train_cap,
    udp_train_key,
)


def partial(pkt: bytes, l4: int, csum_offset: int) -> bytes:
    """Replace a finished L4 checksum by the pseudo-header seed, as the sender's kernel does."""
    field = l4 + csum_offset
    if pkt[0] >> 4 == 6:
        pseudo = pkt[8:40] + struct.pack("!IxxxB", len(pkt) - l4, pkt[6])
    else:
        pseudo = pkt[12:20] + struct.pack("!xBH", pkt[9], len(pkt) - l4)
    seed = ones_sum(pseudo)
    return pkt[:field] + struct.pack("!H", seed) + pkt[field + 2 :]


def vnet(gso: int, l4: int, csum_offset: int, gso_size: int = 0, hdr_len: int = 0) -> bytes:
    return VNET_HDR.pack(F_NEEDS_CSUM, gso, hdr_len, gso_size, l4, csum_offset)


def translate_with_offload(
    tr_pkt: bytes, header: bytes, gso_tr: bool = False
) -> list[tuple[bytes, bytes]]:
    tr = make_translator()
    if gso_tr:
        tr = Translator.for_super_packets(tr.settings, tr.tables, tr.pool)
    pkt, csum_offset, gso = prepare(header + tr_pkt, tr.lowest_ipv6_mtu)
    verdict = tr.translate(pkt, 1.0)
    assert verdict.action is Action.FORWARD, verdict
    gso_size = VNET_HDR.unpack(header)[3]
    return [joined(finish(out, csum_offset, gso, gso_size)) for out in verdict.packets]


def joined(iov: tuple[bytes | memoryview, ...]) -> tuple[bytes, bytes]:
    """finish()'s writev pieces as (virtio-net header, packet), what the kernel reads."""
    return bytes(iov[0]), b"".join(iov[1:])


def completed(hdr: bytes, body: bytes) -> bytes:
    flags, _gso, _hl, _gs, start, offset = VNET_HDR.unpack(hdr)
    return complete_checksum(body, start, offset) if flags & F_NEEDS_CSUM else body


def assert_valid_l4(pkt: bytes) -> None:
    """Recompute the L4 checksum from scratch with scapy and compare."""
    p = IPv6(pkt) if pkt[0] >> 4 == 6 else IP(pkt)
    l4 = p[TCP] if TCP in p else p[UDP]
    got = l4.chksum
    del l4.chksum
    assert (IPv6(raw(p)) if pkt[0] >> 4 == 6 else IP(raw(p)))[type(l4)].chksum == got


def test_tcpv6_superpacket_becomes_tcpv4_superpacket_with_valid_seed() -> None:
    payload = bytes(range(256)) * 200  # 51,200 bytes: one super-packet, ~36 segments
    pkt = raw(
        IPv6(src=CLIENT6, dst=CAM6, hlim=64) / TCP(sport=40000, dport=80, flags="A") / Raw(payload)
    )
    pkt = partial(pkt, 40, 16)
    [(hdr, out)] = translate_with_offload(
        pkt, vnet(GSO_TCPV6 | GSO_ECN, 40, 16, 1428, 60), gso_tr=True
    )
    flags, gso, hdr_len, gso_size, start, offset = VNET_HDR.unpack(hdr)
    assert flags == F_NEEDS_CSUM and gso == GSO_TCPV4 | GSO_ECN
    assert (start, offset, gso_size, hdr_len) == (20, 16, 1428, 40)
    ip4 = IP(completed(hdr, out))
    assert ip4.dst == CAM4 and ip4.len == len(out) == 20 + 20 + len(payload)
    assert bytes(ip4[TCP].payload) == payload
    assert_valid_l4(completed(hdr, out))


def test_tcpv6_superpacket_with_a_destination_options_header_keeps_its_offload() -> None:
    """GRO merges such segments too; the core drops the header. Without the offload
    the 30 kB super-packet left as one IPv4 packet the kernel would not send."""
    payload = bytes(range(256)) * 120
    plain = partial(
        raw(IPv6(src=CLIENT6, dst=CAM6) / TCP(sport=40000, dport=80, flags="A") / Raw(payload)),
        40,
        16,
    )
    opts = b"\x06\x00" + bytes(6)  # Destination Options, next header TCP, 8 bytes of padding
    pkt = plain[:4] + struct.pack("!HB", len(plain) - 40 + 8, 60) + plain[7:40] + opts + plain[40:]
    [(hdr, out)] = translate_with_offload(pkt, vnet(GSO_TCPV6, 48, 16, 1428, 68), gso_tr=True)
    _flags, gso, hdr_len, gso_size, start, offset = VNET_HDR.unpack(hdr)
    assert (gso, start, offset, gso_size, hdr_len) == (GSO_TCPV4, 20, 16, 1428, 40)
    ip4 = IP(completed(hdr, out))
    assert ip4.proto == 6 and bytes(ip4[TCP].payload) == payload
    assert_valid_l4(completed(hdr, out))


def test_tcpv4_superpacket_becomes_tcpv6_superpacket_with_valid_seed() -> None:
    tr = make_translator()
    # Lease a pool4 address for the client first (the 6->4 direction creates it).
    first = tr.translate(raw(IPv6(src=CLIENT6, dst=CAM6) / UDP(sport=1, dport=2)), 1.0)
    pool_addr = IP(first.packets[0]).src
    payload = b"\xa5" * 30000
    pkt = raw(
        IP(src=CAM4, dst=pool_addr, ttl=64, flags="DF") / TCP(sport=80, dport=40000) / Raw(payload)
    )
    pkt = partial(pkt, 20, 16)
    header = vnet(GSO_TCPV4, 20, 16, 1448, 40)
    # The daemon's twin for super-packets: same tables and pool, size rules lifted.
    tr_gso = Translator.for_super_packets(tr.settings, tr.tables, tr.pool)
    prepared, csum_offset, gso = prepare(header + pkt, tr_gso.lowest_ipv6_mtu)
    verdict = tr_gso.translate(prepared, 1.0)
    assert verdict.action is Action.FORWARD
    hdr, out = joined(finish(verdict.packets[0], csum_offset, gso, 1448))
    flags, gso_out, hdr_len, gso_size, start, offset = VNET_HDR.unpack(hdr)
    assert (gso_out, start, offset, gso_size, hdr_len) == (GSO_TCPV6, 40, 16, 1448, 60)
    ip6 = IPv6(completed(hdr, out))
    assert ip6.dst == CLIENT6 and ip6.plen == 20 + len(payload)
    assert_valid_l4(completed(hdr, out))


def test_small_partial_udp_is_finished_in_software() -> None:
    pkt = partial(
        raw(IPv6(src=CLIENT6, dst=CAM6) / UDP(sport=5353, dport=7) / Raw(b"hi" * 50)), 40, 6
    )
    [(hdr, out)] = translate_with_offload(pkt, vnet(GSO_NONE, 40, 6))
    assert hdr == NO_VNET
    assert_valid_l4(out)


def test_large_partial_udp_keeps_checksum_partial() -> None:
    pkt = partial(
        raw(IPv6(src=CLIENT6, dst=CAM6) / UDP(sport=5353, dport=7) / Raw(b"hi" * 500)), 40, 6
    )
    [(hdr, out)] = translate_with_offload(pkt, vnet(GSO_NONE, 40, 6))
    assert VNET_HDR.unpack(hdr)[0] == F_NEEDS_CSUM and VNET_HDR.unpack(hdr)[4] == 20
    assert_valid_l4(completed(hdr, out))


def test_big_ipv4_without_df_is_completed_before_fragmenting() -> None:
    tr = make_translator()
    first = tr.translate(raw(IPv6(src=CLIENT6, dst=CAM6) / UDP(sport=1, dport=2)), 1.0)
    pool_addr = IP(first.packets[0]).src
    pkt = raw(IP(src=CAM4, dst=pool_addr, flags=0) / UDP(sport=7, dport=1) / Raw(b"z" * 2000))
    pkt = partial(pkt, 20, 6)
    prepared, csum_offset, _ = prepare(vnet(GSO_NONE, 20, 6) + pkt, tr.lowest_ipv6_mtu)
    assert csum_offset == 0  # finished in software: fragments cannot carry a partial sum
    assert_valid_l4(prepared)
    verdict = tr.translate(prepared, 1.0)
    assert verdict.action is Action.FORWARD and len(verdict.packets) > 1
    assert all(finish(p, 0, 0, 0)[0] == NO_VNET for p in verdict.packets)


def test_udp_seed_of_all_ones_is_completed_not_mistaken_for_no_checksum() -> None:
    pkt = raw(IPv6(src=CLIENT6, dst=CAM6) / UDP(sport=1, dport=7) / Raw(b"x" * 10))
    forced = pkt[:46] + b"\xff\xff" + pkt[48:]
    prepared, csum_offset, _ = prepare(vnet(GSO_NONE, 40, 6) + forced, 1280)
    assert csum_offset == 0 and prepared[46:48] != b"\x00\x00"


@settings(max_examples=150, deadline=None)
@given(
    payload=st.binary(min_size=0, max_size=3000),
    sport=st.integers(1, 65535),
    tcp=st.booleans(),
)
def test_partial_checksums_translate_to_valid_checksums(
    payload: bytes, sport: int, tcp: bool
) -> None:
    l4 = TCP(sport=sport, dport=80, flags="PA") if tcp else UDP(sport=sport, dport=7)
    offset = 16 if tcp else 6
    pkt = partial(raw(IPv6(src=CLIENT6, dst=CAM6) / l4 / Raw(payload)), 40, offset)
    for hdr, out in translate_with_offload(pkt, vnet(GSO_NONE, 40, offset)):
        assert_valid_l4(completed(hdr, out))


# -- USO: UDP super-packets (GSO_UDP_L4) ------------------------------------------------


def _add16(a: int, b: int) -> int:
    s = a + b
    return (s & 0xFFFF) + (s >> 16)


def segment_udp_like_kernel(hdr: bytes, body: bytes) -> list[bytes]:
    """Cut a USO super-packet as ``__udp_gso_segment`` does, then finish each checksum.

    Each segment gets its own IP and UDP length; the partial seed swaps the
    super-packet's UDP length for the segment's (csum16_sub/csum16_add), and
    the checksum is completed over the segment like a NIC would.
    """
    flags, gso, hdr_len, gso_size, start, offset = VNET_HDR.unpack(hdr)
    assert flags == F_NEEDS_CSUM and gso == GSO_UDP_L4 and hdr_len == start + 8
    old_len = struct.unpack_from("!H", body, start + 4)[0]
    seed = struct.unpack_from("!H", body, start + 6)[0]
    payload = body[hdr_len:]
    segments = []
    for i in range(0, len(payload), gso_size):
        chunk = payload[i : i + gso_size]
        new_len = 8 + len(chunk)
        seg_seed = _add16(_add16(seed, old_len ^ 0xFFFF), new_len)
        head = bytearray(body[:hdr_len])
        if head[0] >> 4 == 4:
            struct.pack_into("!H", head, 2, start + new_len)
            # inet_gso_segment: each segment's Identification is the next one.
            ident = struct.unpack_from("!H", body, 4)[0]
            struct.pack_into("!H", head, 4, (ident + i // gso_size) & 0xFFFF)
            struct.pack_into("!H", head, 10, 0)  # scapy recomputes the header checksum
        else:
            struct.pack_into("!H", head, 4, new_len)
        struct.pack_into("!HH", head, start + 4, new_len, seg_seed)
        segments.append(complete_checksum(bytes(head) + chunk, start, offset))
    return segments


def uso_partial(pkt: bytes, l4: int) -> bytes:
    """The seed GRO leaves in a UDP super-packet: pseudo-header with the whole UDP length."""
    return partial(pkt, l4, 6)


def datagrams(count: int, size: int = 64) -> bytes:
    return b"".join(bytes([i & 0xFF]) * size for i in range(count - 1)) + b"\x99" * (size // 2)


def test_udpv6_superpacket_becomes_udpv4_superpacket_with_valid_segments() -> None:
    payload = datagrams(40)  # 39 full 64-byte datagrams and a short last one
    pkt = raw(IPv6(src=CLIENT6, dst=CAM6, hlim=64) / UDP(sport=40000, dport=5201) / Raw(payload))
    pkt = uso_partial(pkt, 40)
    [(hdr, out)] = translate_with_offload(pkt, vnet(GSO_UDP_L4, 40, 6, 64, 48), gso_tr=True)
    flags, gso, hdr_len, gso_size, start, offset = VNET_HDR.unpack(hdr)
    assert (flags, gso, hdr_len, gso_size, start, offset) == (
        F_NEEDS_CSUM,
        GSO_UDP_L4,
        28,
        64,
        20,
        6,
    )
    ip4 = IP(out)
    # The super-packet's lengths cover all of it; the kernel rewrites them per segment.
    assert ip4.dst == CAM4 and ip4.len == len(out) == 28 + len(payload)
    assert ip4[UDP].len == 8 + len(payload)
    segments = segment_udp_like_kernel(hdr, out)
    assert len(segments) == 40
    for i, seg in enumerate(segments):
        assert_valid_l4(seg)
        assert IP(seg)[UDP].len == 8 + (64 if i < 39 else 32)
    assert b"".join(bytes(IP(s)[UDP].payload) for s in segments) == payload


def test_udpv4_superpacket_becomes_udpv6_superpacket_with_valid_segments() -> None:
    tr = make_translator()
    first = tr.translate(raw(IPv6(src=CLIENT6, dst=CAM6) / UDP(sport=1, dport=2)), 1.0)
    pool_addr = IP(first.packets[0]).src
    payload = datagrams(64, 100)
    pkt = raw(
        IP(src=CAM4, dst=pool_addr, ttl=64, flags="DF")
        / UDP(sport=5201, dport=40000)
        / Raw(payload)
    )
    pkt = uso_partial(pkt, 20)
    header = vnet(GSO_UDP_L4, 20, 6, 100, 28)
    tr_gso = Translator.for_super_packets(tr.settings, tr.tables, tr.pool)
    prepared, csum_offset, gso = prepare(header + pkt, tr_gso.lowest_ipv6_mtu)
    verdict = tr_gso.translate(prepared, 1.0)
    assert verdict.action is Action.FORWARD and len(verdict.packets) == 1
    hdr, out = joined(finish(verdict.packets[0], csum_offset, gso, 100))
    assert VNET_HDR.unpack(hdr) == (F_NEEDS_CSUM, GSO_UDP_L4, 48, 100, 40, 6)
    assert IPv6(out).plen == 8 + len(payload) and IPv6(out).dst == CLIENT6
    segments = segment_udp_like_kernel(hdr, out)
    assert len(segments) == 64
    for seg in segments:
        assert_valid_l4(seg)
    assert b"".join(bytes(IPv6(s)[UDP].payload) for s in segments) == payload


@pytest.mark.parametrize("df", [True, False])
def test_an_ipv4_superpacket_whose_ipv6_form_is_over_64_kib_is_translated_whole(
    df: bool,
) -> None:
    """59 x 1110 bytes: 65,518 bytes of IPv4, 65,538 as IPv6. With DF it was refused
    (Fragmentation Needed 65515 to the device), without DF cut into IPv6 fragments
    around a partial checksum; the kernel segments it to the real MTU anyway."""
    tr = make_translator()
    first = tr.translate(raw(IPv6(src=CLIENT6, dst=CAM6) / UDP(sport=1, dport=2)), 1.0)
    pool_addr = IP(first.packets[0]).src
    payload = b"".join(bytes([i]) * 1110 for i in range(59))
    pkt = raw(
        IP(src=CAM4, dst=pool_addr, ttl=64, flags="DF" if df else 0)
        / UDP(sport=5201, dport=40000)
        / Raw(payload)
    )
    assert len(pkt) == 65518
    tr_gso = Translator.for_super_packets(tr.settings, tr.tables, tr.pool)
    prepared, csum_offset, gso = prepare(
        vnet(GSO_UDP_L4, 20, 6, 1110, 28) + uso_partial(pkt, 20), tr_gso.lowest_ipv6_mtu
    )
    verdict = tr_gso.translate(prepared, 1.0)
    assert verdict.action is Action.FORWARD and len(verdict.packets) == 1
    hdr, out = joined(finish(verdict.packets[0], csum_offset, gso, 1110))
    assert len(out) == 65538 and IPv6(out).plen == 65498
    segments = segment_udp_like_kernel(hdr, out)
    assert len(segments) == 59
    for seg in segments:
        assert_valid_l4(seg)


def _client_with_seed(target: int, udp_len: int) -> str:
    """An IPv6 client address whose UDP pseudo-header seed towards CAM6 is ``target``.

    The seed is the folded pseudo-header sum, and only the address's last word
    varies: with that word 0 the seed is ``s0``, with ``k`` it is s0 + k with
    end-around carry.  Solve for ``k``, then check with the kernel-style seed.
    """

    def seed(src: str) -> int:
        probe = raw(IPv6(src=src, dst=CAM6) / UDP(sport=1, dport=2) / Raw(bytes(udp_len - 8)))
        return int(struct.unpack("!H", partial(probe, 40, 6)[46:48])[0])

    s0 = seed("2001:db8:ffff::")
    last = (target - s0) % 0xFFFF or 0xFFFF  # in 1..0xFFFF: s0 + last folds to target
    src = f"2001:db8:ffff::{last:x}"
    assert seed(src) == target, (hex(s0), hex(last))
    return src


def test_udp_superpacket_with_all_ones_seed_stays_partial_and_valid() -> None:
    # A seed of 0xFFFF complements to 0, which the core reads as "no checksum".
    payload = datagrams(10)
    src = _client_with_seed(0xFFFF, 8 + len(payload))
    pkt = raw(IPv6(src=src, dst=CAM6) / UDP(sport=4000, dport=5201) / Raw(payload))
    pkt = uso_partial(pkt, 40)
    assert pkt[46:48] == b"\xff\xff"
    [(hdr, out)] = translate_with_offload(pkt, vnet(GSO_UDP_L4, 40, 6, 64, 48), gso_tr=True)
    assert VNET_HDR.unpack(hdr)[1] == GSO_UDP_L4
    for seg in segment_udp_like_kernel(hdr, out):
        assert_valid_l4(seg)


@settings(max_examples=60, deadline=None)
@given(count=st.integers(2, 200), size=st.integers(1, 1400), sport=st.integers(1, 65535))
def test_udp_superpackets_of_any_shape_segment_to_valid_datagrams(
    count: int, size: int, sport: int
) -> None:
    payload = bytes((i * 7) & 0xFF for i in range(min(count * size, 60000)))
    pkt = raw(IPv6(src=CLIENT6, dst=CAM6) / UDP(sport=sport, dport=7) / Raw(payload))
    pkt = uso_partial(pkt, 40)
    [(hdr, out)] = translate_with_offload(pkt, vnet(GSO_UDP_L4, 40, 6, size, 48), gso_tr=True)
    segments = segment_udp_like_kernel(hdr, out)
    assert len(segments) == -(-len(payload) // size)
    for seg in segments:
        assert_valid_l4(seg)


@given(
    flags=st.sampled_from([0, F_NEEDS_CSUM]),
    gso=st.sampled_from([GSO_NONE, GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4, 0x7F]),
    csum_start=st.integers(0, 80),
    csum_offset=st.integers(0, 40),
    first=st.sampled_from([0x45, 0x46, 0x60, 0x00, 0xFF]),
    tail=st.binary(max_size=700),
    lowest=st.integers(1280, 1500),
)
def test_prepare_never_raises_on_any_frame(
    flags: int, gso: int, csum_start: int, csum_offset: int, first: int, tail: bytes, lowest: int
) -> None:
    # The kernel writes these headers, but a worker must survive a bad one.
    frame = VNET_HDR.pack(flags, gso, 0, 1400, csum_start, csum_offset) + bytes((first,)) + tail
    pkt, offset, _gso = prepare(frame, lowest)
    assert isinstance(pkt, bytes) and offset >= 0
    key = udp_train_key(frame)
    assert key is None or isinstance(key, bytes)


# --- UDP trains: queued datagrams merged into one USO frame ----------------------------


def udp_frame6(i: int, size: int = 64, sport: int = 40000, **ip: object) -> bytes:
    pkt = raw(
        IPv6(src=CLIENT6, dst=CAM6, hlim=64, **ip)
        / UDP(sport=sport, dport=5201)
        / Raw(bytes([i & 0xFF]) * size)
    )
    return vnet(GSO_NONE, 40, 6) + partial(pkt, 40, 6)


def udp_frame4(i: int, dst: str, size: int = 64, ident: int = 7, **ip: object) -> bytes:
    pkt = raw(
        IP(src=CAM4, dst=dst, ttl=64, id=ident, **ip)
        / UDP(sport=5201, dport=40000)
        / Raw(bytes([i & 0xFF]) * size)
    )
    return vnet(GSO_NONE, 20, 6) + partial(pkt, 20, 6)


def test_train_keys_match_exactly_same_flow_same_size_partial_datagrams() -> None:
    key = udp_train_key(udp_frame6(0))
    assert key is not None and key == udp_train_key(udp_frame6(1))
    assert udp_train_key(udp_frame6(0, size=65)) != key  # size differs
    assert udp_train_key(udp_frame6(0, sport=1)) != key  # flow differs
    assert udp_train_key(udp_frame6(0, tc=4)) != key  # header differs
    finished = NO_VNET + udp_frame6(0)[VNET_HDR.size :]
    assert udp_train_key(finished) is None  # a finished checksum is never dropped
    assert udp_train_key(udp_frame6(0, size=1300)) is None  # its translation could need DF
    frag = raw(IPv6(src=CLIENT6, dst=CAM6) / IPv6ExtHdrFragment() / UDP() / Raw(b"x" * 64))
    assert udp_train_key(vnet(GSO_NONE, 48, 6) + frag) is None
    # IPv4: the Identification may differ, nothing else; no options, no fragments.
    k4 = udp_train_key(udp_frame4(0, "198.51.100.2", ident=1))
    assert k4 is not None and k4 == udp_train_key(udp_frame4(5, "198.51.100.2", ident=2))
    assert udp_train_key(udp_frame4(0, "198.51.100.2", flags="MF")) is None
    assert udp_train_key(udp_frame4(0, "198.51.100.2", options=[IPOption(b"\x01" * 4)])) is None
    tcp = raw(IPv6(src=CLIENT6, dst=CAM6) / TCP() / Raw(b"x" * 64))
    assert udp_train_key(vnet(GSO_NONE, 40, 16) + tcp) is None


@pytest.mark.parametrize("v4", [True, False])
@pytest.mark.parametrize("size", [1, 100, 1000, 1023, 1024, 1200, 1232])
def test_a_full_train_fits_the_length_fields_in_both_families(v4: bool, size: int) -> None:
    """Whatever the datagram size, the largest train and its translation fit 64 KiB."""
    head = 20 if v4 else 40
    frame = bytes(VNET_HDR.size) + (b"\x45" if v4 else b"\x60") + bytes(head + 8 + size - 1)
    cap = udp_train_cap(frame)
    assert 1 <= cap <= UDP_TRAIN_MAX
    assert 40 + 8 + cap * size <= 65535  # the IPv6 form, whichever side it is on
    assert cap == UDP_TRAIN_MAX or 40 + 8 + (cap + 1) * size > 65535


@settings(deadline=None, max_examples=8)
@given(count=st.integers(2, UDP_TRAIN_MAX), size=st.integers(1, 200))
def test_a_v6_train_translates_to_the_datagrams_each_would_have_become(
    count: int, size: int
) -> None:
    frames = [udp_frame6(i, size) for i in range(count)]
    tr = make_translator()
    alone = [tr.translate(prepare(f, 1280)[0], 1.0).packets[0] for f in frames]
    merged = coalesce_udp(frames)
    tr_gso = Translator.for_super_packets(tr.settings, tr.tables, tr.pool)
    pkt, csum_offset, gso = prepare(merged, tr_gso.lowest_ipv6_mtu)
    assert gso == GSO_UDP_L4
    [out] = tr_gso.translate(pkt, 1.0).packets
    assert df_free_segments_v4(out, size) == count
    out = segment_ids_v4(out, tr.reserve_idents(count))
    hdr, body = joined(finish(out, csum_offset, gso, size))
    segments = segment_udp_like_kernel(hdr, body)
    assert len(segments) == count
    idents = set()
    for seg, single in zip(segments, alone, strict=True):
        assert_valid_l4(seg)
        got, want = IP(seg), IP(single)
        assert bytes(got[UDP]) == bytes(want[UDP])  # ports, length, checksum, payload
        assert (got.src, got.dst, got.ttl, got.tos, got.flags, got.frag) == (
            want.src,
            want.dst,
            want.ttl,
            want.tos,
            want.flags,
            want.frag,
        )
        idents.add(got.id)
    assert len(idents) == count


def test_a_v4_train_translates_to_the_datagrams_each_would_have_become() -> None:
    tr = make_translator()
    first = tr.translate(raw(IPv6(src=CLIENT6, dst=CAM6) / UDP(sport=40000, dport=5201)), 1.0)
    lease = IP(first.packets[0]).src
    frames = [udp_frame4(i, lease, 100, ident=i) for i in range(10)]
    alone = [tr.translate(prepare(f, 1280)[0], 1.0).packets[0] for f in frames]
    tr_gso = Translator.for_super_packets(tr.settings, tr.tables, tr.pool)
    pkt, csum_offset, gso = prepare(coalesce_udp(frames), tr_gso.lowest_ipv6_mtu)
    [out] = tr_gso.translate(pkt, 1.0).packets
    hdr, body = joined(finish(out, csum_offset, gso, 100))
    segments = segment_udp_like_kernel(hdr, body)
    assert [IPv6(s) for s in segments] == [IPv6(a) for a in alone]
    for seg in segments:
        assert_valid_l4(seg)


def test_reserved_identifications_wrap_and_follow_the_counter() -> None:
    tr = make_translator()
    tr._ident = 0xFFFE
    assert tr.reserve_idents(4) == 0xFFFF
    assert tr.next_ident() == 3


@pytest.mark.parametrize(
    "mss, want_df_free",
    [(1208, True), (1209, False), (1448, False)],  # 20 + 32 + 1208 = 1260
)
def test_tcp_super_packet_segments_within_1260_bytes_leave_with_df_clear(
    mss: int, want_df_free: bool
) -> None:
    tr = make_translator()
    payload = bytes(range(256)) * 40  # 10240 bytes
    opts = [("NOP", None), ("NOP", None), ("Timestamp", (1, 2))]  # 12 bytes: doff 8
    pkt = raw(
        IPv6(src=CLIENT6, dst=CAM6, hlim=64)
        / TCP(sport=40000, dport=80, flags="A", options=opts)
        / Raw(payload)
    )
    pkt = partial(pkt, 40, 16)
    header = vnet(GSO_TCPV6, 40, 16, mss, 72)
    tr_gso = Translator.for_super_packets(tr.settings, tr.tables, tr.pool)
    prepared, csum_offset, gso = prepare(header + pkt, tr_gso.lowest_ipv6_mtu)
    [out] = tr_gso.translate(prepared, 1.0).packets
    assert IP(out).flags.DF  # the core saw one large packet
    segments = df_free_segments_v4(out, mss)
    assert bool(segments) is want_df_free
    if segments:
        assert segments == -(-len(payload) // mss)
        fixed = IP(segment_ids_v4(out, tr.reserve_idents(segments)))
        assert not fixed.flags.DF and fixed.id == 1 and fixed.len == len(out)
        del fixed.chksum
        assert IP(segment_ids_v4(out, 1)).chksum == IP(bytes(fixed)).chksum
    assert df_free_segments_v4(out, 0) == 0


@pytest.mark.parametrize("plen", range(0, 8))
def test_a_udp_header_cut_short_is_no_train_and_no_crash(plen: int) -> None:
    six = raw(IPv6(src=CLIENT6, dst=CAM6, nh=17, plen=plen)) + bytes(plen)
    assert udp_train_key(vnet(GSO_NONE, 40, 6) + six) is None
