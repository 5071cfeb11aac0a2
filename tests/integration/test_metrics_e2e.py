"""Metrics end to end: the real daemon, real traffic, the real endpoint, exact deltas.

Each test scrapes ``/metrics`` inside the router's namespace before and after
sending a known number of packets and asserts the exact change, series by
series, so a counter that counts twice, counts the wrong mapping or misses
a direction fails.  ``revnat64 status`` and the textfile are checked against
the same daemon.

One thing reaches the translator besides the test's traffic: when the TUN
comes up, the router's own kernel sends MLD reports into it (multicast, as on
any interface of an IPv6 router), and the translator drops them as
``no_mapping``.  :func:`scrape_settled` reads how many multicast packets the
kernel sent into the TUN (``/proc/net/dev_snmp6``) and takes them out of the
``no_mapping`` count, so the deltas stay exact.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from publisher.snapshot import Snapshot
from tests.integration.daemon_lab import ECHO_SERVER, ROOT, DaemonLab, base_config
from tests.netlab import CLIENT6, DEVICE4, DEVICE6, ROUTER_WAN6, Lab, wait_for
from tests.publisher.metrics_samples import Samples, parse, series

pytestmark = pytest.mark.integration

METRICS_PORT = 9864  # inside the router's own namespace, where nothing else listens
OTHER6, OTHER4 = "2001:db8:200::51", "192.0.2.51"
UNMAPPED6 = "2001:db8:200::99"
PAYLOAD = 100  # UDP payload bytes per echo
UDP_HEADER, IPV4_HEADER, IPV6_HEADER = 8, 20, 40


def metrics_config(d: DaemonLab, **translator: Any) -> dict[str, Any]:
    """Two mappings (only "camera" has a device), metrics on the router's loopback."""
    cfg = base_config(d.tmp, d.tun)
    cfg["mappings"].append(
        {"name": "printer", "ipv6": OTHER6, "ipv4": OTHER4, "allow": ["tcp/631"]}
    )
    cfg["metrics"] = {"listen": f"127.0.0.1:{METRICS_PORT}"}
    cfg["translator"].update(translator)
    return cfg


@pytest.fixture
def mlab(lab: Lab, tmp_path: Path) -> Iterator[DaemonLab]:
    d = DaemonLab(lab, tmp_path)
    try:
        yield d
    finally:
        d.close()


def scrape(d: DaemonLab) -> Samples:
    out = d.router.run(
        ["curl", "-sf", "--max-time", "5", f"http://127.0.0.1:{METRICS_PORT}/metrics"]
    ).stdout
    return parse(out)


WORKER_USAGE = "revnat64_worker_"
NO_MAPPING = series("revnat64_dropped_packets_total", reason="no_mapping")
MULTICAST = series("revnat64_dropped_packets_total", reason="multicast")


def router_chatter(d: DaemonLab) -> int:
    """Multicast packets the router's kernel sent into the TUN (its MLD reports)."""
    text = d.router.run(["cat", f"/proc/net/dev_snmp6/{d.tun}"]).stdout
    fields = dict(line.split() for line in text.splitlines() if line.strip())
    return int(fields["Ip6OutMcastPkts"])


def scrape_settled(d: DaemonLab, no_mapping: int = 0) -> Samples:
    """A scrape once the daemon has counted every packet sent into the TUN.

    The router's own MLD reports go to the ``multicast`` reason, exactly as many
    as the kernel sent into the TUN; ``no_mapping`` holds only what the test
    caused.  A daemon that over-counts never gets there and the wait fails.
    """

    def attempt() -> Samples | None:
        chatter = router_chatter(d)
        samples = scrape(d)
        if router_chatter(d) != chatter or samples[MULTICAST] != chatter:
            return None
        if samples[NO_MAPPING] != no_mapping:
            return None
        return samples

    result: Samples = wait_for(
        attempt, timeout=15, interval=0.2, what=f"{no_mapping} no_mapping drops"
    )
    return result


def delta(before: Samples, after: Samples) -> dict[Any, float]:
    """Series whose value changed (series that appeared count from 0).

    The router's own MLD chatter (``multicast``) is left out: scrape_settled
    already checked it equals what the kernel sent into the TUN.  So are the
    workers' CPU, memory and fds, which change on their own.
    """
    changed = {}
    for key, value in after.items():
        if key == MULTICAST or key[0].startswith(WORKER_USAGE):
            continue
        if key[0].startswith("revnat64_") and value != before.get(key, 0.0):
            changed[key] = value - before.get(key, 0.0)
    return changed


def translated(mapping: str, direction: str, what: str = "packets") -> Any:
    return series(f"revnat64_translated_{what}_total", mapping=mapping, direction=direction)


def udp_from(d: DaemonLab, source: str, count: int = 1, wait: float = 2.0) -> int:
    """``count`` echoes from the client's ``source`` address; returns how many came back."""
    code = (
        "import socket\n"
        "s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)\n"
        f"s.bind(('{source}', 0)); s.settimeout({wait})\n"
        "ok = 0\n"
        f"for _ in range({count}):\n"
        f"    s.sendto(b'x' * {PAYLOAD}, ('{DEVICE6}', 7))\n"
        "    try:\n"
        f"        ok += len(s.recv(2048)) == {PAYLOAD}\n"
        "    except OSError:\n"
        "        pass\n"
        "print(ok)\n"
    )
    return int(d.client.run([sys.executable, "-c", code], timeout=5 + 3 * count).stdout)


def add_client_addresses(d: DaemonLab, addresses: list[str]) -> None:
    """More IPv6 clients on the client host, all known to the router's neighbour table.

    Each address (the lab's own client included) pings the router first, so
    the router's neighbour discovery for it is done before the test's packets.
    Otherwise a reply may wait for it, and in these labs the router's first
    solicitations sometimes go unanswered for longer than the test's UDP client
    waits (2 s).
    """
    for address in addresses:
        d.client.run(f"ip -6 addr add {address}/64 dev wan0 nodad")
    for address in [CLIENT6, *addresses]:
        d.client.run(["ping", "-6", "-c", "3", "-i", "0.2", "-W", "2", "-I", address, ROUTER_WAN6])


def test_twenty_udp_echoes_count_forty_packets_on_their_mapping_only(mlab: DaemonLab) -> None:
    mlab.write_config(metrics_config(mlab))
    mlab.start()
    mlab.start_udp_echo(7)
    assert mlab.udp_echo(PAYLOAD, count=1) == 1  # warm up: lease and neighbour entries
    before = scrape_settled(mlab)
    assert before[translated("printer", "6to4")] == 0  # every series exists from the start
    assert before[translated("printer", "4to6")] == 0

    assert mlab.udp_echo(PAYLOAD, count=20) == 20
    after = scrape_settled(mlab)

    assert delta(before, after) == {
        translated("camera", "6to4"): 20,
        translated("camera", "4to6"): 20,
        # bytes of the packets as written out: IPv4 towards the device, IPv6 back
        translated("camera", "6to4", "bytes"): 20 * (IPV4_HEADER + UDP_HEADER + PAYLOAD),
        translated("camera", "4to6", "bytes"): 20 * (IPV6_HEADER + UDP_HEADER + PAYLOAD),
    }


def test_pings_to_an_unmapped_address_count_as_no_mapping_drops(mlab: DaemonLab) -> None:
    mlab.write_config(metrics_config(mlab, publish_prefix="2001:db8:200::/64"))
    mlab.start()
    before = scrape_settled(mlab)

    out = mlab.client.run(
        ["ping", "-6", "-c", "5", "-i", "0.2", "-W", "2", UNMAPPED6], check=False
    ).stdout
    assert out.count("Destination unreachable") == 5, out
    after = scrape_settled(mlab, no_mapping=5)

    assert delta(before, after) == {
        series("revnat64_dropped_packets_total", reason="no_mapping"): 5,
        series(
            "revnat64_icmp_errors_sent_total", family="icmpv6", type="destination_unreachable"
        ): 5,
    }


def test_pool_gauges_follow_the_leases(mlab: DaemonLab) -> None:
    # Two leases per /64 at most; leases end 6 s after their last packet, long enough
    # to outlive the steps below, short enough to watch them expire.
    mlab.write_config(
        metrics_config(mlab, lease_time=6, lease_limit_per_prefix=2, lease_limit_prefix_len=64)
    )
    clients = [CLIENT6, "2001:db8:1::3", "2001:db8:1::4"]
    mlab.start()
    add_client_addresses(mlab, clients[1:])
    mlab.start_udp_echo(7)
    start = scrape_settled(mlab)
    # 198.51.100.0/24 has 254 host addresses; the translator's own 198.51.100.1 is not leased.
    assert start[series("revnat64_pool_addresses")] == 253
    assert start[series("revnat64_pool_addresses_in_use")] == 0

    assert udp_from(mlab, clients[0]) == 1
    one = scrape_settled(mlab)
    assert one[series("revnat64_pool_addresses_in_use")] == 1
    assert one[series("revnat64_pool_leases_created_total")] == 1

    assert udp_from(mlab, clients[1]) == 1
    assert udp_from(mlab, clients[2], wait=0.5) == 0  # a third lease in this /64: refused
    two = scrape_settled(mlab)
    assert delta(one, two) == {
        series("revnat64_pool_addresses_in_use"): 1,
        series("revnat64_pool_leases_created_total"): 1,
        series("revnat64_pool_refused_total", reason="prefix_limit"): 1,
        series("revnat64_dropped_packets_total", reason="lease_limit"): 1,
        # the refused client is told so (RFC 7915 has no "pool full" message)
        series(
            "revnat64_icmp_errors_sent_total", family="icmpv6", type="destination_unreachable"
        ): 1,
        translated("camera", "6to4"): 1,
        translated("camera", "4to6"): 1,
        translated("camera", "6to4", "bytes"): IPV4_HEADER + UDP_HEADER + PAYLOAD,
        translated("camera", "4to6", "bytes"): IPV6_HEADER + UDP_HEADER + PAYLOAD,
    }
    assert two[series("revnat64_pool_addresses_in_use")] == 2

    # Idle leases expire (the daemon sweeps every few seconds); the gauge follows.
    wait_for(
        lambda: scrape(mlab)[series("revnat64_pool_addresses_in_use")] == 0,
        timeout=40,
        interval=0.5,
        what="idle leases to expire",
    )
    done = scrape_settled(mlab)
    assert done[series("revnat64_pool_leases_expired_total")] == 2
    assert done[series("revnat64_pool_leases_created_total")] == 2


def test_exhausted_pool_is_counted(mlab: DaemonLab) -> None:
    # A /30 has two host addresses; one is the translator's own: one lease in all.
    mlab.write_config(metrics_config(mlab, pool4="198.51.100.0/30"))
    mlab.start()
    add_client_addresses(mlab, ["2001:db8:1::3"])
    mlab.start_udp_echo(7)
    before = scrape_settled(mlab)
    assert before[series("revnat64_pool_addresses")] == 1

    # Two echoes: the second packet confirms the lease (see docs/translator.md),
    # and only a confirmed lease is never given to somebody else.
    assert udp_from(mlab, CLIENT6, count=2) == 2
    assert udp_from(mlab, "2001:db8:1::3", wait=0.5) == 0
    after = scrape_settled(mlab)
    assert after[series("revnat64_pool_addresses_in_use")] == 1
    assert after[series("revnat64_pool_refused_total", reason="exhausted")] == 1
    assert after[series("revnat64_dropped_packets_total", reason="pool_exhausted")] == 1


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "publisher.cli", *args],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )


def test_status_and_textfile_agree_with_the_endpoint(mlab: DaemonLab) -> None:
    cfg = metrics_config(mlab)
    textfile = mlab.tmp / "textfile" / "revnat64.prom"
    textfile.parent.mkdir()
    cfg["metrics"]["textfile"] = str(textfile)
    cfg["metrics"]["textfile_interval"] = 1
    mlab.write_config(cfg)
    mlab.start()
    mlab.start_udp_echo(7)
    assert mlab.udp_echo(PAYLOAD, count=7) == 7

    proc = run_cli("status", "-c", str(mlab.config_path), "--json")
    assert proc.returncode == 0, proc.stderr
    snap = Snapshot.from_json(proc.stdout)
    assert snap.packets[("camera", "6to4")] == snap.packets[("camera", "4to6")] == 7
    assert snap.pool_in_use == 1
    assert [lease[0] for lease in snap.leases] == [CLIENT6]
    assert [m.name for m in snap.mappings] == ["camera", "printer"]

    scraped = scrape_settled(mlab)
    assert scraped[translated("camera", "6to4")] == 7

    # MLD chatter may grow between the two reads; every other series must match.
    # So may the workers' CPU, memory and fds (checked on their own below).
    def comparable(samples: Samples) -> Samples:
        return {
            k: v
            for k, v in samples.items()
            if k[0].startswith("revnat64_") and not k[0].startswith(WORKER_USAGE) and k != MULTICAST
        }

    expected = comparable(scraped)

    def file_samples() -> Samples | None:
        if not textfile.exists():
            return None
        return comparable(parse(textfile.read_text()))

    # The writer rewrites the file every second; it catches up with the endpoint.
    wait_for(
        lambda: file_samples() == expected,
        what="the textfile to hold what the endpoint serves",
    )

    # The textfile has no process_* series; the workers' own usage is there.
    assert parse(textfile.read_text())[worker_series("resident_memory_bytes", 0)] > 0

    proc = run_cli("status", "-c", str(mlab.config_path))
    assert proc.returncode == 0, proc.stderr
    rows = {line.split()[0]: line.split() for line in proc.stdout.splitlines() if line}
    # 7 x 128-byte IPv4 packets = 896 B; 7 x 148-byte IPv6 packets = 1036 B = 1.01 KiB
    assert rows["camera"] == ["camera", DEVICE6, "192.0.2.50", "7", "896", "B", "7", "1.01", "KiB"]
    assert rows["printer"] == ["printer", OTHER6, OTHER4, "0", "0", "B", "0", "0", "B"]
    assert f"{CLIENT6} " in proc.stdout  # the lease table

    assert mlab.stop() == 0
    proc = run_cli("status", "-c", str(mlab.config_path))
    assert proc.returncode == 1
    assert "the daemon is not running" in proc.stderr


def worker_series(name: str, index: int) -> Any:
    return series(f"revnat64_worker_{name}", worker=str(index))


@pytest.mark.parametrize("workers", [1, 2])
def test_every_worker_reports_its_own_cpu_memory_and_fds(mlab: DaemonLab, workers: int) -> None:
    mlab.write_config(metrics_config(mlab, workers=workers))
    mlab.start()
    mlab.start_udp_echo(7)
    assert mlab.udp_echo(PAYLOAD, count=1) == 1
    before = scrape_settled(mlab)
    assert before[series("revnat64_workers")] == workers
    exported = sorted(
        dict(labels)["worker"] for name, labels in before if name.startswith(WORKER_USAGE)
    )
    assert exported == sorted([str(i) for i in range(workers)] * 3)  # cpu, memory, fds each

    # The pids in status are the supervisor's children, one per worker, and the
    # numbers are theirs: a worker's RSS is far below the whole daemon's.
    proc = run_cli("status", "-c", str(mlab.config_path), "--json")
    assert proc.returncode == 0, proc.stderr
    snap = Snapshot.from_json(proc.stdout)
    assert [u.index for u in snap.worker_usage] == list(range(workers))
    assert mlab.proc is not None
    children = Path(f"/proc/{mlab.proc.pid}/task/{mlab.proc.pid}/children").read_text().split()
    assert sorted(str(u.pid) for u in snap.worker_usage) == sorted(children)
    for index in range(workers):
        assert before[worker_series("resident_memory_bytes", index)] > 1 << 20
        assert before[worker_series("open_fds", index)] >= 3  # at least TUN, channel, pipe

    # Traffic costs the workers CPU: the sum over them grows (one flow uses one queue).
    assert mlab.udp_echo(PAYLOAD, count=300) == 300
    after = scrape_settled(mlab)
    cpu = [worker_series("cpu_seconds_total", i) for i in range(workers)]
    assert sum(after[k] for k in cpu) > sum(before[k] for k in cpu)
    for key in cpu:
        assert after[key] >= before[key]  # a counter
    assert after[translated("camera", "6to4")] - before[translated("camera", "6to4")] == 300

    text = run_cli("status", "-c", str(mlab.config_path)).stdout
    for index in range(workers):
        assert f"worker {index}:" in text, text


PREFIX = "2001:db8:64::/96"
REMOTE4 = "203.0.113.10"  # an IPv4 host no mapping covers, behind the device
REMOTE_VIA_PREFIX = "2001:db8:64::cb00:710a"  # REMOTE4 embedded in PREFIX (RFC 6052 /96)


def test_traffic_through_the_prefix_counts_under_the_reserved_mapping(mlab: DaemonLab) -> None:
    """A client reaches an unmapped IPv4 host as <prefix>:<ipv4>; no mapping owns it.

    6->4 the client's source gets a pool4 lease and the destination is the
    embedded IPv4 address; 4->6 the host's source maps back through the prefix.
    The translator counts both under mapping index -1, exported as "_prefix".
    """
    mlab.write_config(metrics_config(mlab, prefix=PREFIX))
    # The IPv4 host lives on the device's namespace, routed from the router via the device.
    mlab.device.run(f"ip addr add {REMOTE4}/32 dev lan0")
    mlab.router.run(f"ip route add 203.0.113.0/24 via {DEVICE4} dev lan0")
    mlab.start()
    mlab.device.popen([sys.executable, str(ECHO_SERVER), REMOTE4, "7"])
    start = scrape_settled(mlab)
    # Configured prefix: its series exist at 0 before any traffic.
    for direction in ("6to4", "4to6"):
        assert start[translated("_prefix", direction)] == 0
        assert start[translated("_prefix", direction, "bytes")] == 0
    # Warm up (the echo server may still be starting): lease and neighbour entries.
    wait_for(
        lambda: mlab.udp_echo(PAYLOAD, dst=REMOTE_VIA_PREFIX, count=1) == 1,
        timeout=15,
        interval=0.2,
        what="an echo from the IPv4 host through the prefix",
    )
    before = scrape_settled(mlab)

    assert mlab.udp_echo(PAYLOAD, dst=REMOTE_VIA_PREFIX, count=12) == 12
    after = scrape_settled(mlab)

    assert delta(before, after) == {
        translated("_prefix", "6to4"): 12,
        translated("_prefix", "4to6"): 12,
        translated("_prefix", "6to4", "bytes"): 12 * (IPV4_HEADER + UDP_HEADER + PAYLOAD),
        translated("_prefix", "4to6", "bytes"): 12 * (IPV6_HEADER + UDP_HEADER + PAYLOAD),
    }
    assert after[translated("camera", "6to4")] == 0  # the device's mapping saw none of it

    proc = run_cli("status", "-c", str(mlab.config_path))
    assert proc.returncode == 0, proc.stderr
    rows = {line.split()[0]: line.split() for line in proc.stdout.splitlines() if line}
    sent = int(after[translated("_prefix", "6to4")])
    assert rows["_prefix"][:4] == ["_prefix", PREFIX, "any", str(sent)]
