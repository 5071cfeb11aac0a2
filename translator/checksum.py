"""Internet checksum arithmetic (RFC 1071) and incremental update (RFC 1624).

Sums are 16-bit ones' complement values in ``0..0xFFFF``.  ``ones_sum`` leans on the
identity that the ones' complement sum of big-endian 16-bit words is the big integer
modulo 0xFFFF (because 2**16 == 1 mod 0xFFFF), so one ``int.from_bytes`` and one C-level
modulo replace a Python loop.  As in RFC 1071 the result is 0 only for all-zero data.

Translating an address pair changes a TCP/UDP checksum by a constant that depends
only on the addresses (the pseudo-header protocol and length sum the same in both
families), so each mapping carries ``delta = sum(ipv6) - sum(ipv4)`` precomputed and
the hot path calls ``adjust`` (RFC 1624 eqn. 3) instead of summing the payload.
"""

from __future__ import annotations

_MOD = 0xFFFF


def ones_sum(data: bytes) -> int:
    """Ones' complement sum of ``data`` as 16-bit big-endian words (odd length padded)."""
    if len(data) & 1:
        data += b"\x00"
    n = int.from_bytes(data, "big")
    s = n % _MOD
    if s == 0 and n:
        return _MOD
    return s


def add(a: int, b: int) -> int:
    """Ones' complement addition of two folded sums."""
    s = a + b
    return (s & 0xFFFF) + (s >> 16)


def fold(s: int) -> int:
    """Fold an arbitrary non-negative integer into a 16-bit ones' complement sum."""
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def neg(a: int) -> int:
    """Ones' complement negation."""
    return a ^ 0xFFFF


def checksum(data: bytes, initial: int = 0) -> int:
    """Finished Internet checksum of ``data`` with an optional pseudo-header sum."""
    return ~add(ones_sum(data), initial) & 0xFFFF


def adjust(old: int, delta: int) -> int:
    """RFC 1624 eqn. 3: HC' = ~(~HC + m' - m), where ``delta`` is m' - m folded."""
    return ~add(old ^ 0xFFFF, delta) & 0xFFFF


def delta(new: bytes, old: bytes) -> int:
    """``sum(new) - sum(old)`` as a folded ones' complement value."""
    return add(ones_sum(new), neg(ones_sum(old)))
