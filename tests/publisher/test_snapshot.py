"""Snapshot: the JSON round trip and the merge rule across worker processes."""

from __future__ import annotations

import dataclasses
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from publisher.snapshot import FORMAT_VERSION, MappingInfo, Snapshot, WorkerUsage
from tests.publisher.metrics_samples import sample_snapshot


def test_json_round_trip_keeps_every_field() -> None:
    snap = sample_snapshot()
    again = Snapshot.from_json(snap.to_json())
    assert again == snap
    assert again.to_json() == snap.to_json()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not json", "not JSON"),
        ("[1, 2]", "not a JSON object"),
        ('{"format": 99}', "format 99"),
        ('{"format": 1}', "lacks the field 'mappings'"),
    ],
)
def test_from_json_says_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Snapshot.from_json(text)


def test_from_json_rejects_a_malformed_field() -> None:
    doc = json.loads(sample_snapshot().to_json())
    doc["packets"] = [["cam", "6to4"]]  # a row without its count
    with pytest.raises(ValueError, match="malformed field"):
        Snapshot.from_json(json.dumps(doc))


def test_merge_sums_counters_across_workers() -> None:
    mappings = [MappingInfo("cam", "2001:db8:200::50", "192.0.2.50", "cam")]
    supervisor = Snapshot(
        mappings=mappings,
        dropped={"no_mapping": 0, "malformed": 0},
        pool_in_use=4,
        pool_size=253,
        leases_created=6,
        leases_expired=2,
        pool_refused={"exhausted": 1},
        firewall_drops={"cam": (10, 600)},
        reloads={"success": 2, "failure": 1},
        last_reload_timestamp=1000.0,
        started_timestamp=500.0,
        firewall_state="applied",
        dns_state="disabled",
        leases=[("2001:db8:1::2", "198.51.100.7", 3.0)],
        workers=0,
    )
    worker1 = Snapshot(
        mappings=mappings,
        packets={("cam", "6to4"): 20, ("cam", "4to6"): 19},
        bytes={("cam", "6to4"): 2000, ("cam", "4to6"): 1900},
        dropped={"no_mapping": 3, "malformed": 0},
        icmp_errors={("icmpv6", "destination_unreachable"): 3},
        firewall_drops={"cam": (10, 600)},  # every process reads the same nft counter
        reloads={"success": 2},
        workers=1,
    )
    worker2 = Snapshot(
        mappings=mappings,
        packets={("cam", "6to4"): 5, ("cam", "4to6"): 6},
        bytes={("cam", "6to4"): 500, ("cam", "4to6"): 600},
        dropped={"no_mapping": 1, "malformed": 2, "fragment": 7},
        icmp_errors={("icmpv6", "destination_unreachable"): 1, ("icmpv4", "time_exceeded"): 2},
        pool_refused={"prefix_limit": 3},
        workers=1,
    )
    merged = Snapshot.merge([supervisor, worker1, worker2])
    assert merged == Snapshot(
        mappings=mappings,
        packets={("cam", "6to4"): 25, ("cam", "4to6"): 25},
        bytes={("cam", "6to4"): 2500, ("cam", "4to6"): 2500},
        dropped={"no_mapping": 4, "malformed": 2, "fragment": 7},
        icmp_errors={("icmpv6", "destination_unreachable"): 4, ("icmpv4", "time_exceeded"): 2},
        pool_in_use=4,
        pool_size=253,
        leases_created=6,
        leases_expired=2,
        pool_refused={"exhausted": 1, "prefix_limit": 3},
        firewall_drops={"cam": (10, 600)},
        reloads={"success": 2, "failure": 1},
        last_reload_timestamp=1000.0,
        started_timestamp=500.0,
        firewall_state="applied",
        dns_state="disabled",
        leases=[("2001:db8:1::2", "198.51.100.7", 3.0)],
        workers=2,
    )
    # The parts are not changed by merging.
    assert worker1.packets == {("cam", "6to4"): 20, ("cam", "4to6"): 19}


def test_merge_takes_pool_gauges_from_the_part_that_owns_the_pool() -> None:
    supervisor = Snapshot(firewall_state="applied", workers=0)
    pool_worker = Snapshot(pool_in_use=2, pool_size=14, leases=[("2001:db8::9", "x", 1.0)])
    merged = Snapshot.merge([supervisor, Snapshot(), pool_worker])
    assert (merged.pool_in_use, merged.pool_size, merged.leases) == (2, 14, pool_worker.leases)
    assert merged.firewall_state == "applied"


def test_merge_keeps_worker_usage_per_worker_in_index_order() -> None:
    supervisor = Snapshot(workers=0, prefix="2001:db8:64::/96")
    usage0 = WorkerUsage(index=0, pid=100, cpu_seconds=1.5, resident_bytes=4096, open_fds=8)
    usage1 = WorkerUsage(index=1, pid=101, cpu_seconds=0.25, resident_bytes=8192, open_fds=6)
    worker0 = Snapshot(worker_usage=[usage0], prefix="ignored: not configuration")
    worker1 = Snapshot(worker_usage=[usage1])
    merged = Snapshot.merge([supervisor, worker1, worker0])
    assert merged.worker_usage == [usage0, usage1]  # never summed
    assert merged.prefix == "2001:db8:64::/96"  # configuration: from the supervisor


def test_json_from_an_older_daemon_without_the_optional_fields_still_reads() -> None:
    """status and daemon may be one version apart: new fields are optional."""
    doc = json.loads(sample_snapshot().to_json())
    assert doc["format"] == FORMAT_VERSION
    del doc["prefix"], doc["worker_usage"]
    snap = Snapshot.from_json(json.dumps(doc))
    assert (snap.prefix, snap.worker_usage) == ("", [])
    assert snap.packets == sample_snapshot().packets


def test_json_with_fields_this_version_does_not_know_still_reads() -> None:
    doc = json.loads(sample_snapshot().to_json())
    doc["from_the_future"] = [1, 2, 3]
    assert Snapshot.from_json(json.dumps(doc)) == sample_snapshot()


def test_from_json_rejects_a_malformed_worker_usage_row() -> None:
    doc = json.loads(sample_snapshot().to_json())
    doc["worker_usage"] = [[0, 4242, 1.0]]  # a row without memory and fds
    with pytest.raises(ValueError, match="malformed field"):
        Snapshot.from_json(json.dumps(doc))


def test_merge_needs_a_part() -> None:
    with pytest.raises(ValueError, match="at least one"):
        Snapshot.merge([])


counts = st.integers(min_value=0, max_value=2**62)
labels = st.sampled_from(["cam", "nas", "printer"])
directions = st.sampled_from(["6to4", "4to6"])
snapshots = st.builds(
    Snapshot,
    packets=st.dictionaries(st.tuples(labels, directions), counts),
    bytes=st.dictionaries(st.tuples(labels, directions), counts),
    dropped=st.dictionaries(st.sampled_from(["no_mapping", "malformed", "fragment"]), counts),
    leases_created=counts,
    leases_reclaimed_unconfirmed=counts,
    pool_refused=st.dictionaries(st.sampled_from(["exhausted", "prefix_limit"]), counts),
    workers=st.integers(min_value=0, max_value=4),
)


@given(st.lists(snapshots, min_size=1, max_size=6))
def test_merged_counters_equal_the_sum_of_the_parts(parts: list[Snapshot]) -> None:
    merged = Snapshot.merge(parts)
    for name in ("packets", "bytes", "dropped", "pool_refused"):
        keys = {k for p in parts for k in getattr(p, name)}
        assert getattr(merged, name) == {
            k: sum(getattr(p, name).get(k, 0) for p in parts) for k in keys
        }
    assert merged.leases_created == sum(p.leases_created for p in parts)
    assert merged.leases_reclaimed_unconfirmed == sum(p.leases_reclaimed_unconfirmed for p in parts)
    assert merged.workers == sum(p.workers for p in parts)


@given(snapshots)
def test_merging_one_snapshot_changes_nothing(snap: Snapshot) -> None:
    assert Snapshot.merge([snap]) == snap
    assert Snapshot.from_json(snap.to_json()) == snap


def test_snapshot_field_names_are_the_contract() -> None:
    """The daemon constructs Snapshots by keyword; renaming a field breaks it."""
    assert [f.name for f in dataclasses.fields(Snapshot)] == [
        "mappings",
        "packets",
        "bytes",
        "dropped",
        "icmp_errors",
        "pool_in_use",
        "pool_size",
        "leases_created",
        "leases_expired",
        "leases_reclaimed_unconfirmed",
        "pool_refused",
        "firewall_drops",
        "reloads",
        "last_reload_timestamp",
        "started_timestamp",
        "firewall_state",
        "firewall_reapplied",
        "network_restored",
        "network_problem",
        "prefix_interface",
        "published_prefix",
        "prefix_changes",
        "dns_state",
        "dns_update_state",
        "dns_update_unreachable",
        "dns_last_success_timestamp",
        "leases",
        "workers",
        "prefix",
        "worker_usage",
    ]
