"""``revnat64 dns --update/--check`` and the nsupdate script against a real BIND named.

Each test gets its own named (loopback, free port, temporary directory) with
a forward zone ``cam.example.org.`` and the reverse zone for 2001:db8:200::/48,
both updatable with a TSIG key made by tsig-keygen.  The forward zone already
holds a name that is not ours (``printer``), and ``frontdoor`` carries a TXT
and an MX record someone added by hand.
"""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Iterator
from pathlib import Path

import dns.query
import dns.update
import pytest

from publisher.cli import main
from publisher.config import load_config
from publisher.dns_records import ownership_name
from publisher.dns_tsig import load_tsig_key
from publisher.dns_update import RetryPolicy, dns_update_status, start_background_update
from tests.dnsservers import BASE_MAPPINGS, ZONE, Named, config_text, running_named, tsig_keygen

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
