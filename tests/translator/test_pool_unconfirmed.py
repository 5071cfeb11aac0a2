"""Unconfirmed leases: a spoofed one-way flood churns them, confirmed clients keep theirs.

Every test runs on :class:`Pool4` and on two :class:`SharedPool4` workers over one
buffer (operations alternate between the workers), because both must behave alike.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from translator import DropReason, Pool4
from translator.pool import Lease
from translator.shared_pool import SharedPool4, buffer_size

AnyPool = Pool4 | SharedPool4
GRACE = {"pool4": 0.0, "shared": 2.0}  # SharedPool4 reclaims a grace after readers stop


class NoLock:
    """One process, no contention: the tests only need a context manager."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def make(kind: str, network: str, **kw: Any) -> list[AnyPool]:
    """The pool(s) of ``kind``: one Pool4, or two SharedPool4 workers on one buffer."""
    if kind == "pool4":
        return [Pool4(network, **kw)]
    buf = bytearray(buffer_size(network))
    lock = NoLock()
    return [SharedPool4(buf, lock, network, **kw) for _ in range(2)]


KINDS = pytest.mark.parametrize("kind", ["pool4", "shared"])


def v6(i: int, prefix: int = 0) -> bytes:
    """Client ``i`` in /64 number ``prefix`` (2001:db8:PPPP:PPPP::i)."""
    return ipaddress.IPv6Address((0x20010DB8 << 96) | (prefix << 64) | i).packed


def got(x: Lease | DropReason) -> Lease:
    assert isinstance(x, Lease), x
    return x


def confirm(p: AnyPool, q: AnyPool, client: bytes, now: float) -> Lease:
    """Lease ``client`` an address through ``p``; the device answers and the client
    speaks again through ``q`` (another worker, for the shared pool)."""
    lease = got(p.allocate(client, now))
    assert q.lookup4(lease.v4, now) is not None  # answered
    assert p.lookup6(client, now) is not None  # confirmed
    return lease


def rows(p: AnyPool) -> dict[str, tuple[str, bool]]:
    return {a: (b, c) for a, b, _, c in p.lease_rows()}


def s6(b: bytes) -> str:
    return str(ipaddress.IPv6Address(b))


@KINDS
def test_spoofed_flood_never_locks_out_confirmed_or_new_clients(kind: str) -> None:
    pools = make(kind, "198.51.100.0/28", reserved=("198.51.100.1",))  # 13 addresses
    a, b = pools[0], pools[-1]
    now = 0.0
    old = confirm(a, b, v6(1, 0xAAAA), now)
    new_client = v6(2, 0xBBBB)
    new_v4: bytes | None = None
    for i in range(10_000):
        now += 0.001
        # A spoofed source in its own /64; the device answers it, the source never
        # speaks again (it does not see the answer).
        lease = pools[i % len(pools)].allocate(v6(i, 0x10000 + i), now)
        assert isinstance(lease, Lease), f"flood packet {i} refused: {lease}"
        assert b.lookup4(lease.v4, now) is not None
        if i % 500 == 0:  # the confirmed client keeps talking now and then
            assert got(b.allocate(v6(1, 0xAAAA), now)).v4 == old.v4
            back = a.lookup4(old.v4, now)
            assert back is not None and back.v6 == v6(1, 0xAAAA)
        if i == 5_000:  # a new legitimate client arrives in mid-flood
            new_v4 = got(a.allocate(new_client, now)).v4
        if i == 5_003:  # ... its answer comes back a few flood packets later
            assert new_v4 is not None
            assert b.lookup4(new_v4, now) is not None
            assert got(a.allocate(new_client, now)).v4 == new_v4  # confirmed
        if i > 5_003 and i % 500 == 1:
            assert got(b.allocate(new_client, now)).v4 == new_v4
    held = rows(a)
    assert held[s6(v6(1, 0xAAAA))] == (str(ipaddress.IPv4Address(old.v4)), True)
    assert new_v4 is not None
    assert held[s6(new_client)] == (str(ipaddress.IPv4Address(new_v4)), True)
    assert sum(p.refused_exhausted for p in pools) == 0
    if isinstance(a, Pool4):
        assert a.confirmed == 2  # the lease saver's mark moves on confirmation
    # 12 addresses were free after the first client's; every later flood lease, and
    # the new client's, took an unconfirmed slot.
    assert sum(p.reclaimed_unconfirmed for p in pools) == 10_000 - 12 + 1
    assert a.in_use == 13


@KINDS
def test_only_confirmed_active_leases_are_safe(kind: str) -> None:
    pools = make(kind, "198.51.100.0/29", limit_per_prefix=0)  # 6 addresses
    a, b = pools[0], pools[-1]
    for i in range(5):
        confirm(a, b, v6(i), 0.0)
    answered = got(b.allocate(v6(10), 1.0))
    assert a.lookup4(answered.v4, 1.0) is not None  # answered, not confirmed yet
    taken = got(a.allocate(v6(11), 2.0))
    assert taken.v4 == answered.v4  # the only unconfirmed lease goes
    assert a.peek6(v6(10)) is None and b.peek6(v6(10)) is None
    assert s6(v6(10)) not in rows(a)
    assert sum(p.reclaimed_unconfirmed for p in pools) == 1
    confirm(b, a, v6(11), 3.0)
    assert a.allocate(v6(12), 4.0) == DropReason.POOL_EXHAUSTED
    assert b.allocate(v6(13), 4.0) == DropReason.POOL_EXHAUSTED
    assert sorted(rows(b)) == sorted(s6(v6(i)) for i in (0, 1, 2, 3, 4, 11))


@KINDS
def test_an_answer_alone_does_not_confirm(kind: str) -> None:
    pools = make(kind, "198.51.100.0/30", limit_per_prefix=0)  # 2 addresses
    a, b = pools[0], pools[-1]
    first = got(a.allocate(v6(1), 0.0))
    for t in range(1, 6):  # the device keeps answering a source that never replies
        assert b.lookup4(first.v4, float(t)) is not None
    assert rows(a)[s6(v6(1))] == (str(ipaddress.IPv4Address(first.v4)), False)


@KINDS
def test_unconfirmed_leases_expire_after_unconfirmed_time(kind: str) -> None:
    pools = make(kind, "198.51.100.0/24", lease_time=7200.0, unconfirmed_time=30.0)
    a, b = pools[0], pools[-1]
    loose = got(a.allocate(v6(1), 0.0))
    kept = confirm(a, b, v6(2), 0.0)
    assert b.lookup4(loose.v4, 29.0) is not None  # answered at 29 s: idle again from there
    assert b.expire(58.0) == 0
    assert b.lookup4(loose.v4, 59.0) is None  # 30 s idle: dead to readers
    assert b.expire(59.0 + GRACE[kind]) == 1
    assert list(rows(a)) == [s6(v6(2))]
    assert a.lookup4(kept.v4, 7000.0) is not None  # confirmed: lease_time applies


@KINDS
def test_restore_keeps_the_flag_and_old_files_restore_as_confirmed(kind: str) -> None:
    a = make(kind, "198.51.100.0/24")[0]
    b = make(kind, "198.51.100.0/24")[0]
    confirm(a, a, v6(1), 10.0)
    got(a.allocate(v6(2), 12.0))
    third = got(a.allocate(v6(3), 12.0))
    assert a.lookup4(third.v4, 12.0) is not None  # answered only
    text = a.dump(20.0)
    flags = {le["ipv6"]: le["confirmed"] for le in json.loads(text)["leases"]}
    assert flags == {s6(v6(1)): True, s6(v6(2)): False, s6(v6(3)): False}
    assert b.restore(text, 1000.0) == 3
    assert {k: c for k, (_, c) in rows(b).items()} == flags
    # The other pool kind reads the same file.
    other = make("shared" if kind == "pool4" else "pool4", "198.51.100.0/24")[0]
    assert other.restore(text, 0.0) == 3
    assert {k: c for k, (_, c) in rows(other).items()} == flags
    # An unconfirmed lease idle for unconfirmed_time is not worth restoring.
    late = make(kind, "198.51.100.0/24")[0]
    assert late.restore(a.dump(12.0 + 30.0), 0.0) == 1
    # A file written before the flag existed: every lease confirmed, so never taken.
    old = json.dumps(
        {
            "version": 1,
            "network": "198.51.100.0/30",
            "leases": [
                {"ipv6": s6(v6(7)), "ipv4": "198.51.100.1", "idle": 5.0},
                {"ipv6": s6(v6(8)), "ipv4": "198.51.100.2", "idle": 1.0},
            ],
        }
    )
    small = make(kind, "198.51.100.0/30", limit_per_prefix=0)[0]
    assert small.restore(old, 100.0) == 2
    assert all(c for _, c in rows(small).values())
    assert small.allocate(v6(9), 101.0) == DropReason.POOL_EXHAUSTED
    bad = json.loads(old)
    bad["leases"][0]["confirmed"] = "yes"  # not a boolean: skipped like any garbage
    assert make(kind, "198.51.100.0/30")[0].restore(json.dumps(bad), 0.0) == 1


@pytest.mark.parametrize("bad", [0.0, -1.0, 7201.0])
@KINDS
def test_unconfirmed_time_must_lie_within_lease_time(kind: str, bad: float) -> None:
    with pytest.raises(ValueError, match="unconfirmed_time"):
        make(kind, "198.51.100.0/24", lease_time=7200.0, unconfirmed_time=bad)


# -- properties -------------------------------------------------------------------------

OPS = st.lists(
    st.tuples(
        st.sampled_from(["alloc", "alloc", "answer", "speak", "round_trip", "expire", "wait"]),
        st.integers(0, 9),  # client number, or seconds to wait
        st.integers(0, 1),  # client /64, and which worker
    ),
    max_size=150,
)


def check_pool_under(make_pools: Callable[[], list[AnyPool]], ops: list[Any]) -> None:
    pools = make_pools()
    now = 0.0
    lease_time = pools[0].lease_time
    for op, n, k in ops:
        p = pools[k % len(pools)]
        # Confirmed leases active now must survive whatever happens next.
        safe = {a: b for a, b, seen, c in p.lease_rows() if c and now - seen < lease_time - 1.0}
        client = v6(n, k)
        if op == "alloc":
            assert isinstance(p.allocate(client, now), (Lease, DropReason))
        elif op == "answer":  # the device answers the client's address, if it has one
            lease = p.peek6(client)
            p.lookup4(lease.v4 if lease is not None else bytes([198, 51, 100, n]), now)
        elif op == "speak":
            p.lookup6(client, now)
        elif op == "round_trip":  # allocate, answer, speak: what a real client does
            lease = p.allocate(client, now)
            if isinstance(lease, Lease):
                pools[-1 - k % len(pools)].lookup4(lease.v4, now)
                p.lookup6(client, now)
        elif op == "expire":
            p.expire(now)
        else:
            now += n
        held = p.lease_rows()
        v4s = [b for _, b, _, _ in held]
        v6s = [a for a, _, _, _ in held]
        assert len(v4s) == len(set(v4s)) == p.in_use <= p.size, "an address held twice"
        assert len(v6s) == len(set(v6s)), "a client holds two addresses"
        now_held = {a: b for a, b, _, _ in held}
        for a, b in safe.items():
            assert now_held.get(a) == b, f"confirmed active lease {a} -> {b} was taken"


@settings(max_examples=300, deadline=None)
@given(OPS)
def test_pool4_never_doubles_or_takes_a_confirmed_lease(ops: list[Any]) -> None:
    check_pool_under(
        lambda: make("pool4", "198.51.100.0/30", lease_time=60.0, unconfirmed_time=10.0), ops
    )


@settings(max_examples=300, deadline=None)
@given(OPS)
def test_shared_workers_never_double_or_take_a_confirmed_lease(ops: list[Any]) -> None:
    check_pool_under(
        lambda: make("shared", "198.51.100.0/30", lease_time=60.0, unconfirmed_time=10.0), ops
    )
