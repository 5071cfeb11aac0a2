"""Wire formats: struct layouts, field offsets and bit masks of IPv4, IPv6 and friends.

Every fixed header is one module-level ``struct.Struct`` so the hot path does a single
``unpack_from`` per header.  Offsets are in bytes from the start of the header they
belong to.  References: RFC 791 (IPv4), RFC 8200 (IPv6), RFC 792/4443 (ICMP),
RFC 793/768 (TCP/UDP).
"""

from __future__ import annotations

import struct

# RFC 791 §3.1: ver_ihl, tos, total_length, identification, flags_fragoff, ttl,
# protocol, header_checksum, source, destination.
IPV4 = struct.Struct("!BBHHHBBH4s4s")
IPV4_LEN = 20
IPV4_DF = 0x4000
IPV4_MF = 0x2000
IPV4_OFFSET_MASK = 0x1FFF
IPV4_VERSION_IHL = 0x45
IPV4_CHECKSUM_OFFSET = 10
IPV4_MIN_MTU = 68

# RFC 791 §3.1 options.
IPOPT_EOL = 0
IPOPT_NOP = 1
IPOPT_LSRR = 131
IPOPT_SSRR = 137

# RFC 8200 §3: version/traffic class/flow label, payload length, next header,
# hop limit, source, destination.
IPV6 = struct.Struct("!IHBB16s16s")
IPV6_LEN = 40
IPV6_MIN_MTU = 1280
IPV6_VERSION = 6 << 28

# RFC 8200 §4.5 Fragment header: next header, reserved, offset(13)|res(2)|M(1), ident.
FRAG6 = struct.Struct("!BBHI")
FRAG6_LEN = 8
FRAG6_OFFSET_MASK = 0xFFF8
FRAG6_M = 0x0001

# RFC 8200 §4.4 Routing header: Segments Left is its fourth byte.
ROUTING_SEGMENTS_LEFT_OFFSET = 3

# Protocol / next-header numbers (IANA).
PROTO_HOPOPTS = 0
PROTO_ICMP = 1
PROTO_IGMP = 2
PROTO_TCP = 6
PROTO_UDP = 17
PROTO_ROUTING = 43
PROTO_FRAGMENT = 44
PROTO_ICMPV6 = 58
PROTO_DSTOPTS = 60

# Extension headers RFC 7915 §5.1 lets the translator skip.
IPV6_SKIPPED_EXTENSIONS = frozenset((PROTO_HOPOPTS, PROTO_ROUTING, PROTO_DSTOPTS))
IPV6_MAX_EXTENSIONS = 8

# Upper-layer checksum field offsets.
TCP_CHECKSUM_OFFSET = 16
UDP_CHECKSUM_OFFSET = 6
UDP_LEN = 8
ICMP_CHECKSUM_OFFSET = 2

# ICMP header: type, code, checksum; then 4 bytes of type-specific "rest of header".
ICMP = struct.Struct("!BBH")
ICMP_LEN = 8
ICMP_FULL = struct.Struct("!BBHI")
U16 = struct.Struct("!H")
U32 = struct.Struct("!I")

ICMP4_ECHO_REPLY = 0
ICMP4_DEST_UNREACH = 3
ICMP4_SOURCE_QUENCH = 4
ICMP4_REDIRECT = 5
ICMP4_ECHO_REQUEST = 8
ICMP4_TIME_EXCEEDED = 11
ICMP4_PARAM_PROBLEM = 12
ICMP4_ERROR_TYPES = frozenset((3, 4, 5, 6, 11, 12, 31))

ICMP6_DEST_UNREACH = 1
ICMP6_PACKET_TOO_BIG = 2
ICMP6_TIME_EXCEEDED = 3
ICMP6_PARAM_PROBLEM = 4
ICMP6_ECHO_REQUEST = 128
ICMP6_ECHO_REPLY = 129
ICMP6_INFO_MIN = 128  # RFC 4443 §2.1: types below 128 are errors.


IPV4_HEAD = struct.Struct("!BBHHHBB")  # the first 10 bytes, up to the checksum

# Payloads at least this long are spliced from a memoryview: slicing bytes copies,
# and a TSO super-packet is up to 64 KiB (a view costs more than a short copy).
SPLICE_VIEW_MIN = 4096


def splice_u16(header: bytes, pkt: bytes, start: int, at: int, value: int, end: int) -> bytes:
    """``header + pkt[start:end]`` with the 16-bit word at ``at`` set to ``value``.

    The translated packet in one copy of the payload, however long: the hot
    path's only change to a TCP/UDP payload is its checksum field.
    """
    if end - at < SPLICE_VIEW_MIN:
        return b"".join((header, pkt[start:at], U16.pack(value), pkt[at + 2 : end]))
    view = memoryview(pkt)
    return b"".join((header, view[start:at], U16.pack(value), view[at + 2 : end]))


def build_ipv4(
    tos: int, total: int, ident: int, flags: int, ttl: int, proto: int, src: bytes, dst: bytes
) -> bytes:
    """A 20-byte IPv4 header without options, with its checksum (RFC 791, RFC 1071).

    The ones' complement sum of the other 18 bytes is one big-integer modulo (see
    ``checksum.ones_sum``); a remainder of 0 means the sum is 0xFFFF, checksum 0.
    """
    head = IPV4_HEAD.pack(IPV4_VERSION_IHL, tos, total, ident, flags, ttl, proto)
    s = int.from_bytes(head + src + dst, "big") % 0xFFFF
    return head + U16.pack(~s & 0xFFFF if s else 0) + src + dst
