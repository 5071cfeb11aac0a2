"""The install helpers against the real daemon in a namespace router.

- ``systemd/revnat64-reload`` (ExecReload= on systemd < 253) must return only
  after the daemon has finished the reload, and fail when the daemon rejected
  it.  Here it runs in the router namespace against the real daemon and its
  real control socket; systemd itself is not involved (it cannot run here).
- The Asuswrt-Merlin hooks run twice each, for real: ``services-start`` starts
  one daemon and no second one; ``firewall-start`` re-applies the iptables
  backend after a "firewall restart" (our chains flushed the way Merlin's
  rebuild drops them) and leaves no duplicate rule.
"""

from __future__ import annotations

import copy
import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.daemon_lab import ROOT, DaemonLab, base_config
from tests.iptables_variants import VARIANTS, VERSION_MARK, variant_bin_dir
from tests.netlab import Lab, wait_for

pytestmark = pytest.mark.integration

RELOAD_HELPER = ROOT / "systemd" / "revnat64-reload"
MERLIN = ROOT / "contrib" / "asuswrt-merlin"


def revnat64_wrapper(tmp: Path) -> Path:
    """An executable that runs this tree's revnat64, like Merlin's $DEST/bin/revnat64."""
    wrapper = tmp / "revnat64"
    wrapper.write_text(
        f'#!/bin/sh\nPYTHONPATH="{ROOT}" exec "{sys.executable}" -m publisher.cli "$@"\n'
    )
    wrapper.chmod(0o755)
    return wrapper


def reload_counts(d: DaemonLab, wrapper: Path) -> dict[str, int]:
    out = d.router.run([str(wrapper), "status", "--json", "-c", str(d.config_path)]).stdout
    counts: dict[str, int] = json.loads(out)["reloads"]
    return counts


@pytest.fixture
def dlab(lab: Lab, tmp_path: Path) -> Iterator[DaemonLab]:
    d = DaemonLab(lab, tmp_path)
    try:
        yield d
    finally:
        d.close()


def test_reload_helper_waits_for_the_reload_and_reports_rejection(dlab: DaemonLab) -> None:
    dlab.start()
    assert dlab.proc is not None
    wrapper = revnat64_wrapper(dlab.tmp)
    # The lab starts the daemon through `ip netns exec`, whose child is the daemon.
    pid = int(dlab.router.run(["pgrep", "-f", f"run -c {dlab.config_path}"]).stdout.split()[0])
    before = reload_counts(dlab, wrapper)

    helper = [str(RELOAD_HELPER), str(pid), str(dlab.config_path), str(wrapper)]
    ok = dlab.router.run(helper, check=False, timeout=90)
    assert ok.returncode == 0, ok.stderr
    # Returned only once the daemon had finished: the counter already moved.
    after = reload_counts(dlab, wrapper)
    assert after["success"] == before.get("success", 0) + 1
    dlab.expect_notify("READY=1")

    # A valid file the daemon still refuses at reload (the TUN cannot be renamed
    # live): invalid files never get here, ExecReload= runs `check` first.
    cfg = copy.deepcopy(dlab.config)
    cfg["translator"]["tun_device"] = dlab.tun[:-1] + "z"
    dlab.write_config(cfg)
    bad = dlab.router.run(helper, check=False, timeout=90)
    assert bad.returncode == 1
    assert "rejected the reload" in bad.stderr
    assert reload_counts(dlab, wrapper)["failure"] == after.get("failure", 0) + 1
    assert dlab.proc.poll() is None


@pytest.fixture(params=VARIANTS)
def merlin(
    lab: Lab, tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[DaemonLab, dict[str, str]]]:
    """A router namespace with a config for the iptables backend, and the hooks' env,
    once with iptables-nft and once with iptables-legacy (Merlin's own)."""
    bin_dir = variant_bin_dir(tmp_path, request.param)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    d = DaemonLab(lab, tmp_path)
    cfg = base_config(tmp_path, d.tun)
    cfg["firewall"] = {"enabled": True, "backend": "iptables"}
    d.write_config(cfg)
    assert VERSION_MARK[request.param] in d.router.run(["iptables", "-V"]).stdout
    env = {
        "PATH": f"{bin_dir}:/usr/sbin:/usr/bin:/sbin:/bin",
        "REVNAT64": str(revnat64_wrapper(tmp_path)),
        "REVNAT64_CONFIG": str(d.config_path),
        "REVNAT64_PIDFILE": str(tmp_path / "revnat64.pid"),
        "REVNAT64_LOG": str(tmp_path / "revnat64.log"),
    }
    try:
        yield d, env
    finally:
        pidfile = tmp_path / "revnat64.pid"
        if pidfile.exists():
            pid = int(pidfile.read_text())
            try:
                os.kill(pid, signal.SIGTERM)
                for _ in range(100):
                    os.kill(pid, 0)
                    time.sleep(0.1)
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        d.close()


def parent_pid(pid: str) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("PPid:"):
            return line.split()[1]
    raise AssertionError(f"no PPid for {pid}")


def ruleset(d: DaemonLab) -> list[str]:
    rules = []
    for tool in ("iptables-save", "ip6tables-save"):
        out = d.router.run([tool]).stdout
        rules += [f"{tool}: {line}" for line in out.splitlines() if line.startswith("-A ")]
    return rules


def test_merlin_hooks_twice_one_daemon_no_duplicate_rules(
    merlin: tuple[DaemonLab, dict[str, str]],
) -> None:
    d, env = merlin
    pidfile = Path(env["REVNAT64_PIDFILE"])
    d.router.run(["sh", str(MERLIN / "services-start")], env=env)
    wait_for(lambda: "-A " in "\n".join(ruleset(d)), timeout=30)
    first_pid = pidfile.read_text().strip()
    # The daemon is up and answering on its control socket.
    status = d.router.run([env["REVNAT64"], "status", "--json", "-c", env["REVNAT64_CONFIG"]])
    assert json.loads(status.stdout)["mappings"]
    d.router.run(["sh", str(MERLIN / "services-start")], env=env)
    assert pidfile.read_text().strip() == first_pid
    # One daemon: every process with its command line is it or its forked
    # data-plane worker.
    found = d.router.run(["pgrep", "-f", f"run -c {env['REVNAT64_CONFIG']}"]).stdout.split()
    daemons = [pid for pid in found if parent_pid(pid) != first_pid]
    assert daemons == [first_pid]

    applied = ruleset(d)
    assert any("revnat64" in rule.lower() for rule in applied), applied
    # A Merlin firewall restart: everything flushed, then firewall-start runs.
    for tool in ("iptables", "ip6tables"):
        d.router.run([tool, "-F"])
    for _ in range(2):
        d.router.run(["sh", str(MERLIN / "firewall-start")], env=env)
    again = ruleset(d)
    assert sorted(again) == sorted(applied)
    assert len(again) == len(set(again)), "duplicate rules after firewall-start ran twice"


def test_flushed_iptables_rules_are_put_back_by_the_daemon_itself(
    merlin: tuple[DaemonLab, dict[str, str]],
) -> None:
    """A firewall restart without firewall-start (ufw, iptables-restore of a saved set)."""
    d, env = merlin
    d.router.run(["sh", str(MERLIN / "services-start")], env=env)

    def status() -> dict[str, object]:
        argv = [env["REVNAT64"], "status", "--json", "-c", env["REVNAT64_CONFIG"]]
        out = d.router.run(argv, env=env, check=False).stdout
        return json.loads(out) if out.startswith("{") else {}  # type: ignore[no-any-return]

    wait_for(lambda: status().get("firewall_state") == "applied", timeout=30, what="start")
    applied = ruleset(d)
    for tool in ("iptables", "ip6tables"):
        d.router.run([tool, "-F"])
    assert not [rule for rule in ruleset(d) if "-A FORWARD -j REVNAT64-FWD" in rule]
    # Within the daemon's 5 s check the jumps and the chains' rules are back.
    wait_for(lambda: sorted(ruleset(d)) == sorted(applied), timeout=20, what="the rules back")
    log = Path(env["REVNAT64_LOG"]).read_text()
    assert "the iptables rules are gone (a firewall restart or an iptables flush?)" in log
    assert status()["firewall_reapplied"] == 1


def test_concurrent_applies_add_each_jump_once(
    merlin: tuple[DaemonLab, dict[str, str]],
) -> None:
    """The watchdog and firewall-start may apply at the same moment: the lock serialises them."""
    d, env = merlin
    argv = [env["REVNAT64"], "firewall", "-c", env["REVNAT64_CONFIG"], "--apply"]
    for _ in range(3):  # three rounds of a flushed table and four appliers racing
        for tool in ("iptables", "ip6tables"):
            d.router.run([tool, "-F"])
        procs = [d.router.popen(argv, env=env) for _ in range(4)]
        for proc in procs:
            assert proc.wait(timeout=120) == 0
        rules = ruleset(d)
        jumps = [rule for rule in rules if " -j REVNAT64-" in rule and "-A REVNAT64" not in rule]
        assert len(jumps) == len(set(jumps)), jumps
        assert len(rules) == len(set(rules)), "a duplicate rule"


def test_merlin_wan_event_starts_a_daemon_that_is_not_running(
    merlin: tuple[DaemonLab, dict[str, str]],
) -> None:
    """A daemon that is not running (it crashed, say) is started when a WAN connects."""
    d, env = merlin
    pidfile = Path(env["REVNAT64_PIDFILE"])
    for event in ("init", "connecting", "disconnected", "stopped"):
        d.router.run(["sh", str(MERLIN / "wan-event"), "0", event], env=env)
    assert not pidfile.exists()
    d.router.run(["sh", str(MERLIN / "wan-event"), "0", "connected"], env=env)
    argv = [env["REVNAT64"], "status", "--json", "-c", env["REVNAT64_CONFIG"]]
    wait_for(lambda: d.router.run(argv, env=env, check=False).returncode == 0, timeout=30)
    first = pidfile.read_text().strip()
    d.router.run(["sh", str(MERLIN / "wan-event"), "1", "connected"], env=env)
    assert pidfile.read_text().strip() == first  # running: left alone


def test_merlin_log_link_planted_in_tmp_is_not_followed(
    merlin: tuple[DaemonLab, dict[str, str]], tmp_path: Path
) -> None:
    """/tmp is world-writable: a link at the log path made root append to any file."""
    d, env = merlin
    victim = tmp_path / "victim"
    victim.write_text("untouched\n")
    Path(env["REVNAT64_LOG"]).symlink_to(victim)
    d.router.run(["sh", str(MERLIN / "services-start")], env=env)
    wait_for(lambda: Path(env["REVNAT64_PIDFILE"]).exists(), timeout=30)
    wait_for(lambda: "-A " in "\n".join(ruleset(d)), timeout=30)
    assert victim.read_text() == "untouched\n"
    assert not Path(env["REVNAT64_LOG"]).is_symlink()
