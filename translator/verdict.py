"""Verdicts: what the shell must do with a packet, and why a packet was dropped.

A verdict is a plain value.  The translator never raises to say "drop"; it returns
``Verdict(Action.DROP, (), reason, mapping)`` and the shell counts ``reason.label``
in ``revnat64_dropped_packets_total{reason=...}``.  The enum values and the labels
are part of the daemon's metrics contract: add members, never renumber or rename.

Preallocated verdicts for the common drops keep the drop path allocation-free.
"""

from __future__ import annotations

from enum import IntEnum
from typing import NamedTuple


class Action(IntEnum):
    """What the shell does with ``Verdict.packets``."""

    FORWARD = 0
    """Write every packet to the TUN device (translated traffic)."""
    ICMP_ERROR = 1
    """Write the one ICMP error in ``packets`` to the TUN (it goes back to the sender);
    ``reason`` says why the original packet was dropped."""
    DROP = 2
    """Write nothing; count ``reason``."""


class DropReason(IntEnum):
    """Why a packet was not translated.  ``label`` is the Prometheus label value."""

    NONE = 0
    """Not dropped (FORWARD verdicts)."""
    MALFORMED = 1
    """Truncated, inconsistent lengths, bad header fields, unknown IP version."""
    NO_MAPPING = 2
    """The destination has no EAM entry, no RFC 6052 form and no active pool lease."""
    SPOOFED_SOURCE = 3
    """The source cannot be translated (IPv4 source not in EAM/prefix; IPv6 source
    multicast, unspecified, loopback or link-local; an IPv6 source claiming to be a
    published EAM address talking to another published address)."""
    POOL_EXHAUSTED = 4
    """A new IPv6 client needed a pool4 lease and every address is actively leased."""
    LEASE_LIMIT = 5
    """A new IPv6 client's prefix (limit_prefix_len) already holds limit_per_prefix leases."""
    HOP_LIMIT_EXCEEDED = 6
    """IPv6 hop limit expired at the translator (RFC 7915 §5.1)."""
    TTL_EXCEEDED = 7
    """IPv4 TTL expired at the translator (RFC 7915 §4.1)."""
    FRAGMENTED_UDP_ZERO_CHECKSUM = 8
    """IPv4 UDP fragment with checksum 0: the checksum cannot be computed (RFC 7915 §4.5)."""
    UDP_ZERO_CHECKSUM = 9
    """IPv4 UDP with checksum 0 while udp_zero_checksum="drop" (RFC 7915 §4.5)."""
    ROUTING_HEADER = 10
    """IPv6 Routing header with Segments Left > 0 (RFC 7915 §5.1)."""
    SOURCE_ROUTE = 11
    """IPv4 packet with an unexpired source route option (RFC 7915 §4.1)."""
    FRAG_NEEDED = 12
    """IPv4 DF=1 packet whose translation exceeds the MTU (RFC 7915 §4.1, RFC 1191)."""
    UNSUPPORTED_ICMP = 13
    """ICMP type/code with no equivalent in the other family (RFC 7915 §4.2, §5.2)."""
    HAIRPIN = 14
    """The translated packet would come straight back into the translator."""
    FRAGMENTED_ICMP = 15
    """Fragmented ICMP: the ICMPv6 pseudo-header needs the whole message length."""
    UNSUPPORTED_PROTOCOL = 16
    """No meaningful translation: ICMPv6 over IPv4, ICMPv4 over IPv6, IGMP (single-hop,
    RFC 7915 §4.2), or an IPv6 extension header behind a Fragment header."""
    BAD_CHECKSUM = 17
    """An ICMP error whose checksum is wrong; it is rebuilt, so it is verified first."""
    ICMP_INNER_UNTRANSLATABLE = 18
    """An ICMP error whose embedded packet is truncated below its IP header or has
    addresses the translator does not map."""
    MULTICAST = 19
    """IPv6 multicast destination (ff00::/8), e.g. the kernel's own MLD reports on the
    TUN: SIIT translates unicast only, and these are not anyone's unmapped address."""

    @property
    def label(self) -> str:
        """Stable lowercase label, e.g. ``"pool_exhausted"``."""
        return _LABELS[self]


_LABELS: dict[DropReason, str] = {r: r.name.lower() for r in DropReason}


class Verdict(NamedTuple):
    """Result of ``Translator.translate``."""

    action: Action
    packets: tuple[bytes, ...]
    reason: DropReason = DropReason.NONE
    mapping: int = -1
    """Index of the EAM entry involved (6->4: destination's, 4->6: source's), else -1."""


def drop(reason: DropReason, mapping: int = -1) -> Verdict:
    """A DROP verdict; the mapping-less ones are shared constants."""
    if mapping < 0:
        return _DROPS[reason]
    return Verdict(Action.DROP, (), reason, mapping)


_DROPS: dict[DropReason, Verdict] = {r: Verdict(Action.DROP, (), r, -1) for r in DropReason}
DROP_MALFORMED = _DROPS[DropReason.MALFORMED]
DROP_MULTICAST = _DROPS[DropReason.MULTICAST]
