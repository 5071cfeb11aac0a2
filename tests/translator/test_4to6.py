"""IPv4 -> IPv6 (RFC 7915 §4): tables of inputs and expected fields or drop reasons."""

from __future__ import annotations

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption
from scapy.layers.inet6 import ICMPv6EchoReply, ICMPv6EchoRequest, IPv6, IPv6ExtHdrFragment
from scapy.packet import Raw
from tr_testlib import (
    CAM4,
    CAM6,
    CLIENT6,
    OWN4,
    RANGE4,
    RANGE6,
    assert_checksums,
    icmp_error,
    lease,
    make_translator,
    nsp,
    one,
)

from translator import Action, DropReason


def tx(tr, pkt, now=2.0):
    return tr.translate(bytes(pkt), now)


def test_tcp_header_fields(tr):
    pool4 = lease(tr)
    p = (
        IP(src=CAM4, dst=pool4, tos=0x28, ttl=64, id=77)
        / TCP(sport=80, dport=40000)
        / Raw(b"y" * 33)
    )
    v = tx(tr, p)
    assert (v.reason, v.mapping) == (DropReason.NONE, 0)
    o = one(v)
    ip6 = o[IPv6]
    assert (ip6.tc, ip6.fl, ip6.hlim, ip6.nh, ip6.plen) == (0x28, 0, 63, 6, 20 + 33)
    assert (ip6.src, ip6.dst) == (CAM6, CLIENT6)
    assert (o[TCP].sport, o[TCP].dport, bytes(o[TCP].payload)) == (80, 40000, b"y" * 33)


@pytest.mark.parametrize(
    ("src4", "src6", "mapping"),
    [(CAM4, CAM6, 0), (RANGE4 + "200", RANGE6 + "c8", 1), ("8.8.8.8", nsp("8.8.8.8"), -1)],
)
def test_source_mapping(tr, src4, src6, mapping):
    pool4 = lease(tr)
    v = tx(tr, IP(src=src4, dst=pool4) / UDP(sport=1, dport=2) / Raw(b"z"))
    assert one(v)[IPv6].src == src6 and v.mapping == mapping


def test_destination_via_prefix(tr):
    o = one(tx(tr, IP(src=CAM4, dst="8.8.4.4") / UDP()))
    assert o[IPv6].dst == nsp("8.8.4.4")


def test_spoofed_source_dropped_silently():
    """No EAM entry and no prefix: the source has no IPv6 form."""
    tr = make_translator(prefix=None)
    pool4 = lease(tr)
    v = tx(tr, IP(src="192.168.1.9", dst=pool4) / UDP())
    assert (v.action, v.reason) == (Action.DROP, DropReason.SPOOFED_SOURCE)


def test_wkp_refuses_non_global_source():
    """RFC 6052 §3.1: 64:ff9b::/96 never represents a non-global IPv4 address."""
    tr = make_translator(prefix="64:ff9b::/96")
    pool4 = lease(tr)
    assert tx(tr, IP(src="192.168.1.9", dst=pool4) / UDP()).reason == DropReason.SPOOFED_SOURCE
    o = one(tx(tr, IP(src="8.8.8.8", dst=pool4) / UDP()))
    assert o[IPv6].src == "64:ff9b::808:808"


def test_unleased_pool_address_host_unreachable(tr):
    v = tx(tr, IP(src=CAM4, dst="198.51.100.200") / UDP())
    assert v.reason == DropReason.NO_MAPPING and v.mapping == 0
    e = icmp_error(v)
    assert (e[IP].src, e[IP].dst, e[ICMP].type, e[ICMP].code) == (OWN4, CAM4, 3, 1)
    no_prefix = make_translator(prefix=None)
    assert tx(no_prefix, IP(src=CAM4, dst="8.8.4.4") / UDP()).reason == DropReason.NO_MAPPING


def test_expired_lease_is_no_mapping(tr):
    pool4 = lease(tr, now=1.0)
    tx(tr, IP(src=CAM4, dst=pool4) / UDP(), now=1.5)  # the device answers ...
    lease(tr, now=2.0)  # ... and the client speaks again: confirmed, kept lease_time
    assert tx(tr, IP(src=CAM4, dst=pool4) / UDP(), now=7000.0).action == Action.FORWARD
    v = tx(tr, IP(src=CAM4, dst=pool4) / UDP(), now=7000.0 + 7200.0)
    assert v.reason == DropReason.NO_MAPPING


def test_hairpin_dropped(tr):
    v = tx(tr, IP(src=CAM4, dst=RANGE4 + "9") / UDP())
    assert (v.action, v.reason) == (Action.DROP, DropReason.HAIRPIN)


def test_ttl_exceeded(tr):
    pool4 = lease(tr)
    for ttl in (0, 1):
        v = tx(tr, IP(src=CAM4, dst=pool4, ttl=ttl) / UDP())
        assert v.reason == DropReason.TTL_EXCEEDED
        e = icmp_error(v)
        assert (e[IP].src, e[IP].dst, e[ICMP].type, e[ICMP].code) == (OWN4, CAM4, 11, 0)
    assert one(tx(tr, IP(src=CAM4, dst=pool4, ttl=2) / UDP()))[IPv6].hlim == 1


def test_udp_zero_checksum_compute(tr):
    pool4 = lease(tr)
    o = one(tx(tr, IP(src=CAM4, dst=pool4) / UDP(sport=5, dport=6, chksum=0) / Raw(b"abc")))
    assert o[UDP].chksum != 0  # valid: assert_checksums recomputed it


def test_udp_zero_checksum_drop_mode():
    tr = make_translator(udp_zero_checksum="drop")
    pool4 = lease(tr)
    v = tx(tr, IP(src=CAM4, dst=pool4) / UDP(chksum=0))
    assert (v.action, v.reason) == (Action.DROP, DropReason.UDP_ZERO_CHECKSUM)


@pytest.mark.parametrize("mode", ["compute", "drop"])
def test_fragmented_udp_zero_checksum(mode):
    tr = make_translator(udp_zero_checksum=mode)
    pool4 = lease(tr)
    p = IP(src=CAM4, dst=pool4, flags="MF") / UDP(chksum=0) / Raw(b"a" * 16)
    v = tx(tr, p)
    assert (v.action, v.reason) == (Action.DROP, DropReason.FRAGMENTED_UDP_ZERO_CHECKSUM)


def test_options_ignored_and_source_route(tr):
    pool4 = lease(tr)
    rr = IPOption(b"\x07\x07\x04" + bytes(4))  # record route
    o = one(tx(tr, IP(src=CAM4, dst=pool4, options=[rr]) / UDP() / Raw(b"k")))
    assert o[IPv6].plen == 8 + 1
    lsrr = IPOption(b"\x83\x07\x04" + bytes([10, 0, 0, 1]))  # unexpired LSRR
    v = tx(tr, IP(src=CAM4, dst=pool4, options=[lsrr]) / UDP())
    assert v.reason == DropReason.SOURCE_ROUTE
    e = icmp_error(v)
    assert (e[ICMP].type, e[ICMP].code) == (3, 5)
    done = IPOption(b"\x89\x07\x08" + bytes([10, 0, 0, 1]))  # SSRR, pointer past the end
    assert tx(tr, IP(src=CAM4, dst=pool4, options=[done]) / UDP()).action == Action.FORWARD


def test_df_too_big_frag_needed():
    tr = make_translator(mtu=1400)
    pool4 = lease(tr)
    ok = IP(src=CAM4, dst=pool4, flags="DF") / UDP() / Raw(b"a" * (1380 - 28))
    o = one(tx(tr, ok))
    assert len(bytes(o)) == 1400
    big = IP(src=CAM4, dst=pool4, flags="DF") / UDP() / Raw(b"a" * (1381 - 28))
    v = tx(tr, big)
    assert v.reason == DropReason.FRAG_NEEDED
    e = icmp_error(v, only=("IP", "ICMP", "IPerror"))  # quote truncated at 576 bytes
    assert (e[ICMP].type, e[ICMP].code, e[ICMP].nexthopmtu) == (3, 4, 1380)
    assert (e[IP].src, e[IP].dst) == (OWN4, CAM4)
    assert len(bytes(e)) <= 576


def _reassemble6(packets):
    frags = sorted((IPv6(p) for p in packets), key=lambda f: f[IPv6ExtHdrFragment].offset)
    data = b""
    for f in frags:
        fh = f[IPv6ExtHdrFragment]
        assert fh.offset * 8 == len(data)
        data += bytes(fh.payload)
    return frags, data


@pytest.mark.parametrize("lowest", [1280, 1400])
def test_df_clear_fragmented_to_lowest_mtu(lowest):
    tr = make_translator(lowest_ipv6_mtu=lowest)
    pool4 = lease(tr)
    body = bytes(range(256)) * 6
    p = IP(src=CAM4, dst=pool4, id=0x4242) / UDP(sport=3, dport=4) / Raw(body)
    v = tx(tr, p)
    assert v.action == Action.FORWARD and len(v.packets) >= 2
    assert all(len(x) <= lowest for x in v.packets)
    frags, data = _reassemble6(v.packets)
    for i, f in enumerate(frags):
        fh = f[IPv6ExtHdrFragment]
        assert (fh.id, fh.nh, fh.m) == (0x4242, 17, int(i < len(frags) - 1))
    whole = IPv6(src=CAM6, dst=CLIENT6, nh=17) / Raw(data)
    assert_checksums(bytes(IPv6(bytes(whole))))
    assert bytes(UDP(data).payload) == body


def test_small_df_clear_not_fragmented(tr):
    pool4 = lease(tr)
    o = one(tx(tr, IP(src=CAM4, dst=pool4) / UDP() / Raw(b"a" * 1000)))
    assert IPv6ExtHdrFragment not in o


def test_ipv4_fragments_get_fragment_header(tr):
    pool4 = lease(tr)
    body = b"0123456789abcdef" * 8
    whole = IP(src=CAM4, dst=pool4, id=0x1357) / TCP(sport=80, dport=81) / Raw(body)
    raw = bytes(whole)
    l4 = raw[20:]
    first = IP(src=CAM4, dst=pool4, id=0x1357, flags="MF", frag=0, proto=6) / Raw(l4[:64])
    second = IP(src=CAM4, dst=pool4, id=0x1357, frag=8, proto=6) / Raw(l4[64:])
    outs = []
    for f, m, off in ((first, 1, 0), (second, 0, 8)):
        v = tx(tr, f)
        o = IPv6(v.packets[0])
        fh = o[IPv6ExtHdrFragment]
        assert (fh.id, fh.m, fh.offset, fh.nh) == (0x1357, m, off, 6)
        outs.append(v.packets[0])
    _, data = _reassemble6(outs)
    assert_checksums(bytes(IPv6(bytes(IPv6(src=CAM6, dst=CLIENT6, nh=6) / Raw(data)))))
    assert data[20:] == body


def test_large_ipv4_fragment_split_further(tr):
    pool4 = lease(tr)
    p = IP(src=CAM4, dst=pool4, id=9, flags="MF", frag=100, proto=17) / Raw(b"b" * 1400)
    v = tx(tr, p)
    assert len(v.packets) == 2
    offsets = [
        (IPv6(x)[IPv6ExtHdrFragment].offset, IPv6(x)[IPv6ExtHdrFragment].m) for x in v.packets
    ]
    assert offsets[0] == (100, 1) and offsets[1][1] == 1


def test_echo(tr):
    pool4 = lease(tr)
    for t4, cls in ((8, ICMPv6EchoRequest), (0, ICMPv6EchoReply)):
        o = one(tx(tr, IP(src=CAM4, dst=pool4) / ICMP(type=t4, id=3, seq=4) / Raw(b"pong")))
        assert o[IPv6].nh == 58
        assert (o[cls].id, o[cls].seq, o[cls].data) == (3, 4, b"pong")


@pytest.mark.parametrize("itype", [9, 10, 13, 14, 15, 16, 17, 18, 30, 40, 200])
def test_informational_without_equivalent(tr, itype):
    pool4 = lease(tr)
    v = tx(tr, IP(src=CAM4, dst=pool4) / ICMP(type=itype))
    assert (v.action, v.reason) == (Action.DROP, DropReason.UNSUPPORTED_ICMP)


def test_icmpv6_over_ipv4_igmp_and_fragmented_icmp(tr):
    pool4 = lease(tr)
    assert tx(tr, IP(src=CAM4, dst=pool4, proto=58) / Raw(bytes(8))).reason == (
        DropReason.UNSUPPORTED_PROTOCOL
    )
    # RFC 7915 §4.2: IGMP is single-hop; silently dropped.
    v = tx(tr, IP(src=CAM4, dst=pool4, proto=2) / Raw(bytes.fromhex("1164ee9b00000000")))
    assert (v.action, v.reason) == (Action.DROP, DropReason.UNSUPPORTED_PROTOCOL)
    v = tx(tr, IP(src=CAM4, dst=pool4, flags="MF") / ICMP() / Raw(b"a" * 16))
    assert v.reason == DropReason.FRAGMENTED_ICMP


@pytest.mark.parametrize(
    "raw",
    [
        b"\x45",
        bytes(IP(src=CAM4, dst="8.8.8.8") / UDP())[:19],
        bytes(IP(src=CAM4, dst="8.8.8.8", ihl=4) / UDP()),
        bytes(IP(src=CAM4, dst="8.8.8.8", len=200) / UDP()),
        bytes(IP(src=CAM4, dst="8.8.8.8") / TCP())[:30],
        b"\x00" * 40,
        b"",
    ],
)
def test_malformed(tr, raw):
    v = tr.translate(raw, 1.0)
    assert (v.action, v.reason) == (Action.DROP, DropReason.MALFORMED)


def test_trailing_bytes_trimmed(tr):
    pool4 = lease(tr)
    raw = bytes(IP(src=CAM4, dst=pool4) / UDP() / Raw(b"abc")) + b"\x00" * 6
    o = one(tr.translate(raw, 2.0))
    assert o[IPv6].plen == 11


@pytest.mark.parametrize(
    ("src", "dst"), [("127.0.0.1", None), (CAM4, "224.0.0.1"), (CAM4, "255.255.255.255")]
)
def test_martians(tr, src, dst):
    pool4 = lease(tr)
    v = tx(tr, IP(src=src, dst=dst or pool4) / UDP())
    assert v.action == Action.DROP
    assert v.reason == (DropReason.SPOOFED_SOURCE if dst is None else DropReason.NO_MAPPING)
