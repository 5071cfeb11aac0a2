"""SharedPool4: the lease table shared by worker processes, simulated with two pool
objects on one buffer in one process (each object is what one worker holds)."""

from __future__ import annotations

import ipaddress
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6
from tr_testlib import CAM4, CAM6, EAM, OWN4, OWN6

from translator import Action, DropReason, Pool4, Tables, Translator, TranslatorSettings
from translator.pool import Lease
from translator.shared_pool import SharedPool4, buffer_size


class CheckedLock:
    """Stands in for the cross-process lock: counts acquisitions and forbids nesting."""

    def __init__(self) -> None:
        self.held = False
        self.acquired = 0

    def __enter__(self) -> None:
        assert not self.held, "the pool lock was taken twice"
        self.held = True
        self.acquired += 1

    def __exit__(self, *exc: object) -> None:
        self.held = False


def v6(i: int, prefix: int = 0) -> bytes:
    return ipaddress.IPv6Address(f"2001:db8:{prefix:x}::{i:x}").packed


def s4(b: bytes) -> str:
    return str(ipaddress.IPv4Address(b))


def got(x: Lease | DropReason) -> Lease:
    assert isinstance(x, Lease), x
    return x


def confirm(p: Pool4 | SharedPool4, client: bytes, now: float) -> Lease:
    """Lease ``client`` an address and confirm it: the device answers, the client speaks again."""
    lease = got(p.allocate(client, now))
    assert p.lookup4(lease.v4, now) is not None
    assert p.lookup6(client, now) is not None
    return lease


def workers(
    network: str = "198.51.100.0/24", n: int = 2, **kw: Any
) -> tuple[list[SharedPool4], CheckedLock, bytearray]:
    buf = bytearray(buffer_size(network))
    lock = CheckedLock()
    return [SharedPool4(buf, lock, network, **kw) for _ in range(n)], lock, buf


def test_size_order_and_exhaustion_like_pool4() -> None:
    (a, b), _, _ = workers("198.51.100.0/29", reserved=("198.51.100.1",), limit_per_prefix=0)
    assert a.size == b.size == Pool4("198.51.100.0/29", reserved=("198.51.100.1",)).size == 5
    handed = [s4(confirm((a, b)[i % 2], v6(i, i), 0.0).v4) for i in range(5)]
    assert handed == [f"198.51.100.{i}" for i in range(2, 7)]
    assert a.allocate(v6(99, 99), 0.0) == DropReason.POOL_EXHAUSTED
    assert b.allocate(v6(98, 98), 0.0) == DropReason.POOL_EXHAUSTED
    assert a.in_use == b.in_use == 5
    assert a.created + b.created == 5
    assert a.refused_exhausted == b.refused_exhausted == 1


def test_a_lease_made_by_one_worker_is_seen_by_the_other_both_ways() -> None:
    (a, b), lock, _ = workers()
    lease = got(a.allocate(v6(1), 10.0))
    taken = lock.acquired
    seen6 = b.lookup6(v6(1), 11.0)
    seen4 = b.lookup4(lease.v4, 11.0)
    assert seen6 is not None and seen6.v4 == lease.v4 and seen6.delta == lease.delta
    assert seen4 is not None and seen4.v6 == v6(1)
    assert got(b.allocate(v6(1), 12.0)).v4 == lease.v4  # no second address
    assert lock.acquired == taken, "lookups of a live lease must not take the lock"
    assert b.peek6(v6(1)) is not None and b.peek4(lease.v4) is not None
    assert b.lookup4(bytes([198, 51, 100, 200]), 12.0) is None
    assert b.lookup4(bytes([192, 0, 2, 1]), 12.0) is None
    assert a.created == 1 and b.created == 0


def test_per_prefix_limit_counts_leases_of_every_worker() -> None:
    (a, b), _, _ = workers(limit_per_prefix=2)
    got(a.allocate(v6(1, 7), 0.0))
    got(b.allocate(v6(2, 7), 0.0))
    assert a.allocate(v6(3, 7), 0.0) == DropReason.LEASE_LIMIT
    assert b.allocate(v6(4, 7), 0.0) == DropReason.LEASE_LIMIT
    got(b.allocate(v6(1, 8), 0.0))  # another /64 has its own budget
    assert a.refused_limit == b.refused_limit == 1


def test_expired_slot_reused_by_one_worker_invalidates_the_others_cache() -> None:
    (a, b), _, _ = workers("198.51.100.0/30", lease_time=100.0, limit_per_prefix=0)
    old = confirm(a, v6(1), 0.0)
    assert b.lookup6(v6(1), 1.0) is not None  # now cached in b
    confirm(a, v6(2), 1.0)  # the second (last) address
    # Active: never stolen, whoever asks.
    assert b.allocate(v6(3), 50.0) == DropReason.POOL_EXHAUSTED
    # Idle past lease_time: dead to readers at once, reclaimable after the grace.
    assert b.lookup6(v6(1), 101.0) is None and a.lookup4(old.v4, 101.0) is None
    assert b.allocate(v6(3), 101.5) == DropReason.POOL_EXHAUSTED
    new = got(b.allocate(v6(3), 104.0))
    assert new.v4 == old.v4  # v6(1) was the least recently used
    assert b.expired == 1
    assert a.lookup6(v6(1), 104.0) is None and a.peek6(v6(1)) is None
    back = a.lookup4(old.v4, 104.0)
    assert back is not None and back.v6 == v6(3)


def test_refresh_keeps_a_lease_alive_across_workers() -> None:
    (a, b), _, _ = workers("198.51.100.0/30", lease_time=100.0, limit_per_prefix=0)
    lease = got(a.allocate(v6(1), 0.0))
    for t in range(10, 400, 10):  # only b sees traffic, from the IPv4 side
        assert b.lookup4(lease.v4, float(t)) is not None
    assert a.lookup6(v6(1), 400.0) is lease
    assert a.expire(450.0) == 0 and b.expire(450.0) == 0
    assert a.expire(510.0) == 1 and a.in_use == 0
    assert b.lookup4(lease.v4, 510.0) is None


def test_expired_but_unreclaimed_lease_is_revived_for_its_client() -> None:
    (a, b), _, _ = workers(lease_time=100.0)
    first = got(a.allocate(v6(1), 0.0))
    assert b.lookup6(v6(1), 150.0) is None
    again = got(b.allocate(v6(1), 150.0))
    assert again.v4 == first.v4 and a.created + b.created == 1
    assert a.lookup4(first.v4, 151.0) is not None


def test_release_if_frees_leases_for_every_worker() -> None:
    (a, b), _, _ = workers()
    lease = got(a.allocate(v6(1), 0.0))
    got(a.allocate(v6(2), 0.0))
    assert b.lookup6(v6(1), 1.0) is not None
    assert b.release_if(lambda x: x == v6(1)) == 1
    assert a.lookup4(lease.v4, 2.0) is None and b.lookup6(v6(1), 2.0) is None
    assert a.in_use == 1


def test_dump_restore_round_trip_and_pool4_compatibility() -> None:
    (a, _), _, _ = workers(lease_time=1000.0)
    for i in range(5):
        got(a.allocate(v6(i), float(i)))
    text = a.dump(10.0)
    (c, d), _, _ = workers(lease_time=1000.0)
    assert c.restore(text, 500.0) == 5
    assert sorted(c.leases()) == sorted((x, y, s + 490.0) for x, y, s in a.leases())
    assert d.lookup6(v6(3), 501.0) is not None  # visible to the other worker too
    p = Pool4("198.51.100.0/24", lease_time=1000.0)
    assert p.restore(text, 0.0) == 5  # a shared dump is a Pool4 dump
    (e, _), _, _ = workers(lease_time=1000.0)
    assert e.restore(p.dump(0.0), 0.0) == 5  # and the other way round
    assert e.restore(text, 0.0) == 0  # already held: nothing twice
    assert e.restore("garbage", 0.0) == 0
    assert e.restore(json.dumps({"version": 1, "leases": [{"ipv6": 1}]}), 0.0) == 0


def test_restore_respects_limit_and_range() -> None:
    (a, _), _, _ = workers(limit_per_prefix=0)
    for i in range(4):
        got(a.allocate(v6(i, 5), 0.0))
    (b, _), _, _ = workers("198.51.100.0/24", limit_per_prefix=2)
    assert b.restore(a.dump(1.0), 1.0) == 2
    (c, _), _, _ = workers("203.0.113.0/24")
    assert c.restore(a.dump(1.0), 1.0) == 0


def test_buffer_for_another_pool_is_refused() -> None:
    buf = bytearray(buffer_size("198.51.100.0/24"))
    SharedPool4(buf, CheckedLock(), "198.51.100.0/24")
    with pytest.raises(ValueError, match="another pool"):
        SharedPool4(buf, CheckedLock(), "198.51.100.0/25")
    with pytest.raises(ValueError, match="too small"):
        SharedPool4(bytearray(100), CheckedLock(), "198.51.100.0/24")


def test_unaligned_bytes_equal_to_a_client_are_not_a_lease() -> None:
    (a, b), _, buf = workers()
    got(a.allocate(v6(1), 0.0))
    target = v6(0x4242)
    # Plant the client's bytes across two slots (not on an ipv6 field) and in the header.
    buf[64 + 20 : 64 + 36] = target
    assert b.lookup6(target, 1.0) is None and b.peek6(target) is None
    lease = got(b.allocate(target, 1.0))
    assert a.lookup6(target, 2.0) is not None and a.lookup6(target, 2.0).v4 == lease.v4  # type: ignore[union-attr]


def test_translator_runs_on_a_shared_pool_across_two_workers() -> None:
    (a, b), _, _ = workers(reserved=(OWN4,))
    settings_ = TranslatorSettings(
        ipv4_address=OWN4, ipv6_address=OWN6, rfc6791_pool4=(), icmp_errors_per_second=0
    )
    tables = Tables.build(eam=EAM, prefix=None)
    tr_a, tr_b = Translator(settings_, tables, a), Translator(settings_, tables, b)
    client = "2001:db8:ffff::1234"
    sources = set()
    for port in range(1000, 1010):
        pkt = bytes(IPv6(src=client, dst=CAM6, hlim=64) / UDP(sport=port, dport=7) / b"x")
        verdict = (tr_a if port % 2 else tr_b).translate(pkt, 1.0)
        assert verdict[0] is Action.FORWARD
        sources.add(IP(verdict[1][0]).src)
    assert len(sources) == 1
    reply = bytes(IP(src=CAM4, dst=sources.pop(), ttl=64) / UDP(sport=7, dport=1000) / b"y")
    for tr in (tr_a, tr_b):
        verdict = tr.translate(reply, 2.0)
        assert verdict[0] is Action.FORWARD and IPv6(verdict[1][0]).dst == client


# -- properties --------------------------------------------------------------------


OPS = st.lists(
    st.tuples(
        st.integers(0, 1),  # which worker
        st.sampled_from(["alloc", "lookup6", "lookup4", "expire", "release"]),
        st.integers(0, 11),  # client
        st.floats(0.0, 40.0),  # time step
    ),
    max_size=80,
)


@settings(max_examples=150, deadline=None)
@given(OPS)
def test_two_workers_never_hand_out_an_address_twice(
    ops: list[tuple[int, str, int, float]],
) -> None:
    lease_time = 50.0
    pools, lock, _ = workers(
        "198.51.100.0/29", lease_time=lease_time, limit_per_prefix=3, reserved=("198.51.100.1",)
    )
    now = 0.0
    holder: dict[bytes, bytes] = {}  # v4 -> client, as handed out
    last_use: dict[bytes, float] = {}  # client -> last packet time (either direction)
    for who, op, client, step in ops:
        now += step
        pool = pools[who]
        c6 = v6(client, client % 4)
        if op == "alloc":
            r = pool.allocate(c6, now)
            if isinstance(r, Lease):
                prev = holder.get(r.v4)
                if prev is not None and prev != c6:
                    # The address moved: its previous client must have been idle past lease_time.
                    assert now - last_use[prev] >= lease_time
                # A client holds one lease: an address it held before is no longer its own.
                for a4 in [k for k, v in holder.items() if v == c6 and k != r.v4]:
                    del holder[a4]
                holder[r.v4] = c6
                last_use[c6] = now
        elif op == "lookup6":
            r6 = pool.lookup6(c6, now)
            if r6 is not None:
                assert holder[r6.v4] == c6
                last_use[c6] = now
        elif op == "lookup4":
            a4 = bytes([198, 51, 100, client % 8])
            r4 = pool.lookup4(a4, now)
            if r4 is not None:
                assert holder[a4] == r4.v6
                last_use[r4.v6] = now
        elif op == "expire":
            pool.expire(now)
        else:
            pool.release_if(lambda x, c6=c6: x == c6)
            last_use.pop(c6, None)
            for a4 in [k for k, v in holder.items() if v == c6]:
                del holder[a4]
        assert not lock.held
        # Whole-table invariants, seen identically by both workers.
        table = pools[0].leases()
        assert table == pools[1].leases()
        clients = [c for c, _, _ in table]
        assert len(clients) == len(set(clients)), table
        per_prefix: dict[str, int] = {}
        for c, _, _ in table:
            key = str(ipaddress.IPv6Network(f"{c}/64", strict=False))
            per_prefix[key] = per_prefix.get(key, 0) + 1
        assert max(per_prefix.values(), default=0) <= 3
        assert pools[0].in_use == pools[1].in_use == len(table)
        assert "198.51.100.1" not in {a for _, a, _ in table}
