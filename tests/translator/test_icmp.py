"""ICMP translation: every row of RFC 7915 §4.2 and §5.2, Parameter Problem pointers
(Figures 3 and 6), PMTU both ways, inner-packet translation and RFC 4884 extensions.

The expected tables below are transcribed from the RFC text, independently of the
tables in translator/icmp.py.
"""

from __future__ import annotations

import ipaddress
import struct

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6EchoRequest, ICMPv6Unknown, IPv6
from scapy.packet import Raw
from tr_testlib import (
    CAM4,
    CAM6,
    CLIENT6,
    OWN6,
    RFC6791,
    assert_checksums,
    lease,
    make_translator,
    ones_complement_ok,
)

from translator import Action, DropReason

ROUTER4 = "10.0.0.1"  # inside the EAM range 10.0.0.0/24 <-> 2001:db8:2::/120
ROUTER4_AS6 = "2001:db8:2::1"
ROUTER6 = "2001:db8:ffff:1::ff"  # untranslatable, no lease

# RFC 7915 §4.2, ICMPv4 error -> ICMPv6 error; None = silently dropped.
RFC7915_4_2: list[tuple[int, int, tuple[int, int] | None]] = [
    (3, 0, (1, 0)),  # net unreachable -> no route to destination
    (3, 1, (1, 0)),  # host unreachable -> no route to destination
    (3, 2, (4, 1)),  # protocol unreachable -> param problem, unrecognized next header
    (3, 3, (1, 4)),  # port unreachable
    (3, 4, (2, 0)),  # fragmentation needed -> packet too big
    (3, 5, (1, 0)),  # source route failed
    (3, 6, (1, 0)),
    (3, 7, (1, 0)),
    (3, 8, (1, 0)),
    (3, 9, (1, 1)),  # communication with destination network administratively prohibited
    (3, 10, (1, 1)),  # ... host administratively prohibited
    (3, 11, (1, 0)),
    (3, 12, (1, 0)),
    (3, 13, (1, 1)),  # communication administratively prohibited
    (3, 14, None),  # host precedence violation: drop
    (3, 15, (1, 1)),  # precedence cutoff in effect
    (3, 16, None),  # unknown code
    (4, 0, None),  # source quench: obsoleted
    (5, 0, None),  # redirect: single-hop
    (5, 1, None),
    (6, 0, None),  # alternative host address
    (11, 0, (3, 0)),  # time exceeded, code unchanged
    (11, 1, (3, 1)),
    (12, 0, (4, 0)),  # parameter problem, pointer indicates the error
    (12, 1, None),  # missing a required option: drop
    (12, 2, (4, 0)),  # bad length
    (12, 3, None),
    (31, 0, None),  # unknown error-ish type
]

# RFC 7915 §5.2, ICMPv6 error -> ICMPv4 error; None = silently dropped.
RFC7915_5_2: list[tuple[int, int, tuple[int, int] | None]] = [
    (1, 0, (3, 1)),  # no route to destination -> host unreachable
    (1, 1, (3, 10)),  # administratively prohibited -> host administratively prohibited
    (1, 2, (3, 1)),  # beyond scope of source address
    (1, 3, (3, 1)),  # address unreachable
    (1, 4, (3, 3)),  # port unreachable
    (1, 5, None),
    (1, 6, None),
    (1, 7, None),
    (2, 0, (3, 4)),  # packet too big -> fragmentation needed
    (3, 0, (11, 0)),  # time exceeded, code unchanged
    (3, 1, (11, 1)),
    (4, 0, (12, 0)),  # erroneous header field -> parameter problem
    (4, 1, (3, 2)),  # unrecognized next header -> protocol unreachable
    (4, 2, None),  # unrecognized IPv6 option: drop
    (4, 3, None),
    (5, 0, None),  # unknown error types
    (100, 0, None),
    (127, 0, None),
]

# RFC 7915 Figure 3 (IPv4 pointer -> IPv6 pointer), None = n/a -> drop.
FIGURE_3 = {0: 0, 1: 1, 2: 4, 3: 4, 4: None, 5: None, 6: None, 7: None, 8: 7, 9: 6}
FIGURE_3.update({10: None, 11: None, 12: 8, 13: 8, 14: 8, 15: 8, 16: 24, 17: 24, 18: 24})
FIGURE_3.update({19: 24, 20: None, 23: None})
# RFC 7915 Figure 6 (IPv6 pointer -> IPv4 pointer).
FIGURE_6 = {0: 0, 1: 1, 2: None, 3: None, 4: 2, 5: 2, 6: 9, 7: 8, 40: None, 1000: None}
FIGURE_6.update({i: 12 for i in range(8, 24)})
FIGURE_6.update({i: 16 for i in range(24, 40)})


def icmp4_error_from(tr, itype, code, rest=b"\x00\x00\x00\x00", inner=None, src=ROUTER4):
    pool4 = lease(tr)
    if inner is None:
        inner = IP(src=pool4, dst=CAM4, ttl=62) / UDP(sport=1000, dport=2000) / Raw(b"hello")
    msg = bytes([itype, code, 0, 0]) + rest + bytes(inner)
    csum = _csum(msg)
    msg = msg[:2] + struct.pack("!H", csum) + msg[4:]
    return bytes(IP(src=src, dst=pool4, proto=1) / Raw(msg))


def _csum(data: bytes, pseudo: bytes = b"") -> int:
    buf = pseudo + data + (b"\x00" if len(data) % 2 else b"")
    s = sum(struct.unpack(f"!{len(buf) // 2}H", buf))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def icmp6_error_from(tr, itype, code, rest=b"\x00\x00\x00\x00", inner=None, src=ROUTER6):
    lease(tr)
    if inner is None:
        inner = IPv6(src=CAM6, dst=CLIENT6, hlim=60) / UDP(sport=80, dport=1000) / Raw(b"hi")
    return bytes(
        IPv6(src=src, dst=CAM6) / ICMPv6Unknown(type=itype, code=code, msgbody=rest + bytes(inner))
    )


def _pseudo6(src: bytes, dst: bytes, length: int) -> bytes:
    return src + dst + struct.pack("!IxxxB", length, 58)


def check_icmp6(raw: bytes) -> tuple[IPv6, bytes]:
    out = IPv6(raw)
    msg = raw[40:]
    assert ones_complement_ok(msg, _pseudo6(raw[8:24], raw[24:40], len(msg)))
    return out, msg


# --- ICMPv4 -> ICMPv6 -----------------------------------------------------------------


@pytest.mark.parametrize(("itype", "code", "expected"), RFC7915_4_2)
def test_icmp4_error_rows(tr, itype, code, expected):
    rest = b"\x00\x00\x05\xdc" if (itype, code) == (3, 4) else b"\x00\x00\x00\x00"
    v = tr.translate(icmp4_error_from(tr, itype, code, rest), 2.0)
    if expected is None:
        assert (v.action, v.reason) == (Action.DROP, DropReason.UNSUPPORTED_ICMP)
        return
    assert v.action == Action.FORWARD and v.mapping == 1, v
    out, msg = check_icmp6(v.packets[0])
    assert_checksums(v.packets[0])
    assert (msg[0], msg[1]) == expected
    assert (out.src, out.dst, out.hlim) == (ROUTER4_AS6, CLIENT6, 63)
    inner = IPv6(msg[8:])
    assert (inner.src, inner.dst, inner.hlim, inner.nh, inner.plen) == (CLIENT6, CAM6, 62, 17, 13)
    assert (inner[UDP].sport, inner[UDP].dport, bytes(inner[UDP].payload)) == (1000, 2000, b"hello")
    if expected == (4, 1):
        assert struct.unpack("!I", msg[4:8])[0] == 6  # pointer at the Next Header field


@pytest.mark.parametrize(("ptr4", "ptr6"), sorted(FIGURE_3.items()))
@pytest.mark.parametrize("code", [0, 2])
def test_param_problem_pointer_4to6(tr, ptr4, ptr6, code):
    v = tr.translate(icmp4_error_from(tr, 12, code, bytes([ptr4, 0, 0, 0])), 2.0)
    if ptr6 is None:
        assert v.reason == DropReason.UNSUPPORTED_ICMP
        return
    _, msg = check_icmp6(v.packets[0])
    assert (msg[0], msg[1], struct.unpack("!I", msg[4:8])[0]) == (4, 0, ptr6)


@pytest.mark.parametrize(
    ("mtu4", "inner_len", "tun_mtu", "expected"),
    [
        (1400, 1500, 1500, 1420),  # MTU + 20
        (1000, 1500, 1500, 1280),  # never below the IPv6 minimum
        (1492, 1500, 1500, 1500),  # capped by the IPv6 next hop (TUN) MTU
        (0, 1500, 9000, 1512),  # RFC 1191 plateau below 1500 is 1492, + 20
        (0, 4000, 9000, 2022),  # plateau 2002 + 20
        (0, 1000, 1500, 1280),  # plateau 508 + 20, raised to 1280
        (8000, 9000, 9000, 8020),
    ],
)
def test_frag_needed_to_packet_too_big(mtu4, inner_len, tun_mtu, expected):
    tr = make_translator(mtu=tun_mtu)
    pool4 = lease(tr)
    inner = (
        IP(src=pool4, dst=CAM4, len=inner_len, flags="DF")
        / UDP(sport=1, dport=2, len=inner_len - 20)
        / Raw(b"p" * 100)
    )
    raw = icmp4_error_from(tr, 3, 4, struct.pack("!HH", 0, mtu4), inner)
    v = tr.translate(raw, 2.0)
    out, msg = check_icmp6(v.packets[0])
    assert (msg[0], msg[1], struct.unpack("!I", msg[4:8])[0]) == (2, 0, expected)
    assert IPv6(msg[8:]).plen == inner_len - 20


def test_frag_needed_about_a_fragment_adds_28(tr):
    pool4 = lease(tr)
    inner = IP(src=pool4, dst=CAM4, flags="MF", proto=17) / Raw(b"q" * 64)
    v = tr.translate(icmp4_error_from(tr, 3, 4, struct.pack("!HH", 0, 1400), inner), 2.0)
    _, msg = check_icmp6(v.packets[0])
    assert struct.unpack("!I", msg[4:8])[0] == 1428
    assert IPv6(msg[8:]).nh == 44


def test_icmp4_error_from_untranslatable_source_uses_own_address():
    tr = make_translator(prefix=None)
    v = tr.translate(icmp4_error_from(tr, 11, 0, src="172.16.9.9"), 2.0)
    out = assert_checksums(v.packets[0])
    assert out[IPv6].src == OWN6
    # Counted under the mapping the quoted packet was for (the camera), not as
    # traffic of the RFC 6052 prefix, which this translator does not even have.
    cam = tr.tables.lookup4(ipaddress.IPv4Address(CAM4).packed)
    assert cam is not None and v.mapping == cam[2] >= 0


def test_icmp4_error_inner_tcp_and_echo(tr):
    pool4 = lease(tr)
    inner = IP(src=pool4, dst=CAM4) / TCP(sport=5, dport=6) / Raw(b"segment")
    v = tr.translate(icmp4_error_from(tr, 3, 3, inner=inner), 2.0)
    assert_checksums(v.packets[0])
    inner = IP(src=pool4, dst=CAM4) / ICMP(type=8, id=1, seq=2) / Raw(b"echo!")
    v = tr.translate(icmp4_error_from(tr, 11, 0, inner=inner), 2.0)
    assert_checksums(v.packets[0])
    _, msg = check_icmp6(v.packets[0])
    quoted = msg[8 + 40 :]
    assert quoted[0] == 128
    assert ones_complement_ok(quoted, _pseudo6(msg[16:32], msg[32:48], len(quoted)))


def test_icmp4_error_drops(tr):
    raw = bytearray(icmp4_error_from(tr, 3, 1))
    raw[22] ^= 0xFF  # corrupt the ICMP checksum
    assert tr.translate(bytes(raw), 2.0).reason == DropReason.BAD_CHECKSUM
    stranger = IP(src="198.51.100.99", dst=CAM4) / UDP()  # inner source has no lease
    assert tr.translate(icmp4_error_from(tr, 3, 1, inner=stranger), 2.0).reason == (
        DropReason.ICMP_INNER_UNTRANSLATABLE
    )
    assert tr.translate(icmp4_error_from(tr, 3, 1, inner=b"\x45\x00"), 2.0).reason == (
        DropReason.ICMP_INNER_UNTRANSLATABLE
    )
    ttl1 = bytearray(icmp4_error_from(tr, 3, 1))
    ttl1[8] = 1
    ttl1[10:12] = struct.pack("!H", _csum(bytes(ttl1[:10]) + b"\x00\x00" + bytes(ttl1[12:20])))
    v = tr.translate(bytes(ttl1), 2.0)
    assert (v.action, v.reason) == (Action.DROP, DropReason.TTL_EXCEEDED)  # no error about an error


def test_icmp6_error_truncated_to_1280(tr):
    pool4 = lease(tr)
    inner = IP(src=pool4, dst=CAM4, flags="DF") / UDP(sport=1, dport=2) / Raw(b"z" * 1400)
    v = tr.translate(icmp4_error_from(tr, 3, 3, inner=inner), 2.0)
    assert len(v.packets[0]) == 1280
    check_icmp6(v.packets[0])


# --- ICMPv6 -> ICMPv4 -----------------------------------------------------------------


@pytest.mark.parametrize(("itype", "code", "expected"), RFC7915_5_2)
def test_icmp6_error_rows(tr, itype, code, expected):
    rest = struct.pack("!I", 1400) if itype == 2 else b"\x00\x00\x00\x00"
    v = tr.translate(icmp6_error_from(tr, itype, code, rest), 2.0)
    if expected is None:
        assert (v.action, v.reason) == (Action.DROP, DropReason.UNSUPPORTED_ICMP)
        return
    assert v.action == Action.FORWARD and v.mapping == 0, v
    out = assert_checksums(v.packets[0])
    assert (out[ICMP].type, out[ICMP].code) == expected
    assert (out[IP].src, out[IP].dst, out[IP].ttl) == (RFC6791, CAM4, 63)
    inner = IP(bytes(out[ICMP])[8:])
    assert (inner.src, inner.dst, inner.ttl, inner.proto, inner.len) == (
        CAM4,
        "198.51.100.2",
        60,
        17,
        30,
    )
    assert bytes(inner[UDP].payload) == b"hi"


@pytest.mark.parametrize(("ptr6", "ptr4"), sorted(FIGURE_6.items()))
def test_param_problem_pointer_6to4(tr, ptr6, ptr4):
    v = tr.translate(icmp6_error_from(tr, 4, 0, struct.pack("!I", ptr6)), 2.0)
    if ptr4 is None:
        assert v.reason == DropReason.UNSUPPORTED_ICMP
        return
    out = assert_checksums(v.packets[0])
    assert (out[ICMP].type, out[ICMP].code, bytes(out[ICMP])[4]) == (12, 0, ptr4)


@pytest.mark.parametrize(
    ("mtu6", "expected"),
    [(1400, 1380), (1280, 1260), (1500, 1480), (9000, 1480), (1000, 1260), (0, 1260)],
)
def test_packet_too_big_to_frag_needed(tr, mtu6, expected):
    v = tr.translate(icmp6_error_from(tr, 2, 0, struct.pack("!I", mtu6)), 2.0)
    out = assert_checksums(v.packets[0])
    assert (out[ICMP].type, out[ICMP].code, out[ICMP].nexthopmtu) == (3, 4, expected)


def test_icmp6_error_source(tr):
    # Sources the tables translate are forged (test_6to4: ..._are_forged).
    out = assert_checksums(tr.translate(icmp6_error_from(tr, 1, 4, src=ROUTER6), 2.0).packets[0])
    assert out[IP].src == RFC6791


def test_icmp6_error_source_with_lease_and_no_rfc6791_pool():
    tr = make_translator(rfc6791_pool4=())
    out = assert_checksums(tr.translate(icmp6_error_from(tr, 3, 0), 2.0).packets[0])
    assert out[IP].src == "198.51.100.1"
    out = assert_checksums(tr.translate(icmp6_error_from(tr, 3, 0, src=CLIENT6), 2.0).packets[0])
    assert out[IP].src == "198.51.100.2"


def test_icmp6_error_inner_tcp_and_echo(tr):
    inner = IPv6(src=CAM6, dst=CLIENT6) / TCP(sport=80, dport=9) / Raw(b"seg")
    assert_checksums(tr.translate(icmp6_error_from(tr, 1, 4, inner=inner), 2.0).packets[0])
    inner = IPv6(src=CAM6, dst=CLIENT6) / ICMPv6EchoRequest(id=3, data=b"e")
    out = assert_checksums(tr.translate(icmp6_error_from(tr, 3, 0, inner=inner), 2.0).packets[0])
    quoted = bytes(out[ICMP])[8 + 20 :]
    assert quoted[0] == 8 and ones_complement_ok(quoted)


def test_icmp6_error_drops(tr):
    raw = bytearray(icmp6_error_from(tr, 1, 4))
    raw[42] ^= 0xFF
    assert tr.translate(bytes(raw), 2.0).reason == DropReason.BAD_CHECKSUM
    stranger = IPv6(src=CAM6, dst="2001:db8:7777::1") / UDP()
    assert tr.translate(icmp6_error_from(tr, 1, 4, inner=stranger), 2.0).reason == (
        DropReason.ICMP_INNER_UNTRANSLATABLE
    )
    hop1 = bytearray(icmp6_error_from(tr, 1, 4))
    hop1[7] = 1
    v = tr.translate(bytes(hop1), 2.0)
    assert (v.action, v.reason) == (Action.DROP, DropReason.HOP_LIMIT_EXCEEDED)


# --- RFC 4884 extensions ----------------------------------------------------------------

EXTENSION = b"\x20\x00\x00\x00" + b"\x00\x08\x01\x01" + b"\x00\x01\x41\x00"  # MPLS label


def _with_ext_checksum(ext: bytes) -> bytes:
    return ext[:2] + struct.pack("!H", _csum(ext)) + ext[4:]


@pytest.mark.parametrize(("itype", "code", "t6"), [(11, 0, 3), (3, 3, 1)])
def test_rfc4884_icmp4_to_icmp6(tr, itype, code, t6):
    pool4 = lease(tr)
    inner = bytes(IP(src=pool4, dst=CAM4) / UDP(sport=1, dport=2) / Raw(b"x" * 12))  # 40 bytes
    ext = _with_ext_checksum(EXTENSION)
    original = inner + bytes(128 - len(inner))
    raw = icmp4_error_from(tr, itype, code, bytes([0, 32, 0, 0]), Raw(original + ext))
    v = tr.translate(raw, 2.0)
    _, msg = check_icmp6(v.packets[0])
    assert (msg[0], msg[4]) == (t6, 16)  # 128 bytes = 16 64-bit words
    assert msg[8 + 128 :] == ext
    quoted = IPv6(msg[8 : 8 + 60])
    assert (quoted.src, quoted.dst, quoted.plen) == (CLIENT6, CAM6, 20)
    assert msg[8 + 60 : 8 + 128] == bytes(68)


def test_rfc4884_stripped_where_icmpv6_has_no_length(tr):
    pool4 = lease(tr)
    inner = bytes(IP(src=pool4, dst=CAM4) / UDP(sport=1, dport=2) / Raw(b"x" * 12))
    original = inner + bytes(128 - len(inner))
    ext = _with_ext_checksum(EXTENSION)
    raw = icmp4_error_from(tr, 12, 0, bytes([9, 32, 0, 0]), Raw(original + ext))
    _, msg = check_icmp6(tr.translate(raw, 2.0).packets[0])
    assert msg[0] == 4 and len(msg) == 8 + 60


def test_rfc4884_noncompliant_length_means_no_extension(tr):
    pool4 = lease(tr)
    inner = bytes(IP(src=pool4, dst=CAM4) / UDP(sport=1, dport=2) / Raw(b"x" * 12))
    raw = icmp4_error_from(tr, 11, 0, bytes([0, 10, 0, 0]), Raw(inner))
    _, msg = check_icmp6(tr.translate(raw, 2.0).packets[0])
    assert msg[4] == 0 and len(msg) == 8 + 60


def test_rfc4884_icmp6_to_icmp4(tr):
    inner = bytes(IPv6(src=CAM6, dst=CLIENT6) / UDP(sport=1, dport=2) / Raw(b"y" * 12))  # 60
    ext = _with_ext_checksum(EXTENSION)
    original = inner + bytes(128 - len(inner))
    raw = icmp6_error_from(tr, 1, 4, bytes([16, 0, 0, 0]), Raw(original + ext))
    out = IP(tr.translate(raw, 2.0).packets[0])
    msg = bytes(out)[20:]
    assert ones_complement_ok(msg)
    assert (msg[0], msg[1], msg[5]) == (3, 3, 32)  # 128 bytes = 32 32-bit words
    assert msg[8 + 128 :] == ext
    quoted = IP(msg[8 : 8 + 40])
    assert (quoted.src, quoted.dst, quoted.len) == (CAM4, "198.51.100.2", 40)


@pytest.mark.parametrize("size", [1016, 1040, 1048, 1200])
def test_rfc4884_long_original_is_cut_to_what_the_icmpv4_length_can_say(tr, size):
    """ICMPv4 counts 32-bit words in 8 bits: 1020 bytes at most. An original whose
    translation is longer was dropped as malformed; now it is cut (RFC 4884 §4.1)."""
    lease(tr)
    inner = bytes(IPv6(src=CAM6, dst=CLIENT6) / UDP(sport=1, dport=2) / Raw(b"y" * (size - 48)))
    ext = _with_ext_checksum(EXTENSION)
    raw = icmp6_error_from(tr, 1, 4, bytes([size // 8, 0, 0, 0]), Raw(inner + ext))
    v = tr.translate(raw, 2.0)
    assert v.action == Action.FORWARD, v
    msg = bytes(IP(v.packets[0]))[20:]
    assert ones_complement_ok(msg)
    words = min(size - 20, 1020) // 4  # the IPv4 form is 20 bytes shorter
    assert (msg[4], msg[5]) == (0, words)
    assert msg[8 + 4 * words :] == ext
