"""The daemon's firewall watchdog (Daemon._check_firewall) against a scripted backend.

The real thing, `nft flush ruleset` under a running daemon, is in
tests/integration/test_firewall_daemon.py; this covers the paths a real
nftables rarely takes: a re-apply that fails, again and again, then works.
"""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest

from publisher.daemon import Daemon
from publisher.firewall_common import FirewallError


class ScriptedBackend:
    name = "nftables"
    gone_hint = "a test"
    grace_checks = 0

    def __init__(self, present: list[bool | None], apply_errors: list[str | None]) -> None:
        self.present = present
        self.apply_errors = apply_errors
        self.applied = 0

    def is_applied(self) -> bool:
        present = self.present.pop(0)
        if present is None:
            raise FirewallError("listing the tables: nft failed: out of memory")
        return present

    def apply(self) -> None:
        error = self.apply_errors.pop(0)
        if error:
            raise FirewallError(error)
        self.applied += 1


def daemon_with(backend: object) -> SimpleNamespace:
    return SimpleNamespace(
        firewall=backend, firewall_state="applied", firewall_reapplied=0, firewall_missing=0
    )


def check(d: SimpleNamespace) -> None:
    Daemon._check_firewall(d)  # type: ignore[arg-type]


def test_a_present_table_is_left_alone() -> None:
    backend = ScriptedBackend([True], [])
    d = daemon_with(backend)
    check(d)
    assert backend.applied == 0 and d.firewall_reapplied == 0 and d.firewall_state == "applied"


def test_a_failing_reapply_is_logged_once_then_recovers(caplog: pytest.LogCaptureFixture) -> None:
    backend = ScriptedBackend([False, False, False], ["nft: no table", "nft: no table", None])
    d = daemon_with(backend)
    with caplog.at_level(logging.WARNING, logger="revnat64"):
        check(d)
        check(d)
    assert d.firewall_state == "error: nft: no table" and d.firewall_reapplied == 0
    assert sum("nft: no table" in r.getMessage() for r in caplog.records) == 1
    assert sum("applying them again" in r.getMessage() for r in caplog.records) == 1
    with caplog.at_level(logging.INFO, logger="revnat64"):
        check(d)
    assert d.firewall_state == "applied" and d.firewall_reapplied == 1 and backend.applied == 1
    assert caplog.records[-1].getMessage() == "firewall: the nftables rules are applied again"


def test_a_disabled_firewall_is_not_watched() -> None:
    d = daemon_with(None)
    check(d)
    assert d.firewall_reapplied == 0 and d.firewall_state == "applied"


def test_grace_checks_leave_the_routers_own_hook_time_first() -> None:
    """iptables on Merlin: firewall-start re-applies after a firewall restart."""
    backend = ScriptedBackend([False, True, False, False, False], [None, None])
    backend.grace_checks = 1
    d = daemon_with(backend)
    check(d)  # gone once: wait
    check(d)  # back (firewall-start did it): nothing to count
    assert backend.applied == 0 and d.firewall_reapplied == 0
    check(d)  # gone
    check(d)  # still gone: re-apply
    assert backend.applied == 1 and d.firewall_reapplied == 1
    check(d)  # gone again: a fresh grace
    assert backend.applied == 1


def test_a_failing_nft_is_not_taken_for_gone_rules_and_recovery_is_seen(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """nft itself failing (None) said "the rules are gone", re-applied, failed, warned
    every 5 s, and the status kept the error after nft worked again."""
    backend = ScriptedBackend([None, None, True], [])
    d = daemon_with(backend)
    with caplog.at_level(logging.INFO, logger="revnat64"):
        check(d)
        check(d)
        assert d.firewall_state.startswith("error: listing the tables") and backend.applied == 0
        check(d)
    assert d.firewall_state == "applied" and d.firewall_reapplied == 0
    messages = [r.getMessage() for r in caplog.records]
    assert sum("out of memory" in m for m in messages) == 1
    assert not any("gone" in m for m in messages)
    assert messages[-1] == "firewall: the nftables rules are in place again"
