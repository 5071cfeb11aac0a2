"""The exporter: exact values through prometheus-client's own text parser."""

from __future__ import annotations

import logging
import os
import platform
import socket
import stat
import threading
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from publisher import __version__
from publisher import metrics as metrics_module
from publisher.metrics import (
    TextfileWriter,
    collect_after_each_request,
    parse_listen,
    render,
    start_http_server,
    write_textfile,
)
from publisher.snapshot import MappingInfo, Snapshot
from tests.netlab import wait_for
from tests.publisher.metrics_samples import NOW, Samples, parse, sample_snapshot, series


def only_revnat64(samples: Samples) -> Samples:
    return {k: v for k, v in samples.items() if k[0].startswith("revnat64_")}


EXPECTED_SAMPLE = {
    series("revnat64_translated_packets_total", mapping="frontdoor-cam", direction="6to4"): 1523,
    series("revnat64_translated_packets_total", mapping="frontdoor-cam", direction="4to6"): 1490,
    series("revnat64_translated_packets_total", mapping="nas", direction="6to4"): 2_500_000,
    series("revnat64_translated_packets_total", mapping="nas", direction="4to6"): 0,
    series("revnat64_translated_packets_total", mapping="lab-range", direction="6to4"): 0,
    series("revnat64_translated_packets_total", mapping="lab-range", direction="4to6"): 0,
    series("revnat64_translated_bytes_total", mapping="frontdoor-cam", direction="6to4"): 98_304,
    series("revnat64_translated_bytes_total", mapping="frontdoor-cam", direction="4to6"): 5_452_595,
    series("revnat64_translated_bytes_total", mapping="nas", direction="6to4"): 3_221_225_472,
    series("revnat64_translated_bytes_total", mapping="nas", direction="4to6"): 0,
    series("revnat64_translated_bytes_total", mapping="lab-range", direction="6to4"): 0,
    series("revnat64_translated_bytes_total", mapping="lab-range", direction="4to6"): 0,
    series("revnat64_translated_packets_total", mapping="_prefix", direction="6to4"): 40,
    series("revnat64_translated_packets_total", mapping="_prefix", direction="4to6"): 38,
    series("revnat64_translated_bytes_total", mapping="_prefix", direction="6to4"): 4_800,
    series("revnat64_translated_bytes_total", mapping="_prefix", direction="4to6"): 5_320,
    series("revnat64_dropped_packets_total", reason="no_mapping"): 17,
    series("revnat64_dropped_packets_total", reason="malformed"): 2,
    series("revnat64_dropped_packets_total", reason="ttl_exceeded"): 0,
    series("revnat64_dropped_packets_total", reason="fragment"): 0,
    series("revnat64_icmp_errors_sent_total", family="icmpv6", type="destination_unreachable"): 17,
    series("revnat64_icmp_errors_sent_total", family="icmpv4", type="fragmentation_needed"): 3,
    series("revnat64_icmp_errors_sent_total", family="icmpv6", type="time_exceeded"): 0,
    series("revnat64_pool_addresses_in_use"): 3,
    series("revnat64_pool_addresses"): 253,
    series("revnat64_pool_leases_created_total"): 11,
    series("revnat64_pool_leases_expired_total"): 8,
    series("revnat64_pool_unconfirmed_reclaimed_total"): 5,
    series("revnat64_pool_refused_total", reason="exhausted"): 0,
    series("revnat64_pool_refused_total", reason="prefix_limit"): 4,
    series("revnat64_firewall_dropped_packets_total", mapping="frontdoor-cam"): 42,
    series("revnat64_firewall_dropped_packets_total", mapping="nas"): 0,
    series("revnat64_firewall_dropped_packets_total", mapping="lab-range"): 7,
    series("revnat64_firewall_dropped_bytes_total", mapping="frontdoor-cam"): 2520,
    series("revnat64_firewall_dropped_bytes_total", mapping="nas"): 0,
    series("revnat64_firewall_dropped_bytes_total", mapping="lab-range"): 420,
    series("revnat64_firewall_reapplied_total"): 1,
    series("revnat64_network_restored_total"): 3,
    series("revnat64_network_repair_failing"): 0,
    series("revnat64_published_prefix_info", prefix="2001:db8:200::/64", interface="br-lan"): 1,
    series("revnat64_prefix_changes_total"): 2,
    series("revnat64_reloads_total", result="success"): 3,
    series("revnat64_reloads_total", result="failure"): 1,
    series("revnat64_last_reload_success_timestamp_seconds"): NOW - 300,
    series("revnat64_mappings"): 3,
    series("revnat64_workers"): 2,
    series("revnat64_build_info", version=__version__, python=platform.python_version()): 1,
    series("revnat64_start_time_seconds"): NOW - 191_220,  # 2d 5h 7m
    series("revnat64_dns_update_state", state="never"): 0,
    series("revnat64_dns_update_state", state="running"): 0,
    series("revnat64_dns_update_state", state="ok"): 0,
    series("revnat64_dns_update_state", state="retrying"): 1,
    series("revnat64_dns_update_state", state="conflict"): 0,
    series("revnat64_dns_update_state", state="error"): 0,
    series("revnat64_dns_update_unreachable_total"): 2,
    series("revnat64_dns_update_last_success_timestamp_seconds"): NOW - 3600,
    series("revnat64_worker_cpu_seconds_total", worker="0"): 12.34,
    series("revnat64_worker_cpu_seconds_total", worker="1"): 187.5,
    series("revnat64_worker_resident_memory_bytes", worker="0"): 22_437_888,
    series("revnat64_worker_resident_memory_bytes", worker="1"): 18_874_368,
    series("revnat64_worker_open_fds", worker="0"): 9,
    series("revnat64_worker_open_fds", worker="1"): 7,
}


def test_collector_exports_exactly_the_snapshot() -> None:
    samples = parse(render(sample_snapshot).decode())
    assert samples == EXPECTED_SAMPLE


def test_fresh_daemon_has_every_series_at_zero() -> None:
    """rate() sees the first packet only if a 0 sample came before it."""
    snap = Snapshot(
        mappings=[MappingInfo("cam", "2001:db8:200::50", "192.0.2.50", "")],
        dropped={"no_mapping": 0, "malformed": 0},
    )
    samples = parse(render(lambda: snap).decode())
    for direction in ("6to4", "4to6"):
        for name in ("revnat64_translated_packets_total", "revnat64_translated_bytes_total"):
            assert samples[series(name, mapping="cam", direction=direction)] == 0
    for reason in ("no_mapping", "malformed"):
        assert samples[series("revnat64_dropped_packets_total", reason=reason)] == 0
    for reason in ("exhausted", "prefix_limit"):
        assert samples[series("revnat64_pool_refused_total", reason=reason)] == 0
    for result in ("success", "failure"):
        assert samples[series("revnat64_reloads_total", result=result)] == 0
    # Firewall and DNS updates disabled: the families exist, without series.
    assert not [k for k in samples if k[0].startswith("revnat64_firewall_")]
    assert not [k for k in samples if k[0].startswith("revnat64_dns_")]
    # No wan.prefix_from: no prefix series either.
    assert not [k for k in samples if "prefix" in k[0]]


def test_counters_of_a_removed_mapping_are_still_exported() -> None:
    """A reload that drops a mapping must not make its counter go backwards mid-run."""
    snap = Snapshot(packets={("old", "6to4"): 5}, bytes={("old", "6to4"): 300})
    samples = parse(render(lambda: snap).decode())
    assert (
        samples[series("revnat64_translated_packets_total", mapping="old", direction="6to4")] == 5
    )
    assert (
        samples[series("revnat64_translated_bytes_total", mapping="old", direction="6to4")] == 300
    )


def test_client_addresses_never_appear_in_metrics() -> None:
    text = render(sample_snapshot).decode()
    for client, pool_address, _ in sample_snapshot().leases:
        assert client not in text
        assert pool_address not in text


def test_help_and_type_for_every_family() -> None:
    text = render(sample_snapshot).decode()
    families = list(text_string_to_metric_families(text))
    assert families
    for family in families:
        assert len(family.documentation) > 20, family.name
        assert family.type in ("counter", "gauge"), family.name
        if family.type == "counter":
            assert all(s.name == f"{family.name}_total" for s in family.samples), family.name


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:9864", ("127.0.0.1", 9864)),
        ("127.0.0.1:0", ("127.0.0.1", 0)),
        ("[::1]:0", ("::1", 0)),
        ("[2001:db8::1]:9864", ("2001:db8::1", 9864)),
    ],
)
def test_parse_listen(text: str, expected: tuple[str, int]) -> None:
    assert parse_listen(text) == expected


@pytest.mark.parametrize("text", ["::1:9864", "[::1]", "127.0.0.1:99999", "[nonsense]:0"])
def test_parse_listen_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_listen(text)


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        assert response.status == 200
        return str(response.read().decode())


@pytest.mark.parametrize("listen", ["127.0.0.1:0", "[::1]:0"])
def test_http_endpoint_serves_each_scrape_from_a_fresh_snapshot(listen: str) -> None:
    snap = sample_snapshot()
    calls = []

    def snapshot_fn() -> Snapshot:
        calls.append(1)
        return snap

    server = start_http_server(listen, snapshot_fn)
    try:
        assert server.port != 0
        first = parse(scrape(server.url))
        assert only_revnat64(first) == EXPECTED_SAMPLE
        # ProcessCollector runs in the same registry.
        assert first[series("process_resident_memory_bytes")] > 0
        assert first[series("process_cpu_seconds_total")] >= 0

        snap.packets[("nas", "4to6")] = 99
        second = parse(scrape(server.url))
        assert (
            second[series("revnat64_translated_packets_total", mapping="nas", direction="4to6")]
            == 99
        )
        assert len(calls) == 2
    finally:
        server.close()
    family = socket.AF_INET6 if ":" in server.host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        with pytest.raises(ConnectionRefusedError):
            probe.connect((server.host, server.port))


def test_http_endpoint_reports_a_busy_port() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match=f"cannot serve metrics on 127.0.0.1:{port}"):
            start_http_server(f"127.0.0.1:{port}", sample_snapshot)


def test_textfile_is_written_atomically(tmp_path: Path) -> None:
    path = tmp_path / "revnat64.prom"
    write_textfile(str(path), sample_snapshot)
    assert parse(path.read_text()) == EXPECTED_SAMPLE
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert os.listdir(tmp_path) == ["revnat64.prom"]

    # A reader racing the writer only ever sees a whole file: old or new.
    snap = sample_snapshot()
    complete = {render(lambda: snap).decode()}
    stop = threading.Event()
    seen: list[str] = []

    def reader() -> None:
        while not stop.is_set() and len(seen) < 5000:
            seen.append(path.read_text())

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(300):
            snap.dropped[f"reason{i}"] = i  # the file grows on every write
            write_textfile(str(path), lambda: snap)
            complete.add(render(lambda: snap).decode())
    finally:
        stop.set()
        thread.join(timeout=10)
    assert seen
    assert all(text in complete for text in seen)
    assert os.listdir(tmp_path) == ["revnat64.prom"]


def test_failed_textfile_write_keeps_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "revnat64.prom"
    write_textfile(str(path), sample_snapshot)
    before = path.read_text()

    def broken() -> Snapshot:
        raise RuntimeError("daemon is reloading")

    with pytest.raises(RuntimeError):
        write_textfile(str(path), broken)
    assert path.read_text() == before
    assert os.listdir(tmp_path) == ["revnat64.prom"]


def test_textfile_has_no_process_metrics(tmp_path: Path) -> None:
    """node-exporter exports its own process_* series; duplicates break its scrape."""
    path = tmp_path / "revnat64.prom"
    write_textfile(str(path), sample_snapshot)
    assert all(name.startswith("revnat64_") for name, _ in parse(path.read_text()))


def test_textfile_writer_rewrites_until_stopped(tmp_path: Path) -> None:
    path = tmp_path / "revnat64.prom"
    snap = sample_snapshot()
    writer = TextfileWriter(str(path), 0.02, lambda: snap)
    writer.start()
    try:
        wait_for(lambda: path.exists(), what="the first textfile write")
        snap.leases_created = 12345
        wait_for(
            lambda: parse(path.read_text())[series("revnat64_pool_leases_created_total")] == 12345,
            what="the textfile to follow the snapshot",
        )
    finally:
        writer.stop()
    assert not writer.is_alive()
    assert writer.failures == 0


def test_textfile_writer_survives_write_errors(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "missing-dir" / "revnat64.prom"
    writer = TextfileWriter(str(path), 0.02, sample_snapshot)
    with caplog.at_level(logging.WARNING, logger="publisher.metrics"):
        writer.start()
        try:
            wait_for(lambda: writer.failures >= 2, what="two failed writes")
            assert writer.is_alive()
            path.parent.mkdir()
            wait_for(lambda: path.exists(), what="a write once the directory exists")
        finally:
            writer.stop()
    assert f"cannot write metrics textfile {path}" in caplog.text
    assert parse(path.read_text()) == EXPECTED_SAMPLE


def test_prefix_series_exist_at_zero_only_when_a_prefix_is_configured() -> None:
    mappings = [MappingInfo("cam", "2001:db8:200::50", "192.0.2.50", "")]
    prefix_series = series("revnat64_translated_packets_total", mapping="_prefix", direction="4to6")
    with_prefix = parse(
        render(lambda: Snapshot(mappings=mappings, prefix="2001:db8:64::/96")).decode()
    )
    assert with_prefix[prefix_series] == 0
    without = parse(render(lambda: Snapshot(mappings=mappings)).decode())
    assert prefix_series not in without


def test_worker_families_exist_without_series_when_no_worker_answered() -> None:
    text = render(lambda: Snapshot()).decode()
    names = {f.name for f in text_string_to_metric_families(text)}
    assert {"revnat64_worker_cpu_seconds", "revnat64_worker_resident_memory_bytes"} <= names
    assert "revnat64_worker_cpu_seconds_total{" not in text


def test_each_scrape_ends_with_a_full_collection_even_when_it_fails(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Scrapes leave cycles the interpreter collects too rarely with a big config
    # (the supervisor grew ~6 MiB over 20 scrapes at 10,000 mappings).
    collections: list[int] = []
    monkeypatch.setattr(metrics_module.gc, "collect", lambda *a: collections.append(1) or 0)

    def app(environ: object, start_response: object) -> list[bytes]:
        if environ == "boom":
            raise RuntimeError("scrape failed")
        return [b"ok"]

    wrapped = collect_after_each_request(app)
    assert wrapped({}, None) == [b"ok"] and collections == [1]
    with pytest.raises(RuntimeError):
        wrapped("boom", None)
    assert collections == [1, 1]


def test_idle_connections_are_bounded_and_timed_out(
    monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    """Connections that never send a request (slowloris) held a supervisor thread and
    file descriptor each, forever; now at most MAX_CONNECTIONS, each for REQUEST_TIMEOUT."""
    from publisher import metrics as metrics_module

    monkeypatch.setattr(metrics_module._QuietHandler, "timeout", 0.5)
    monkeypatch.setattr(metrics_module._ThreadingWSGIServer, "max_connections", 4)
    server = start_http_server("127.0.0.1:0", sample_snapshot)
    idle: list[socket.socket] = []
    try:
        for _ in range(10):
            idle.append(socket.create_connection((server.host, server.port), timeout=5))
        # Past the limit: closed at once (the server reads nothing from them).
        closed = 0
        for sock in idle[4:]:
            sock.settimeout(2)
            try:
                closed += sock.recv(1) == b""
            except (ConnectionResetError, TimeoutError):
                closed += 1
        assert closed == 6
        # The first four are dropped after the timeout, and a scrape gets through.
        for sock in idle[:4]:
            sock.settimeout(5)
            assert sock.recv(1) == b""
        assert "revnat64_" in scrape(server.url)
    finally:
        for sock in idle:
            sock.close()
        server.close()
    assert "Traceback" not in capfd.readouterr().err  # a timeout is not an error worth one
