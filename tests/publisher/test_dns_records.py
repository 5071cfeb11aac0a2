"""Record building and every output format: golden files, and each format parsed back.

Golden files live in tests/publisher/golden/; after an intended change to the
output, regenerate them with ``REVNAT64_UPDATE_GOLDEN=1 pytest tests/publisher``
and review the diff.
"""

from __future__ import annotations

import json
import os
from ipaddress import IPv6Address
from pathlib import Path

import dns.name
import dns.rdatatype
import dns.reversename
import dns.zone
import pytest

from publisher.cli import main
from publisher.config import parse_config_text
from publisher.dns_records import FORMATS, MAX_RANGE_RECORDS, build_records, render
from tests.dnsservers import config_text

GOLDEN = Path(__file__).parent / "golden"
ZONE_SOA = (
    "@ 300 IN SOA ns1 hostmaster 1 3600 600 86400 300\n@ 300 IN NS ns1\nns1 300 IN A 192.0.2.53\n"
)


def _cfg(ptr: bool = False, mappings: str | None = None):  # type: ignore[no-untyped-def]
    text = config_text(ptr=ptr) if mappings is None else config_text(mappings, ptr=ptr)
    return parse_config_text(text, "test.yaml")


def _check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("REVNAT64_UPDATE_GOLDEN") == "1":
        path.write_text(text)
    assert text == path.read_text(), f"output differs from {path}"


@pytest.mark.parametrize("fmt", sorted(FORMATS))
@pytest.mark.parametrize("ptr", [False, True], ids=["aaaa", "ptr"])
def test_output_matches_golden_file(fmt: str, ptr: bool) -> None:
    rs = build_records(_cfg(), ptr=ptr)
    _check_golden(f"dns-{'ptr' if ptr else 'aaaa'}.{fmt}", render(rs, fmt, "127.0.0.1:53"))


def test_cli_prints_the_same_as_render(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conf = tmp_path / "c.yaml"
    conf.write_text(config_text())
    assert main(["dns", "-c", str(conf), "--format", "unbound", "--ptr"]) == 0
    out = capsys.readouterr().out
    assert out == (GOLDEN / "dns-ptr.unbound").read_text()


def test_single_mappings_and_range_names() -> None:
    rs = build_records(_cfg())
    aaaa = {r.name: r.value for r in rs.of_type("AAAA")}
    assert aaaa == {
        "frontdoor.cam.example.org.": "2001:db8:200::50",
        "nas.cam.example.org.": "2001:db8:200::51",
        # 192.0.2.252/30 inside the LAN 192.0.2.0/24: .255 is the LAN broadcast, not a device.
        "lab-252.cam.example.org.": "2001:db8:200:1::",
        "lab-253.cam.example.org.": "2001:db8:200:1::1",
        "lab-254.cam.example.org.": "2001:db8:200:1::2",
    }
    assert rs.warnings == ()


def test_a_lab_slash_121_gets_one_name_per_device() -> None:
    mappings = (
        "  - name: lab\n    ipv6: 2001:db8:200:1::80/121\n    ipv4: 192.0.2.128/25\n"
        "    allow: [icmp]\n    hostname: dev\n"
    )
    rs = build_records(_cfg(mappings=mappings), ptr=True)
    aaaa = {r.name: IPv6Address(r.value) for r in rs.of_type("AAAA")}
    assert len(aaaa) == 127  # 128 addresses minus the LAN broadcast 192.0.2.255
    # RFC 7757: offset 7 in the IPv4 range is offset 7 in the IPv6 range.
    assert aaaa["dev-135.cam.example.org."] == IPv6Address("2001:db8:200:1::87")
    assert "dev-255.cam.example.org." not in aaaa
    assert len(rs.of_type("PTR")) == 127


def test_ranges_wider_than_a_slash_24_get_no_names_and_a_warning() -> None:
    mappings = (
        "  - name: big\n    ipv6: 2001:db8:200:2::/119\n    ipv4: 203.0.112.0/23\n"
        "    allow: [icmp]\n"
        "  - name: nas\n    ipv6: 2001:db8:200::51\n    ipv4: 192.0.2.51\n    allow: [tcp/443]\n"
    )
    rs = build_records(_cfg(mappings=mappings))
    assert [r.name for r in rs.records] == ["nas.cam.example.org."]
    (warning,) = rs.warnings
    assert "mappings[0] (big)" in warning and str(MAX_RANGE_RECORDS) in warning


def test_a_range_label_over_63_characters_is_skipped_with_a_warning() -> None:
    long = "d" * 62
    mappings = (
        f"  - name: {long}\n    ipv6: 2001:db8:200:1::/127\n    ipv4: 192.0.2.2/31\n"
        "    allow: [icmp]\n"
    )
    rs = build_records(_cfg(mappings=mappings))
    assert rs.records == ()
    assert len(rs.warnings) == 2 and all("longer than 63" in w for w in rs.warnings)


def test_ptr_names_are_the_nibble_form_of_the_address() -> None:
    rs = build_records(_cfg(), ptr=True)
    aaaa_by_name = {r.name: r.value for r in rs.of_type("AAAA")}
    assert len(rs.of_type("PTR")) == len(aaaa_by_name)
    for rec in rs.of_type("PTR"):
        # RFC 3596 section 2.5: the reverse name spells the address back.
        address = dns.reversename.to_address(dns.name.from_text(rec.name))
        assert IPv6Address(address) == IPv6Address(aaaa_by_name[rec.value])


def test_zone_output_parses_as_a_zone() -> None:
    rs = build_records(_cfg(), ptr=True)
    text = render(rs, "zone")
    aaaa_lines = "".join(line + "\n" for line in text.splitlines() if "\tAAAA\t" in line)
    zone = dns.zone.from_text(ZONE_SOA + aaaa_lines, origin="cam.example.org.", relativize=False)
    got = {(name.to_text(), rd.address) for name, _, rd in zone.iterate_rdatas(dns.rdatatype.AAAA)}
    assert got == {(r.name, r.value) for r in rs.of_type("AAAA")}
    # The PTR lines form a zone of their own, under the reverse zone's origin.
    ptr_lines = "".join(line + "\n" for line in text.splitlines() if "\tPTR\t" in line)
    rzone = dns.zone.from_text(
        ZONE_SOA + ptr_lines, origin="0.0.2.0.8.b.d.0.1.0.0.2.ip6.arpa.", relativize=False
    )
    got_ptr = {
        (name.to_text(), rd.target.to_text())
        for name, _, rd in rzone.iterate_rdatas(dns.rdatatype.PTR)
    }
    assert got_ptr == {(r.name, r.value) for r in rs.of_type("PTR")}
    # Comment lines are valid zone-file comments too: the whole output parses.
    dns.zone.from_text(ZONE_SOA + text, origin=".", relativize=False, check_origin=False)


def test_hosts_output_parses_into_address_and_names() -> None:
    rs = build_records(_cfg())
    entries = {}
    for line in render(rs, "hosts").splitlines():
        if line.startswith("#"):
            continue
        addr, *names = line.split()
        entries[names[0]] = (IPv6Address(addr), names[1:])
    assert entries["frontdoor.cam.example.org"] == (IPv6Address("2001:db8:200::50"), ["frontdoor"])
    assert len(entries) == len(rs.of_type("AAAA"))


def test_json_output_round_trips() -> None:
    rs = build_records(_cfg(), ptr=True)
    doc = json.loads(render(rs, "json"))
    assert doc["zone"] == "cam.example.org." and doc["ttl"] == 300
    assert [(d["name"], d["type"], d["value"], d["mapping"]) for d in doc["records"]] == [
        (r.name, r.rtype, r.value, r.mapping) for r in rs.records
    ]


def test_unknown_format_names_the_choices() -> None:
    with pytest.raises(ValueError, match="unknown DNS output format 'bind'.*zone"):
        render(build_records(_cfg()), "bind")


def test_cli_without_a_zone_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conf = tmp_path / "c.yaml"
    conf.write_text(config_text(server=None).replace("  zone: cam.example.org.\n", ""))
    assert main(["dns", "-c", str(conf)]) == 2
    assert "dns.zone: is required" in capsys.readouterr().err


def test_nsupdate_script_records_ownership_for_a_named_instance() -> None:
    text = config_text(ptr=True) + "  instance: router2\n"
    script = render(build_records(parse_config_text(text, "test.yaml"), ptr=True), "nsupdate")
    owned = [line for line in script.splitlines() if " TXT " in line]
    assert owned and all(line.endswith(' instance=router2"') for line in owned)
    assert 'TXT "AAAA nas.cam.example.org. instance=router2"' in script
