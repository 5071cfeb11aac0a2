"""The checksum helpers both directions share: ``adjust_inner_checksum`` (the L4
header inside an ICMP error, maybe cut short) and ``translate_echo``.  Every result
is compared with the checksum scapy computes from scratch for the new addresses."""

from __future__ import annotations

import ipaddress

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6EchoReply, ICMPv6EchoRequest, IPv6
from scapy.packet import Raw

from translator.checksum import delta, neg
from translator.headers import PROTO_ICMP, PROTO_TCP, PROTO_UDP
from translator.icmp import adjust_inner_checksum, icmp6_pseudo_sum, translate_echo

SRC4, DST4 = "192.0.2.50", "198.51.100.7"
SRC6, DST6 = "2001:db8:200::50", "2001:db8:ffff::1234"
P4 = {a: ipaddress.IPv4Address(a).packed for a in (SRC4, DST4)}
P6 = {a: ipaddress.IPv6Address(a).packed for a in (SRC6, DST6)}
# sum(ipv6 pair) - sum(ipv4 pair), as the mappings precompute it
D4TO6 = delta(P6[SRC6] + P6[DST6], P4[SRC4] + P4[DST4])


def l4(proto_layer: object, family: str) -> bytes:
    """The L4 bytes, checksummed by scapy for the ``family`` addresses."""
    ip = IP(src=SRC4, dst=DST4) if family == "4" else IPv6(src=SRC6, dst=DST6)
    return bytes((ip / proto_layer)[1])  # type: ignore[operator]


@pytest.mark.parametrize(
    "layer",
    [TCP(sport=80, dport=4321, flags="SA") / Raw(b"hello"), UDP(sport=53, dport=9) / Raw(b"x")],
    ids=["tcp", "udp"],
)
def test_adjust_matches_a_full_sum_both_ways(layer):
    v4, v6 = l4(layer.copy(), "4"), l4(layer.copy(), "6")
    proto = PROTO_TCP if isinstance(layer, TCP) else PROTO_UDP
    assert adjust_inner_checksum(proto, v4, D4TO6) == v6
    assert adjust_inner_checksum(proto, v6, neg(D4TO6)) == v4


@pytest.mark.parametrize(("proto", "cut"), [(PROTO_TCP, 17), (PROTO_UDP, 7)])
def test_missing_checksum_field_is_left_alone(proto, cut):
    layer = TCP() if proto == PROTO_TCP else UDP()
    short = l4(layer, "4")[:cut]
    assert adjust_inner_checksum(proto, short, D4TO6) is short


def test_udp_without_checksum_and_other_protocols_are_left_alone():
    udp0 = l4(UDP(chksum=0) / Raw(b"abc"), "4")
    assert adjust_inner_checksum(PROTO_UDP, udp0, D4TO6) is udp0
    icmp = l4(ICMP(), "4")
    assert adjust_inner_checksum(PROTO_ICMP, icmp, D4TO6) is icmp


def test_udp_checksum_that_adjusts_to_zero_is_sent_as_ffff():
    # A payload word equal to the checksum without it makes the IPv6 sum come out 0,
    # which RFC 768 sends as 0xFFFF.
    c0 = int.from_bytes(l4(UDP(sport=1, dport=2) / Raw(bytes(2)), "6")[6:8], "big")
    v4 = l4(UDP(sport=1, dport=2) / Raw(c0.to_bytes(2, "big")), "4")
    v6 = l4(UDP(sport=1, dport=2) / Raw(c0.to_bytes(2, "big")), "6")
    assert v6[6:8] == b"\xff\xff"
    assert adjust_inner_checksum(PROTO_UDP, v4, D4TO6) == v6


@pytest.mark.parametrize(
    ("echo4", "echo6"),
    [
        (ICMP(type=8, id=7, seq=3), ICMPv6EchoRequest(id=7, seq=3)),
        (ICMP(type=0, id=7, seq=3), ICMPv6EchoReply(id=7, seq=3)),
    ],
    ids=["request", "reply"],
)
def test_translate_echo_both_ways(echo4, echo6):
    v4 = l4(echo4 / Raw(b"ping"), "4")
    v6 = l4(echo6 / Raw(b"ping"), "6")
    pseudo = icmp6_pseudo_sum(P6[SRC6], P6[DST6], len(v6))
    assert translate_echo(v4, v6[0], pseudo) == v6
    assert translate_echo(v6, v4[0], neg(pseudo)) == v4
