"""Address mapping tables: Explicit Address Mappings (RFC 7757) and an RFC 6052 prefix.

``Tables`` is immutable and built once per configuration load; the daemon swaps a new
one in with ``translator.tables = new``.  Everything per-packet is precomputed here:

* Host entries (/128 <-> /32) live in dicts keyed by the raw 16- or 4-byte address,
  holding the finished ``(other_address, checksum_delta, index)`` tuple.
* Range entries live in one dict per prefix length, keyed by ``int(address) >> shift``,
  probed longest prefix first (RFC 7757 §3.2), so lookup cost grows with the number
  of distinct prefix lengths, not with the number of entries.
* ``checksum_delta`` is ``sum(ipv6) - sum(ipv4)`` (ones' complement).  For an EAM entry
  it is the same for every address of the range, because the suffix occupies the
  same low-order bits of both addresses; it is computed once per entry.  For RFC 6052
  /32 and /96 the IPv4 address sits on 16-bit word boundaries, so the delta is the
  prefix's own sum; other prefix lengths straddle the u-octet and sum per packet.

Overlapping EAM entries are refused at build time (on either side), which keeps the
mapping a bijection and the two directions symmetric.  EAM entries take precedence
over the RFC 6052 prefix (RFC 7757 §3.2).

RFC 6052 decoding is strict: the u-octet (bits 64-71) and the suffix must be zero
(RFC 6052 §2.2), otherwise the address is not treated as IPv4-embedded; this keeps
one IPv4 address <-> one IPv6 address.  IPv4 addresses in 0/8, 127/8 and 224/4 and
above are never embedded or extracted.  With the well-known prefix 64:ff9b::/96,
non-global IPv4 addresses are refused per address at translation time (RFC 6052
§3.1): such an address simply has no prefix mapping.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from typing import Union

from .checksum import add, delta, neg, ones_sum

Mapping = tuple[bytes, int, int]
"""(translated address, checksum delta sum(ipv6)-sum(ipv4), EAM index or -1)."""

NetLike6 = Union[str, ipaddress.IPv6Network]
NetLike4 = Union[str, ipaddress.IPv4Network]

WKP = ipaddress.IPv6Network("64:ff9b::/96")
RFC6052_LENGTHS = (32, 40, 48, 56, 64, 96)

# RFC 6052 §3.1 / RFC 6890: IPv4 ranges that are not global and must not be
# expressed with the well-known prefix.
_NON_GLOBAL_4 = tuple(
    ipaddress.IPv4Network(n)
    for n in (
        "0.0.0.0/8",
        "10.0.0.0/8",
        "100.64.0.0/10",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.0.0.0/24",
        "192.0.2.0/24",
        "192.88.99.0/24",
        "192.168.0.0/16",
        "198.18.0.0/15",
        "198.51.100.0/24",
        "203.0.113.0/24",
        "224.0.0.0/4",
        "240.0.0.0/4",
    )
)
_NON_GLOBAL_4_INT = tuple((int(n.network_address), int(n.netmask)) for n in _NON_GLOBAL_4)


# First octets that are never a unicast peer across a translator: "this network"
# (0/8), loopback (127/8), multicast (224/4) and reserved/broadcast (240/4).  The
# prefix neither produces nor accepts them, whichever prefix is configured, so a
# forged IPv6 source can never become 127.0.0.1 and multicast never leaks across.
_NEVER_EMBEDDED = frozenset((0, 127, *range(224, 256)))


def is_global4(a4: bytes) -> bool:
    """False for the RFC 6890 special-purpose ranges RFC 6052 §3.1 excludes from the WKP."""
    n = int.from_bytes(a4, "big")
    for net, mask in _NON_GLOBAL_4_INT:
        if n & mask == net:
            return False
    return True


class EamEntry:
    """One explicit address mapping, with its precomputed lookup data.

    Only integers: with 10,000 mappings the ``ipaddress`` network objects the
    entries used to hold were most of the worker's memory (a /32 or /128 network
    carries its own address object and a ``hosts`` closure).  ``net6``/``net4``
    rebuild them for the rare caller that wants one.
    """

    __slots__ = ("index", "p6", "p4", "shift6", "shift4", "smask", "delta")

    def __init__(self, index: int, p6: int, p4: int, shift: int, delta: int) -> None:
        self.index = index
        self.p6 = p6
        self.p4 = p4
        self.shift6 = shift
        self.shift4 = shift
        self.smask = (1 << shift) - 1
        self.delta = delta

    @property
    def net6(self) -> ipaddress.IPv6Network:
        return ipaddress.IPv6Network((self.p6, 128 - self.shift6))

    @property
    def net4(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network((self.p4, 32 - self.shift4))


def _net6(value: NetLike6, where: str) -> ipaddress.IPv6Network:
    try:
        net = ipaddress.ip_network(value, strict=True)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{where}: {exc}") from None
    if not isinstance(net, ipaddress.IPv6Network):
        raise ValueError(f"{where}: {value!s} is not an IPv6 network")
    return net


def _net4(value: NetLike4, where: str) -> ipaddress.IPv4Network:
    try:
        net = ipaddress.ip_network(value, strict=True)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{where}: {exc}") from None
    if not isinstance(net, ipaddress.IPv4Network):
        raise ValueError(f"{where}: {value!s} is not an IPv4 network")
    return net


def _check_overlap(nets: Sequence[tuple[int, int, int]], family: str) -> None:
    """``nets`` holds (first, last, index); raise on the first overlapping pair."""
    reach, owner = -1, -1  # highest address covered so far, and by which entry
    for first, last, index in sorted(nets):
        if first <= reach:
            a, b = sorted((owner, index))
            raise ValueError(f"eam[{b}]: {family} side overlaps eam[{a}]")
        if last > reach:
            reach, owner = last, index


class Tables:
    """EAM table plus optional RFC 6052 prefix.  Build with ``Tables.build``."""

    __slots__ = (
        "prefix",
        "_host6",
        "_host4",
        "_ranges",
        "_ranges6",
        "_ranges4",
        "_plen",
        "_pbytes",
        "_pkey",
        "_pdelta",
        "_wkp",
    )

    prefix: ipaddress.IPv6Network | None
    # Host entries (/128 <-> /32) exist only as these dict items: an EamEntry
    # object per host mapping would double the table's memory with 10,000 of them.
    _host6: dict[bytes, Mapping]
    _host4: dict[bytes, Mapping]
    _ranges: tuple[EamEntry, ...]
    _ranges6: tuple[tuple[int, dict[int, EamEntry]], ...]
    _ranges4: tuple[tuple[int, dict[int, EamEntry]], ...]
    _plen: int
    _pbytes: bytes
    _pkey: bytes
    _pdelta: int
    _wkp: bool

    def __init__(self) -> None:
        raise TypeError("use Tables.build(...)")

    @classmethod
    def build(
        cls,
        eam: Iterable[tuple[NetLike6, NetLike4]] = (),
        prefix: NetLike6 | None = None,
    ) -> Tables:
        """Validate and index the mappings; raise ValueError naming the bad entry.

        ``eam`` is a sequence of (IPv6 network, IPv4 network); the position of an entry
        is its mapping index.  ``prefix`` is an RFC 6052 prefix of length 32, 40, 48,
        56, 64 or 96, or None.
        """
        self = object.__new__(cls)
        entries: list[EamEntry] = []
        for i, pair in enumerate(eam):
            try:
                v6, v4 = pair
            except (TypeError, ValueError):
                raise ValueError(f"eam[{i}]: expected (ipv6_network, ipv4_network)") from None
            net6 = _net6(v6, f"eam[{i}][0]")
            net4 = _net4(v4, f"eam[{i}][1]")
            if 128 - net6.prefixlen != 32 - net4.prefixlen:
                raise ValueError(
                    f"eam[{i}]: suffix lengths differ ({net6} has {128 - net6.prefixlen} "
                    f"host bits, {net4} has {32 - net4.prefixlen}) (RFC 7757 §3.2)"
                )
            if net6.subnet_of(WKP) and not all(is_global4(a.packed) for a in (net4[0], net4[-1])):
                raise ValueError(
                    f"eam[{i}]: {net6} is inside the well-known prefix {WKP} but {net4} is "
                    "not global (RFC 6052 §3.1)"
                )
            a6, a4 = net6.network_address.packed, net4.network_address.packed
            entries.append(
                EamEntry(
                    i,
                    int.from_bytes(a6, "big"),
                    int.from_bytes(a4, "big"),
                    32 - net4.prefixlen,
                    delta(a6, a4),
                )
            )
        _check_overlap(
            [(e.p6, e.p6 | e.smask, e.index) for e in entries],
            "IPv6",
        )
        _check_overlap(
            [(e.p4, e.p4 | e.smask, e.index) for e in entries],
            "IPv4",
        )

        host6: dict[bytes, Mapping] = {}
        host4: dict[bytes, Mapping] = {}
        r6: dict[int, dict[int, EamEntry]] = {}
        r4: dict[int, dict[int, EamEntry]] = {}
        ranges: list[EamEntry] = []
        for e in entries:
            if e.shift6 == 0:
                a6 = e.p6.to_bytes(16, "big")
                a4 = e.p4.to_bytes(4, "big")
                host6[a6] = (a4, e.delta, e.index)
                host4[a4] = (a6, e.delta, e.index)
            else:
                ranges.append(e)
                r6.setdefault(e.shift6, {})[e.p6 >> e.shift6] = e
                r4.setdefault(e.shift4, {})[e.p4 >> e.shift4] = e
        del entries  # the host entries live on as dict items only
        self._host6 = host6
        self._host4 = host4
        self._ranges = tuple(ranges)
        self._ranges6 = tuple(sorted(r6.items()))  # smallest shift = longest prefix first
        self._ranges4 = tuple(sorted(r4.items()))

        self.prefix = None
        self._plen = 0
        self._pbytes = b""
        self._pkey = b""
        self._pdelta = -1
        self._wkp = False
        if prefix is not None:
            net = _net6(prefix, "prefix")
            if net.prefixlen not in RFC6052_LENGTHS:
                raise ValueError(
                    f"prefix: {net} must be /32, /40, /48, /56, /64 or /96 (RFC 6052 §2.2)"
                )
            packed = net.network_address.packed
            if packed[8] != 0:
                raise ValueError(
                    f"prefix: {net} has bits 64-71 set; they must be zero (RFC 6052 §2.2)"
                )
            self.prefix = net
            self._plen = net.prefixlen
            self._pkey = packed[: net.prefixlen // 8]
            self._pbytes = packed
            self._pdelta = ones_sum(packed) if net.prefixlen in (32, 96) else -1
            self._wkp = net == WKP
        return self

    # -- RFC 6052 §2.2 address format -------------------------------------------------

    def embed(self, a4: bytes) -> bytes | None:
        """IPv4 -> IPv4-embedded IPv6 with the configured prefix, or None."""
        p = self._pkey
        n = self._plen
        if n == 0 or a4[0] in _NEVER_EMBEDDED or (self._wkp and not is_global4(a4)):
            return None
        if n == 96:
            return p + a4
        if n == 64:
            return p + b"\x00" + a4 + b"\x00\x00\x00"
        # /32 .. /56: the IPv4 address is split around the u-octet (byte 8).
        k = 8 - n // 8  # IPv4 bytes before the u-octet
        return p + a4[:k] + b"\x00" + a4[k:] + bytes(3 + k)

    def extract(self, a6: bytes) -> bytes | None:
        """IPv4-embedded IPv6 -> IPv4, or None if ``a6`` is not in canonical RFC 6052 form."""
        n = self._plen
        if n == 0 or a6[: n // 8] != self._pkey:
            return None
        if n == 96:
            a4 = a6[12:]
        elif n == 64:
            if a6[8] or a6[13:] != b"\x00\x00\x00":
                return None
            a4 = a6[9:13]
        else:
            k = 8 - n // 8
            tail = 9 + 4 - k
            if a6[8] or any(a6[tail:]):
                return None
            a4 = a6[n // 8 : 8] + a6[9:tail]
        if a4[0] in _NEVER_EMBEDDED or (self._wkp and not is_global4(a4)):
            return None
        return a4

    # -- lookups ----------------------------------------------------------------------

    def lookup6(self, a6: bytes) -> Mapping | None:
        """IPv6 address -> (IPv4 address, delta, EAM index or -1), EAM before prefix."""
        m = self._host6.get(a6)
        if m is not None:
            return m
        if self._ranges6:
            n = int.from_bytes(a6, "big")
            for shift, entries in self._ranges6:
                e = entries.get(n >> shift)
                if e is not None:
                    return ((e.p4 | (n & e.smask)).to_bytes(4, "big"), e.delta, e.index)
        if self._plen:
            a4 = self.extract(a6)
            if a4 is not None:
                d = self._pdelta
                if d < 0:
                    d = add(ones_sum(a6), neg(ones_sum(a4)))
                return (a4, d, -1)
        return None

    def lookup4(self, a4: bytes) -> Mapping | None:
        """IPv4 address -> (IPv6 address, delta, EAM index or -1), EAM before prefix."""
        # (lookup_eam4's lines, not a call to it: this runs for every 4->6 packet.)
        m = self._host4.get(a4)
        if m is not None:
            return m
        if self._ranges4:
            n = int.from_bytes(a4, "big")
            for shift, entries in self._ranges4:
                e = entries.get(n >> shift)
                if e is not None:
                    return ((e.p6 | (n & e.smask)).to_bytes(16, "big"), e.delta, e.index)
        if self._plen:
            a6 = self.embed(a4)
            if a6 is not None:
                d = self._pdelta
                if d < 0:
                    d = add(ones_sum(a6), neg(ones_sum(a4)))
                return (a6, d, -1)
        return None

    def lookup_eam4(self, a4: bytes) -> Mapping | None:
        """Like :meth:`lookup4`, but EAM entries only (is ``a4`` a published device?).

        Asked only for prefix destinations (a rare path), so it may cost a prefix
        embedding that it then throws away.
        """
        m = self.lookup4(a4)
        return m if m is not None and m[2] >= 0 else None

    @property
    def eam(self) -> tuple[EamEntry, ...]:
        """Every EAM entry in index order, rebuilt on each read (for tests and tools)."""
        hosts = [
            EamEntry(i, int.from_bytes(a6, "big"), int.from_bytes(a4, "big"), 0, d)
            for a6, (a4, d, i) in self._host6.items()
        ]
        return tuple(sorted([*hosts, *self._ranges], key=lambda e: e.index))

    def eam_overlaps4(self, net: ipaddress.IPv4Network) -> int:
        """Index of the first EAM entry whose IPv4 side overlaps ``net``, or -1."""
        first, last = int(net.network_address), int(net.broadcast_address)
        found = [
            i for a4, (_, _, i) in self._host4.items() if first <= int.from_bytes(a4, "big") <= last
        ]
        found += [e.index for e in self._ranges if e.p4 <= last and first <= e.p4 | e.smask]
        return min(found, default=-1)
