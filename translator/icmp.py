"""ICMP translation data and helpers shared by both directions.

The type/code translations of RFC 7915 §4.2 (ICMPv4 -> ICMPv6) and §5.2 (ICMPv6 ->
ICMPv4) are tables, not if-chains: ``ICMP4_TO_6`` and ``ICMP6_TO_4`` map
``(type, code)`` to ``(type, code, kind)``; a missing key means "no equivalent,
drop" (``DropReason.UNSUPPORTED_ICMP``).  ``kind`` says what to do with the 32-bit
"rest of header" word:

* ``KIND_PLAIN``    zero it (unused field, RFC 4884 length handled separately);
* ``KIND_POINTER``  Parameter Problem pointer, mapped through Figure 3 / Figure 6;
* ``KIND_NEXT_HDR`` ICMPv4 Protocol Unreachable -> ICMPv6 Parameter Problem code 1
  with the pointer on the IPv6 Next Header field (offset 6);
* ``KIND_MTU``      Fragmentation Needed <-> Packet Too Big, MTU recomputed.

Also here: RFC 1191 plateau table, the RFC 4884 length attribute positions, the
checksum work both directions do on echo messages and on the packets inside ICMP
errors (``translate_echo``, ``adjust_inner_checksum``), and ``build_icmp4_error`` /
``build_icmp6_error`` for errors the translator generates itself (RFC 7915 §4.4,
§5.4; RFC 1812 §4.3.2.3; RFC 4443 §2.4).
"""

from __future__ import annotations

from .checksum import add, adjust, checksum, fold, neg, ones_sum
from .headers import (
    ICMP4_DEST_UNREACH,
    ICMP4_PARAM_PROBLEM,
    ICMP4_TIME_EXCEEDED,
    ICMP6_DEST_UNREACH,
    ICMP6_PACKET_TOO_BIG,
    ICMP6_PARAM_PROBLEM,
    ICMP6_TIME_EXCEEDED,
    ICMP_FULL,
    IPV6,
    IPV6_MIN_MTU,
    IPV6_VERSION,
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_TCP,
    PROTO_UDP,
    TCP_CHECKSUM_OFFSET,
    U16,
    UDP_CHECKSUM_OFFSET,
    build_ipv4,
)

KIND_PLAIN = 0
KIND_POINTER = 1
KIND_NEXT_HDR = 2
KIND_MTU = 3

# RFC 7915 §4.2: ICMPv4 error -> ICMPv6 error.  Echo is handled separately; Source
# Quench (4), Redirect (5), Alternate Host Address (6), Information/Timestamp/Address
# Mask/Router messages and unknown types have no row and are dropped.
ICMP4_TO_6: dict[tuple[int, int], tuple[int, int, int]] = {
    # Destination Unreachable (Type 3)
    (3, 0): (ICMP6_DEST_UNREACH, 0, KIND_PLAIN),  # net unreachable -> no route
    (3, 1): (ICMP6_DEST_UNREACH, 0, KIND_PLAIN),  # host unreachable -> no route
    (3, 2): (ICMP6_PARAM_PROBLEM, 1, KIND_NEXT_HDR),  # protocol unreachable
    (3, 3): (ICMP6_DEST_UNREACH, 4, KIND_PLAIN),  # port unreachable
    (3, 4): (ICMP6_PACKET_TOO_BIG, 0, KIND_MTU),  # fragmentation needed
    (3, 5): (ICMP6_DEST_UNREACH, 0, KIND_PLAIN),  # source route failed
    (3, 6): (ICMP6_DEST_UNREACH, 0, KIND_PLAIN),
    (3, 7): (ICMP6_DEST_UNREACH, 0, KIND_PLAIN),
    (3, 8): (ICMP6_DEST_UNREACH, 0, KIND_PLAIN),
    (3, 9): (ICMP6_DEST_UNREACH, 1, KIND_PLAIN),  # net admin prohibited
    (3, 10): (ICMP6_DEST_UNREACH, 1, KIND_PLAIN),  # host admin prohibited
    (3, 11): (ICMP6_DEST_UNREACH, 0, KIND_PLAIN),
    (3, 12): (ICMP6_DEST_UNREACH, 0, KIND_PLAIN),
    (3, 13): (ICMP6_DEST_UNREACH, 1, KIND_PLAIN),  # communication admin prohibited
    # (3, 14) host precedence violation: silently drop.
    (3, 15): (ICMP6_DEST_UNREACH, 1, KIND_PLAIN),  # precedence cutoff in effect
    # Time Exceeded (Type 11): type 3, code unchanged.
    (11, 0): (ICMP6_TIME_EXCEEDED, 0, KIND_PLAIN),
    (11, 1): (ICMP6_TIME_EXCEEDED, 1, KIND_PLAIN),
    # Parameter Problem (Type 12): codes 0 and 2 via Figure 3; code 1 dropped.
    (12, 0): (ICMP6_PARAM_PROBLEM, 0, KIND_POINTER),
    (12, 2): (ICMP6_PARAM_PROBLEM, 0, KIND_POINTER),
}

# RFC 7915 §5.2: ICMPv6 error -> ICMPv4 error.  MLD, ND and unknown informational
# types, Parameter Problem code 2 (unrecognized option) and unknown codes are dropped.
ICMP6_TO_4: dict[tuple[int, int], tuple[int, int, int]] = {
    (1, 0): (ICMP4_DEST_UNREACH, 1, KIND_PLAIN),  # no route -> host unreachable
    (1, 1): (ICMP4_DEST_UNREACH, 10, KIND_PLAIN),  # admin prohibited -> host admin prohib.
    (1, 2): (ICMP4_DEST_UNREACH, 1, KIND_PLAIN),  # beyond scope of source address
    (1, 3): (ICMP4_DEST_UNREACH, 1, KIND_PLAIN),  # address unreachable
    (1, 4): (ICMP4_DEST_UNREACH, 3, KIND_PLAIN),  # port unreachable
    (2, 0): (ICMP4_DEST_UNREACH, 4, KIND_MTU),  # packet too big -> fragmentation needed
    (3, 0): (ICMP4_TIME_EXCEEDED, 0, KIND_PLAIN),
    (3, 1): (ICMP4_TIME_EXCEEDED, 1, KIND_PLAIN),
    (4, 0): (ICMP4_PARAM_PROBLEM, 0, KIND_POINTER),  # erroneous header field
    (4, 1): (ICMP4_DEST_UNREACH, 2, KIND_PLAIN),  # unrecognized next header -> proto unreach.
}

# RFC 7915 §4.2 Figure 3: IPv4 header offset -> IPv6 header offset (missing = n/a).
POINTER_4_TO_6: dict[int, int] = {
    0: 0,  # Version/IHL -> Version/Traffic Class
    1: 1,  # Type of Service -> Traffic Class/Flow Label
    2: 4,  # Total Length -> Payload Length
    3: 4,
    8: 7,  # Time to Live -> Hop Limit
    9: 6,  # Protocol -> Next Header
    12: 8,  # Source Address
    13: 8,
    14: 8,
    15: 8,
    16: 24,  # Destination Address
    17: 24,
    18: 24,
    19: 24,
}

# RFC 7915 §5.2 Figure 6: IPv6 header offset -> IPv4 header offset (missing = n/a).
POINTER_6_TO_4: dict[int, int] = {
    0: 0,  # Version/Traffic Class -> Version/IHL, Type of Service
    1: 1,  # Traffic Class/Flow Label -> Type of Service
    4: 2,  # Payload Length -> Total Length
    5: 2,
    6: 9,  # Next Header -> Protocol
    7: 8,  # Hop Limit -> Time to Live
    **{i: 12 for i in range(8, 24)},  # Source Address
    **{i: 16 for i in range(24, 40)},  # Destination Address
}

# Informational messages: echo only (RFC 7915 §4.2, §5.2).
ECHO_4_TO_6: dict[int, int] = {8: 128, 0: 129}
ECHO_6_TO_4: dict[int, int] = {128: 8, 129: 0}

# RFC 1191 §7 plateau table, largest first.
PLATEAUS = (65535, 32000, 17914, 8166, 4352, 2002, 1492, 1006, 508, 296, 68)

# RFC 4884: types that carry a length attribute, and where it is.
RFC4884_TYPES_4 = frozenset((ICMP4_DEST_UNREACH, ICMP4_TIME_EXCEEDED, ICMP4_PARAM_PROBLEM))
RFC4884_TYPES_6 = frozenset((ICMP6_DEST_UNREACH, ICMP6_TIME_EXCEEDED))
RFC4884_MIN_ORIGINAL = 128  # RFC 4884 §4.1, §5.1

# Sizes of errors the translator generates: RFC 1812 §4.3.2.3 (576) and RFC 4443 §2.4(c).
ICMP4_ERROR_MAX = 576
ICMP6_ERROR_MAX = IPV6_MIN_MTU
GENERATED_TTL = 64


def plateau_below(total_length: int) -> int:
    """RFC 1191 §5: the greatest plateau value less than ``total_length``."""
    for p in PLATEAUS:
        if p < total_length:
            return p
    return PLATEAUS[-1]


def icmp6_pseudo_sum(src6: bytes, dst6: bytes, length: int) -> int:
    """Sum of the pseudo-header ICMPv6 checksums cover and ICMPv4 ones do not
    (RFC 4443 §2.3): translating an ICMP message adds or removes exactly this."""
    return fold(ones_sum(src6 + dst6) + length + PROTO_ICMPV6)


def translate_echo(message: bytes, new_type: int, pseudo_delta: int) -> bytes:
    """An Echo Request/Reply retyped to ``new_type`` (RFC 7915 §4.2, §5.2).

    The checksum is adjusted by RFC 1624 for the type change plus ``pseudo_delta``:
    the ICMPv6 pseudo-header sum going 4->6, its negation going 6->4.  Raises
    ``struct.error`` when ``message`` is shorter than the checksum field."""
    t = message[0]
    c = adjust(U16.unpack_from(message, 2)[0], add(pseudo_delta, add(new_type << 8, neg(t << 8))))
    return bytes((new_type, message[1])) + U16.pack(c) + message[4:]


def adjust_inner_checksum(proto: int, payload: bytes, l4_delta: int) -> bytes:
    """``payload`` with its TCP or UDP checksum adjusted by ``l4_delta`` (RFC 1624).

    For the packet inside an ICMP error (RFC 7915 §4.3, §5.3), which may be cut
    short: a checksum field that is not there is left alone, as is a UDP checksum
    of 0 (none), and so is any payload of another protocol."""
    if proto == PROTO_TCP:
        if len(payload) >= TCP_CHECKSUM_OFFSET + 2:
            c = adjust(U16.unpack_from(payload, TCP_CHECKSUM_OFFSET)[0], l4_delta)
            return payload[:TCP_CHECKSUM_OFFSET] + U16.pack(c) + payload[TCP_CHECKSUM_OFFSET + 2 :]
    elif proto == PROTO_UDP and len(payload) >= UDP_CHECKSUM_OFFSET + 2:
        c = U16.unpack_from(payload, UDP_CHECKSUM_OFFSET)[0]
        if c:
            c = adjust(c, l4_delta) or 0xFFFF
            return payload[:UDP_CHECKSUM_OFFSET] + U16.pack(c) + payload[UDP_CHECKSUM_OFFSET + 2 :]
    return payload


# The ICMPv4 length attribute is 8 bits of 32-bit words (RFC 4884 §4.1).
RFC4884_MAX_ORIGINAL4 = 255 * 4


def split_rfc4884(body: bytes, length_attr: int, unit: int) -> tuple[bytes, bytes]:
    """Split an error body into (original datagram, extension structure).

    ``length_attr`` is the RFC 4884 length field in ``unit``-byte words.  A zero or
    non-compliant length (below 128 bytes, or past the end) means "no extension"
    (RFC 4884 §5.1, §5.2 for the non-compliant case)."""
    n = length_attr * unit
    if length_attr == 0 or n < RFC4884_MIN_ORIGINAL or n >= len(body):
        return body, b""
    return body[:n], body[n:]


def pad_rfc4884(original: bytes, unit: int, limit: int) -> bytes:
    """Zero-pad ``original`` to >= 128 bytes and a multiple of ``unit``, cut to ``limit``
    (RFC 4884 §4.1 lets a translator truncate the original datagram to fit)."""
    n = max(len(original), RFC4884_MIN_ORIGINAL)
    n = -(-n // unit) * unit
    if n > limit:
        n = limit - limit % unit
    return original[:n] + bytes(max(0, n - len(original)))


def build_icmp4_error(
    src4: bytes, dst4: bytes, ident: int, icmp_type: int, code: int, rest: int, original: bytes
) -> bytes:
    """A complete IPv4 packet carrying an ICMPv4 error, TTL 64, at most 576 bytes
    (RFC 1812 §4.3.2.3: as much of the original datagram as fits)."""
    body = original[: ICMP4_ERROR_MAX - 28]
    head = ICMP_FULL.pack(icmp_type, code, 0, rest)
    csum = checksum(head + body)
    return (
        build_ipv4(0, 28 + len(body), ident, 0, GENERATED_TTL, PROTO_ICMP, src4, dst4)
        + head[:2]
        + csum.to_bytes(2, "big")
        + head[4:]
        + body
    )


def build_icmp6_error(
    src6: bytes, dst6: bytes, icmp_type: int, code: int, rest: int, original: bytes
) -> bytes:
    """A complete IPv6 packet carrying an ICMPv6 error (RFC 4443 §2.4(c): at most 1280
    bytes), hop limit 64, with the pseudo-header checksum."""
    body = original[: ICMP6_ERROR_MAX - 48]
    length = 8 + len(body)
    head = ICMP_FULL.pack(icmp_type, code, 0, rest)
    csum = checksum(head + body, icmp6_pseudo_sum(src6, dst6, length))
    return (
        IPV6.pack(IPV6_VERSION, length, PROTO_ICMPV6, GENERATED_TTL, src6, dst6)
        + head[:2]
        + csum.to_bytes(2, "big")
        + head[4:]
        + body
    )
