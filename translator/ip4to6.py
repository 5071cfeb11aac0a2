"""IPv4 -> IPv6 translation (RFC 7915 §4) for the reverse NAT64 data plane.

Address mapping:

* source: EAM -> RFC 6052 prefix.  An ICMPv4 error from an untranslatable source (a
  LAN router reporting Fragmentation Needed, say) is sent from the translator's own
  ``ipv6_address`` so path MTU discovery still works; any other untranslatable source
  is dropped as ``SPOOFED_SOURCE`` (no error: the source may be forged).
* destination: pool4 address with an active lease -> that IPv6 client; EAM; RFC 6052
  prefix.  Nothing -> ICMPv4 Destination Unreachable code 1 "host unreachable"
  (``NO_MAPPING``): for a pool4 address without a lease that is literally true, and
  it tells a LAN device at once that its peer is gone instead of letting it retry.

Hairpinning (RFC 7757 §4.2): a destination found in the EAM table names a published
IPv4 device, whose IPv6 address is routed into this very TUN.  Translating it would
only produce a packet that comes straight back and is translated into the original
again; LAN devices reach each other directly.  Such packets are dropped and counted
as ``HAIRPIN`` rather than translated twice.

Size rules (RFC 7915 §4.1): a DF=1 packet whose translation exceeds ``mtu`` gets an
ICMPv4 Fragmentation Needed carrying ``mtu - 20`` (``- 28`` when a Fragment header is
added).  A DF=0 packet whose translation exceeds ``lowest_ipv6_mtu`` is split into
IPv6 fragments of at most ``lowest_ipv6_mtu`` bytes; IPv4 fragments always get a
Fragment header (ID, offset, M copied) and are split further if needed.

Checksums: TCP/UDP adjusted by RFC 1624 from the mappings' deltas (in the first
fragment only; later fragments carry no L4 header).  IPv4 UDP with checksum 0 is
summed in full, or dropped when configured; fragmented ones are always dropped
(RFC 7915 §4.5).  ICMPv4 echo gains the pseudo-header; ICMPv4 errors are rebuilt.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .checksum import add, adjust, checksum, delta, fold, ones_sum
from .headers import (
    FRAG6,
    ICMP4_ERROR_TYPES,
    ICMP6_PACKET_TOO_BIG,
    ICMP_FULL,
    IPOPT_EOL,
    IPOPT_LSRR,
    IPOPT_NOP,
    IPOPT_SSRR,
    IPV4,
    IPV4_DF,
    IPV4_MF,
    IPV4_OFFSET_MASK,
    IPV6,
    IPV6_MIN_MTU,
    IPV6_VERSION,
    PROTO_FRAGMENT,
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_IGMP,
    PROTO_TCP,
    PROTO_UDP,
    TCP_CHECKSUM_OFFSET,
    U16,
    U32,
    UDP_CHECKSUM_OFFSET,
    splice_u16,
)
from .icmp import (
    ECHO_4_TO_6,
    ICMP4_TO_6,
    ICMP6_ERROR_MAX,
    KIND_MTU,
    KIND_NEXT_HDR,
    KIND_POINTER,
    POINTER_4_TO_6,
    RFC4884_TYPES_4,
    RFC4884_TYPES_6,
    adjust_inner_checksum,
    icmp6_pseudo_sum,
    pad_rfc4884,
    plateau_below,
    split_rfc4884,
    translate_echo,
)
from .verdict import DROP_MALFORMED, Action, DropReason, Verdict, drop

if TYPE_CHECKING:
    from .engine import Translator

_FORWARD = Action.FORWARD
_NONE = DropReason.NONE
IPV6_NEXT_HEADER_OFFSET = 6


def has_source_route(pkt: bytes, ihl: int) -> bool:
    """RFC 7915 §4.1: is there an unexpired LSRR/SSRR option (RFC 791 §3.1)?"""
    i = 20
    while i < ihl:
        opt = pkt[i]
        if opt == IPOPT_EOL:
            break
        if opt == IPOPT_NOP:
            i += 1
            continue
        length = pkt[i + 1]
        if length < 2:
            return False  # broken options are ignored like all options
        if opt in (IPOPT_LSRR, IPOPT_SSRR) and length >= 3 and pkt[i + 2] + 3 <= length:
            return True  # the pointer still names an address to visit
        i += length
    return False


def translate_4to6(tr: Translator, pkt: bytes, now: float) -> Verdict:
    """Translate one IPv4 packet (see module docstring)."""
    vihl, tos, total, ident, flags, ttl, proto, _c, src4, dst4 = IPV4.unpack_from(pkt, 0)
    ihl = (vihl & 0x0F) << 2
    if ihl < 20 or total < ihl or total > len(pkt):
        return DROP_MALFORMED
    offset = flags & IPV4_OFFSET_MASK
    more = flags & IPV4_MF
    fragmented = bool(offset or more)
    plen = total - ihl
    # Only ICMP needs its payload as bytes: TCP and UDP keep theirs in ``pkt``
    # until the output is spliced (one copy, see headers.splice_u16).
    payload = b""
    is_error = False
    if proto == PROTO_ICMP:
        payload = pkt[ihl:total]
        if fragmented:
            return drop(DropReason.FRAGMENTED_ICMP)
        is_error = payload[0] in ICMP4_ERROR_TYPES
    elif proto == PROTO_ICMPV6 or proto == PROTO_IGMP:
        # RFC 7915 §4.2: IGMP messages are single-hop and SHOULD be silently dropped.
        return drop(DropReason.UNSUPPORTED_PROTOCOL)
    if ihl > 20 and has_source_route(pkt, ihl):
        # RFC 7915 §4.1: unexpired source route -> Destination Unreachable code 5.
        return tr.error(pkt[:total], now, 3, 5, 0, DropReason.SOURCE_ROUTE, -1, is_error)

    tables = tr._tables
    msrc = tables.lookup4(src4)
    if msrc is not None:
        src6, sdelta, index = msrc
    elif is_error:
        src6 = tr.ipv6_packed
        sdelta = delta(src6, src4)
        index = -1
    else:
        return drop(DropReason.SPOOFED_SOURCE)

    lease = tr.pool.lookup4(dst4, now)
    if lease is not None:
        dst6 = lease.v6
        ddelta = lease.delta
    else:
        # A pool4 address without an active lease names nobody, whatever the prefix says.
        mdst = None if tr.pool.contains4(dst4) else tables.lookup4(dst4)
        if mdst is None:
            return tr.error(pkt[:total], now, 3, 1, 0, DropReason.NO_MAPPING, index, is_error)
        if mdst[2] >= 0:
            return drop(DropReason.HAIRPIN, index)
        dst6, ddelta, _ = mdst
    if ttl <= 1:
        # RFC 7915 §4.1: the translator is a router; Time Exceeded code 0.
        return tr.error(pkt[:total], now, 11, 0, 0, DropReason.TTL_EXCEEDED, index, is_error)
    if is_error:
        return translate_icmp4_error(tr, payload, src6, dst6, index, tos, ttl)

    nh = proto
    csum_at = -1  # where in pkt the new TCP/UDP checksum ``csum`` goes, if anywhere
    csum = 0
    if not offset:
        if proto == PROTO_TCP:
            if plen < 18:
                return DROP_MALFORMED
            csum_at = ihl + TCP_CHECKSUM_OFFSET
            csum = adjust(U16.unpack_from(pkt, csum_at)[0], add(sdelta, ddelta))
        elif proto == PROTO_UDP:
            if plen < 8:
                return DROP_MALFORMED
            c = U16.unpack_from(pkt, ihl + UDP_CHECKSUM_OFFSET)[0]
            if c:
                c = adjust(c, add(sdelta, ddelta)) or 0xFFFF
            elif fragmented:
                # RFC 7915 §4.5: the whole datagram is not here to sum.
                return drop(DropReason.FRAGMENTED_UDP_ZERO_CHECKSUM, index)
            elif not tr.udp_compute:
                return drop(DropReason.UDP_ZERO_CHECKSUM, index)
            else:
                # RFC 7915 §4.5: IPv6 forbids a zero UDP checksum (RFC 8200 §8.1).
                pseudo = fold(ones_sum(src6 + dst6) + plen + PROTO_UDP)
                c = checksum(pkt[ihl:total], pseudo) or 0xFFFF
            csum_at = ihl + UDP_CHECKSUM_OFFSET
            csum = c
        elif proto == PROTO_ICMP:
            # RFC 7915 §4.2: Echo (8/0) -> 128/129 with the pseudo-header added; other
            # informational messages have no IPv6 equivalent: silently dropped.
            t6 = ECHO_4_TO_6.get(payload[0])
            if t6 is None:
                return drop(DropReason.UNSUPPORTED_ICMP, index)
            payload = translate_echo(payload, t6, icmp6_pseudo_sum(src6, dst6, len(payload)))
            nh = PROTO_ICMPV6

    # RFC 7915 §4.1: Traffic Class = TOS, Flow Label 0, Hop Limit = TTL - 1.
    first_word = IPV6_VERSION | tos << 20
    hlim = ttl - 1
    size = 40 + plen + (8 if fragmented else 0)
    if flags & IPV4_DF:
        if size > tr.mtu:
            # RFC 1191 / RFC 7915 §4.1: report the IPv4-equivalent of the IPv6 MTU.
            mtu4 = tr.mtu - (size - plen - 20)
            return tr.error(pkt[:total], now, 3, 4, mtu4, DropReason.FRAG_NEEDED, index, False)
    elif size > tr.lowest_ipv6_mtu:
        if csum_at >= 0:
            payload = splice_u16(b"", pkt, ihl, csum_at, csum, total)
        elif proto != PROTO_ICMP:
            payload = pkt[ihl:total]
        return Verdict(
            _FORWARD,
            build_fragments(
                tr, first_word, nh, hlim, src6, dst6, payload, ident, offset << 3, bool(more)
            ),
            _NONE,
            index,
        )
    if fragmented:
        # RFC 7915 §4.1: Fragment header: ID = IPv4 ID (high 16 bits zero), offset and
        # M copied from the IPv4 header.
        header = IPV6.pack(first_word, plen + 8, PROTO_FRAGMENT, hlim, src6, dst6) + FRAG6.pack(
            nh, 0, offset << 3 | (1 if more else 0), ident
        )
    else:
        header = IPV6.pack(first_word, plen, nh, hlim, src6, dst6)
    if csum_at >= 0:
        out = splice_u16(header, pkt, ihl, csum_at, csum, total)
    else:
        out = header + (payload if proto == PROTO_ICMP else pkt[ihl:total])
    return Verdict(_FORWARD, (out,), _NONE, index)


def build_fragments(
    tr: Translator,
    first_word: int,
    nh: int,
    hlim: int,
    src6: bytes,
    dst6: bytes,
    payload: bytes,
    ident: int,
    base: int,
    more: bool,
) -> tuple[bytes, ...]:
    """RFC 7915 §4.1: split into IPv6 fragments of at most lowest_ipv6_mtu bytes.

    ``base`` is the byte offset of ``payload`` in the original datagram; the last
    piece keeps the IPv4 packet's own MF."""
    step = (tr.lowest_ipv6_mtu - 48) & ~7
    out = []
    n = len(payload)
    pos = 0
    while pos < n:
        chunk = payload[pos : pos + step]
        m = 1 if (pos + step < n or more) else 0
        out.append(
            IPV6.pack(first_word, len(chunk) + 8, PROTO_FRAGMENT, hlim, src6, dst6)
            + FRAG6.pack(nh, 0, (base + pos) | m, ident)
            + chunk
        )
        pos += step
    return tuple(out)


def _map_inner4(tr: Translator, a4: bytes) -> tuple[bytes, int] | None:
    lease = tr.pool.peek4(a4)
    if lease is not None:
        return lease.v6, lease.delta
    if tr.pool.contains4(a4):
        return None
    m = tr._tables.lookup4(a4)
    if m is not None:
        return m[0], m[1]
    return None


def translate_inner_4to6(tr: Translator, inner: bytes) -> tuple[bytes, bool] | None:
    """RFC 7915 §4.3: translate the (possibly truncated) IPv4 packet inside an ICMPv4
    error.  Returns (IPv6 packet, has Fragment header) or None if untranslatable."""
    if len(inner) < 20:
        return None
    vihl, tos, total, ident, flags, ttl, proto, _c, s4, d4 = IPV4.unpack_from(inner, 0)
    ihl = (vihl & 0x0F) << 2
    if vihl >> 4 != 4 or ihl < 20 or total < ihl or len(inner) < ihl:
        return None
    ms = _map_inner4(tr, s4)
    md = _map_inner4(tr, d4)
    if ms is None or md is None:
        return None
    l4len = total - ihl
    payload = inner[ihl:total]
    offset = flags & IPV4_OFFSET_MASK
    more = flags & IPV4_MF
    nh = PROTO_ICMPV6 if proto == PROTO_ICMP else proto
    if not offset:
        if proto != PROTO_ICMP:
            payload = adjust_inner_checksum(proto, payload, add(ms[1], md[1]))
        elif len(payload) >= 4:
            t6 = ECHO_4_TO_6.get(payload[0])
            if t6 is None:  # an error about an error
                return None
            payload = translate_echo(payload, t6, icmp6_pseudo_sum(ms[0], md[0], l4len))
    first_word = IPV6_VERSION | tos << 20
    if offset or more:
        header = IPV6.pack(first_word, l4len + 8, PROTO_FRAGMENT, ttl, ms[0], md[0]) + FRAG6.pack(
            nh, 0, offset << 3 | (1 if more else 0), ident
        )
        return header + payload, True
    return IPV6.pack(first_word, l4len, nh, ttl, ms[0], md[0]) + payload, False


def translate_icmp4_error(
    tr: Translator,
    payload: bytes,
    src6: bytes,
    dst6: bytes,
    index: int,
    tos: int,
    ttl: int,
) -> Verdict:
    """RFC 7915 §4.2/§4.3: ICMPv4 error -> ICMPv6 error with its inner packet translated."""
    if ones_sum(payload) != 0xFFFF:  # rebuilt below, so verify first
        return drop(DropReason.BAD_CHECKSUM, index)
    itype, icode, _c, word = ICMP_FULL.unpack_from(payload, 0)
    row = ICMP4_TO_6.get((itype, icode))
    if row is None:
        return drop(DropReason.UNSUPPORTED_ICMP, index)
    t6, c6, kind = row
    body = payload[8:]
    if itype in RFC4884_TYPES_4:
        original, ext = split_rfc4884(body, payload[5], 4)
    else:
        original, ext = body, b""
    got = translate_inner_4to6(tr, original)
    if got is None:
        return drop(DropReason.ICMP_INNER_UNTRANSLATABLE, index)
    inner, has_frag = got
    rest = 0
    if kind == KIND_POINTER:
        # RFC 7915 §4.2 Figure 3; pointers with no IPv6 equivalent: drop.
        p6 = POINTER_4_TO_6.get(payload[4])
        if p6 is None:
            return drop(DropReason.UNSUPPORTED_ICMP, index)
        rest = p6
    elif kind == KIND_NEXT_HDR:
        rest = IPV6_NEXT_HEADER_OFFSET  # RFC 7915 §4.2: point at the Next Header field
    elif kind == KIND_MTU:
        # RFC 7915 §4.2: minimum(MTU + 20, IPv6 next-hop MTU, IPv4 next-hop MTU + 20),
        # +28 when the packet in error gets a Fragment header; MTU 0 means a pre-RFC
        # 1191 router: use the plateau below the packet's Total Length.  Raised to
        # 1280, since IPv6 hosts ignore anything smaller (RFC 8201 §4).
        grow = 28 if has_frag else 20
        mtu4 = word & 0xFFFF
        if mtu4 == 0:
            mtu4 = plateau_below(U16.unpack_from(original, 2)[0])
        rest = max(min(mtu4 + grow, tr.mtu), IPV6_MIN_MTU)
    if ext and t6 in RFC4884_TYPES_6 and t6 != ICMP6_PACKET_TOO_BIG:
        # RFC 4884 §4.1: padded to 64-bit words, >= 128 bytes, length at byte 4.
        room = ICMP6_ERROR_MAX - 48 - len(ext)
        if room >= 128:
            inner = pad_rfc4884(inner, 8, room)
            rest |= (len(inner) // 8) << 24
            body = inner + ext
        else:
            body = inner
    else:
        body = inner
    body = body[: ICMP6_ERROR_MAX - 48]  # RFC 7915 §4.2: the result fits 1280 bytes
    length = 8 + len(body)
    head = ICMP_FULL.pack(t6, c6, 0, rest)
    csum = checksum(head + body, icmp6_pseudo_sum(src6, dst6, length))
    packet = (
        IPV6.pack(IPV6_VERSION | tos << 20, length, PROTO_ICMPV6, ttl - 1, src6, dst6)
        + head[:2]
        + U16.pack(csum)
        + U32.pack(rest)
        + body
    )
    if index < 0:
        # From an IPv4 host no mapping covers (a LAN router's Fragmentation Needed):
        # counted under the mapping the packet in error was for, not as prefix traffic.
        index = inner_destination_mapping(tr, original)
    return Verdict(_FORWARD, (packet,), _NONE, index)


def inner_destination_mapping(tr: Translator, original: bytes) -> int:
    """The EAM index of the inner packet's IPv4 destination; -1 for none.  The
    packet in error went from a client (a pool4 or prefix address) towards it.
    Called only after translate_inner_4to6 accepted ``original``, so its header is whole."""
    m = tr._tables.lookup4(original[16:20])
    return m[2] if m is not None else -1
