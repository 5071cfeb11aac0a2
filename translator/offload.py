"""virtio-net headers: TUN offloads around the sans-IO core.

With ``IFF_VNET_HDR`` and ``TUNSETOFFLOAD`` the kernel hands the translator
TCP "super-packets" of up to 64 KiB (one translation instead of ~40) and
leaves TCP/UDP checksums *partial*: the L4 checksum field then holds the
folded pseudo-header sum, not a finished checksum, and whoever transmits
the packet completes it (``VIRTIO_NET_HDR_F_NEEDS_CSUM``).

The core only knows finished checksums, so this module wraps it:

* A partial field ``S`` is complemented before translation.  RFC 1624's
  update ``HC' = ~(~HC + m' - m)`` applied to ``~S`` yields ``~(S + m' - m)``;
  complementing the result again gives exactly the partial seed the kernel
  expects for the new addresses, ``S + m' - m`` (see docs/performance.md).
  The per-mapping precomputed deltas of the core are reused unchanged.
* Where the core must *see* a finished checksum (an IPv4 packet it will
  fragment, a UDP seed that would read as "no checksum"), the checksum is
  completed in software first and the packet leaves as an ordinary one.
* The header's gso_type flips between TCPV4 and TCPV6 (ECN bit kept); a UDP
  super-packet (``GSO_UDP_L4``, USO) keeps its type.  csum_start/hdr_len move
  with the IP header length; gso_size is unchanged.
* A UDP super-packet (what GRO forwarding builds from a burst of datagrams of
  one flow) carries the super-packet's length in its UDP length field and in
  its partial seed; the kernel's USO segmentation swaps that length for each
  segment's (``__udp_gso_segment``).  Only the addresses change the seed, so
  the same complement trick applies.  A seed of 0xFFFF (ones' complement
  zero) is rewritten as 0x0000, the other zero, so that its complement does
  not read as "UDP without checksum" to the core; a super-packet cannot be
  finished in software, it has to stay partial.

Everything here is pure: bytes and integers in, bytes (or views of them) out.
"""

from __future__ import annotations

import struct
from typing import Union

from .checksum import add, checksum, neg, ones_sum
from .headers import IPV6_SKIPPED_EXTENSIONS, U16, splice_u16

VNET_HDR = struct.Struct("<BBHHHH")  # flags, gso_type, hdr_len, gso_size, csum_start, csum_off
VNET_HDR_LEN = VNET_HDR.size  # 10
NO_VNET = bytes(VNET_HDR_LEN)

F_NEEDS_CSUM = 1
F_DATA_VALID = 2
GSO_NONE = 0
GSO_TCPV4 = 1
GSO_UDP = 3
GSO_TCPV6 = 4
GSO_UDP_L4 = 5
GSO_ECN = 0x80

# TUNSETOFFLOAD flags (linux/if_tun.h)
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04
TUN_F_TSO_ECN = 0x08
TUN_F_USO4 = 0x20  # Linux 6.2+; the kernel accepts USO only for both families at once
TUN_F_USO6 = 0x40

UDP_CSUM_OFFSET = 6
SMALL_PACKET = 512  # below this, finishing the checksum in software is the cheaper path
PROTO_TCP = 6
PROTO_UDP = 17
IPV4_DF = 0x4000

_U16 = struct.Struct("!H")

# UDP trains (see udp_train_key): at most this many datagrams per super-packet
# (the kernel's UDP_MAX_SEGMENTS was 64 before Linux 6.10), and only datagrams
# whose translation stays within the smallest size both families must carry
# unfragmented, so coalescing never changes a fragmentation or DF decision.
UDP_TRAIN_MAX = 64
DF_THRESHOLD = 1260  # RFC 7915 §5.1: larger translated IPv4 packets get DF
UDP_TRAIN_MAX_PACKET = DF_THRESHOLD
# And at most this much UDP payload in all: the super-packet's IPv6 form (40 + 8
# bytes of headers) must fit the 16-bit length fields and the TUN's 64 KiB. 64
# datagrams of 1232 bytes would not (QUIC sends 1200-byte runs).
UDP_TRAIN_MAX_PAYLOAD = 65535 - 48


def udp_train_cap(frame: bytes) -> int:
    """How many datagrams like ``frame`` (one with a :func:`udp_train_key`) a train may hold."""
    l4 = VNET_HDR_LEN + (20 if frame[VNET_HDR_LEN] == 0x45 else 40)
    return min(UDP_TRAIN_MAX, UDP_TRAIN_MAX_PAYLOAD // (len(frame) - l4 - 8))


def complete_checksum(pkt: bytes, csum_start: int, csum_offset: int) -> bytes:
    """Finish a partial checksum in software (what a NIC would do).

    The field holds the pseudo-header seed, so the ones' complement sum of
    everything from ``csum_start`` already includes it.
    """
    field = csum_start + csum_offset
    value = ~ones_sum(pkt[csum_start:]) & 0xFFFF
    if value == 0 and csum_offset == UDP_CSUM_OFFSET:
        value = 0xFFFF  # UDP sends a computed zero as all ones (RFC 768)
    return splice_u16(b"", pkt, 0, field, value, len(pkt))


def prepare(frame: bytes, lowest_ipv6_mtu: int) -> tuple[bytes, int, int]:
    """Turn a frame read from the TUN (virtio-net header, then the packet) into
    a packet the core can translate, in one copy of the packet.

    Returns ``(packet, csum_offset, gso)``: ``csum_offset`` is 0 when the packet
    now carries a finished checksum (or none), else the offset of the checksum
    field inside the L4 header, which was complemented and must be complemented
    back in the output by :func:`finish`.  ``gso`` is the header's gso_type.
    """
    flags, gso, _hdr_len, _gso_size, csum_start, csum_offset = VNET_HDR.unpack_from(frame, 0)
    if not flags & F_NEEDS_CSUM or len(frame) < VNET_HDR_LEN + 28:
        # (A "partial" packet too short for any IP + L4 header is left to the
        # core, which drops it as malformed.)
        return frame[VNET_HDR_LEN:], 0, gso
    first = frame[VNET_HDR_LEN]
    if first >> 4 == 4:
        l4, proto = (first & 0x0F) * 4, frame[VNET_HDR_LEN + 9]
    else:
        proto = frame[VNET_HDR_LEN + 6]
        l4 = 40
        if proto in IPV6_SKIPPED_EXTENSIONS:  # rare: only then walk the chain
            l4, proto = upper_layer6(frame, csum_start)
    if csum_start != l4 or proto not in (PROTO_TCP, PROTO_UDP):
        # IPv4 options or IPv6 extension headers: finish here, stay simple.
        return complete_checksum(frame[VNET_HDR_LEN:], csum_start, csum_offset), 0, GSO_NONE
    at = VNET_HDR_LEN + l4 + csum_offset
    if at + 2 > len(frame):
        return frame[VNET_HDR_LEN:], 0, GSO_NONE
    seed = _U16.unpack_from(frame, at)[0]
    if proto == PROTO_UDP and seed == 0xFFFF:
        # Ones' complement zero written the other way: same checksum, and its
        # complement is 0xFFFF, not the 0 that means "no checksum" (RFC 768).
        seed = 0
    if gso == GSO_NONE:
        size = len(frame) - VNET_HDR_LEN
        if size <= SMALL_PACKET:
            # Summing a small packet costs less than complementing the field
            # twice and writing a checksum-offload header (measured: 0.8 vs 1.8 us).
            return complete_checksum(frame[VNET_HDR_LEN:], csum_start, csum_offset), 0, GSO_NONE
        too_big_v4 = (
            first >> 4 == 4
            and not _U16.unpack_from(frame, VNET_HDR_LEN + 6)[0] & IPV4_DF
            and size + 20 > lowest_ipv6_mtu
        )
        if too_big_v4:
            # The core will fragment it: give it a finished checksum instead.
            return complete_checksum(frame[VNET_HDR_LEN:], csum_start, csum_offset), 0, GSO_NONE
    return splice_u16(b"", frame, VNET_HDR_LEN, at, seed ^ 0xFFFF, len(frame)), csum_offset, gso


def upper_layer6(frame: bytes, csum_start: int) -> tuple[int, int]:
    """(offset, protocol) of the upper layer of the IPv6 packet in ``frame``, following
    Hop-by-Hop, Routing and Destination Options headers no further than ``csum_start``.

    GRO merges TCP segments that carry such headers, and the core skips them; a
    super-packet must then keep its offload, or it would leave as one huge packet.
    """
    off, proto = 40, frame[VNET_HDR_LEN + 6]
    while proto in IPV6_SKIPPED_EXTENSIONS and off < csum_start:
        at = VNET_HDR_LEN + off
        if at + 2 > len(frame):
            break
        proto, off = frame[at], off + ((frame[at + 1] + 1) << 3)
    return off, proto


# (typing.Union: a module-level alias is evaluated at run time, and 3.9 has no X | Y.)
Iovec = tuple[Union[bytes, memoryview], ...]


def finish(out: bytes, csum_offset: int, gso: int, gso_size: int) -> Iovec:
    """What to write (``os.writev``) for one translated output packet: the
    virtio-net header, then the packet, in pieces that avoid copying it.

    For a super-packet the header keeps ``gso_size``; TCP flips TCPV4/TCPV6,
    UDP_L4 stays UDP_L4 with ``hdr_len`` = L4 offset + 8.
    """
    if not csum_offset:
        return NO_VNET, out
    if out[0] >> 4 == 4:
        l4 = (out[0] & 0x0F) * 4
        proto = out[9]
        new_gso = (gso & GSO_ECN) | GSO_TCPV4 if gso & 0x7F in (GSO_TCPV4, GSO_TCPV6) else gso
    else:
        l4 = 40
        proto = out[6]
        new_gso = (gso & GSO_ECN) | GSO_TCPV6 if gso & 0x7F in (GSO_TCPV4, GSO_TCPV6) else gso
    if proto not in (PROTO_TCP, PROTO_UDP):
        # The core added an extension header (a fragment header): no offload for it.
        return NO_VNET, out
    field = l4 + csum_offset
    if proto == PROTO_TCP:
        hdr_len = l4 + ((out[l4 + 12] >> 4) * 4)
    else:
        hdr_len = l4 + 8
    if gso == GSO_NONE:
        hdr = VNET_HDR.pack(F_NEEDS_CSUM, GSO_NONE, hdr_len, 0, l4, csum_offset)
    else:
        hdr = VNET_HDR.pack(F_NEEDS_CSUM, new_gso, hdr_len, gso_size, l4, csum_offset)
    # Complement the field back to the partial seed, without copying the packet.
    seed = _U16.pack(_U16.unpack_from(out, field)[0] ^ 0xFFFF)
    view = memoryview(out)
    return hdr, view[:field], seed, view[field + 2 :]


def gso_size_of(frame: bytes) -> int:
    """The gso_size of a frame read from the TUN (virtio-net header first)."""
    return int(VNET_HDR.unpack_from(frame, 0)[3])


def udp_train_key(frame: bytes) -> bytes | None:
    """The key under which ``frame`` may join a train of UDP datagrams, or None.

    Frames with equal keys are datagrams of one flow with identical headers
    but for the IPv4 Identification, and of equal size: :func:`coalesce_udp`
    turns a run of them into one USO super-packet, so a burst of small
    datagrams costs one translation and one write instead of one each (the
    kernel cuts it up again, as GRO forwarding would have on a real NIC).
    Only datagrams with a partial checksum qualify: nobody has computed their
    checksum yet, so merging them loses nothing. No extension headers, IPv4
    options or fragments, and never empty datagrams (a super-packet of them would
    have a segment size of 0, which the kernel refuses).
    """
    n = len(frame)
    if (
        n < VNET_HDR_LEN + 29
        or frame[0] != F_NEEDS_CSUM
        or frame[1] != GSO_NONE
        or frame[7]
        or frame[8] != UDP_CSUM_OFFSET
        or frame[9]
    ):
        return None
    first = frame[VNET_HDR_LEN]
    if first == 0x45:
        # IPv4: total == frame, UDP, no MF/offset, UDP length == total - 20.
        if (
            frame[19] != PROTO_UDP
            or frame[6] != 20
            or frame[16] & 0x3F
            or frame[17]
            or n > VNET_HDR_LEN + UDP_TRAIN_MAX_PACKET - 20
            or _U16.unpack_from(frame, 12)[0] != n - VNET_HDR_LEN
            or _U16.unpack_from(frame, 34)[0] != n - VNET_HDR_LEN - 20
        ):
            return None
        return frame[10:14] + frame[16:20] + frame[22:34]
    if first >> 4 == 6:
        # IPv6: payload length == frame, next header UDP, UDP length == payload length.
        if (
            n < VNET_HDR_LEN + 49
            or frame[16] != PROTO_UDP
            or frame[6] != 40
            or n > VNET_HDR_LEN + UDP_TRAIN_MAX_PACKET + 20
            or _U16.unpack_from(frame, 14)[0] != n - VNET_HDR_LEN - 40
            or frame[54] != frame[14]
            or frame[55] != frame[15]
        ):
            return None
        return frame[10:54]
    return None


def coalesce_udp(frames: list[bytes]) -> bytes:
    """One USO frame (``GSO_UDP_L4``) carrying the datagrams of a UDP train.

    The headers are the first frame's with the lengths of the whole train;
    the partial seed moves with the UDP length (the pseudo-header carries
    it), which is what the kernel's USO segmentation expects
    (``__udp_gso_segment`` swaps it for each segment's).
    """
    first = frames[0]
    v4 = first[VNET_HDR_LEN] == 0x45
    l4 = VNET_HDR_LEN + (20 if v4 else 40)
    segment = len(first) - l4 - 8
    udp_len = 8 + segment * len(frames)
    old_len, seed = struct.unpack_from("!HH", first, l4 + 4)
    seed = add(add(seed, neg(old_len)), udp_len)
    if v4:
        head = first[10:12] + U16.pack(20 + udp_len) + first[14:20] + b"\0\0" + first[22:30]
        ip = head[:10] + U16.pack(checksum(head)) + head[12:]
    else:
        ip = first[10:14] + U16.pack(udp_len) + first[16:50]
    vnet = VNET_HDR.pack(F_NEEDS_CSUM, GSO_UDP_L4, l4 - VNET_HDR_LEN + 8, segment, l4 - 10, 6)
    udp = first[l4 : l4 + 4] + struct.pack("!HH", udp_len, seed)
    return b"".join([vnet, ip, udp, *[f[l4 + 8 :] for f in frames]])


def df_free_segments_v4(out: bytes, gso_size: int) -> int:
    """How many segments the kernel will cut IPv4 super-packet ``out`` into,
    when each is small enough that RFC 7915 §5.1 wants it sent with DF clear
    (at most 1260 bytes, as after a 1280-byte IPv6 path); else 0.

    The core saw one large packet and set DF; a client behind a 1280-byte
    link sends TCP segments (or UDP trains) whose own translations would not.
    """
    if out[0] != 0x45 or gso_size <= 0:
        return 0
    if out[9] == PROTO_TCP:
        hdr_len = 20 + (out[32] >> 4) * 4
    elif out[9] == PROTO_UDP:
        hdr_len = 28
    else:
        return 0
    if hdr_len + gso_size > DF_THRESHOLD or len(out) <= hdr_len:
        return 0
    return -(-(len(out) - hdr_len) // gso_size)


def segment_ids_v4(out: bytes, ident: int) -> bytes:
    """An IPv4 super-packet whose segments all stay within RFC 7915's DF limit:
    DF cleared and the Identification set to ``ident``, which the kernel
    increments per segment (RFC 7915 §5.1, RFC 6864 §4.2), as if each segment
    had been translated on its own. The header checksum is recomputed.
    """
    head = out[:4] + U16.pack(ident) + b"\0\0" + out[8:10] + b"\0\0" + out[12:20]
    return head[:10] + U16.pack(checksum(head)) + head[12:] + out[20:]
