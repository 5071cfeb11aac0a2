"""Known snapshots shared by the metrics, status and contrib tests."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from publisher.snapshot import MappingInfo, Snapshot, WorkerUsage

# Fixed "now" for rendering: 2026-01-02 03:04:05 UTC.
NOW = 1767323045.0


def sample_snapshot() -> Snapshot:
    """Every field set, with distinct values so a swapped field shows up."""
    return Snapshot(
        mappings=[
            MappingInfo("frontdoor-cam", "2001:db8:200::50/128", "192.0.2.50/32", "frontdoor"),
            MappingInfo("nas", "2001:db8:200::51", "192.0.2.51", "nas"),
            MappingInfo("lab-range", "2001:db8:200:1::/121", "192.0.2.128/25", "lab-range"),
        ],
        packets={
            ("frontdoor-cam", "6to4"): 1523,
            ("frontdoor-cam", "4to6"): 1490,
            ("nas", "6to4"): 2_500_000,
            ("_prefix", "6to4"): 40,
            ("_prefix", "4to6"): 38,
        },
        bytes={
            ("frontdoor-cam", "6to4"): 98_304,
            ("frontdoor-cam", "4to6"): 5_452_595,
            ("nas", "6to4"): 3_221_225_472,
            ("_prefix", "6to4"): 4_800,
            ("_prefix", "4to6"): 5_320,
        },
        dropped={"no_mapping": 17, "malformed": 2, "ttl_exceeded": 0, "fragment": 0},
        icmp_errors={
            ("icmpv6", "destination_unreachable"): 17,
            ("icmpv4", "fragmentation_needed"): 3,
            ("icmpv6", "time_exceeded"): 0,
        },
        pool_in_use=3,
        pool_size=253,
        leases_created=11,
        leases_expired=8,
        leases_reclaimed_unconfirmed=5,
        pool_refused={"exhausted": 0, "prefix_limit": 4},
        firewall_drops={"frontdoor-cam": (42, 2520), "nas": (0, 0), "lab-range": (7, 420)},
        reloads={"success": 3, "failure": 1},
        last_reload_timestamp=NOW - 300.0,
        started_timestamp=NOW - (2 * 86400 + 5 * 3600 + 7 * 60),
        firewall_state="applied",
        firewall_reapplied=1,
        network_restored=3,
        prefix_interface="br-lan",
        published_prefix="2001:db8:200::/64",
        prefix_changes=2,
        dns_state="retrying 2026-01-02T02:59:05Z: DNS server 192.0.2.53:53 timed out",
        dns_update_state="retrying",
        dns_update_unreachable=2,
        dns_last_success_timestamp=NOW - 3600.0,
        leases=[
            ("2001:db8:1::2", "198.51.100.7", 12.0),
            ("2001:db8:ffff::99", "198.51.100.9", 4000.0),
            ("2001:db8:1::3", "198.51.100.8", 0.5),
        ],
        workers=2,
        prefix="2001:db8:64::/96",
        worker_usage=[
            WorkerUsage(
                index=0, pid=4242, cpu_seconds=12.34, resident_bytes=22_437_888, open_fds=9
            ),
            WorkerUsage(
                index=1, pid=4243, cpu_seconds=187.5, resident_bytes=18_874_368, open_fds=7
            ),
        ],
    )


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample as (name, labels) -> value; a repeated series fails the test."""
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            key = (s.name, frozenset(s.labels.items()))
            assert key not in out, f"series exported twice: {key}"
            out[key] = s.value
    return out


def series(name: str, **labels: str) -> tuple[str, frozenset[tuple[str, str]]]:
    return (name, frozenset(labels.items()))
