"""Pool4 leases: allocation, limits, expiry, LRU reuse, dump/restore."""

from __future__ import annotations

import ipaddress
import json

import pytest

from translator import DropReason, Pool4
from translator.pool import Lease


def v6(i: int, prefix: int = 0) -> bytes:
    return ipaddress.IPv6Address(f"2001:db8:{prefix:x}::{i:x}").packed


def s4(b: bytes) -> str:
    return str(ipaddress.IPv4Address(b))


def got(x: Lease | DropReason) -> Lease:
    assert isinstance(x, Lease), x
    return x


def confirm(p: Pool4, client: bytes, now: float) -> Lease:
    """Lease ``client`` an address and confirm it: the device answers, the client speaks again."""
    lease = got(p.allocate(client, now))
    assert p.lookup4(lease.v4, now) is not None
    assert p.lookup6(client, now) is not None
    return lease


def test_size_excludes_network_broadcast_and_reserved():
    assert Pool4("198.51.100.0/24", reserved=("198.51.100.1", "10.0.0.1")).size == 253
    assert Pool4("198.51.100.0/31").size == 2
    assert Pool4("198.51.100.7/32").size == 1
    p = Pool4("198.51.100.0/29", reserved=("198.51.100.1",), limit_per_prefix=0)
    handed = [s4(confirm(p, v6(i, i), 0.0).v4) for i in range(5)]
    assert handed == [f"198.51.100.{i}" for i in range(2, 7)]
    assert p.allocate(v6(99, 99), 0.0) == DropReason.POOL_EXHAUSTED


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"network": "198.51.100.1/24"}, "pool4"),
        ({"network": "2001:db8::/64"}, "pool4"),
        ({"lease_time": 0}, "lease_time"),
        ({"limit_per_prefix": -1}, "limit_per_prefix"),
        ({"limit_prefix_len": 129}, "limit_prefix_len"),
        ({"reserved": ("nonsense",)}, "reserved"),
    ],
)
def test_bad_arguments(kwargs, message):
    args = {"network": "198.51.100.0/24"}
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        Pool4(**args)


def test_same_client_same_address_and_refresh():
    p = Pool4("198.51.100.0/24")
    a = got(p.allocate(v6(1), 1.0))
    assert got(p.allocate(v6(1), 5.0)) is a and a.last_seen == 5.0
    assert p.lookup6(v6(1), 6.0) is a and a.last_seen == 6.0
    assert p.lookup4(a.v4, 7.0) is a and a.last_seen == 7.0
    assert p.created == 1 and p.in_use == 1


def test_per_prefix_limit():
    p = Pool4("198.51.100.0/24", limit_per_prefix=2, limit_prefix_len=64)
    got(p.allocate(v6(1), 0.0))
    got(p.allocate(v6(2), 0.0))
    assert p.allocate(v6(3), 0.0) == DropReason.LEASE_LIMIT
    got(p.allocate(v6(3, prefix=1), 0.0))  # another /64
    assert p.refused_limit == 1
    p.expire(10_000.0)
    got(p.allocate(v6(3), 10_000.0))  # freed by expiry


def test_active_leases_never_stolen_expired_reused_lru():
    p = Pool4("198.51.100.0/30", lease_time=100.0, limit_per_prefix=0)  # .1 and .2
    a = confirm(p, v6(1), 0.0)
    b = confirm(p, v6(2), 10.0)
    assert p.allocate(v6(3), 50.0) == DropReason.POOL_EXHAUSTED
    assert p.refused_exhausted == 1
    p.lookup6(v6(1), 60.0)  # a is now the most recently used
    assert p.allocate(v6(3), 105.0) == DropReason.POOL_EXHAUSTED  # b idle 95 s: active
    c = got(p.allocate(v6(3), 111.0))  # b idle 101 s: expired, LRU, reused
    assert c.v4 == b.v4 and p.lookup6(v6(2), 111.0) is None
    assert p.lookup6(v6(1), 111.0) is a and p.expired == 1


def test_expire_and_reuse_order():
    p = Pool4("198.51.100.0/29", lease_time=100.0, limit_per_prefix=0)  # 6 usable
    leases = [confirm(p, v6(i), float(i)) for i in range(6)]
    assert p.expire(103.5) == 4  # idle >= 100: leases 0..3
    assert p.in_use == 2 and p.expired == 4
    # Never-used addresses are gone; reclaimed ones come back least recently used first.
    again = [got(p.allocate(v6(100 + i), 200.0)).v4 for i in range(4)]
    assert again == [le.v4 for le in leases[:4]]


def test_lookup4_only_active():
    p = Pool4("198.51.100.0/24", lease_time=100.0)
    a = confirm(p, v6(1), 0.0)
    assert p.lookup4(a.v4, 99.0) is a
    assert p.lookup4(a.v4, 199.0) is None
    assert p.lookup4(b"\x01\x02\x03\x04", 0.0) is None
    assert p.contains4(a.v4) and not p.contains4(b"\x01\x02\x03\x04")


def test_leases_and_dump_restore_round_trip():
    p = Pool4("198.51.100.0/24", lease_time=1000.0)
    confirm(p, v6(1), 10.0)
    confirm(p, v6(2), 20.0)
    confirm(p, v6(3, 3), 30.0)
    text = p.dump(100.0)
    doc = json.loads(text)
    assert doc["version"] == 1 and len(doc["leases"]) == 3
    q = Pool4("198.51.100.0/24", lease_time=1000.0)
    assert q.restore(text, 5000.0) == 3
    assert [(a, b) for a, b, _ in q.leases()] == [(a, b) for a, b, _ in p.leases()]
    assert [round(t, 6) for _, _, t in q.leases()] == [4910.0, 4920.0, 4930.0]
    # Restored addresses are not handed out again.
    fresh = got(q.allocate(v6(9, 9), 5000.0))
    assert s4(fresh.v4) not in {b for _, b, _ in q.leases() if _ != s4(fresh.v4)} - {s4(fresh.v4)}
    assert len({b for _, b, _ in q.leases()}) == 4


def test_restore_filters():
    p = Pool4("198.51.100.0/24", lease_time=1000.0, reserved=("198.51.100.1",), limit_per_prefix=1)
    doc = {
        "version": 1,
        "leases": [
            {"ipv6": "2001:db8::1", "ipv4": "198.51.100.5", "idle": 10},
            {"ipv6": "2001:db8::2", "ipv4": "198.51.100.6", "idle": 10},  # same /64: limit
            {"ipv6": "2001:db8:1::1", "ipv4": "198.51.100.5", "idle": 5},  # address taken
            {"ipv6": "2001:db8:2::1", "ipv4": "10.0.0.1", "idle": 5},  # outside the pool
            {"ipv6": "2001:db8:3::1", "ipv4": "198.51.100.1", "idle": 5},  # reserved
            {"ipv6": "2001:db8:4::1", "ipv4": "198.51.100.0", "idle": 5},  # network address
            {"ipv6": "2001:db8:5::1", "ipv4": "198.51.100.9", "idle": 5000},  # expired
            {"ipv6": "2001:db8:6::1", "ipv4": "198.51.100.9", "idle": float("nan")},
            {"ipv6": "garbage", "ipv4": "198.51.100.10", "idle": 1},
            {"ipv4": "198.51.100.11", "idle": 1},
            ["not", "a", "dict"],
            {"ipv6": "2001:db8:7::1", "ipv4": "198.51.100.12", "idle": "soon"},
            {"ipv6": "2001:db8:8::1", "ipv4": "198.51.100.13", "idle": 1},
        ],
    }
    assert p.restore(json.dumps(doc), 100.0) == 2
    assert {b for _, b, _ in p.leases()} == {"198.51.100.5", "198.51.100.13"}


@pytest.mark.parametrize(
    "text",
    [
        "",
        "nonsense",
        "[]",
        "null",
        '{"version": 2, "leases": []}',
        '{"version": 1}',
        '{"version": 1, "leases": 5}',
        "[" * 100000,
    ],
)
def test_restore_garbage(text):
    assert Pool4("198.51.100.0/24").restore(text, 0.0) == 0
