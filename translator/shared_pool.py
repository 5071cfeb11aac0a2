"""The pool4 lease table in shared memory, for several worker processes at once.

With ``translator.workers > 1`` every worker serves one queue of a multi-queue
TUN, and the kernel picks the queue by flow hash: one client's flows, and the
device's replies to its pool4 address, land on different workers.  So every
worker must read and write one lease table.  :class:`SharedPool4` has the
interface :class:`~translator.pool.Pool4` offers the core (``lookup6``,
``lookup4``, ``peek6``, ``peek4``, ``allocate``, ``expire``, ``release_if``,
``leases``, ``dump``, ``restore``), so ``Translator(settings, tables, pool)``
does not know which one it has.  Like the rest of ``translator/`` it does no
I/O: the caller hands in the buffer (a ``MAP_SHARED`` mmap), a lock object
(any context manager that excludes the other processes) and ``now``.

Layout: a header, then one fixed 32-byte slot per pool4 address, so the
address *is* the slot index::

    header  magic(8) first_address(4) slots(4) cursor(4) in_use(4) version(8)
    slot    last_seen(f64) generation(u32) state(u16) confirm(u16) ipv6(16)

Reads take no lock:

* 4->6 reads slot ``v4 - first`` directly: O(1).
* 6->4 uses a per-worker dict cache ``v6 -> lease`` validated on every packet
  against the slot's generation and state (another worker may have expired
  and reused the slot); a miss searches the table at C speed
  (``buffer.find(v6)``, keeping only hits that fall on a slot's ipv6 field).
* ``last_seen`` is written at most once per ``refresh`` seconds per lease, so
  a busy lease costs one 16-byte read per packet and rarely a write.

Writes that change who owns an address (allocate, expire, release, restore)
take the lock, bump the header's ``version`` and write a slot in this order:
state := RECLAIMING, ipv6, last_seen, generation, state := LEASED.  A
lock-free reader reads last_seen first and ipv6 last, so it either sees the
old, expired last_seen (and rejects the slot) or the new owner completely.
A slot is only reclaimed once its last_seen is ``lease_time + grace`` old,
while readers treat a lease as dead after ``lease_time``: a reader that
validated a lease can act on it for ``grace`` seconds before the address can
move, which also covers the ``refresh`` lag of last_seen.

Under the lock each process keeps a mirror of the table (``v6 -> slot`` and
per-prefix counts) that it rebuilds only when the header's version shows that
another process changed the table since; the per-prefix limit and the "one
address per client" check read the mirror.  Reuse follows :class:`Pool4`:
never-used addresses first (a shared cursor), then the least recently used
free or expired slot; an active lease is never taken.

Confirmation (see :mod:`translator.pool`: a lease is unconfirmed until the
IPv4 side has sent to it and its client has spoken again after that) lives in
the slot's ``confirm`` field.  Readers advance it without the lock, like
last-seen, and only when it is not yet CONFIRMED, so a confirmed lease costs
nothing more per packet.  Unconfirmed slots expire after ``unconfirmed_time +
grace``, and ``_take`` (under the lock) falls back to the least recently used
unconfirmed slot when nothing is free or expired.  That fallback has no grace
period, by design (a flood must not be able to hold slots): a reader in another
worker that validated the old owner a moment before can still act on it once,
and its confirm write can land on the new owner.  Either needs a reader to be
preempted for the microseconds between its read and its write; the harm is one
packet of the old owner or one spoofed lease that counts as confirmed.

The counters ``created``, ``expired``, ``refused_exhausted``,
``refused_limit`` and ``reclaimed_unconfirmed`` count what *this* object did,
so per-worker counters add up;
``in_use`` and ``size`` describe the shared table.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from typing import Any, Union

from .pool import (
    ANSWERED,
    CONFIRMED,
    UNCONFIRMED,
    Lease,
    Pool4Base,
    parse_dump,
    pool_range,
    reserved_addresses,
)
from .verdict import DropReason

SharedBuffer = Union[bytearray, Any]  # a bytearray (tests) or an mmap.mmap (the daemon)

MAGIC = b"RN64POOL"
HEADER = struct.Struct("=8sIIIIQ")  # magic, first address, slots, cursor, in_use, version
HEADER_SIZE = 64
_CURSOR = struct.Struct("=I")
_IN_USE = struct.Struct("=I")
_VERSION = struct.Struct("=Q")
_CURSOR_AT, _IN_USE_AT, _VERSION_AT = 16, 20, 24

SLOT = struct.Struct("=dIHH16s")  # last_seen, generation, state, confirm, ipv6
SLOT_SIZE = 32
HOT = struct.Struct("=dIHH")  # the part a validating reader needs
_SEEN = struct.Struct("=d")
_U32 = struct.Struct("=I")
_U16 = struct.Struct("=H")
GEN_AT, STATE_AT, CONFIRM_AT, V6_AT = 8, 12, 14, 16

# Slot states.  NEVER must be 0: a fresh zero-filled buffer is an empty pool.
NEVER = 0
LEASED = 1
FREE = 2
RESERVED = 3
RECLAIMING = 4

ZERO6 = bytes(16)


class SharedLease(Lease):
    """A lease as one worker caches it: the slot it lives in and the slot's generation."""

    __slots__ = ("offset", "gen")

    def __init__(
        self, v6: bytes, v4: bytes, last_seen: float, prefix: int, offset: int, gen: int
    ) -> None:
        super().__init__(v6, v4, last_seen, prefix)
        self.offset = offset
        self.gen = gen


def buffer_size(network: str | ipaddress.IPv4Network) -> int:
    """Bytes of shared memory a table for ``network`` needs."""
    first, last = pool_range(ipaddress.IPv4Network(network, strict=True))
    return HEADER_SIZE + (last - first + 1) * SLOT_SIZE


class SharedPool4(Pool4Base):
    """Pool4 semantics over a table shared by processes (see module docstring)."""

    def __init__(
        self,
        buffer: SharedBuffer,
        lock: AbstractContextManager[Any],
        network: str | ipaddress.IPv4Network,
        lease_time: float = 7200.0,
        limit_per_prefix: int = 16,
        limit_prefix_len: int = 64,
        reserved: Iterable[str | ipaddress.IPv4Address] = (),
        refresh: float = 1.0,
        grace: float = 2.0,
        unconfirmed_time: float = 30.0,
    ) -> None:
        super().__init__(network, lease_time, limit_per_prefix, limit_prefix_len, unconfirmed_time)
        if not 0 < refresh < grace:
            raise ValueError("pool4: need 0 < refresh < grace")
        net = self.network
        self.refresh = float(refresh)
        self.grace = float(grace)
        first, last = self._first, self._last
        self._slots = last - first + 1
        if len(buffer) < HEADER_SIZE + self._slots * SLOT_SIZE:
            raise ValueError(
                f"pool4: shared table of {len(buffer)} bytes is too small for {net} "
                f"({buffer_size(net)} bytes needed)"
            )
        self._buf = buffer
        self._lock = lock
        self._reserved = reserved_addresses(reserved, first, last)
        self.size = max(0, self._slots - len(self._reserved))
        self._cache6: dict[bytes, SharedLease] = {}
        self._cache4: list[SharedLease | None] = [None] * self._slots
        self._mirror_version = -1
        self._slot_of6: dict[bytes, int] = {}
        with lock:
            magic, hfirst, hslots, _, _, _ = HEADER.unpack_from(buffer, 0)
            if magic == MAGIC:
                if (hfirst, hslots) != (first, self._slots):
                    raise ValueError(
                        f"pool4: the shared table was made for another pool, not {net}"
                    )
            elif magic == bytes(8):
                HEADER.pack_into(buffer, 0, MAGIC, first, self._slots, 0, 0, 1)
            else:
                raise ValueError("pool4: the shared buffer holds something else")
            for i in sorted(a - first for a in self._reserved):
                off = HEADER_SIZE + i * SLOT_SIZE
                if _U16.unpack_from(buffer, off + STATE_AT)[0] == NEVER:
                    _U16.pack_into(buffer, off + STATE_AT, RESERVED)

    # -- shared gauges --------------------------------------------------------------

    @property
    def in_use(self) -> int:
        """Leases held in the shared table (active, or expired but not yet reclaimed)."""
        return int(_IN_USE.unpack_from(self._buf, _IN_USE_AT)[0])

    @property
    def version(self) -> int:
        """Bumped by every change of ownership in the table (the lease saver's dirty mark)."""
        return int(_VERSION.unpack_from(self._buf, _VERSION_AT)[0])

    # -- hot path -------------------------------------------------------------------

    def contains4(self, a4: bytes) -> bool:
        """True if ``a4`` lies inside the pool network."""
        n = int.from_bytes(a4, "big")
        return self._first <= n <= self._last or n in self._reserved

    def lookup6(self, v6: bytes, now: float) -> SharedLease | None:
        """The active lease of client ``v6``, refreshed; None if none or idle too long."""
        buf = self._buf
        lease = self._cache6.get(v6)
        if lease is not None:
            seen, gen, state, confirm = HOT.unpack_from(buf, lease.offset)
            if gen == lease.gen and state == LEASED:
                idle = now - seen
                if confirm == CONFIRMED:
                    if idle < self.lease_time:
                        if idle >= self.refresh:
                            _SEEN.pack_into(buf, lease.offset, now)
                        return lease
                    return None  # expired: allocate() revives it under the lock
                return self._refresh_unconfirmed6(lease, idle, confirm, now)
            del self._cache6[v6]
        lease = self._find(v6)
        if lease is None:
            return None
        seen, _, _, confirm = HOT.unpack_from(buf, lease.offset)
        idle = now - seen
        if confirm != CONFIRMED:
            return self._refresh_unconfirmed6(lease, idle, confirm, now)
        if idle >= self.lease_time:
            return None
        if idle >= self.refresh:
            _SEEN.pack_into(buf, lease.offset, now)
        return lease

    def _refresh_unconfirmed6(
        self, lease: SharedLease, idle: float, confirm: int, now: float
    ) -> SharedLease | None:
        """lookup6 of a lease not yet confirmed: the client speaking after an answer confirms it."""
        if idle >= self.unconfirmed_time:
            return None
        buf = self._buf
        if idle >= self.refresh:
            _SEEN.pack_into(buf, lease.offset, now)
        if confirm == ANSWERED:
            _U16.pack_into(buf, lease.offset + CONFIRM_AT, CONFIRMED)
        return lease

    def lookup4(self, v4: bytes, now: float) -> SharedLease | None:
        """The active lease of pool address ``v4``, refreshed; None if none or expired."""
        idx = int.from_bytes(v4, "big") - self._first
        if not 0 <= idx < self._slots:
            return None
        buf = self._buf
        off = HEADER_SIZE + idx * SLOT_SIZE
        seen, gen, state, confirm, v6 = SLOT.unpack_from(buf, off)
        if state != LEASED:
            return None
        idle = now - seen
        if confirm == CONFIRMED:
            if idle >= self.lease_time:
                return None
        elif idle >= self.unconfirmed_time:
            return None
        elif confirm == UNCONFIRMED:
            _U16.pack_into(buf, off + CONFIRM_AT, ANSWERED)
        if idle >= self.refresh:
            _SEEN.pack_into(buf, off, now)
        lease = self._cache4[idx]
        if lease is None or lease.gen != gen:
            lease = self._lease_at(idx, gen, v6, seen)
        return lease

    def peek6(self, v6: bytes) -> SharedLease | None:
        """The lease held by ``v6`` without refreshing it (ICMP error inner packets)."""
        lease = self._cache6.get(v6)
        if lease is not None:
            _, gen, state, _ = HOT.unpack_from(self._buf, lease.offset)
            if gen == lease.gen and state == LEASED:
                return lease
        return self._find(v6)

    def peek4(self, v4: bytes) -> SharedLease | None:
        """The lease held on ``v4`` without refreshing it (ICMP error inner packets)."""
        idx = int.from_bytes(v4, "big") - self._first
        if not 0 <= idx < self._slots:
            return None
        seen, gen, state, _, v6 = SLOT.unpack_from(self._buf, HEADER_SIZE + idx * SLOT_SIZE)
        if state != LEASED:
            return None
        lease = self._cache4[idx]
        if lease is None or lease.gen != gen:
            lease = self._lease_at(idx, gen, v6, seen)
        return lease

    def allocate(self, v6: bytes, now: float) -> SharedLease | DropReason:
        """Lease an address to client ``v6`` or say why not (LEASE_LIMIT, POOL_EXHAUSTED).

        Under the lock: a lease ``v6`` still holds (maybe given by another worker
        a moment ago, or expired but not reclaimed) is returned and refreshed;
        otherwise the per-prefix limit applies and a free slot is taken.
        """
        existing = self.lookup6(v6, now)
        if existing is not None:
            return existing
        buf = self._buf
        with self._lock:
            self._sync()
            idx = self._slot_of6.get(v6)
            if idx is not None:
                off = HEADER_SIZE + idx * SLOT_SIZE
                _SEEN.pack_into(buf, off, now)
                _, gen, _, confirm, _ = SLOT.unpack_from(buf, off)
                if confirm == ANSWERED:  # as Pool4.lookup6 does for an unreclaimed lease
                    _U16.pack_into(buf, off + CONFIRM_AT, CONFIRMED)
                return self._lease_at(idx, gen, v6, now)
            if self._prefix_full(self._prefix_of(v6)):
                self.refused_limit += 1
                return DropReason.LEASE_LIMIT
            idx = self._take(now)
            if idx is None:
                self.refused_exhausted += 1
                return DropReason.POOL_EXHAUSTED
            gen = self._write_slot(idx, v6, now)
            self._in_use_add(1)
            self._bump()
            self.created += 1
            return self._lease_at(idx, gen, v6, now)

    # -- housekeeping -----------------------------------------------------------------

    def expire(self, now: float) -> int:
        """Free every lease idle for ``lease_time + grace`` or longer (unconfirmed ones:
        ``unconfirmed_time + grace``); return how many."""
        freed = 0
        with self._lock:
            self._sync()
            for v6, idx in list(self._slot_of6.items()):
                off = HEADER_SIZE + idx * SLOT_SIZE
                seen, _, _, confirm = HOT.unpack_from(self._buf, off)
                if now - seen >= self._reclaim_after(confirm):
                    self._free_slot(idx, v6)
                    freed += 1
            if freed:
                self._in_use_add(-freed)
                self._bump()
        self.expired += freed
        self._prune_cache()
        return freed

    def _prune_cache(self) -> None:
        """Forget cached leases whose slot changed hands, so the cache cannot grow forever."""
        buf = self._buf
        for v6, lease in list(self._cache6.items()):
            _, gen, state, _ = HOT.unpack_from(buf, lease.offset)
            if gen != lease.gen or state != LEASED:
                del self._cache6[v6]

    def release_if(self, predicate: Callable[[bytes], bool]) -> int:
        """Free every lease whose raw IPv6 address satisfies ``predicate`` (table reloads)."""
        with self._lock:
            self._sync()
            doomed = [(v6, idx) for v6, idx in self._slot_of6.items() if predicate(v6)]
            for v6, idx in doomed:
                self._free_slot(idx, v6)
            if doomed:
                self._in_use_add(-len(doomed))
                self._bump()
        return len(doomed)

    def lease_rows(self) -> list[tuple[str, str, float, bool]]:
        """(ipv6, ipv4, last_seen, confirmed) of every lease, least recent first."""
        held = [
            (seen, idx, v6, confirm)
            for idx, (seen, _, state, confirm, v6) in enumerate(self._iter_slots())
            if state == LEASED
        ]
        held.sort()
        return [
            (
                str(ipaddress.IPv6Address(v6)),
                str(ipaddress.IPv4Address(self._first + idx)),
                seen,
                confirm == CONFIRMED,
            )
            for seen, idx, v6, confirm in held
        ]

    def restore(self, text: str, now: float) -> int:
        """Load leases from a ``dump`` (either pool's); return how many were kept.

        Keeps well-formed, still valid leases inside this pool whose address is
        free, whose client holds no other lease and whose prefix has room.
        """
        parsed = parse_dump(text, self.lease_time)
        kept = 0
        with self._lock:
            self._sync()
            for idle, v6, v4, confirmed in parsed:
                if not confirmed and idle >= self.unconfirmed_time:
                    continue
                n = int.from_bytes(v4, "big")
                if not self._first <= n <= self._last or n in self._reserved:
                    continue
                idx = n - self._first
                state = _U16.unpack_from(self._buf, HEADER_SIZE + idx * SLOT_SIZE + STATE_AT)[0]
                if state == LEASED or v6 in self._slot_of6:
                    continue
                if self._prefix_full(self._prefix_of(v6)):
                    continue
                self._write_slot(idx, v6, now - idle, CONFIRMED if confirmed else UNCONFIRMED)
                kept += 1
            if kept:
                self._in_use_add(kept)
                self._bump()
        return kept

    # -- internals ----------------------------------------------------------------------

    def _reclaim_after(self, confirm: int) -> float:
        """Idle seconds after which a slot may go to another client (lock held)."""
        if confirm == CONFIRMED:
            return self.lease_time + self.grace
        return self.unconfirmed_time + self.grace

    def _iter_slots(self) -> Iterable[tuple[float, int, int, int, bytes]]:
        view = memoryview(self._buf)[HEADER_SIZE : HEADER_SIZE + self._slots * SLOT_SIZE]
        try:
            yield from SLOT.iter_unpack(view)
        finally:
            view.release()

    def _lease_at(self, idx: int, gen: int, v6: bytes, seen: float) -> SharedLease:
        """A lease object for slot ``idx``, cached for both directions."""
        lease = SharedLease(
            v6,
            (self._first + idx).to_bytes(4, "big"),
            seen,
            int.from_bytes(v6, "big") >> self._prefix_shift,  # inline: 4->6 cache misses
            HEADER_SIZE + idx * SLOT_SIZE,
            gen,
        )
        self._cache4[idx] = lease
        self._cache6[v6] = lease
        return lease

    def _find(self, v6: bytes) -> SharedLease | None:
        """Search the table for a LEASED slot of ``v6`` (C-speed ``find``, aligned hits only)."""
        buf = self._buf
        end = HEADER_SIZE + self._slots * SLOT_SIZE
        pos = HEADER_SIZE + V6_AT
        while True:
            at = buf.find(v6, pos, end)
            if at < 0:
                return None
            rel = at - HEADER_SIZE - V6_AT
            if rel % SLOT_SIZE == 0:
                off = at - V6_AT
                seen, gen, state, _ = HOT.unpack_from(buf, off)
                if state == LEASED:
                    return self._lease_at(rel // SLOT_SIZE, gen, v6, seen)
            pos = at + 1

    def _sync(self) -> None:
        """Rebuild this process's mirror if another process changed the table (lock held)."""
        version = self.version
        if version == self._mirror_version:
            return
        slot_of6: dict[bytes, int] = {}
        per_prefix: dict[int, int] = {}
        shift = self._prefix_shift
        for idx, (_, _, state, _, v6) in enumerate(self._iter_slots()):
            if state == LEASED:
                slot_of6[v6] = idx
                prefix = int.from_bytes(v6, "big") >> shift
                per_prefix[prefix] = per_prefix.get(prefix, 0) + 1
        self._slot_of6 = slot_of6
        self._per_prefix = per_prefix
        self._mirror_version = version

    def _bump(self) -> None:
        version = self.version + 1
        _VERSION.pack_into(self._buf, _VERSION_AT, version)
        self._mirror_version = version  # the mirror already has our own change

    def _in_use_add(self, n: int) -> None:
        _IN_USE.pack_into(self._buf, _IN_USE_AT, self.in_use + n)

    def _take(self, now: float) -> int | None:
        """A slot for a new lease (lock held): never used first, then the least recently
        used free or expired one, then the least recently used unconfirmed one.  None if
        every address is held by a confirmed active lease."""
        buf = self._buf
        cursor: int = _CURSOR.unpack_from(buf, _CURSOR_AT)[0]
        while cursor < self._slots:
            state = _U16.unpack_from(buf, HEADER_SIZE + cursor * SLOT_SIZE + STATE_AT)[0]
            cursor += 1
            if state == NEVER:
                _CURSOR.pack_into(buf, _CURSOR_AT, cursor)
                return cursor - 1
        _CURSOR.pack_into(buf, _CURSOR_AT, cursor)
        best: tuple[float, int, int, bytes] | None = None
        victim: tuple[float, int, int, bytes] | None = None  # LRU unconfirmed, still active
        for idx, (seen, _, state, confirm, v6) in enumerate(self._iter_slots()):
            if state == FREE or (state == LEASED and now - seen >= self._reclaim_after(confirm)):
                if best is None or seen < best[0]:
                    best = (seen, idx, state, v6)
            elif state == LEASED and confirm != CONFIRMED:
                if victim is None or seen < victim[0]:
                    victim = (seen, idx, state, v6)
        if best is None:
            if victim is None:
                return None
            _, idx, _, v6 = victim
            self._free_slot(idx, v6)
            self._in_use_add(-1)
            self.reclaimed_unconfirmed += 1
            return idx
        _, idx, state, v6 = best
        if state == LEASED:  # expired but never reclaimed: reclaim it now
            self._free_slot(idx, v6)
            self._in_use_add(-1)
            self.expired += 1
        return idx

    def _write_slot(self, idx: int, v6: bytes, seen: float, confirm: int = UNCONFIRMED) -> int:
        """Give slot ``idx`` to ``v6`` in the order lock-free readers rely on; return its gen."""
        buf = self._buf
        off = HEADER_SIZE + idx * SLOT_SIZE
        gen = (_U32.unpack_from(buf, off + GEN_AT)[0] + 1) & 0xFFFFFFFF
        _U16.pack_into(buf, off + STATE_AT, RECLAIMING)
        buf[off + V6_AT : off + V6_AT + 16] = v6
        _SEEN.pack_into(buf, off, seen)
        _U16.pack_into(buf, off + CONFIRM_AT, confirm)
        _U32.pack_into(buf, off + GEN_AT, gen)
        _U16.pack_into(buf, off + STATE_AT, LEASED)
        self._slot_of6[v6] = idx
        self._count_prefix(self._prefix_of(v6))
        return int(gen)

    def _free_slot(self, idx: int, v6: bytes) -> None:
        """Mark slot ``idx`` free, keeping last_seen for LRU order (lock held)."""
        buf = self._buf
        off = HEADER_SIZE + idx * SLOT_SIZE
        _U16.pack_into(buf, off + STATE_AT, FREE)
        buf[off + V6_AT : off + V6_AT + 16] = ZERO6
        self._cache6.pop(v6, None)
        self._cache4[idx] = None
        del self._slot_of6[v6]
        self._uncount_prefix(self._prefix_of(v6))
