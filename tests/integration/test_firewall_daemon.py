"""Phase 2: the daemon applies the firewall on start, follows SIGHUP, removes it on stop.

These run the real translator on a real TUN (``tests/integration/daemon_lab.py``),
so the IPv4 half of the rules sees genuinely translated packets from pool4.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.daemon_lab import DaemonLab, base_config
from tests.integration.test_daemon_e2e import download_sha, serve_http
from tests.netlab import DEVICE6, Lab, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def fwd(lab: Lab, tmp_path: Path) -> Iterator[DaemonLab]:
    d = DaemonLab(lab, tmp_path)
    cfg = base_config(tmp_path, d.tun)
    cfg["firewall"] = {"enabled": True, "backend": "nftables"}
    cfg["mappings"][0]["allow"] = ["tcp/8080", "icmp"]
    d.write_config(cfg)
    try:
        yield d
    finally:
        d.close()


def fetch(d: DaemonLab, port: int) -> subprocess.CompletedProcess[str]:
    return d.client.run(
        [
            "curl",
            "-sf",
            "-g",
            "--max-time",
            "3",
            "-o",
            "/dev/null",
            f"http://[{DEVICE6}]:{port}/blob",
        ],
        check=False,
        timeout=15,
    )


def tables(d: DaemonLab) -> str:
    return str(d.router.run(["nft", "list", "tables"]).stdout)


def test_daemon_enforces_allow_list_reloads_and_removes(fwd: DaemonLab) -> None:
    fwd.start()
    assert "table inet revnat64" in tables(fwd)
    serve_http(fwd, 1000, port=8081)
    expected = serve_http(fwd, 200_000, port=8080)  # both serve the same (last) blob
    assert download_sha(fwd, f"http://[{DEVICE6}]:8080/blob") == expected
    assert fetch(fwd, 8081).returncode != 0
    assert fwd.client.run(["ping", "-c", "1", "-W", "3", DEVICE6], check=False).returncode == 0
    drops = fwd.router.run(["nft", "-j", "list", "counter", "inet", "revnat64", "drop_camera"])
    assert '"packets": 0' not in drops.stdout

    wider = copy.deepcopy(fwd.config)
    wider["mappings"][0]["allow"] = ["tcp/8080-8081", "icmp"]
    fwd.write_config(wider)
    fwd.reload()
    assert fetch(fwd, 8081).returncode == 0

    assert fwd.stop() == 0
    assert "revnat64" not in tables(fwd)


def test_a_flushed_ruleset_is_put_back_and_enforced_again(fwd: DaemonLab) -> None:
    """`systemctl restart nftables` runs `flush ruleset`; the daemon notices and re-applies."""
    fwd.start()
    serve_http(fwd, 1000, port=8081)
    assert fetch(fwd, 8081).returncode != 0
    fwd.router.run(["nft", "flush", "ruleset"])
    # The table is back (nftables tells the daemon at once; at the latest the 5 s
    # look finds it gone), and so is the allow list. Too fast to see it missing.
    wait_for(lambda: "applying them again" in fwd.logs(), timeout=20, what="the re-apply")
    wait_for(lambda: "table inet revnat64" in tables(fwd), timeout=20, what="the table back")
    assert fetch(fwd, 8081).returncode != 0
    assert "applying them again" in fwd.logs()
    status = fwd.router.run(
        [sys.executable, "-m", "publisher.cli", "status", "--json", "-c", str(fwd.config_path)]
    )
    snap = json.loads(status.stdout)
    assert snap["firewall_reapplied"] == 1 and snap["firewall_state"] == "applied", snap
    assert fwd.stop() == 0


def test_a_flushed_ruleset_is_put_back_at_once_not_at_the_next_check(fwd: DaemonLab) -> None:
    """nftables tells the daemon the table is gone; the hourly look plays no part here."""
    cfg = copy.deepcopy(fwd.config)
    cfg["firewall"]["check_interval"] = 3600
    fwd.write_config(cfg)
    fwd.start()
    time.sleep(0.5)  # the daemon's loop opens its notification sockets
    fwd.router.run(["nft", "flush", "ruleset"])
    wait_for(lambda: "table inet revnat64" in tables(fwd), timeout=10, what="the table back")
    assert "applying them again" in fwd.logs()
    # Its own applies delete and create the table too: no loop follows from them.
    fwd.reload()
    time.sleep(1.0)
    assert fwd.logs().count("applying them again") == 1


def test_check_interval_zero_leaves_a_flushed_ruleset_alone(fwd: DaemonLab) -> None:
    """firewall.check_interval: 0 turns the watchdog off (a router that cannot spare the CPU)."""
    cfg = copy.deepcopy(fwd.config)
    cfg["firewall"]["check_interval"] = 0
    fwd.write_config(cfg)
    fwd.start()
    fwd.router.run(["nft", "flush", "ruleset"])
    time.sleep(7)  # longer than the default interval
    assert "revnat64" not in tables(fwd)
    assert "applying them again" not in fwd.logs()
    fwd.reload()  # a reload applies the rules, as always
    assert "table inet revnat64" in tables(fwd)
