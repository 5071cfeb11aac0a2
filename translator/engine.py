"""The translator object: settings, state, dispatch and ICMP error generation.

``Translator.translate(packet, now)`` is the whole data plane API.  It dispatches on
the IP version nibble to ``ip6to4.translate_6to4`` or ``ip4to6.translate_4to6`` and
turns the only exceptions the parsing code can raise on hostile input
(``struct.error``, ``IndexError``, ``ValueError``) into ``DropReason.MALFORMED``;
property tests check that nothing else escapes.

State kept here besides the tables and the pool: the IPv4 Identification counter for
non-atomic translated packets (RFC 6864 §4.2) and the token bucket that limits the
ICMP errors the translator generates itself (RFC 4443 §2.4(f), RFC 1812 §4.3.2.8).
A rate-limited error still drops the packet with its original reason; the
suppression is counted in ``icmp_errors_rate_limited``.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from .icmp import build_icmp4_error, build_icmp6_error
from .ip4to6 import translate_4to6
from .ip6to4 import acceptable_source6, translate_6to4
from .pool import Pool4
from .shared_pool import SharedPool4
from .tables import Tables
from .verdict import DROP_MALFORMED, DROP_MULTICAST, Action, DropReason, Verdict, drop

UDP_ZERO_CHECKSUM_MODES = ("compute", "drop")
# The MTUs of the super-packet twin: above any packet's size, translated or not.
SUPER_PACKET_MTU = 1 << 17


@dataclass(frozen=True)
class TranslatorSettings:
    """Data-plane settings; validated on construction (ValueError names the field)."""

    ipv4_address: str
    """The translator's own IPv4 address: source of the ICMPv4 errors it generates."""
    ipv6_address: str
    """The translator's own IPv6 address: source of the ICMPv6 errors it generates, and
    of ICMPv4 errors translated from untranslatable IPv4 sources."""
    rfc6791_pool4: tuple[str, ...] = ()
    """IPv4 sources for translated ICMPv6 errors from untranslatable IPv6 sources
    (RFC 6791); empty means ``ipv4_address``."""
    lowest_ipv6_mtu: int = 1280
    """RFC 7915 "lowest-ipv6-mtu": DF=0 IPv4 packets are fragmented to fit it."""
    mtu: int = 1500
    """TUN MTU: DF=1 IPv4 packets whose translation exceeds it get Fragmentation Needed."""
    udp_zero_checksum: str = "compute"
    """"compute" or "drop": unfragmented IPv4 UDP with checksum 0 (RFC 7915 §4.5)."""
    icmp_errors_per_second: int = 100
    """Token bucket rate (burst = one second's worth) for generated errors; 0 = unlimited."""

    def __post_init__(self) -> None:
        try:
            ipaddress.IPv4Address(self.ipv4_address)
        except ValueError as exc:
            raise ValueError(f"ipv4_address: {exc}") from None
        try:
            ipaddress.IPv6Address(self.ipv6_address)
        except ValueError as exc:
            raise ValueError(f"ipv6_address: {exc}") from None
        for i, net in enumerate(self.rfc6791_pool4):
            try:
                ipaddress.IPv4Network(net, strict=True)
            except (ValueError, TypeError) as exc:
                raise ValueError(f"rfc6791_pool4[{i}]: {exc}") from None
        if not 1280 <= self.lowest_ipv6_mtu <= 65535:
            raise ValueError("lowest_ipv6_mtu: must be within 1280..65535 (RFC 8200 §5)")
        if not self.lowest_ipv6_mtu <= self.mtu <= 65535:
            raise ValueError("mtu: must be within lowest_ipv6_mtu..65535")
        if self.udp_zero_checksum not in UDP_ZERO_CHECKSUM_MODES:
            raise ValueError('udp_zero_checksum: must be "compute" or "drop"')
        if self.icmp_errors_per_second < 0:
            raise ValueError("icmp_errors_per_second: must be >= 0 (0 = unlimited)")


class Translator:
    """Stateless SIIT translator with EAM, RFC 6052 prefix and a pool4 lease table."""

    def __init__(
        self, settings: TranslatorSettings, tables: Tables, pool: Pool4 | SharedPool4
    ) -> None:
        self.settings = settings
        self.pool = pool
        self.ipv4_packed = ipaddress.IPv4Address(settings.ipv4_address).packed
        self.ipv6_packed = ipaddress.IPv6Address(settings.ipv6_address).packed
        self.mtu = settings.mtu
        self.lowest_ipv6_mtu = settings.lowest_ipv6_mtu
        self.udp_compute = settings.udp_zero_checksum == "compute"
        self._rate = float(settings.icmp_errors_per_second)
        self._tokens = self._rate
        self._last_refill: float | None = None
        self._ident = 0
        ranges: list[tuple[int, int]] = []
        for text in settings.rfc6791_pool4:
            net = ipaddress.IPv4Network(text)
            first, last = int(net.network_address), int(net.broadcast_address)
            if net.prefixlen < 31:
                first, last = first + 1, last - 1
            ranges.append((first, last - first + 1))
        self._rfc6791 = tuple(ranges)
        self._rfc6791_size = sum(n for _, n in ranges)
        self.icmp_errors_sent = 0
        self.icmp_errors_rate_limited = 0
        self._tables = tables
        self.tables = tables

    @classmethod
    def for_super_packets(
        cls, settings: TranslatorSettings, tables: Tables, pool: Pool4 | SharedPool4
    ) -> Translator:
        """The twin that translates GSO super-packets: same tables and pool, no MTU rules.

        The kernel cuts its output to the real MTU afterwards, so nothing may be
        fragmented or refused for its size here. (65535 would not do: a 65,518-byte
        IPv4 super-packet is 65,538 bytes as IPv6, and was refused with Fragmentation
        Needed, or with DF clear fragmented around a partial checksum.)
        """
        twin = cls(settings, tables, pool)
        twin.mtu = twin.lowest_ipv6_mtu = SUPER_PACKET_MTU
        return twin

    @property
    def tables(self) -> Tables:
        """The mapping tables; assign a new ``Tables`` to swap them atomically."""
        return self._tables

    @tables.setter
    def tables(self, new: Tables) -> None:
        clash = new.eam_overlaps4(self.pool.network)
        if clash >= 0:
            raise ValueError(f"eam[{clash}]: IPv4 side overlaps pool4 {self.pool.network}")
        self._tables = new
        # Clients the new tables map (EAM or prefix) must not keep a pool lease: the
        # tables take precedence, and 6->4 probes the lease table first.
        self.pool.release_if(lambda v6: new.lookup6(v6) is not None)

    def translate(self, packet: bytes, now: float) -> Verdict:
        """Translate one packet read from the TUN; never raises."""
        try:
            version = packet[0] >> 4
            if version == 6:
                if packet[24] == 0xFF:
                    return DROP_MULTICAST
                return translate_6to4(self, packet, now)
            if version == 4:
                return translate_4to6(self, packet, now)
            return DROP_MALFORMED
        except (struct.error, IndexError, ValueError):
            return DROP_MALFORMED

    # -- helpers used by ip6to4 / ip4to6 ----------------------------------------------

    def next_ident(self) -> int:
        """Next IPv4 Identification for a non-atomic translated packet (RFC 6864 §4.2)."""
        self._ident = (self._ident + 1) & 0xFFFF
        return self._ident

    def reserve_idents(self, count: int) -> int:
        """The first of ``count`` consecutive Identifications (a super-packet's
        segments: the kernel numbers them upwards from the first)."""
        first = (self._ident + 1) & 0xFFFF
        self._ident = (self._ident + count) & 0xFFFF
        return first

    def rfc6791_address(self, src6: bytes) -> bytes:
        """RFC 6791 §4: an IPv4 source for an error from ``src6``, stable per source."""
        if not self._rfc6791_size:
            return self.ipv4_packed
        k = int.from_bytes(src6, "big") % self._rfc6791_size
        for first, n in self._rfc6791:
            if k < n:
                return (first + k).to_bytes(4, "big")
            k -= n
        return self.ipv4_packed  # pragma: no cover - k < size

    def allow_error(self, now: float) -> bool:
        """Take a token from the ICMP error bucket."""
        if self._rate <= 0:
            return True
        last = self._last_refill
        if last is not None and now > last:
            self._tokens = min(self._rate, self._tokens + (now - last) * self._rate)
        if last is None or now > last:
            self._last_refill = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        self.icmp_errors_rate_limited += 1
        return False

    def error(
        self,
        original: bytes,
        now: float,
        icmp_type: int,
        code: int,
        rest: int,
        reason: DropReason,
        mapping: int,
        is_error: bool,
    ) -> Verdict:
        """Drop ``original`` for ``reason`` and answer it with an ICMP error of its own
        family if allowed: never about an ICMP error, nor where ``may_answer6`` /
        ``may_answer4`` say no, and within the rate limit."""
        v6 = original[0] >> 4 == 6
        if (
            is_error
            or not (may_answer6(original) if v6 else may_answer4(original))
            or not self.allow_error(now)
        ):
            return drop(reason, mapping)
        self.icmp_errors_sent += 1
        if v6:
            packet = build_icmp6_error(
                self.ipv6_packed, original[8:24], icmp_type, code, rest, original
            )
        else:
            packet = build_icmp4_error(
                self.ipv4_packed,
                original[12:16],
                self.next_ident(),
                icmp_type,
                code,
                rest,
                original,
            )
        return Verdict(Action.ICMP_ERROR, (packet,), reason, mapping)


def may_answer6(original: bytes) -> bool:
    """RFC 4443 §2.4(e): no ICMPv6 error to a multicast destination's packet or to a
    source that cannot be routed back."""
    return original[24] != 0xFF and acceptable_source6(original[8:24])


def may_answer4(original: bytes) -> bool:
    """RFC 1812 §4.3.2.7: no ICMPv4 error about a non-first fragment, nor to or from a
    multicast, broadcast, zero or loopback address."""
    src0 = original[12]
    return not (
        original[6] & 0x1F or original[7] or src0 in (0, 127) or src0 >= 224 or original[16] >= 224
    )
