"""The IPv4 lease pool: one pool4 address per IPv6 client that is not otherwise mapped.

This is the only mutable mapping state.  A lease binds an IPv6 source address to a
pool4 address until it has been idle for ``lease_time`` seconds.  Design points:

* **No theft.**  An active lease is never reassigned.  When no address is free, the
  least recently used lease is reused only if it has expired; otherwise the new
  client is refused (``POOL_EXHAUSTED``).  Never-used addresses are handed out before
  expired ones, and expired ones least-recently-used first, so an address rests as
  long as possible before it names somebody else.
* **Per-prefix limit.**  Anyone can source packets from millions of addresses of their
  own /64; ``limit_per_prefix`` leases per ``limit_prefix_len`` prefix stop one
  subscriber from draining the pool (``LEASE_LIMIT``).
* **Cheap refresh.**  Leases sit in an insertion-ordered dict keyed by the raw IPv6
  address; a packet in either direction sets ``last_seen`` and moves the lease to the
  end (O(1), no allocation).  The front of the dict is therefore always the least
  recently used lease, which makes both ``expire`` and LRU reuse O(1) per lease.
* **Lazy address walk.**  Fresh addresses come from a cursor over the range, so a /16
  pool costs nothing until it is used.
* Each lease caches its RFC 1624 checksum delta ``sum(ipv6) - sum(ipv4)``.
* **Unconfirmed leases are cheap.**  Spoofed IPv6 sources cost an attacker nothing
  and need no replies, and the per-prefix limit does not help against sources in
  millions of /64s, so a one-way flood would hold every address for ``lease_time``.
  A new lease is therefore *unconfirmed* until its client has shown that it receives
  what the IPv4 side sends: a 4->6 packet to its address (``lookup4``) marks it
  *answered*, and a later 6->4 packet from the client (``lookup6``) *confirms* it.
  Two steps, not one, because a flood aimed at an open port (a SYN flood from random
  sources) makes the device answer every spoofed source; a blind spoofer that sends
  one packet per source never speaks again after the answer.  Unconfirmed leases
  expire after ``unconfirmed_time`` idle, and when no address is free or expired,
  ``allocate`` takes the least recently used unconfirmed lease
  (``reclaimed_unconfirmed``) instead of refusing.  Only confirmed active leases are
  never taken, so a legitimate client, confirmed within a round trip, keeps its
  address during a flood; the flood only churns unconfirmed slots.  Limits: a flood
  that cycles through every unconfirmed slot faster than a new client's round trip
  can still keep that client from confirming (a bigger pool raises that bar), and a
  spoofer that sends each source twice, an RTT apart, confirms its leases; the
  per-prefix limit then still caps it per /64.

Time is always passed in (``now``, monotonic seconds).  ``dump`` stores idle ages, not
timestamps, so a dump survives a reboot of the monotonic clock.
"""

from __future__ import annotations

import ipaddress
import json
from abc import ABC, abstractmethod
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable

from .checksum import delta as checksum_delta
from .verdict import DropReason

DUMP_VERSION = 1

# Lease states (the order matters: only CONFIRMED is protected from reuse).
UNCONFIRMED = 0  # the client has only sent
ANSWERED = 1  # the IPv4 side has sent to the lease's address since
CONFIRMED = 2  # ... and the client spoke again after that: it receives, it is real


class Lease:
    """One IPv6 client <-> pool4 address binding."""

    __slots__ = ("v6", "v4", "last_seen", "delta", "prefix", "state")

    def __init__(
        self, v6: bytes, v4: bytes, last_seen: float, prefix: int, state: int = UNCONFIRMED
    ) -> None:
        self.v6 = v6
        self.v4 = v4
        self.last_seen = last_seen
        self.delta = checksum_delta(v6, v4)
        self.prefix = prefix
        self.state = state  # Pool4 only; SharedPool4 keeps it in the shared slot


def pool_range(network: ipaddress.IPv4Network) -> tuple[int, int]:
    """First and last usable address as integers (RFC 3021: /31 and /32 use all)."""
    first = int(network.network_address)
    last = int(network.broadcast_address)
    if network.prefixlen < 31:
        first += 1
        last -= 1
    return first, last


def check_pool_params(
    network: str | ipaddress.IPv4Network,
    lease_time: float,
    unconfirmed_time: float,
    limit_per_prefix: int,
    limit_prefix_len: int,
) -> ipaddress.IPv4Network:
    """Validate what both pool implementations take; ValueError names the parameter."""
    try:
        net = ipaddress.IPv4Network(network, strict=True)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"pool4: {exc}") from None
    if lease_time <= 0:
        raise ValueError("pool4: lease_time must be positive")
    if not 0 < unconfirmed_time <= lease_time:
        raise ValueError("pool4: unconfirmed_time must be within (0, lease_time]")
    if limit_per_prefix < 0:
        raise ValueError("pool4: limit_per_prefix must be >= 0 (0 = unlimited)")
    if not 0 <= limit_prefix_len <= 128:
        raise ValueError("pool4: limit_prefix_len must be within 0..128")
    return net


def reserved_addresses(
    reserved: Iterable[str | ipaddress.IPv4Address], first: int, last: int
) -> frozenset[int]:
    """The reserved addresses (as integers) that fall inside ``first..last``."""
    out: set[int] = set()
    for r in reserved:
        try:
            a = int(ipaddress.IPv4Address(r))
        except (ValueError, TypeError) as exc:
            raise ValueError(f"pool4: reserved: {exc}") from None
        if first <= a <= last:
            out.add(a)
    return frozenset(out)


class Pool4Base(ABC):
    """What ``Pool4`` and ``SharedPool4`` share, so the two cannot drift apart: the
    validated parameters, the per-prefix limit, the counters and the lease listing.

    Subclasses keep ``_per_prefix`` (leases per ``limit_prefix_len`` prefix) up to
    date through ``_count_prefix`` / ``_uncount_prefix`` and provide ``lease_rows``.
    """

    def __init__(
        self,
        network: str | ipaddress.IPv4Network,
        lease_time: float,
        limit_per_prefix: int,
        limit_prefix_len: int,
        unconfirmed_time: float,
    ) -> None:
        net = check_pool_params(
            network, lease_time, unconfirmed_time, limit_per_prefix, limit_prefix_len
        )
        self.network = net
        self.lease_time = float(lease_time)
        self.unconfirmed_time = float(unconfirmed_time)
        self.limit_per_prefix = limit_per_prefix
        self.limit_prefix_len = limit_prefix_len
        self._prefix_shift = 128 - limit_prefix_len
        self._first, self._last = pool_range(net)
        self._per_prefix: dict[int, int] = {}
        self.created = 0
        self.expired = 0
        self.refused_exhausted = 0
        self.refused_limit = 0
        self.reclaimed_unconfirmed = 0

    def _prefix_of(self, v6: bytes) -> int:
        """The ``limit_prefix_len`` prefix of ``v6``, the unit of the per-prefix limit."""
        return int.from_bytes(v6, "big") >> self._prefix_shift

    def _prefix_full(self, prefix: int) -> bool:
        """True if ``prefix`` already holds ``limit_per_prefix`` leases (0 = no limit)."""
        limit = self.limit_per_prefix
        return bool(limit) and self._per_prefix.get(prefix, 0) >= limit

    def _count_prefix(self, prefix: int) -> None:
        self._per_prefix[prefix] = self._per_prefix.get(prefix, 0) + 1

    def _uncount_prefix(self, prefix: int) -> None:
        left = self._per_prefix[prefix] - 1
        if left:
            self._per_prefix[prefix] = left
        else:
            del self._per_prefix[prefix]

    @abstractmethod
    def lease_rows(self) -> list[tuple[str, str, float, bool]]:
        """(ipv6, ipv4, last_seen, confirmed) of every lease, least recently used first."""

    def leases(self) -> list[tuple[str, str, float]]:
        """(ipv6, ipv4, last_seen) of every lease, least recently used first."""
        return [(a, b, seen) for a, b, seen, _ in self.lease_rows()]

    def dump(self, now: float) -> str:
        """JSON snapshot of the leases with their idle ages (see ``restore``)."""
        return dump_leases(self.network, self.lease_rows(), now)


class Pool4(Pool4Base):
    """Pool of IPv4 addresses leased to IPv6 clients (see module docstring)."""

    def __init__(
        self,
        network: str | ipaddress.IPv4Network,
        lease_time: float = 7200.0,
        limit_per_prefix: int = 16,
        limit_prefix_len: int = 64,
        reserved: Iterable[str | ipaddress.IPv4Address] = (),
        unconfirmed_time: float = 30.0,
    ) -> None:
        super().__init__(network, lease_time, limit_per_prefix, limit_prefix_len, unconfirmed_time)
        first, last = self._first, self._last
        self._cursor = first
        reserved_ints = reserved_addresses(reserved, first, last)
        self._reserved = frozenset(a.to_bytes(4, "big") for a in reserved_ints)
        self.size = max(0, last - first + 1 - len(reserved_ints))
        self._by6: OrderedDict[bytes, Lease] = OrderedDict()
        self._by4: dict[bytes, Lease] = {}
        self._unconfirmed: OrderedDict[bytes, Lease] = OrderedDict()  # LRU first, like _by6
        self._recycled: deque[bytes] = deque()
        self.confirmed = 0  # leases confirmed so far (the lease saver's dirty mark)

    # -- metrics ----------------------------------------------------------------------

    @property
    def in_use(self) -> int:
        """Number of leases currently held (active or expired but not yet reclaimed)."""
        return len(self._by6)

    # -- hot path ---------------------------------------------------------------------

    def contains4(self, a4: bytes) -> bool:
        """True if ``a4`` lies inside the pool network."""
        n = int.from_bytes(a4, "big")
        return self._first <= n <= self._last or a4 in self._reserved

    def lookup6(self, v6: bytes, now: float) -> Lease | None:
        """The lease of IPv6 client ``v6``, refreshed; None if it has none."""
        lease = self._by6.get(v6)
        if lease is not None:
            lease.last_seen = now
            self._by6.move_to_end(v6)
            if lease.state != CONFIRMED:  # one compare for a confirmed lease
                if lease.state == ANSWERED:
                    lease.state = CONFIRMED
                    del self._unconfirmed[v6]
                    self.confirmed += 1
                else:
                    self._unconfirmed.move_to_end(v6)
        return lease

    def lookup4(self, v4: bytes, now: float) -> Lease | None:
        """The active lease of pool address ``v4``, refreshed; None if none or expired."""
        lease = self._by4.get(v4)
        if lease is None:
            return None
        if lease.state == CONFIRMED:
            if now - lease.last_seen >= self.lease_time:
                return None
        elif now - lease.last_seen >= self.unconfirmed_time:
            return None
        else:
            lease.state = ANSWERED
            self._unconfirmed.move_to_end(lease.v6)
        lease.last_seen = now
        self._by6.move_to_end(lease.v6)
        return lease

    def peek6(self, v6: bytes) -> Lease | None:
        """The lease of ``v6`` without refreshing it (ICMP error inner packets)."""
        return self._by6.get(v6)

    def peek4(self, v4: bytes) -> Lease | None:
        """The lease of ``v4`` without refreshing it (ICMP error inner packets)."""
        return self._by4.get(v4)

    def allocate(self, v6: bytes, now: float) -> Lease | DropReason:
        """Lease an address to new client ``v6`` or say why not (LEASE_LIMIT, POOL_EXHAUSTED)."""
        existing = self.lookup6(v6, now)
        if existing is not None:
            return existing
        prefix = self._prefix_of(v6)
        if self._prefix_full(prefix):
            self.refused_limit += 1
            return DropReason.LEASE_LIMIT
        v4 = self._take(now)
        if v4 is None:
            self.refused_exhausted += 1
            return DropReason.POOL_EXHAUSTED
        self._insert(Lease(v6, v4, now, prefix))
        self.created += 1
        return self._by6[v6]

    # -- housekeeping -----------------------------------------------------------------

    def expire(self, now: float) -> int:
        """Free every lease idle for ``lease_time`` or longer, and every unconfirmed one
        idle for ``unconfirmed_time`` or longer; return how many."""
        freed = 0
        for queue, limit in (
            (self._by6, self.lease_time),
            (self._unconfirmed, self.unconfirmed_time),
        ):
            while queue:
                lease = next(iter(queue.values()))
                if now - lease.last_seen < limit:
                    break
                self._remove(lease)
                self._recycled.append(lease.v4)
                freed += 1
        self.expired += freed
        return freed

    def release_if(self, predicate: Callable[[bytes], bool]) -> int:
        """Free every lease whose raw IPv6 address satisfies ``predicate`` (table reloads)."""
        doomed = [le for le in self._by6.values() if predicate(le.v6)]
        for lease in doomed:
            self._remove(lease)
            self._recycled.append(lease.v4)
        return len(doomed)

    def lease_rows(self) -> list[tuple[str, str, float, bool]]:
        """(ipv6, ipv4, last_seen, confirmed) of every lease, least recently used first."""
        return [
            (
                str(ipaddress.IPv6Address(le.v6)),
                str(ipaddress.IPv4Address(le.v4)),
                le.last_seen,
                le.state == CONFIRMED,
            )
            for le in self._by6.values()
        ]

    def restore(self, text: str, now: float) -> int:
        """Load leases from a ``dump``; return how many were kept.

        Keeps only well-formed leases that are still valid (idle < lease_time), inside
        this pool, not reserved, not already taken (either side) and within the
        per-prefix limit.  Anything else in ``text``, including garbage, is ignored.
        """
        parsed = parse_dump(text, self.lease_time)  # most idle first: the LRU front
        kept = 0
        for idle, v6, v4, confirmed in parsed:
            if not confirmed and idle >= self.unconfirmed_time:
                continue
            n = int.from_bytes(v4, "big")
            if not self._first <= n <= self._last or v4 in self._reserved:
                continue
            if v6 in self._by6 or v4 in self._by4:
                continue
            prefix = self._prefix_of(v6)
            if self._prefix_full(prefix):
                continue
            state = CONFIRMED if confirmed else UNCONFIRMED
            self._insert(Lease(v6, v4, now - idle, prefix, state))
            kept += 1
        return kept

    # -- internals --------------------------------------------------------------------

    def _insert(self, lease: Lease) -> None:
        self._by6[lease.v6] = lease
        self._by4[lease.v4] = lease
        self._count_prefix(lease.prefix)
        if lease.state != CONFIRMED:
            self._unconfirmed[lease.v6] = lease

    def _remove(self, lease: Lease) -> None:
        del self._by6[lease.v6]
        del self._by4[lease.v4]
        if lease.state != CONFIRMED:
            del self._unconfirmed[lease.v6]
        self._uncount_prefix(lease.prefix)

    def _take(self, now: float) -> bytes | None:
        """A free address: never used first, then reclaimed LRU-first, then the LRU lease
        if it has expired, then the LRU unconfirmed lease.  None if every address is
        held by a confirmed active lease."""
        while self._cursor <= self._last:
            v4 = self._cursor.to_bytes(4, "big")
            self._cursor += 1
            if v4 not in self._reserved and v4 not in self._by4:
                return v4
        while self._recycled:
            v4 = self._recycled.popleft()
            if v4 not in self._by4:
                return v4
        if self._by6:
            oldest = next(iter(self._by6.values()))
            limit = self.lease_time if oldest.state == CONFIRMED else self.unconfirmed_time
            if now - oldest.last_seen >= limit:
                self._remove(oldest)
                self.expired += 1
                return oldest.v4
        if self._unconfirmed:
            victim = next(iter(self._unconfirmed.values()))
            self._remove(victim)
            if now - victim.last_seen >= self.unconfirmed_time:
                self.expired += 1
            else:
                self.reclaimed_unconfirmed += 1
            return victim.v4
        return None


def dump_leases(network: object, leases: list[tuple[str, str, float, bool]], now: float) -> str:
    """The lease file: leases with their idle ages, so a restart with another clock
    base (monotonic time starts anew) keeps how long each has been idle, and whether
    each is confirmed (files without the flag come from before it: confirmed)."""
    return json.dumps(
        {
            "version": DUMP_VERSION,
            "network": str(network),
            "leases": [
                {"ipv6": v6, "ipv4": v4, "idle": max(0.0, now - seen), "confirmed": confirmed}
                for v6, v4, seen, confirmed in leases
            ],
        },
        indent=1,
    )


def parse_dump(text: str, lease_time: float) -> list[tuple[float, bytes, bytes, bool]]:
    """(idle, ipv6, ipv4, confirmed) of the valid leases in a dump, most idle first;
    garbage is skipped."""
    try:
        doc = json.loads(text)
    except (ValueError, TypeError, RecursionError):
        return []
    if not isinstance(doc, dict) or doc.get("version") != DUMP_VERSION:
        return []
    items = doc.get("leases")
    if not isinstance(items, list):
        return []
    parsed: list[tuple[float, bytes, bytes, bool]] = []
    for item in items:
        if not isinstance(item, dict):
            continue
        try:
            v6 = ipaddress.IPv6Address(item["ipv6"]).packed
            v4 = ipaddress.IPv4Address(item["ipv4"]).packed
            idle = float(item["idle"])
            confirmed = item.get("confirmed", True)
        except (KeyError, ValueError, TypeError, ipaddress.AddressValueError):
            continue
        if not 0.0 <= idle < lease_time:  # also rejects NaN
            continue
        if not isinstance(confirmed, bool):
            continue
        parsed.append((idle, v6, v4, confirmed))
    parsed.sort(key=lambda t: -t[0])
    return parsed
