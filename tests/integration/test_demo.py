"""The README's first command ends in ``revnat64 demo``: it must work and clean up."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def _demo_namespaces() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith("rn64-demo-")]


def test_demo_publishes_the_camera_and_cleans_up() -> None:
    before = set(_demo_namespaces())
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "publisher.cli", "demo"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    elapsed = time.monotonic() - started
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "got " in out and "'Front door camera'" in out
    assert "snapshot.jpg: 332 bytes, intact" in out
    assert "as 198.51.100." in out  # the camera saw a pool4 address
    assert "frontdoor.cam.example.org.\t300\tIN\tAAAA\t2001:db8:200::50" in out
    assert "frontdoor-cam" in out.split("revnat64 status")[1]  # counters from the daemon
    assert "tcp/22 (not in the allow list): blocked by the firewall" in out
    assert "revnat64 diagnose frontdoor-cam tcp/22: stops at firewall: tcp/22 is not in" in out
    assert "exited with status 0; TUN devices left behind: 0" in out
    assert elapsed < 60
    assert set(_demo_namespaces()) == before


def test_demo_keep_then_cleanup() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "publisher.cli", "demo", "--keep"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    try:
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "ip netns exec rn64-demo-client-" in proc.stdout
        assert len(_demo_namespaces()) >= 3
    finally:
        cleanup = subprocess.run(
            [sys.executable, "-m", "publisher.cli", "demo", "--cleanup"],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
        )
    assert cleanup.returncode == 0
    assert _demo_namespaces() == []
