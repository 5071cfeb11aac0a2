"""The pure parts of publishing: the update plan, ownership strings, the check verdicts,
and the retry policy against a port where nothing listens."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from publisher.config import parse_config_text
from publisher.dns_check import check_records, classify, format_report
from publisher.dns_records import build_records
from publisher.dns_update import (
    Change,
    Conflict,
    DnsUnreachableError,
    RetryPolicy,
    RRsetState,
    dns_update_status,
    ownership_text,
    parse_claims,
    parse_ownership,
    plan_update,
    run_update,
    start_background_update,
)
from tests.dnsservers import config_text, free_port

A = ("AAAA", "a.cam.example.org.")
B = ("AAAA", "b.cam.example.org.")
C = ("AAAA", "c.cam.example.org.")


def rr(*values: str, ttl: int = 300) -> RRsetState:
    return RRsetState(ttl, frozenset(values))


def test_nothing_differs_so_nothing_is_planned() -> None:
    plan = plan_update({A: rr("2001:db8::1")}, {A: rr("2001:db8::1")}, {A})
    assert plan.is_empty


def test_missing_stale_and_ttl_changes_replace_the_rrset() -> None:
    desired = {A: rr("2001:db8::1"), B: rr("2001:db8::2"), C: rr("2001:db8::3", ttl=60)}
    current = {A: None, B: rr("2001:db8::9", "2001:db8::2"), C: rr("2001:db8::3")}
    plan = plan_update(desired, current, {A, B, C})
    was_b = ("2001:db8::2", "2001:db8::9")
    # The last field is the prerequisite: the RRset as read, () for "must not exist".
    assert plan.changes == (
        Change("replace", "AAAA", A[1], 300, ("2001:db8::1",), (), ()),
        Change("replace", "AAAA", B[1], 300, ("2001:db8::2",), was_b, was_b),
        Change("replace", "AAAA", C[1], 60, ("2001:db8::3",), ("2001:db8::3",), ("2001:db8::3",)),
    )
    assert plan.own_add == () and plan.own_remove == ()


def test_a_removed_name_is_deleted_only_when_owned() -> None:
    # B is ours and no longer wanted; C exists but was never ours.
    plan = plan_update({A: rr("2001:db8::1")}, {A: rr("2001:db8::1"), B: rr("2001:db8::2")}, {A, B})
    was = ("2001:db8::2",)
    assert plan.changes == (Change("delete", "AAAA", B[1], 300, (), was, was),)
    assert plan.own_remove == (B,)
    plan = plan_update({A: rr("2001:db8::1")}, {A: rr("2001:db8::1"), C: rr("2001:db8::3")}, {A})
    assert plan.is_empty


def test_new_names_are_recorded_as_owned_and_gone_owned_names_forgotten() -> None:
    plan = plan_update({A: rr("2001:db8::1")}, {A: rr("2001:db8::1"), B: None}, {B})
    assert plan.changes == ()  # A already right (made by hand), B already gone
    assert plan.own_add == (A,) and plan.own_remove == (B,)


def test_ownership_strings_other_than_ours_are_ignored() -> None:
    owned = parse_ownership(
        ["AAAA Nas.cam.example.org.", "PTR 1.0.ip6.arpa.", "v=spf1 -all", "AAAA relative", "MX x."]
    )
    assert owned == {("AAAA", "nas.cam.example.org."), ("PTR", "1.0.ip6.arpa.")}


def test_ownership_strings_name_their_instance() -> None:
    strings = [
        "AAAA a.cam.example.org.",
        "AAAA b.cam.example.org. instance=router2",
        "AAAA a.cam.example.org. instance=router2",
        "AAAA c.cam.example.org. owner=router2",  # not our shape: ignored
        "AAAA c.cam.example.org. instance=",
    ]
    assert parse_claims(strings) == {A: {"", "router2"}, B: {"router2"}}
    assert parse_ownership(strings) == {A}
    assert parse_ownership(strings, "router2") == {A, B}
    assert ownership_text(B, "router2") == '"AAAA b.cam.example.org. instance=router2"'
    assert ownership_text(A) == '"AAAA a.cam.example.org."'


def test_names_another_instance_owns_are_never_changed() -> None:
    desired = {A: rr("2001:db8::1"), B: rr("2001:db8::2")}
    current = {A: rr("2001:db8::9"), B: None, C: rr("2001:db8::3")}
    # A is router2's; C is ours and router2's, and we no longer want it.
    plan = plan_update(desired, current, {C}, {A: {"router2"}, C: {"router2"}})
    assert plan.changes == (Change("replace", "AAAA", B[1], 300, ("2001:db8::2",), (), ()),)
    assert plan.conflicts == (Conflict("AAAA", A[1], ("router2",)),)
    assert plan.own_add == (B,) and plan.own_remove == (C,)
    assert str(plan.conflicts[0]).startswith(
        "a.cam.example.org. AAAA is managed by revnat64 instance 'router2', not this one"
    )


def test_the_prerequisite_repeats_the_servers_own_text() -> None:
    # The server spelled the PTR target in capitals: the comparison ignores
    # case, but the prerequisite must carry the records exactly as read.
    key = ("PTR", "1.0.ip6.arpa.")
    have = RRsetState(300, frozenset({"nas.cam.example.org."}), frozenset({"NAS.cam.example.org."}))
    plan = plan_update({key: rr("other.cam.example.org.")}, {key: have}, {key})
    (change,) = plan.changes
    assert change.old == ("nas.cam.example.org.",)
    assert change.expect == ("NAS.cam.example.org.",)


def test_classify_ok_missing_stale() -> None:
    assert classify("m", "n.", "AAAA", ["2001:db8::1"], ["2001:DB8:0::1"]).state == "ok"
    assert classify("m", "n.", "AAAA", ["2001:db8::1"], None).state == "missing"
    assert classify("m", "n.", "AAAA", ["2001:db8::1"], []).state == "missing"
    stale = classify("m", "n.", "AAAA", ["2001:db8::1"], ["2001:db8::1", "2001:db8::2"])
    assert stale.state == "stale"
    assert str(stale) == "n. AAAA is 2001:db8::1, 2001:db8::2; expected 2001:db8::1"


def test_check_report_is_per_mapping() -> None:
    cfg = parse_config_text(config_text(), "c.yaml")
    answers = {
        "frontdoor.cam.example.org.": ["2001:db8:200::50"],
        "nas.cam.example.org.": ["2001:db8:200::99"],
        "lab-252.cam.example.org.": ["2001:db8:200:1::"],
        "lab-253.cam.example.org.": ["2001:db8:200:1::1"],
    }
    results = check_records(build_records(cfg), lambda name, rtype: answers.get(name))
    assert format_report(results) == [
        "frontdoor-cam: ok: frontdoor.cam.example.org. AAAA 2001:db8:200::50",
        "nas: stale: nas.cam.example.org. AAAA is 2001:db8:200::99; expected 2001:db8:200::51",
        "lab: missing: lab-254.cam.example.org. has no AAAA record; expected 2001:db8:200:1::2",
    ]


def _closed_port_config(tmp_path: Path) -> Path:
    port = free_port()  # nothing listens there: every connection is refused
    path = tmp_path / "c.yaml"
    path.write_text(config_text(server=f"127.0.0.1:{port}"))
    return path


def test_unreachable_server_is_retried_with_exponential_backoff(tmp_path: Path) -> None:
    from publisher.config import load_config

    cfg = load_config(_closed_port_config(tmp_path))
    delays: list[float] = []
    policy = RetryPolicy(timeout=2.0, attempts=4, backoff=0.25, sleep=delays.append)
    with pytest.raises(DnsUnreachableError) as info:
        run_update(cfg, policy=policy)
    assert delays == [0.25, 0.5, 1.0]
    assert f"DNS server {cfg.dns.server}" in str(info.value)
    assert "failed after 4 attempts" in str(info.value)


def test_background_update_reports_failure_in_its_status(tmp_path: Path) -> None:
    from publisher.config import load_config

    cfg = load_config(_closed_port_config(tmp_path))
    log = logging.getLogger("test.dns.background")
    policy = RetryPolicy(attempts=2, sleep=lambda s: None, later=())  # no later runs
    thread = start_background_update(cfg, log, policy)
    thread.join(timeout=30)
    assert not thread.is_alive()
    status = dns_update_status()
    assert status.state == "error" and cfg.dns.server in status.message
    assert status.finished_at is not None


def test_a_server_given_by_name_fails_with_a_message_not_a_bare_valueerror(
    tmp_path: Path,
) -> None:
    from publisher.config import load_config
    from publisher.dns_update import DnsUpdateError

    path = tmp_path / "c.yaml"
    path.write_text(config_text(server="ns1.example.org:53"))
    with pytest.raises(DnsUpdateError, match=r"dns.server: ns1.example.org:53 names no IP address"):
        run_update(load_config(path), policy=RetryPolicy(attempts=1))
