"""``revnat64 dns --update/--check`` and the nsupdate script against a real BIND named.

Each test gets its own named (loopback, free port, temporary directory) with
a forward zone ``cam.example.org.`` and the reverse zone for 2001:db8:200::/48,
both updatable with a TSIG key made by tsig-keygen.  The forward zone already
holds a name that is not ours (``printer``), and ``frontdoor`` carries a TXT
and an MX record someone added by hand.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from ipaddress import IPv6Network
from pathlib import Path

import dns.query
import dns.update
import pytest

from publisher.cli import main
from publisher.config import Config, load_config
from publisher.dns_records import build_records, ownership_name
from publisher.dns_tsig import load_tsig_key
from publisher.dns_update import (
    DnsConflictError,
    DnsRefusedError,
    RetryPolicy,
    UpdateStatus,
    apply_update,
    cancel_background_update,
    dns_update_status,
    prepare_update,
    run_update,
    start_background_update,
)
from tests.dnsservers import (
    BASE_MAPPINGS,
    REVERSE_ZONE,
    ZONE,
    Named,
    config_text,
    running_named,
    tsig_keygen,
)
from tests.netlab import wait_for

HAND_MADE = 'frontdoor IN TXT "installed 2023"\nfrontdoor IN MX 10 mail.example.org.\n'
FRONTDOOR = "frontdoor.cam.example.org."
NAS = "nas.cam.example.org."
PRINTER = "printer.cam.example.org."
NAS_PTR = "1.5.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.2.0.8.b.d.0.1.0.0.2.ip6.arpa."


@pytest.fixture
def named() -> Iterator[Named]:
    with running_named(HAND_MADE) as server:
        yield server


def write_config(path: Path, named: Named, mappings: str = BASE_MAPPINGS, **kw: object) -> Path:
    kw.setdefault("key_file", named.key_file)
    kw.setdefault("resolver", named.server)
    path.write_text(config_text(mappings, server=named.server, **kw))  # type: ignore[arg-type]
    return path


def dns_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    status = main(["dns", *args])
    out = capsys.readouterr()
    return status, out.out, out.err


def test_update_creates_the_records_and_a_second_run_changes_nothing(
    named: Named, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = write_config(tmp_path / "c.yaml", named, ptr=True)
    serial0 = named.serial()
    status, out, err = dns_cli(capsys, "-c", str(conf), "--update")
    assert status == 0, err
    assert "10 record change(s)" in out
    assert named.rrset(FRONTDOOR, "AAAA") == {"2001:db8:200::50"}
    assert named.rrset(NAS, "AAAA") == {"2001:db8:200::51"}
    assert named.rrset("lab-254.cam.example.org.", "AAAA") == {"2001:db8:200:1::2"}
    assert named.rrset(NAS_PTR, "PTR") == {NAS}
    serial1 = named.serial()
    assert serial1 > serial0

    status, out, err = dns_cli(capsys, "-c", str(conf), "--update")
    assert status == 0, err
    assert "up to date, nothing sent" in out
    assert named.serial() == serial1


def test_a_changed_mapping_replaces_exactly_its_aaaa(
    named: Named, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = write_config(tmp_path / "c.yaml", named)
    assert dns_cli(capsys, "-c", str(conf), "--update")[0] == 0
    moved = BASE_MAPPINGS.replace("2001:db8:200::51", "2001:db8:200::61")
    write_config(conf, named, moved)
    status, out, err = dns_cli(capsys, "-c", str(conf), "--update")
    assert status == 0, err
    assert out.splitlines()[0] == f"set {NAS} AAAA 2001:db8:200::61 (was 2001:db8:200::51)"
    assert "1 record change(s)" in out
    assert named.rrset(NAS, "AAAA") == {"2001:db8:200::61"}
    assert named.rrset(FRONTDOOR, "AAAA") == {"2001:db8:200::50"}
    # Other types at a managed name, and names that are not ours, are untouched.
    assert named.rrset(FRONTDOOR, "TXT") == {'"installed 2023"'}
    assert named.rrset(FRONTDOOR, "MX") == {"10 mail.example.org."}
    assert named.rrset(PRINTER, "AAAA") == {"2001:db8:200::99"}


def test_a_removed_mapping_is_deleted_only_when_managed_by_us(
    named: Named, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = write_config(tmp_path / "c.yaml", named, ptr=True)
    assert dns_cli(capsys, "-c", str(conf), "--update")[0] == 0
    owner = ownership_name(ZONE)
    assert f'"AAAA {NAS}"' in named.rrset(owner, "TXT")

    without_nas = BASE_MAPPINGS.replace(
        "  - name: nas\n    ipv6: 2001:db8:200::51\n    ipv4: 192.0.2.51\n    allow: [tcp/443]\n",
        "",
    )
    write_config(conf, named, without_nas, ptr=True)
    status, out, err = dns_cli(capsys, "-c", str(conf), "--update")
    assert status == 0, err
    assert f"delete {NAS} AAAA (was 2001:db8:200::51)" in out
    assert named.rrset(NAS, "AAAA") == set()
    assert named.rrset(NAS_PTR, "PTR") == set()
    assert f'"AAAA {NAS}"' not in named.rrset(owner, "TXT")
    assert f'"PTR {NAS_PTR}"' not in named.rrset(owner, "TXT")
    # printer was never ours: it is not in the config either, and it stays.
    assert named.rrset(PRINTER, "AAAA") == {"2001:db8:200::99"}
    assert named.rrset(FRONTDOOR, "AAAA") == {"2001:db8:200::50"}
    # Removing the frontdoor mapping too deletes its AAAA but not the hand-made TXT and MX.
    lab_only = "  - name: lab" + BASE_MAPPINGS.split("  - name: lab")[1]
    write_config(conf, named, lab_only, ptr=True)
    assert dns_cli(capsys, "-c", str(conf), "--update")[0] == 0
    assert named.rrset(FRONTDOOR, "AAAA") == set()
    assert named.rrset(FRONTDOOR, "TXT") == {'"installed 2023"'}
    assert named.rrset(FRONTDOOR, "MX") == {"10 mail.example.org."}


@pytest.mark.parametrize(
    ("key_name", "rcode"),
    [("revnat64-test", "BADSIG"), ("stranger", "BADKEY")],
    ids=["wrong-secret", "unknown-key"],
)
def test_a_wrong_key_is_refused_with_a_clear_error(
    named: Named, tmp_path: Path, capsys: pytest.CaptureFixture[str], key_name: str, rcode: str
) -> None:
    wrong = tsig_keygen(key_name, tmp_path / "wrong.key")
    conf = write_config(tmp_path / "c.yaml", named, key_file=wrong)
    serial = named.serial()
    status, _, err = dns_cli(capsys, "-c", str(conf), "--update")
    assert status == 1
    assert f"DNS server {named.server} refused" in err
    assert f"TSIG key {key_name}." in err and f"{rcode}:" in err
    assert named.serial() == serial and named.rrset(NAS, "AAAA") == set()


def test_unsigned_update_is_refused_naming_server_and_rcode(
    named: Named, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = tmp_path / "c.yaml"
    conf.write_text(config_text(server=named.server))  # no tsig_key_file
    status, _, err = dns_cli(capsys, "-c", str(conf), "--update")
    assert status == 1
    assert f"DNS server {named.server} answered REFUSED to the update of zone {ZONE}" in err


def test_a_zone_the_server_does_not_serve_is_refused(
    named: Named, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = write_config(tmp_path / "c.yaml", named)
    conf.write_text(conf.read_text().replace("zone: cam.example.org.", "zone: other.example.net."))
    status, _, err = dns_cli(capsys, "-c", str(conf), "--update")
    assert status == 1
    assert f"DNS server {named.server} answered REFUSED" in err
    assert "_revnat64.other.example.net." in err


def test_a_readable_key_file_is_warned_about(
    named: Named, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    named.key_file.chmod(0o644)
    conf = write_config(tmp_path / "c.yaml", named)
    status, _, err = dns_cli(capsys, "-c", str(conf), "--update")
    assert status == 0
    assert f"warning: {named.key_file}: TSIG key file is readable by group or others" in err


def test_check_reports_ok_missing_and_stale(
    named: Named, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = write_config(tmp_path / "c.yaml", named)
    status, out, _ = dns_cli(capsys, "-c", str(conf), "--check")
    assert status == 1 and "5 of 5 record set(s) do not match" in out

    assert dns_cli(capsys, "-c", str(conf), "--update")[0] == 0
    status, out, _ = dns_cli(capsys, "-c", str(conf), "--check")
    assert status == 0, out
    assert out.splitlines() == [
        f"frontdoor-cam: ok: {FRONTDOOR} AAAA 2001:db8:200::50",
        f"nas: ok: {NAS} AAAA 2001:db8:200::51",
        "lab: ok: 3 records",
        f"all 5 record set(s) match (asked {named.server})",
    ]

    # Someone edits the zone behind our back: nas moves, frontdoor's AAAA goes.
    key = load_tsig_key(named.key_file).to_dnspython()
    upd = dns.update.UpdateMessage(ZONE, keyring=key)
    upd.replace(NAS, 300, "AAAA", "2001:db8:200::77")
    upd.delete(FRONTDOOR, "AAAA")
    assert dns.query.tcp(upd, "127.0.0.1", port=named.port, timeout=5).rcode() == 0
    status, out, _ = dns_cli(capsys, "-c", str(conf), "--check")
    assert status == 1
    assert out.splitlines() == [
        f"frontdoor-cam: missing: {FRONTDOOR} has no AAAA record; expected 2001:db8:200::50",
        f"nas: stale: {NAS} AAAA is 2001:db8:200::77; expected 2001:db8:200::51",
        "lab: ok: 3 records",
        f"2 of 5 record set(s) do not match (asked {named.server})",
    ]


def test_nsupdate_script_runs_in_real_nsupdate_and_matches_update(
    named: Named, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = write_config(tmp_path / "c.yaml", named, ptr=True)
    status, script, _ = dns_cli(capsys, "-c", str(conf), "--format", "nsupdate")
    assert status == 0
    (tmp_path / "script").write_text(script)
    run = subprocess.run(
        ["nsupdate", "-k", str(named.key_file), str(tmp_path / "script")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    assert named.rrset(NAS_PTR, "PTR") == {NAS}
    status, out, _ = dns_cli(capsys, "-c", str(conf), "--check")
    assert status == 0, out
    # The script recorded ownership exactly as --update would: nothing left to do.
    status, out, _ = dns_cli(capsys, "-c", str(conf), "--update")
    assert status == 0 and "up to date, nothing sent" in out


def test_background_update_publishes_and_reports_ok(named: Named, tmp_path: Path) -> None:
    cfg = load_config(write_config(tmp_path / "c.yaml", named))
    thread = start_background_update(cfg, logging.getLogger("test.dns"), RetryPolicy(attempts=2))
    thread.join(timeout=60)
    assert not thread.is_alive()
    status = dns_update_status()
    assert status.state == "ok" and status.changes == 5, status
    assert named.rrset(NAS, "AAAA") == {"2001:db8:200::51"}


@contextmanager
def frozen(named: Named) -> Iterator[None]:
    """named stopped (SIGSTOP): the kernel still accepts TCP connections for it,
    but nothing answers, as with a server that hangs or an uplink still down."""
    named.proc.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        named.proc.send_signal(signal.SIGCONT)


def wait_for_state(state: str) -> UpdateStatus:
    def reached() -> UpdateStatus | None:
        status = dns_update_status()
        return status if status.state == state else None

    return wait_for(reached, timeout=30, what=f"DNS update state {state!r}")


# One attempt per run, half a second each: the tests wait seconds, not minutes.
QUICK = RetryPolicy(timeout=0.5, attempts=1)


def test_an_unreachable_server_is_tried_again_until_it_answers(
    named: Named, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = load_config(write_config(tmp_path / "c.yaml", named))
    unreachable_before = dns_update_status().unreachable
    with caplog.at_level(logging.WARNING, logger="test.dns"), frozen(named):
        policy = RetryPolicy(timeout=0.5, attempts=1, later=(0.3,))
        thread = start_background_update(cfg, logging.getLogger("test.dns"), policy)
        status = wait_for_state("retrying")
        assert "next try in 0.3 s" in status.message and "timed out" in status.message, status
        assert status.unreachable > unreachable_before
    # named answers again: the next scheduled run publishes, with no reload.
    thread.join(timeout=60)
    assert not thread.is_alive()
    status = dns_update_status()
    assert status.state == "ok" and status.changes == 5, status
    assert status.last_success is not None and status.last_success >= status.finished_at - 1
    assert named.rrset(NAS, "AAAA") == {"2001:db8:200::51"}
    assert "trying again in 0.3 s" in caplog.text


def test_a_wrong_clock_is_tried_again_once_ntp_has_set_it(
    named: Named, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A router without a battery-backed clock boots a day (or years) behind, before
    NTP: BIND answers BADTIME. That was final; now it is retried like an unreachable
    server, and publishes once the clock is right."""
    cfg = load_config(write_config(tmp_path / "c.yaml", named))
    real_time = time.time
    unreachable_before = dns_update_status().unreachable
    monkeypatch.setattr(time, "time", lambda: real_time() - 86400)  # what TSIG signs with
    policy = RetryPolicy(timeout=2.0, attempts=1, later=(0.3,))
    thread = start_background_update(cfg, logging.getLogger("test.dns"), policy)
    status = wait_for_state("retrying")
    assert "BADTIME" in status.message and "is NTP running?" in status.message, status
    assert status.unreachable == unreachable_before  # the server did answer
    monkeypatch.setattr(time, "time", real_time)  # NTP has set the clock
    thread.join(timeout=60)
    assert not thread.is_alive()
    assert dns_update_status().state == "ok"
    assert named.rrset(NAS, "AAAA") == {"2001:db8:200::51"}


def test_a_newer_update_does_not_wait_for_an_older_ones_retries(
    named: Named, tmp_path: Path
) -> None:
    """An update retrying a frozen server (backoff 8 s, 16 s, ...) gave way to a
    newer config only after all its retries; now at the next pause."""
    cfg = load_config(write_config(tmp_path / "c.yaml", named))
    with frozen(named):
        slow = RetryPolicy(timeout=0.5, attempts=4, backoff=8.0, later=(3600.0,))
        older = start_background_update(cfg, logging.getLogger("test.dns"), slow)
        time.sleep(1.0)  # its first try has timed out: it is in its 8 s pause
    started = time.monotonic()
    newer = start_background_update(cfg, logging.getLogger("test.dns"), QUICK)
    newer.join(timeout=30)
    assert dns_update_status().state == "ok"
    assert time.monotonic() - started < 3.0  # not after the older one's 20 s of retries
    older.join(timeout=10)
    assert not older.is_alive()
    assert named.rrset(NAS, "AAAA") == {"2001:db8:200::51"}


def retrying_for_an_hour(named: Named, tmp_path: Path) -> tuple[Config, threading.Thread]:
    """A background update that found named frozen and now waits an hour to try again."""
    cfg = load_config(write_config(tmp_path / "c.yaml", named))
    with frozen(named):
        slow = RetryPolicy(timeout=0.5, attempts=1, later=(3600.0,))
        waiting = start_background_update(cfg, logging.getLogger("test.dns"), slow)
        wait_for_state("retrying")
    return cfg, waiting


def test_a_reload_ends_a_waiting_retry_at_once(named: Named, tmp_path: Path) -> None:
    cfg, waiting = retrying_for_an_hour(named, tmp_path)
    newer = start_background_update(cfg, logging.getLogger("test.dns"), QUICK)
    newer.join(timeout=60)
    waiting.join(timeout=5)
    assert not waiting.is_alive() and not newer.is_alive()
    assert dns_update_status().state == "ok"
    assert named.rrset(NAS, "AAAA") == {"2001:db8:200::51"}


def test_turning_updates_off_ends_a_waiting_retry(named: Named, tmp_path: Path) -> None:
    """A reload with dns.update_on_change false: the old config is never sent again."""
    _, waiting = retrying_for_an_hour(named, tmp_path)
    cancel_background_update()
    waiting.join(timeout=5)
    assert not waiting.is_alive()
    assert named.rrset(NAS, "AAAA") == set()


def test_without_later_runs_an_unreachable_server_is_an_error(named: Named, tmp_path: Path) -> None:
    cfg = load_config(write_config(tmp_path / "c.yaml", named))
    with frozen(named):
        policy = RetryPolicy(timeout=0.5, attempts=1, later=())
        thread = start_background_update(cfg, logging.getLogger("test.dns"), policy)
        thread.join(timeout=30)
    assert not thread.is_alive()
    status = dns_update_status()
    assert status.state == "error" and "timed out" in status.message, status


# --------------------------------------------------------------------------
# Prerequisites (RFC 2136 section 2.4): a change made between revnat64's read
# and its write is refused by the server, not overwritten.  prepare_update()
# reads and plans, apply_update() sends, so the tests edit the zone by hand
# in between, with a separate signed update.

GARAGE = "garage.cam.example.org."
NAS_ONLY = "  - name: nas\n    ipv6: 2001:db8:200::51\n    ipv4: 192.0.2.51\n    allow: [tcp/443]\n"


def mapping(name: str, v6: str, v4: str) -> str:
    return f"  - name: {name}\n    ipv6: {v6}\n    ipv4: {v4}\n    allow: [tcp/80]\n"


def by_hand(
    named: Named, edit: Callable[[dns.update.UpdateMessage], None], zone: str = ZONE
) -> None:
    """Someone else's update: signed with the same key, as a second admin's would be."""
    upd = dns.update.UpdateMessage(zone, keyring=load_tsig_key(named.key_file).to_dnspython())
    edit(upd)
    assert dns.query.tcp(upd, "127.0.0.1", port=named.port, timeout=5).rcode() == 0


def instance_config(path: Path, named: Named, mappings: str, instance: str, **kw: object) -> Path:
    write_config(path, named, mappings, **kw)
    path.write_text(path.read_text() + f"  instance: {instance}\n")
    return path


def test_an_aaaa_changed_by_hand_after_the_read_is_not_overwritten(
    named: Named, tmp_path: Path
) -> None:
    conf = write_config(tmp_path / "c.yaml", named)
    run_update(load_config(conf))
    write_config(conf, named, BASE_MAPPINGS.replace("2001:db8:200::51", "2001:db8:200::61"))
    prep = prepare_update(load_config(conf))
    by_hand(named, lambda u: u.replace(NAS, 300, "AAAA", "2001:db8:200::77"))
    serial = named.serial()

    with pytest.raises(DnsConflictError) as info:
        apply_update(prep)
    message = str(info.value)
    assert info.value.rcode == "NXRRSET"
    assert "changed by someone else since read" in message
    assert f"{NAS} AAAA was 2001:db8:200::51 when read, is now 2001:db8:200::77" in message
    assert "nothing in this update was applied" in message
    assert named.rrset(NAS, "AAAA") == {"2001:db8:200::77"} and named.serial() == serial

    # The next run reads the hand edit and, the name being configured, sets it.
    result = run_update(load_config(conf))
    assert [str(c) for c in result.plan.changes] == [
        f"set {NAS} AAAA 2001:db8:200::61 (was 2001:db8:200::77)"
    ]
    assert named.rrset(NAS, "AAAA") == {"2001:db8:200::61"}


def test_a_name_created_by_hand_after_the_read_is_not_overwritten(
    named: Named, tmp_path: Path
) -> None:
    conf = write_config(tmp_path / "c.yaml", named)
    run_update(load_config(conf))
    write_config(conf, named, BASE_MAPPINGS + mapping("garage", "2001:db8:200::70", "192.0.2.70"))
    prep = prepare_update(load_config(conf))
    by_hand(named, lambda u: u.add(GARAGE, 300, "AAAA", "2001:db8:200::88"))

    with pytest.raises(DnsConflictError) as info:
        apply_update(prep)
    assert info.value.rcode == "YXRRSET"
    assert info.value.changed == (f"{GARAGE} AAAA was absent when read, is now 2001:db8:200::88",)
    assert named.rrset(GARAGE, "AAAA") == {"2001:db8:200::88"}
    assert '"AAAA garage.cam.example.org."' not in named.rrset(ownership_name(ZONE), "TXT")


def test_a_name_disowned_by_hand_after_the_read_is_not_deleted(
    named: Named, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # docs/dns.md: to keep a name revnat64 would delete, remove its ownership string.
    conf = write_config(tmp_path / "c.yaml", named)
    run_update(load_config(conf))
    write_config(conf, named, BASE_MAPPINGS.replace(NAS_ONLY, ""))
    prep = prepare_update(load_config(conf))
    assert [str(c) for c in prep.plan.changes] == [f"delete {NAS} AAAA (was 2001:db8:200::51)"]
    owner = ownership_name(ZONE)
    by_hand(named, lambda u: u.delete(owner, "TXT", f'"AAAA {NAS}"'))

    with pytest.raises(DnsConflictError) as info:
        apply_update(prep)
    assert info.value.changed == (
        f'{owner} TXT (the names revnat64 manages) gained nothing and lost "AAAA {NAS}"',
    )
    assert named.rrset(NAS, "AAAA") == {"2001:db8:200::51"}
    # The next run sees the name is no longer ours and leaves it.
    status, out, err = dns_cli(capsys, "-c", str(conf), "--update")
    assert status == 0, err
    assert "up to date, nothing sent" in out
    assert named.rrset(NAS, "AAAA") == {"2001:db8:200::51"}


def test_a_refusal_is_reported_in_the_daemon_status_and_log(
    named: Named,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    conf = write_config(tmp_path / "c.yaml", named)
    run_update(load_config(conf))
    write_config(conf, named, BASE_MAPPINGS.replace("2001:db8:200::51", "2001:db8:200::61"))
    cfg = load_config(conf)
    # The background thread offers no pause between read and write, so the
    # apply step is wrapped to make the hand edit first.
    import publisher.dns_update as du

    real_apply = du.apply_update

    def edit_then_apply(prep: du.PreparedUpdate) -> du.UpdateResult:
        by_hand(named, lambda u: u.replace(NAS, 300, "AAAA", "2001:db8:200::77"))
        return real_apply(prep)

    monkeypatch.setattr(du, "apply_update", edit_then_apply)
    with caplog.at_level(logging.ERROR, logger="test.dns"):
        thread = start_background_update(cfg, logging.getLogger("test.dns"))
        thread.join(timeout=60)
    status = dns_update_status()
    assert status.state == "conflict", status
    assert f"{NAS} AAAA was 2001:db8:200::51 when read" in status.message
    assert "changed by someone else since read" in caplog.text
    assert named.rrset(NAS, "AAAA") == {"2001:db8:200::77"}


# --------------------------------------------------------------------------
# Two revnat64 instances with different dns.instance names in one zone.


def test_two_instances_cannot_take_over_each_others_names(
    named: Named, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    one = instance_config(tmp_path / "one.yaml", named, BASE_MAPPINGS, "router1")
    assert dns_cli(capsys, "-c", str(one), "--update")[0] == 0
    owner = ownership_name(ZONE)
    assert f'"AAAA {NAS} instance=router1"' in named.rrset(owner, "TXT")

    # router2 wants nas elsewhere, plus a name of its own.
    two_maps = NAS_ONLY.replace("::51", "::61") + mapping(
        "garage", "2001:db8:200::70", "192.0.2.70"
    )
    two = instance_config(tmp_path / "two.yaml", named, two_maps, "router2")
    status, out, err = dns_cli(capsys, "-c", str(two), "--update")
    assert status == 1
    assert (
        f"warning: {NAS} AAAA is managed by revnat64 instance 'router1', not this one; left alone"
        in err
    )
    assert "1 name(s) left alone because another revnat64 instance manages them" in out
    assert named.rrset(NAS, "AAAA") == {"2001:db8:200::51"}
    assert named.rrset(GARAGE, "AAAA") == {"2001:db8:200::70"}
    assert f'"AAAA {GARAGE} instance=router2"' in named.rrset(owner, "TXT")

    # Neither deletes the other's names when they leave its config.
    instance_config(two, named, mapping("shed", "2001:db8:200::72", "192.0.2.72"), "router2")
    assert dns_cli(capsys, "-c", str(two), "--update")[0] == 0
    assert named.rrset(GARAGE, "AAAA") == set()
    assert named.rrset(NAS, "AAAA") == {"2001:db8:200::51"}
    assert named.rrset(FRONTDOOR, "AAAA") == {"2001:db8:200::50"}
    status, out, _ = dns_cli(capsys, "-c", str(one), "--update")
    assert status == 0 and "up to date, nothing sent" in out

    # The daemon reports the same conflict in its status.
    instance_config(two, named, two_maps, "router2")
    thread = start_background_update(load_config(two), logging.getLogger("test.dns"))
    thread.join(timeout=60)
    st = dns_update_status()
    assert st.state == "conflict" and f"{NAS} AAAA is managed by revnat64 instance" in st.message


def test_two_instances_claiming_one_name_at_once_one_wins(named: Named, tmp_path: Path) -> None:
    # printer was made by hand and belongs to nobody; both configs claim it.
    one = instance_config(
        tmp_path / "one.yaml", named, mapping("printer", "2001:db8:200::98", "192.0.2.98"), "r1"
    )
    two = instance_config(
        tmp_path / "two.yaml", named, mapping("printer", "2001:db8:200::97", "192.0.2.97"), "r2"
    )
    prep1, prep2 = prepare_update(load_config(one)), prepare_update(load_config(two))
    apply_update(prep1)
    with pytest.raises(DnsConflictError) as info:
        apply_update(prep2)
    assert f'gained "AAAA {PRINTER} instance=r1"' in str(info.value)
    assert named.rrset(PRINTER, "AAAA") == {"2001:db8:200::98"}
    # On its next run r2 sees r1's claim and leaves the name alone.
    result = run_update(load_config(two))
    assert result.plan.is_empty and len(result.plan.conflicts) == 1
    assert named.rrset(PRINTER, "AAAA") == {"2001:db8:200::98"}


# --------------------------------------------------------------------------
# With dns.ptr, a reverse zone that cannot be updated stops the run before any
# AAAA record changes.


@pytest.mark.parametrize("reverse", ["none", "read-only"])
def test_a_reverse_zone_that_cannot_be_updated_publishes_no_aaaa(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], reverse: str
) -> None:
    with running_named(HAND_MADE, reverse=reverse) as named:
        conf = write_config(tmp_path / "c.yaml", named, ptr=True)
        status, out, err = dns_cli(capsys, "-c", str(conf), "--update")
        assert status == 1 and out == ""
        assert named.rrset(NAS, "AAAA") == set() and named.rrset(FRONTDOOR, "AAAA") == set()
        owned = named.rrset(ownership_name(ZONE), "TXT")
        if reverse == "none":
            # Caught by the reads, before anything was sent.
            assert f"DNS server {named.server} answered REFUSED to the query for" in err
            assert "set dns.ptr: false" in err and "nothing was sent" in err
            assert owned == set() and named.serial() == 1
        else:
            # The one message before the refusal publishes nothing, and the error says so.
            assert f"answered REFUSED to the update of zone {REVERSE_ZONE}" in err
            assert (
                f"already applied before this failure: 5 PTR name(s) added to "
                f"{ownership_name(ZONE)} TXT" in err
            )
            ptrs = build_records(load_config(conf), ptr=True).of_type("PTR")
            assert owned == {f'"PTR {r.name}"' for r in ptrs}


def test_a_ptr_changed_by_hand_after_the_read_stops_before_the_aaaa(
    named: Named, tmp_path: Path
) -> None:
    prep = prepare_update(load_config(write_config(tmp_path / "c.yaml", named, ptr=True)))
    by_hand(named, lambda u: u.add(NAS_PTR, 300, "PTR", "someone.example.net."), REVERSE_ZONE)

    with pytest.raises(DnsConflictError) as info:
        apply_update(prep)
    assert f"{NAS_PTR} PTR was absent when read, is now someone.example.net." in str(info.value)
    assert info.value.applied == (f"5 PTR name(s) added to {ownership_name(ZONE)} TXT",)
    assert named.rrset(NAS_PTR, "PTR") == {"someone.example.net."}
    assert named.rrset(NAS, "AAAA") == set()


def test_dns_zone_inside_a_served_zone_is_refused_before_sending(
    named: Named, tmp_path: Path
) -> None:
    conf = write_config(tmp_path / "c.yaml", named)
    conf.write_text(
        conf.read_text().replace("zone: cam.example.org.", "zone: sub.cam.example.org.")
    )
    with pytest.raises(DnsRefusedError) as info:
        run_update(load_config(conf))
    assert "holds sub.cam.example.org. inside its zone cam.example.org." in str(info.value)
    assert named.serial() == 1


def test_a_new_prefix_moves_the_aaaa_of_suffix_mappings(named: Named, tmp_path: Path) -> None:
    """wan.prefix_from: after renumbering, the update replaces the AAAA of ::suffix names."""
    conf = tmp_path / "c.yaml"
    write_config(conf, named, BASE_MAPPINGS.replace("ipv6: 2001:db8:200::51", "ipv6: ::51"))
    wan = "wan: {interface: eth0, prefix_from: x0}"
    conf.write_text(conf.read_text().replace("wan: {interface: eth0}", wan))
    for prefix in ("2001:db8:200:aa::/64", "2001:db8:200:bb::/64"):
        cfg = load_config(conf, prefix_lookup=lambda _, __, p=prefix: IPv6Network(p))
        run_update(cfg)
        assert named.rrset(NAS, "AAAA") == {prefix.replace("/64", "51")}
        assert named.rrset(FRONTDOOR, "AAAA") == {"2001:db8:200::50"}  # written in full


def test_a_cancel_during_a_backoff_leaves_no_run_shown_as_running(
    named: Named, tmp_path: Path
) -> None:
    """Cancelled between two tries, the update used to stay "running" for good."""
    cfg = load_config(write_config(tmp_path / "c.yaml", named))
    with frozen(named):
        slow = RetryPolicy(timeout=0.5, attempts=4, backoff=8.0, later=(3600.0,))
        older = start_background_update(cfg, logging.getLogger("test.dns"), slow)
        time.sleep(1.0)  # in its 8 s pause
        assert dns_update_status().state == "running"
        cancel_background_update()
        older.join(timeout=5)
    assert not older.is_alive()
    assert dns_update_status().state != "running"
