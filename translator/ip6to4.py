"""IPv6 -> IPv4 translation (RFC 7915 §5) for the reverse NAT64 data plane.

Address mapping (who the IPv6 packet is for, who it is from):

* destination: EAM (longest prefix) -> RFC 6052 prefix -> ICMPv6 Destination
  Unreachable code 3 "address unreachable" (``NO_MAPPING``);
* source: existing pool lease -> new pool lease.  A source the tables translate (an
  EAM entry's IPv6 side, the RFC 6052 prefix) is forged (``SPOOFED_SOURCE``): the
  daemon routes every one of them into the TUN, so no host on the IPv6 side has one,
  and translated it would reach the LAN as a packet from one of the LAN's own hosts
  (a LAND packet, or one from another LAN host, which IP-based access lists trust).  A refused
  lease answers ICMPv6 Destination Unreachable code 1 "administratively prohibited"
  for ``POOL_EXHAUSTED`` (RFC 7915 §5.4's default code: the client did nothing wrong,
  the translator is out of resources) and code 5 "source address failed
  ingress/egress policy" for ``LEASE_LIMIT`` (RFC 4443 §3.1: this source is refused by
  policy, which is exactly what a per-prefix limit is).
* ICMPv6 errors never allocate a lease: their source is mapped by an existing lease,
  else an address from ``rfc6791_pool4`` chosen by hashing the IPv6 source (RFC 6791
  §4), so the IPv4 host still learns e.g. its path MTU.  A source the tables
  translate is forged here too.

Guards: a prefix destination whose IPv4 form lies inside pool4 would loop straight
back into the translator, and one whose IPv4 form is an EAM entry's names a
published device by a second address its replies never come from (``HAIRPIN``;
RFC 7757 §4 would hairpin both).  Sources that can never be routed here
(multicast, unspecified, loopback, link-local) are ``SPOOFED_SOURCE`` too and get
no lease.

Header rules live on the branches below with their section numbers.  TCP/UDP
checksums are adjusted with RFC 1624 from the mappings' precomputed deltas; ICMPv6
echo is adjusted for the type change and the pseudo-header removal; ICMPv6 errors
are rebuilt (inner packet translated, checksum summed in full after verifying the
original).
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from .checksum import add, adjust, checksum, neg, ones_sum
from .headers import (
    FRAG6,
    FRAG6_M,
    FRAG6_OFFSET_MASK,
    ICMP6_DEST_UNREACH,
    ICMP6_INFO_MIN,
    ICMP6_PARAM_PROBLEM,
    ICMP6_TIME_EXCEEDED,
    ICMP_FULL,
    IPV4_DF,
    IPV4_MF,
    IPV6,
    IPV6_MAX_EXTENSIONS,
    IPV6_SKIPPED_EXTENSIONS,
    PROTO_FRAGMENT,
    PROTO_HOPOPTS,
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_ROUTING,
    PROTO_TCP,
    PROTO_UDP,
    ROUTING_SEGMENTS_LEFT_OFFSET,
    TCP_CHECKSUM_OFFSET,
    U16,
    U32,
    UDP_CHECKSUM_OFFSET,
    build_ipv4,
    splice_u16,
)
from .icmp import (
    ECHO_6_TO_4,
    ICMP6_TO_4,
    KIND_MTU,
    KIND_POINTER,
    POINTER_6_TO_4,
    RFC4884_MAX_ORIGINAL4,
    RFC4884_TYPES_4,
    RFC4884_TYPES_6,
    adjust_inner_checksum,
    icmp6_pseudo_sum,
    pad_rfc4884,
    split_rfc4884,
    translate_echo,
)
from .verdict import DROP_MALFORMED, Action, DropReason, Verdict, drop

if TYPE_CHECKING:
    from .engine import Translator

# RFC 7915 §5.1: DF is set only on translated packets larger than 1260 bytes, which
# leaves IPv4 routers free to fragment anything an IPv6 host may send at 1280.
DF_THRESHOLD = 1260
# The IPv4 MTU reported for an IPv6 Packet Too Big is never below 1260: IPv6 links
# carry 1280 (RFC 8200 §5) and hosts ignore smaller PTBs (RFC 8201 §4).
MIN_REPORTED_MTU4 = 1260

_FORWARD = Action.FORWARD
_NONE = DropReason.NONE
_EXTENSIONS = IPV6_SKIPPED_EXTENSIONS | {PROTO_FRAGMENT}


def acceptable_source6(a6: bytes) -> bool:
    """False for sources no translated packet may carry: multicast, ::, ::1, fe80::/10."""
    b0 = a6[0]
    if b0 == 0xFF or (b0 == 0xFE and a6[1] & 0xC0 == 0x80):
        return False
    if b0 == 0 and not any(a6[1:15]) and a6[15] <= 1:
        return False
    return True


def walk_extensions(pkt: bytes, end: int) -> tuple[int, int, int, int, int]:
    """Skip IPv6 extension headers (RFC 7915 §5.1).

    Returns (upper protocol, upper offset, fragment field or -1, fragment ident,
    offset of the first non-zero Segments Left byte or -1).  The walk goes on past
    such a Routing header, so that the caller knows whether the packet it must
    refuse is an ICMPv6 error (never answered, RFC 4443 §2.4(e)).  Raises
    IndexError/ValueError/struct.error on truncation or nonsense, which the
    caller maps to MALFORMED.
    """
    proto = pkt[6]
    off = 40
    frag = -1
    ident = 0
    segments_left = -1
    for _ in range(IPV6_MAX_EXTENSIONS):
        if proto in IPV6_SKIPPED_EXTENSIONS:
            if proto == PROTO_HOPOPTS and off != 40:  # RFC 8200 §4.1: only first
                raise ValueError("hop-by-hop not first")
            if off + 8 > end:
                raise ValueError("truncated extension header")
            if (
                proto == PROTO_ROUTING
                and segments_left < 0
                and pkt[off + ROUTING_SEGMENTS_LEFT_OFFSET]
            ):
                segments_left = off + ROUTING_SEGMENTS_LEFT_OFFSET
            proto, hlen = pkt[off], (pkt[off + 1] + 1) << 3
            off += hlen
        elif proto == PROTO_FRAGMENT:
            if frag >= 0 or off + 8 > end:
                raise ValueError("second or truncated fragment header")
            proto, _res, frag, ident = FRAG6.unpack_from(pkt, off)
            off += 8
            if frag & FRAG6_OFFSET_MASK or proto in _EXTENSIONS:
                # A non-first fragment: the rest is payload. An extension header
                # after the Fragment header is part of the fragmented data, so
                # skipping it here would shift every offset: the caller drops it.
                break
        else:
            break
    else:
        raise ValueError("too many extension headers")
    if off > end:
        raise ValueError("extension headers overrun payload")
    return proto, off, frag, ident, segments_left


def translate_6to4(tr: Translator, pkt: bytes, now: float) -> Verdict:
    """Translate one IPv6 packet (see module docstring)."""
    vtcfl, plen, _nh, hlim, src6, dst6 = IPV6.unpack_from(pkt, 0)
    end = 40 + plen
    if plen == 0 or end > len(pkt):  # plen 0: jumbogram or empty, neither translatable
        return DROP_MALFORMED
    proto = pkt[6]
    if proto in _EXTENSIONS:
        proto, off, frag, fident, segments_left = walk_extensions(pkt, end)
        if proto in _EXTENSIONS and segments_left < 0:
            # An extension header behind a Fragment header: RFC 7915 has no
            # stateless translation for it (the IPv4 fragments would not reassemble).
            return drop(DropReason.UNSUPPORTED_PROTOCOL)
    else:  # no extension headers: the common case skips the walk
        off, frag, fident, segments_left = 40, -1, 0, -1
    if segments_left >= 0:
        # RFC 7915 §5.1: Routing header with Segments Left != 0 -> Parameter Problem
        # code 0 pointing at the Segments Left field (unless it carries an error).
        carries_error = (
            proto == PROTO_ICMPV6
            and off < end
            and (frag < 0 or not frag & FRAG6_OFFSET_MASK)
            and pkt[off] < ICMP6_INFO_MIN
        )
        return tr.error(
            pkt[:end],
            now,
            ICMP6_PARAM_PROBLEM,
            0,
            segments_left,
            DropReason.ROUTING_HEADER,
            -1,
            carries_error,
        )
    first = frag < 0 or not frag & FRAG6_OFFSET_MASK
    fragmented = frag >= 0 and frag & (FRAG6_OFFSET_MASK | FRAG6_M) != 0
    # Only ICMPv6 needs its payload as bytes: TCP and UDP keep theirs in ``pkt``
    # until the output is spliced (one copy, see headers.splice_u16).
    payload = b""
    is_error = False
    if proto == PROTO_ICMPV6:
        payload = pkt[off:end]
        if fragmented:
            return drop(DropReason.FRAGMENTED_ICMP)
        is_error = payload[0] < ICMP6_INFO_MIN
    elif proto == PROTO_ICMP:
        return drop(DropReason.UNSUPPORTED_PROTOCOL)

    tables = tr._tables
    mdst = tables.lookup6(dst6)
    if mdst is None:
        # RFC 7915 §5.4 / RFC 4443 §3.1 code 3: no IPv4 form for this destination.
        return tr.error(
            pkt[:end], now, ICMP6_DEST_UNREACH, 3, 0, DropReason.NO_MAPPING, -1, is_error
        )
    dst4, ddelta, index = mdst
    if index < 0 and (tr.pool.contains4(dst4) or tables.lookup_eam4(dst4) is not None):
        # A prefix form of a pool4 address would loop straight back in; one of an
        # EAM'd address names a published device the other way round (RFC 7757 §4
        # would hairpin it; its replies come from its EAM address, not this one).
        return drop(DropReason.HAIRPIN, index)
    if proto == PROTO_ICMPV6 and not is_error and payload[0] not in ECHO_6_TO_4:
        # RFC 7915 §5.2: only Echo Request/Reply have IPv4 equivalents; MLD, ND and
        # unknown informational messages are silently dropped (before any lease).
        return drop(DropReason.UNSUPPORTED_ICMP, index)
    if hlim <= 1:
        # RFC 7915 §5.1 Hop Limit: the translator is a router (RFC 4443 §3.3 code 0).
        return tr.error(
            pkt[:end],
            now,
            ICMP6_TIME_EXCEEDED,
            0,
            0,
            DropReason.HOP_LIMIT_EXCEEDED,
            index,
            is_error,
        )
    if is_error:
        return translate_icmp6_error(tr, pkt, payload, src6, dst6, dst4, index, hlim, vtcfl)

    # The lease table is probed first: it is the common case (internet clients) and
    # cannot disagree with the tables, because a table swap releases every lease the
    # new tables map (Translator.tables setter), so EAM -> prefix -> pool still holds.
    lease = tr.pool.lookup6(src6, now)
    if lease is not None:
        src4 = lease.v4
        sdelta = lease.delta
    else:
        if tables.lookup6(src6) is not None or not acceptable_source6(src6):
            # The tables' IPv6 addresses (EAM, the RFC 6052 prefix) are all routed
            # into this translator, so no host on the IPv6 side has one: translated,
            # it would give the LAN a packet from one of its own hosts.
            return drop(DropReason.SPOOFED_SOURCE, index)
        got = tr.pool.allocate(src6, now)
        if got is DropReason.POOL_EXHAUSTED:
            return tr.error(pkt[:end], now, ICMP6_DEST_UNREACH, 1, 0, got, index, False)
        if isinstance(got, DropReason):
            return tr.error(pkt[:end], now, ICMP6_DEST_UNREACH, 5, 0, got, index, False)
        src4 = got.v4
        sdelta = got.delta

    proto4 = proto
    csum_at = -1  # where in pkt the new TCP/UDP checksum ``csum`` goes, if anywhere
    csum = 0
    if first:
        if proto == PROTO_TCP:
            if end - off < 18:
                return DROP_MALFORMED
            # RFC 7915 §5.5: only the pseudo-header addresses change.
            csum_at = off + TCP_CHECKSUM_OFFSET
            csum = adjust(U16.unpack_from(pkt, csum_at)[0], neg(add(sdelta, ddelta)))
        elif proto == PROTO_UDP:
            if end - off < 8:
                return DROP_MALFORMED
            c = U16.unpack_from(pkt, off + UDP_CHECKSUM_OFFSET)[0]
            if c:
                csum_at = off + UDP_CHECKSUM_OFFSET
                csum = adjust(c, neg(add(sdelta, ddelta))) or 0xFFFF
        elif proto == PROTO_ICMPV6:
            # RFC 7915 §5.2: Echo Request/Reply (128/129) -> 8/0; the checksum loses the
            # pseudo-header and takes the type change.
            pseudo = icmp6_pseudo_sum(src6, dst6, len(payload))
            payload = translate_echo(payload, ECHO_6_TO_4[payload[0]], neg(pseudo))
            proto4 = PROTO_ICMP
    elif proto == PROTO_ICMPV6:
        proto4 = PROTO_ICMP

    total = 20 + end - off
    if frag >= 0:
        # RFC 7915 §5.1.1: Identification = low 16 bits of the Fragment header's,
        # offset and M copied, DF = 0.
        ident = fident & 0xFFFF
        flags = frag >> 3 | (IPV4_MF if frag & FRAG6_M else 0)
    elif total > DF_THRESHOLD:
        # RFC 7915 §5.1 DF rule; RFC 6864 §4.1: an atomic datagram's ID may be anything.
        ident = 0
        flags = IPV4_DF
    else:
        ident = tr.next_ident()
        flags = 0
    header = build_ipv4(vtcfl >> 20 & 0xFF, total, ident, flags, hlim - 1, proto4, src4, dst4)
    if csum_at >= 0:
        out = splice_u16(header, pkt, off, csum_at, csum, end)
    else:
        out = header + (payload if proto == PROTO_ICMPV6 else pkt[off:end])
    return Verdict(_FORWARD, (out,), _NONE, index)


def _map_inner6(tr: Translator, a6: bytes) -> tuple[bytes, int] | None:
    m = tr._tables.lookup6(a6)
    if m is not None:
        return m[0], m[1]
    lease = tr.pool.peek6(a6)
    if lease is not None:
        return lease.v4, lease.delta
    return None


def translate_inner_6to4(tr: Translator, inner: bytes) -> bytes | None:
    """RFC 7915 §5.3: translate the (possibly truncated) IPv6 packet inside an ICMPv6
    error.  Lengths come from the inner header, the hop limit is not decremented,
    L4 checksums are adjusted when their field is present.  None if untranslatable."""
    if len(inner) < 40:
        return None
    vtcfl, plen, _nh, hlim, s6, d6 = IPV6.unpack_from(inner, 0)
    if vtcfl >> 28 != 6:
        return None
    try:
        proto, off, frag, fident, segments_left = walk_extensions(inner, len(inner))
    except (ValueError, IndexError, struct.error):
        return None
    if segments_left >= 0:  # we never forward such a packet, so no error can be about one
        return None
    ms = _map_inner6(tr, s6)
    md = _map_inner6(tr, d6)
    if ms is None or md is None:
        return None
    l4len = plen - (off - 40)
    if l4len < 0:
        return None
    payload = inner[off : off + l4len]
    first = frag < 0 or not frag & FRAG6_OFFSET_MASK
    proto4 = PROTO_ICMP if proto == PROTO_ICMPV6 else proto
    if first:
        if proto != PROTO_ICMPV6:
            payload = adjust_inner_checksum(proto, payload, neg(add(ms[1], md[1])))
        elif len(payload) >= 4:
            t4 = ECHO_6_TO_4.get(payload[0])
            if t4 is None:  # an error about an error: never legitimately generated
                return None
            payload = translate_echo(payload, t4, neg(icmp6_pseudo_sum(s6, d6, l4len)))
    total = 20 + l4len
    if frag >= 0:
        ident = fident & 0xFFFF
        flags = frag >> 3 | (IPV4_MF if frag & FRAG6_M else 0)
    else:
        ident = 0
        flags = IPV4_DF if total > DF_THRESHOLD else 0
    return build_ipv4(vtcfl >> 20 & 0xFF, total, ident, flags, hlim, proto4, ms[0], md[0]) + payload


def translate_icmp6_error(
    tr: Translator,
    pkt: bytes,
    payload: bytes,
    src6: bytes,
    dst6: bytes,
    dst4: bytes,
    index: int,
    hlim: int,
    vtcfl: int,
) -> Verdict:
    """RFC 7915 §5.2/§5.3: ICMPv6 error -> ICMPv4 error with its inner packet translated."""
    # The message is rebuilt and re-summed, so a corrupt one must not be laundered.
    if add(ones_sum(payload), icmp6_pseudo_sum(src6, dst6, len(payload))) != 0xFFFF:
        return drop(DropReason.BAD_CHECKSUM, index)
    itype, icode, _c, word = ICMP_FULL.unpack_from(payload, 0)
    row = ICMP6_TO_4.get((itype, icode))
    if row is None:
        return drop(DropReason.UNSUPPORTED_ICMP, index)
    t4, c4, kind = row
    rest = 0
    if kind == KIND_POINTER:
        # RFC 7915 §5.2 Figure 6; pointers with no IPv4 equivalent: drop.
        p4 = POINTER_6_TO_4.get(word)
        if p4 is None:
            return drop(DropReason.UNSUPPORTED_ICMP, index)
        rest = p4 << 24
    elif kind == KIND_MTU:
        # RFC 7915 §5.2: minimum(advertised MTU - 20, IPv4 next-hop MTU, IPv6 next-hop
        # MTU - 20); both next hops are the TUN here.
        rest = max(min(word, tr.mtu) - 20, MIN_REPORTED_MTU4) & 0xFFFF
    body = payload[8:]
    if itype in RFC4884_TYPES_6:
        original, ext = split_rfc4884(body, payload[4], 8)
    else:
        original, ext = body, b""
    inner = translate_inner_6to4(tr, original)
    if inner is None:
        return drop(DropReason.ICMP_INNER_UNTRANSLATABLE, index)
    if ext and t4 in RFC4884_TYPES_4:
        # RFC 4884 §4.1, RFC 7915 §5.2: original datagram padded to a 32-bit boundary
        # and >= 128 bytes, length attribute in 32-bit words at byte 5.
        inner = pad_rfc4884(inner, 4, RFC4884_MAX_ORIGINAL4)
        rest |= (len(inner) // 4) << 16
        body = inner + ext
    else:
        body = inner

    if tr._tables.lookup6(src6) is not None:
        return drop(DropReason.SPOOFED_SOURCE, index)  # as for any packet (above)
    lease = tr.pool.peek6(src6)
    src4 = lease.v4 if lease is not None else tr.rfc6791_address(src6)
    head = ICMP_FULL.pack(t4, c4, 0, rest)
    csum = checksum(head + body)
    msg = head[:2] + U16.pack(csum) + U32.pack(rest) + body
    total = 20 + len(msg)
    if total > DF_THRESHOLD:
        ident, flags = 0, IPV4_DF
    else:
        ident, flags = tr.next_ident(), 0
    header = build_ipv4(vtcfl >> 20 & 0xFF, total, ident, flags, hlim - 1, PROTO_ICMP, src4, dst4)
    return Verdict(_FORWARD, (header + msg,), _NONE, index)
