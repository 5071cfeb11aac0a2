"""``revnat64 status``: the rendering (golden file) and the command against a real socket."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from publisher.control import ControlServer
from publisher.snapshot import MappingInfo, Snapshot
from publisher.status import (
    format_bytes,
    format_count,
    format_cpu,
    format_duration,
    render_status,
)
from tests.publisher.metrics_samples import NOW, sample_snapshot

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).parent / "golden"


def test_status_table_matches_golden_file() -> None:
    assert render_status(sample_snapshot(), NOW) == (GOLDEN / "status.txt").read_text()


def test_lease_list_is_capped() -> None:
    snap = Snapshot(
        leases=[(f"2001:db8:1::{i:x}", f"198.51.100.{i}", float(i)) for i in range(1, 31)]
    )
    text = render_status(snap, NOW)
    assert "2001:db8:1::14  198.51.100.20" in text  # the 20 most recently active
    assert "198.51.100.21 " not in text
    assert text.endswith("... and 10 more\n")


def test_firewall_column_only_when_the_firewall_runs() -> None:
    snap = Snapshot(mappings=[MappingInfo("cam", "2001:db8:200::50", "192.0.2.50", "")])
    assert "FW DROPS" not in render_status(snap, NOW)
    snap.firewall_state = "applied"
    assert "FW DROPS" in render_status(snap, NOW)


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0"),
        (999, "999"),
        (1000, "1.00k"),
        (15230, "15.2k"),
        (999_999, "1.00M"),
        (2.5e9, "2.50G"),
    ],
)
def test_format_count(n: float, text: str) -> None:
    assert format_count(n) == text


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1.00 KiB"),
        (5_452_595, "5.20 MiB"),
        (3 << 30, "3.00 GiB"),
    ],
)
def test_format_bytes(n: int, text: str) -> None:
    assert format_bytes(n) == text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (59.9, "59s"), (200, "3m 20s"), (3600, "1h 0m"), (191_220, "2d 5h"), (-5, "0s")],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    doc = yaml.safe_load((ROOT / "mappings.yaml.example").read_text())
    doc["daemon"]["control_socket"] = str(tmp_path / "run" / "control.sock")
    path = tmp_path / "mappings.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def run_status(config: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "publisher.cli", "status", "-c", str(config), *extra],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )


@pytest.fixture
def daemon_socket(config_file: Path) -> Iterator[Snapshot]:
    """A control socket answering like the daemon, at the config's path."""
    doc = yaml.safe_load(config_file.read_text())
    # No uptime or reload age: the subprocess's clock would make them vary.
    snap = sample_snapshot()
    snap.started_timestamp = 0.0
    snap.last_reload_timestamp = 0.0
    server = ControlServer(doc["daemon"]["control_socket"], {"status": snap.to_json})
    try:
        yield snap
    finally:
        server.stop()


def test_status_command_prints_the_daemons_table(
    config_file: Path, daemon_socket: Snapshot
) -> None:
    proc = run_status(config_file)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == render_status(daemon_socket, NOW)
    assert "frontdoor-cam  2001:db8:200::50" in proc.stdout


def test_status_json(config_file: Path, daemon_socket: Snapshot) -> None:
    proc = run_status(config_file, "--json")
    assert proc.returncode == 0, proc.stderr
    assert Snapshot.from_json(proc.stdout) == daemon_socket


def test_status_without_daemon_says_so(config_file: Path) -> None:
    proc = run_status(config_file)
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert "the daemon is not running (no control socket at" in proc.stderr
    assert f"revnat64 run -c {config_file}" in proc.stderr


def test_status_with_a_broken_config_names_the_problem(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("translator: {}\n")
    proc = run_status(path)
    assert proc.returncode == 1
    assert f"{path}: wan: is required" in proc.stderr


def test_no_prefix_row_without_a_prefix_or_its_traffic() -> None:
    snap = Snapshot(mappings=[MappingInfo("cam", "2001:db8:200::50", "192.0.2.50", "")])
    assert "_prefix" not in render_status(snap, NOW)
    snap.packets[("_prefix", "4to6")] = 3  # a prefix removed by a reload: its traffic stays
    rows = [line.split() for line in render_status(snap, NOW).splitlines()]
    assert ["_prefix", "-", "any", "0", "0", "B", "3", "0", "B"] in rows


@pytest.mark.parametrize(("seconds", "text"), [(0.0, "0.00s"), (12.345, "12.3s"), (200, "3m 20s")])
def test_format_cpu(seconds: float, text: str) -> None:
    assert format_cpu(seconds) == text


def test_a_network_problem_is_shown() -> None:
    snap = Snapshot(network_problem="add proxy ndp 2001:db8:1::50 dev ppp0: No such device")
    text = render_status(snap, NOW)
    assert "network:       problem: add proxy ndp 2001:db8:1::50 dev ppp0: No such device\n" in text
    assert Snapshot.from_json(snap.to_json()).network_problem == snap.network_problem
