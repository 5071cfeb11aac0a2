"""IPv6 -> IPv4 (RFC 7915 §5): tables of inputs and expected fields or drop reasons."""

from __future__ import annotations

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import (
    ICMPv6DestUnreach,
    ICMPv6EchoReply,
    ICMPv6EchoRequest,
    ICMPv6ParamProblem,
    ICMPv6TimeExceeded,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
    fragment6,
)
from scapy.packet import Raw, raw
from tr_testlib import (
    CAM4,
    CAM6,
    CLIENT6,
    OWN6,
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

POOL_FIRST = "198.51.100.2"  # .0 network, .1 reserved


def tx(tr, pkt, now=1.0):
    return tr.translate(bytes(pkt), now)


# --- §5.1 header translation --------------------------------------------------------


def test_tcp_header_fields(tr):
    p = (
        IPv6(src=CLIENT6, dst=CAM6, tc=0xB8, fl=0x12345, hlim=64)
        / TCP(sport=40000, dport=80, flags="S", seq=7)
        / Raw(b"x" * 10)
    )
    v = tx(tr, p)
    assert v.reason == DropReason.NONE and v.mapping == 0
    o = one(v)
    ip = o[IP]
    assert (ip.version, ip.ihl, ip.tos, ip.ttl, ip.proto) == (4, 5, 0xB8, 63, 6)
    assert (ip.src, ip.dst) == (POOL_FIRST, CAM4)
    assert ip.len == 20 + 20 + 10
    assert ip.flags == 0 and ip.frag == 0  # <= 1260 bytes: DF clear (§5.1)
    assert ip.id != 0
    assert (o[TCP].sport, o[TCP].dport, o[TCP].seq) == (40000, 80, 7)
    assert bytes(o[TCP].payload) == b"x" * 10


@pytest.mark.parametrize(
    ("ipv6_size", "df"),
    [(1280, False), (1281, True), (1400, True)],
)
def test_df_rule_1260(tr, ipv6_size, df):
    """§5.1: DF set iff the translated packet is larger than 1260 bytes; RFC 6864
    atomic packets carry ID 0."""
    p = IPv6(src=CLIENT6, dst=CAM6) / UDP(sport=1, dport=2) / Raw(b"a" * (ipv6_size - 48))
    o = one(tx(tr, p))
    assert o[IP].len == ipv6_size - 20
    assert bool(o[IP].flags.DF) is df
    if df:
        assert o[IP].id == 0


def test_identification_changes(tr):
    p = IPv6(src=CLIENT6, dst=CAM6) / UDP(sport=1, dport=2)
    ids = {one(tx(tr, p))[IP].id for _ in range(5)}
    assert len(ids) == 5


@pytest.mark.parametrize(
    ("dst6", "dst4", "mapping"),
    [
        (CAM6, CAM4, 0),
        (RANGE6 + "7", RANGE4 + "7", 1),
        (RANGE6 + "ff", RANGE4 + "255", 1),
        (nsp("203.0.113.5"), "203.0.113.5", -1),
    ],
)
def test_destination_mapping(tr, dst6, dst4, mapping):
    v = tx(tr, IPv6(src=CLIENT6, dst=dst6) / UDP(sport=5, dport=6) / Raw(b"q"))
    o = one(v)
    assert o[IP].dst == dst4 and v.mapping == mapping


@pytest.mark.parametrize(
    ("src6", "dst6"),
    [
        (nsp("192.0.2.60"), CAM6),  # another LAN host, which LAN devices trust
        (nsp(CAM4), CAM6),  # a LAND packet, through the prefix
        (nsp("8.8.4.4"), CAM6),  # any IPv4 host: the prefix is routed into the TUN
        (RANGE6 + "9", nsp("8.8.4.4")),  # a published device's own address
        (CAM6, RANGE6 + "9"),  # two published devices
    ],
)
def test_sources_the_tables_translate_are_forged(tr, src6, dst6):
    """Every IPv6 address the tables translate is routed into the translator, so a
    packet from one arriving on the IPv6 side is forged: translated, it would reach
    the LAN as a packet from one of the LAN's own hosts."""
    v = tx(tr, IPv6(src=src6, dst=dst6) / UDP())
    assert (v.action, v.reason) == (Action.DROP, DropReason.SPOOFED_SOURCE)
    assert tr.pool.in_use == 0


def test_icmp6_errors_from_sources_the_tables_translate_are_forged(tr):
    """A forged error from the prefix would otherwise reach the LAN as an ICMPv4
    error from a LAN host (a connection killed by a "port unreachable")."""
    lease(tr)  # the quoted packet's destination has a lease
    quoted = IPv6(src=CAM6, dst=CLIENT6) / UDP(sport=7, dport=9)
    for src6 in (nsp("192.0.2.1"), RANGE6 + "9"):
        v = tx(tr, IPv6(src=src6, dst=CAM6) / ICMPv6DestUnreach(code=4) / quoted)
        assert (v.action, v.reason) == (Action.DROP, DropReason.SPOOFED_SOURCE)
    v = tx(tr, IPv6(src="2001:db8:ffff::99", dst=CAM6) / ICMPv6DestUnreach(code=4) / quoted)
    assert v.action == Action.FORWARD  # the same error from a router out there


def test_prefix_form_of_a_published_device_is_not_a_second_way_in(tr):
    """Its replies come from its EAM address, and the firewall's allow lists name
    that one; RFC 7757 §4 would hairpin, the translator drops (as for pool4)."""
    for dst4 in (CAM4, RANGE4 + "9"):
        v = tx(tr, IPv6(src=CLIENT6, dst=nsp(dst4)) / UDP())
        assert (v.action, v.reason) == (Action.DROP, DropReason.HAIRPIN)
    assert one(tx(tr, IPv6(src=CLIENT6, dst=nsp("192.0.2.77")) / UDP()))[IP].dst == "192.0.2.77"


def test_udp_checksum_and_zero(tr):
    o = one(tx(tr, IPv6(src=CLIENT6, dst=CAM6) / UDP(sport=9, dport=10) / Raw(b"hello")))
    assert o[UDP].chksum != 0
    raw = bytearray(bytes(IPv6(src=CLIENT6, dst=CAM6) / UDP(sport=9, dport=10, chksum=0)))
    o = one(tr.translate(bytes(raw), 2.0))
    assert o[UDP].chksum == 0


def test_extension_headers_skipped(tr):
    p = (
        IPv6(src=CLIENT6, dst=CAM6)
        / IPv6ExtHdrHopByHop()
        / IPv6ExtHdrDestOpt()
        / IPv6ExtHdrRouting(segleft=0, addresses=["2001:db8::1"])
        / TCP(sport=1, dport=2)
        / Raw(b"data")
    )
    o = one(tx(tr, p))
    assert o[IP].proto == 6 and o[IP].len == 20 + 20 + 4
    assert bytes(o[TCP].payload) == b"data"


@pytest.mark.parametrize(("before", "pointer"), [((), 43), ((IPv6ExtHdrHopByHop(),), 51)])
def test_routing_header_segments_left(tr, before, pointer):
    """§5.1: Segments Left != 0 -> Parameter Problem code 0 at the Segments Left byte."""
    p = IPv6(src=CLIENT6, dst=CAM6)
    for h in before:
        p = p / h
    p = p / IPv6ExtHdrRouting(segleft=1, addresses=["2001:db8::1"]) / UDP()
    v = tx(tr, p)
    assert v.reason == DropReason.ROUTING_HEADER
    e = icmp_error(v)
    assert (e[IPv6].src, e[IPv6].dst) == (OWN6, CLIENT6)
    assert (e[ICMPv6ParamProblem].code, e[ICMPv6ParamProblem].ptr) == (0, pointer)
    assert bytes(e[ICMPv6ParamProblem].payload) == bytes(p)


def test_routing_header_on_an_icmp6_error_is_dropped_unanswered(tr):
    """RFC 4443 §2.4(e): no error about an error, even for this refusal; an echo
    request behind the same header is still answered."""
    quoted = IPv6(src=CAM6, dst=CLIENT6) / UDP(sport=7, dport=9)
    route = IPv6ExtHdrRouting(segleft=1, addresses=["2001:db8::1"])
    v = tx(tr, IPv6(src=CLIENT6, dst=CAM6) / route / ICMPv6TimeExceeded() / quoted)
    assert (v.action, v.reason) == (Action.DROP, DropReason.ROUTING_HEADER)
    v = tx(tr, IPv6(src=CLIENT6, dst=CAM6) / route / ICMPv6EchoRequest())
    assert (v.action, v.reason) == (Action.ICMP_ERROR, DropReason.ROUTING_HEADER)


def _reassemble4(packets):
    parts = sorted((IP(p) for p in packets), key=lambda ip: ip.frag)
    data = b""
    for ip in parts:
        assert ip.frag * 8 == len(data)
        data += bytes(ip.payload)[: ip.len - 20]
    return parts, data


def test_fragments_first_and_later(tr):
    """§5.1.1: ID = low 16 bits, MF = M, offset copied, DF = 0; L4 checksum in the
    first fragment only; reassembled datagram carries a valid checksum."""
    whole = (
        IPv6(src=CLIENT6, dst=CAM6)
        / IPv6ExtHdrFragment(id=0xABCD1234)
        / UDP(sport=7, dport=8)
        / Raw(bytes(range(256)) * 4)
    )
    frags = fragment6(whole, 500)
    assert len(frags) >= 3
    outs = []
    for f in frags:
        v = tx(tr, f)
        assert v.action == Action.FORWARD, v
        outs.append(v.packets[0])
        assert_checksums(v.packets[0], l4=False)
    parts, data = _reassemble4(outs)
    for ip, f in zip(parts, sorted(frags, key=lambda f: f[IPv6ExtHdrFragment].offset)):
        fh = f[IPv6ExtHdrFragment]
        assert ip.id == 0x1234 and ip.flags.DF == 0
        assert ip.flags.MF == fh.m and ip.frag == fh.offset
        assert ip.proto == 17 and (ip.src, ip.dst) == (POOL_FIRST, CAM4)
    full = IP(src=POOL_FIRST, dst=CAM4, proto=17) / Raw(data)
    assert_checksums(bytes(IP(bytes(full))))
    assert bytes(UDP(data).payload) == bytes(range(256)) * 4


def test_atomic_fragment(tr):
    p = IPv6(src=CLIENT6, dst=CAM6) / IPv6ExtHdrFragment(id=0x10002, m=0, offset=0) / TCP()
    o = one(tx(tr, p))
    assert (o[IP].id, o[IP].flags, o[IP].frag) == (2, 0, 0)


def test_hop_limit_exceeded(tr):
    for hlim in (0, 1):
        p = IPv6(src=CLIENT6, dst=CAM6, hlim=hlim) / UDP()
        v = tx(tr, p)
        assert (v.reason, v.mapping) == (DropReason.HOP_LIMIT_EXCEEDED, 0)
        e = icmp_error(v)
        assert (e[IPv6].src, e[IPv6].dst) == (OWN6, CLIENT6)
        assert (e[ICMPv6TimeExceeded].type, e[ICMPv6TimeExceeded].code) == (3, 0)
    o = one(tx(tr, IPv6(src=CLIENT6, dst=CAM6, hlim=2) / UDP()))
    assert o[IP].ttl == 1


def test_no_mapping_answers_address_unreachable(tr):
    p = IPv6(src=CLIENT6, dst="2001:db8:9999::1") / TCP()
    v = tx(tr, p)
    assert v.reason == DropReason.NO_MAPPING
    e = icmp_error(v)
    assert (e[ICMPv6DestUnreach].code, e[IPv6].src, e[IPv6].dst) == (3, OWN6, CLIENT6)
    assert tr.pool.in_use == 0  # no lease for a packet that goes nowhere


def test_error_never_about_error_or_multicast(tr):
    inner = IPv6(src="2001:db8:9999::1", dst=CLIENT6) / UDP()
    v = tx(tr, IPv6(src=CLIENT6, dst="2001:db8:9999::1") / ICMPv6DestUnreach() / inner)
    assert (v.action, v.reason) == (Action.DROP, DropReason.NO_MAPPING)
    v = tx(tr, IPv6(src=CLIENT6, dst="ff02::1") / UDP())
    assert (v.action, v.reason) == (Action.DROP, DropReason.MULTICAST)


def test_error_generation_is_rate_limited():
    tr = make_translator(icmp_errors_per_second=2)
    p = bytes(IPv6(src=CLIENT6, dst="2001:db8:9999::1") / UDP())
    actions = [tr.translate(p, 10.0).action for _ in range(4)]
    assert actions == [Action.ICMP_ERROR] * 2 + [Action.DROP] * 2
    assert tr.icmp_errors_rate_limited == 2
    assert tr.translate(p, 10.5).action == Action.ICMP_ERROR  # refilled 1 token
    assert tr.translate(p, 10.5).reason == DropReason.NO_MAPPING


def test_hairpin_to_pool(tr):
    v = tx(tr, IPv6(src=CLIENT6, dst=nsp("198.51.100.77")) / UDP())
    assert (v.action, v.reason) == (Action.DROP, DropReason.HAIRPIN)


@pytest.mark.parametrize("src", ["ff02::1", "::", "::1", "fe80::1", RANGE6 + "5"])
def test_spoofed_sources(tr, src):
    v = tx(tr, IPv6(src=src, dst=CAM6) / UDP())
    assert (v.action, v.reason) == (Action.DROP, DropReason.SPOOFED_SOURCE)
    assert tr.pool.in_use == 0


def test_pool_exhausted_and_lease_limit():
    tr = make_translator(pool_network="198.51.100.0/30", pool_limit_per_prefix=1)
    assert tr.pool.size == 1  # .1 reserved, .2 usable
    assert one(tx(tr, IPv6(src="2001:db8:a::1", dst=CAM6) / UDP()))[IP].src == "198.51.100.2"
    tr.translate(bytes(IP(src=CAM4, dst="198.51.100.2") / UDP()), 1.0)  # answered
    tx(tr, IPv6(src="2001:db8:a::1", dst=CAM6) / UDP())  # confirmed: never taken while active
    v = tx(tr, IPv6(src="2001:db8:a::2", dst=CAM6) / UDP())
    assert v.reason == DropReason.LEASE_LIMIT
    assert icmp_error(v)[ICMPv6DestUnreach].code == 5
    v = tx(tr, IPv6(src="2001:db8:b::1", dst=CAM6) / UDP())
    assert v.reason == DropReason.POOL_EXHAUSTED
    assert icmp_error(v)[ICMPv6DestUnreach].code == 1
    assert (tr.pool.refused_limit, tr.pool.refused_exhausted) == (1, 1)


def test_echo_request_and_reply(tr):
    for t6, t4 in ((ICMPv6EchoRequest, 8), (ICMPv6EchoReply, 0)):
        o = one(tx(tr, IPv6(src=CLIENT6, dst=CAM6) / t6(id=0x42, seq=9, data=b"ping")))
        assert (o[IP].proto, o[ICMP].type, o[ICMP].code) == (1, t4, 0)
        assert (o[ICMP].id, o[ICMP].seq, bytes(o[ICMP].payload)) == (0x42, 9, b"ping")


@pytest.mark.parametrize("itype", [130, 131, 132, 133, 134, 135, 136, 137, 143, 200, 255])
def test_informational_without_equivalent(tr, itype):
    raw = bytes(IPv6(src=CLIENT6, dst=CAM6, nh=58) / Raw(bytes([itype, 0, 0, 0, 0, 0, 0, 0])))
    v = tr.translate(raw, 1.0)
    assert (v.action, v.reason) == (Action.DROP, DropReason.UNSUPPORTED_ICMP)
    assert tr.pool.in_use == 0  # no lease for a packet that is dropped anyway


def test_icmpv4_over_ipv6_and_fragmented_icmpv6(tr):
    v = tx(tr, IPv6(src=CLIENT6, dst=CAM6, nh=1) / Raw(b"\x08\x00\x00\x00\x00\x00\x00\x00"))
    assert v.reason == DropReason.UNSUPPORTED_PROTOCOL
    p = IPv6(src=CLIENT6, dst=CAM6) / IPv6ExtHdrFragment(m=1) / ICMPv6EchoRequest()
    assert tx(tr, p).reason == DropReason.FRAGMENTED_ICMP


@pytest.mark.parametrize(
    "raw",
    [
        b"\x60",
        bytes(IPv6(src=CLIENT6, dst=CAM6) / UDP())[:39],
        bytes(IPv6(src=CLIENT6, dst=CAM6, plen=100) / UDP()),
        bytes(IPv6(src=CLIENT6, dst=CAM6, plen=0, nh=59)),
        bytes(IPv6(src=CLIENT6, dst=CAM6) / TCP())[:50],
        bytes(IPv6(src=CLIENT6, dst=CAM6) / IPv6ExtHdrDestOpt() / IPv6ExtHdrHopByHop() / UDP()),
        bytes(IPv6(src=CLIENT6, dst=CAM6, nh=60) / Raw(b"\x11\x07" + bytes(6))),
    ],
)
def test_malformed(tr, raw):
    v = tr.translate(raw, 1.0)
    assert (v.action, v.reason) == (Action.DROP, DropReason.MALFORMED)


def test_lease_refreshed_by_both_directions(tr):
    tx(tr, IPv6(src=CLIENT6, dst=CAM6) / UDP(), now=1.0)
    tr.translate(bytes(IP(src=CAM4, dst=POOL_FIRST) / UDP()), 20.0)
    assert tr.pool.leases()[0][2] == 20.0
    tx(tr, IPv6(src=CLIENT6, dst=CAM6) / UDP(), now=900.0)
    assert tr.pool.leases() == [(CLIENT6, POOL_FIRST, 900.0)]


def test_multicast_destination_is_dropped_as_multicast_without_an_error():
    """The kernel's own MLD reports on the TUN are not someone's unmapped address."""
    from scapy.layers.inet6 import ICMPv6MLReport2

    tr = make_translator()
    pkt = raw(IPv6(src="fe80::1", dst="ff02::16", hlim=1) / ICMPv6MLReport2())
    v = tr.translate(pkt, 1.0)
    assert v.action is Action.DROP and v.reason is DropReason.MULTICAST


def test_an_extension_header_behind_the_fragment_header_is_not_translated(tr):
    """RFC 8200 §4.1 puts Destination Options there; it is then part of the
    fragmented data, so the IPv4 fragments (one protocol 17, one 60, a gap) would
    never reassemble. Both fragments are dropped instead."""
    whole = (
        IPv6(src=CLIENT6, dst=CAM6)
        / IPv6ExtHdrFragment(id=9)
        / IPv6ExtHdrDestOpt()
        / UDP(sport=1, dport=2)
        / Raw(b"d" * 200)
    )
    pieces = fragment6(whole, 150)
    assert len(pieces) >= 2
    for piece in pieces:
        v = tx(tr, piece)
        assert (v.action, v.reason) == (Action.DROP, DropReason.UNSUPPORTED_PROTOCOL)
