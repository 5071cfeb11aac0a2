"""Config validation: every rule rejects a bad file with file, field path and reason."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from publisher.config import ConfigError, config_warnings, load_config, parse_config

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "mappings.yaml.example"

BASE: dict[str, Any] = {
    "translator": {
        "tun_device": "revnat64",
        "ipv4_address": "198.51.100.1",
        "ipv6_address": "2001:db8:200::1",
        "pool4": "198.51.100.0/24",
    },
    "wan": {"interface": "eth0"},
    "lan": {"interface": "br-lan"},
    "mappings": [
        {"name": "cam", "ipv6": "2001:db8:200::50", "ipv4": "192.0.2.50", "allow": ["tcp/80"]},
        {"name": "nas", "ipv6": "2001:db8:200::51", "ipv4": "192.0.2.51", "allow": ["icmp"]},
    ],
}


def problems_of(doc: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(doc, "test.yaml")
    return [str(p) for p in info.value.problems]


def with_changes(**changes: Any) -> dict[str, Any]:
    doc = copy.deepcopy(BASE)
    for dotted, value in changes.items():
        node = doc
        *parents, last = dotted.split("__")
        for key in parents:
            node = node[int(key)] if key.isdigit() else node[key]
        if value is KeyError:
            del node[int(last) if last.isdigit() else last]
        elif last.isdigit():
            node[int(last)] = value
        else:
            node[last] = value
    return doc


def test_example_config_validates() -> None:
    cfg = load_config(EXAMPLE)
    assert [m.name for m in cfg.mappings] == ["frontdoor-cam", "nas", "lab-range"]
    assert str(cfg.translator.pool4) == "198.51.100.0/24"
    assert cfg.mappings[2].is_range
    assert cfg.fqdn(cfg.mappings[0]) == "frontdoor.cam.example.org."


def test_check_command_on_example_prints_one_line_summary() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "publisher.cli", "check", "-c", str(EXAMPLE)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1 and "OK: 3 mappings" in lines[0]


def test_check_command_reports_each_problem_on_its_own_line(tmp_path: Path) -> None:
    doc = with_changes(mappings__1__ipv4="192.0.2.50", translator__mtu=100)
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(doc))
    proc = subprocess.run(
        [sys.executable, "-m", "publisher.cli", "check", "-c", str(path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert proc.returncode == 1
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 2
    assert f"{path}: translator.mtu: must be between 1280 and 65535, not 100" in lines
    assert any(
        line.startswith(f"{path}: mappings[1].ipv4: ") and "duplicates" in line for line in lines
    )


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        (
            {"mappings__1__name": "cam"},
            "test.yaml: mappings[1].name: 'cam' is already used by mappings[0]",
        ),
        (
            {"mappings__1__ipv6": "2001:db8:200::50"},
            "test.yaml: mappings[1].ipv6: 2001:db8:200::50/128 duplicates 2001:db8:200::50/128 "
            "of mappings[0]",
        ),
        (
            {"mappings__1__ipv6": "2001:db8:200::/120", "mappings__1__ipv4": "192.0.2.0/24"},
            "test.yaml: mappings[1].ipv6: 2001:db8:200::/120 overlaps 2001:db8:200::50/128 "
            "of mappings[0]",
        ),
        (
            {"mappings__1__ipv4": "198.51.100.7"},
            "test.yaml: mappings[1].ipv4: 198.51.100.7/32 overlaps translator.pool4 "
            "198.51.100.0/24; pool addresses are leased to IPv6 clients",
        ),
        (
            {"lan": {"interface": "br-lan", "ipv4_networks": ["198.51.100.0/25"]}},
            "test.yaml: translator.pool4: 198.51.100.0/24 overlaps the LAN 198.51.100.0/25 "
            "(lan.ipv4_networks[0]); choose an unused range",
        ),
        (
            {"translator__prefix": "2001:db8:200::/96"},
            "test.yaml: mappings[0].ipv6: 2001:db8:200::50/128 lies inside the RFC 6052 prefix "
            "2001:db8:200::/96; it would be translated two ways",
        ),
        (
            {"translator__prefix": "64:ff9b::/96"},
            "test.yaml: mappings[0].ipv4: 192.0.2.50/32 is not a global IPv4 address; RFC 6052 "
            "§3.1 forbids the Well-Known Prefix 64:ff9b::/96 with non-global IPv4 (use a "
            "network-specific prefix instead)",
        ),
        (
            {"translator__prefix": "2001:db8:100::/44"},
            "test.yaml: translator.prefix: RFC 6052 prefixes are /32, /40, /48, /56, /64 or /96, "
            "not /44",
        ),
        (
            {"translator__prefix": "2001:db8:100:0:ff00::/96"},
            "test.yaml: translator.prefix: bits 64-71 (the RFC 6052 u-octet) must be zero",
        ),
        (
            {"firewall": {"check_interval": 7200}},
            "test.yaml: firewall.check_interval: must be between 0 and 3600, not 7200",
        ),
        (
            {"translator__prefix": "::/96"},
            "test.yaml: translator.prefix: ::/96 lies in ::/8, reserved by RFC 4291 (and not "
            "a ::suffix: the RFC 6052 prefix is always written in full); use one of your own "
            "or 64:ff9b::/96",
        ),
        (
            {"mappings__0__ipv6": "2001:db8:200::zz"},
            "test.yaml: mappings[0].ipv6: '2001:db8:200::zz' is not an IPv6 address or prefix",
        ),
        (
            {"mappings__0__ipv4": "192.0.2.300"},
            "test.yaml: mappings[0].ipv4: '192.0.2.300' is not an IPv4 address or prefix",
        ),
        (
            {"mappings__0__ipv4": "192.0.2.1/24"},
            "test.yaml: mappings[0].ipv4: '192.0.2.1/24' has host bits set (did you mean "
            "192.0.2.0/24?)",
        ),
        (
            {"translator__ipv4_address": "2001:db8::1"},
            "test.yaml: translator.ipv4_address: '2001:db8::1' is not an IPv4 address",
        ),
        (
            {"mappings__0__allow": ["tcp/0"]},
            "test.yaml: mappings[0].allow[0]: 'tcp/0': ports must be 1-65535",
        ),
        (
            {"mappings__0__allow": ["tcp/70000"]},
            "test.yaml: mappings[0].allow[0]: 'tcp/70000': ports must be 1-65535",
        ),
        (
            {"mappings__0__allow": ["tcp/90-80"]},
            "test.yaml: mappings[0].allow[0]: 'tcp/90-80': range runs backwards",
        ),
        (
            {"mappings__0__allow": ["sctp/80"]},
            "test.yaml: mappings[0].allow[0]: 'sctp/80' is not tcp/PORT, udp/PORT, tcp/LOW-HIGH "
            "or icmp",
        ),
        (
            {"mappings__0__allow": [80]},
            "test.yaml: mappings[0].allow[0]: must be a string like tcp/80, udp/7000-7010 or icmp, "
            "not a number",
        ),
        (
            {"translator__pool_4": "198.51.100.0/24"},
            "test.yaml: translator.pool_4: unknown key (did you mean 'pool4'?)",
        ),
        (
            {"mappings__0__alow": ["tcp/80"]},
            "test.yaml: mappings[0].alow: unknown key (did you mean 'allow'?)",
        ),
        ({"colour": "blue"}, "test.yaml: colour: unknown key"),
        (
            {"translator__mtu": "1500"},
            "test.yaml: translator.mtu: must be an integer, not a string",
        ),
        (
            {"translator__lease_time": True},
            "test.yaml: translator.lease_time: must be an integer, not a boolean",
        ),
        (
            {"translator__lease_time": 60, "translator__unconfirmed_lease_time": 61},
            "test.yaml: translator.unconfirmed_lease_time: (61) cannot exceed "
            "translator.lease_time (60)",
        ),
        (
            {"translator__unconfirmed_lease_time": 0},
            "test.yaml: translator.unconfirmed_lease_time: must be between 1 and 2592000, not 0",
        ),
        (
            {"wan__proxy_ndp": "yes"},
            "test.yaml: wan.proxy_ndp: must be true or false, not a string",
        ),
        ({"mappings": {"name": "cam"}}, "test.yaml: mappings: must be a list, not a mapping"),
        (
            {"translator__udp_zero_checksum": "fix"},
            "test.yaml: translator.udp_zero_checksum: must be one of compute, drop, not 'fix'",
        ),
        (
            {"translator__tun_device": "a-very-long-tun-name"},
            "test.yaml: translator.tun_device: 'a-very-long-tun-name' is not a valid interface "
            "name (1-15 characters, no spaces or /)",
        ),
        (
            {"mappings__0__ipv6": "2001:db8:3::/120", "mappings__0__ipv4": "192.0.2.0/25"},
            "test.yaml: mappings[0]: ipv6 2001:db8:3::/120 and ipv4 192.0.2.0/25 must have equal "
            "suffix lengths (RFC 7757): /120 leaves 8 bits, /25 leaves 7",
        ),
        (
            {"mappings__0__name": "Front Door"},
            "test.yaml: mappings[0].name: 'Front Door' must be lowercase letters, digits and '-', "
            "1-63 characters, not starting or ending with '-'",
        ),
        ({"translator__ipv4_address": KeyError}, "test.yaml: translator.ipv4_address: is required"),
        (
            {"metrics": {"listen": "localhost"}},
            "test.yaml: metrics.listen: 'localhost' must look like host:port (IPv6 as [addr]:port)",
        ),
        (
            {"dns": {"zone": "cam.example.org", "server": "::1:53"}},
            "test.yaml: dns.server: '::1:53': write an IPv6 host in brackets, as [addr]:port",
        ),
        (
            {"dns": {"zone": "cam.example.org", "instance": "Router 2"}},
            "test.yaml: dns.instance: 'Router 2' is not an instance name: use 1 to 32 "
            "lowercase letters, digits and hyphens, such as router2",
        ),
        (
            {"translator__lowest_ipv6_mtu": 1500, "translator__mtu": 1400},
            "test.yaml: translator.lowest_ipv6_mtu: (1500) cannot exceed translator.mtu (1400)",
        ),
        (
            {"translator__tun_device": "eth0"},
            "test.yaml: translator.tun_device: eth0 is also wan.interface; revnat64 creates "
            "(and at stop deletes) its TUN device, so it needs a name of its own",
        ),
        (
            {"translator__tun_device": "br-lan"},
            "test.yaml: translator.tun_device: br-lan is also lan.interface; revnat64 creates "
            "(and at stop deletes) its TUN device, so it needs a name of its own",
        ),
        (
            {"mappings__0__ipv6": "2001:db8:200::1"},
            "test.yaml: mappings[0].ipv6: 2001:db8:200::1/128 contains translator.ipv6_address "
            "2001:db8:200::1",
        ),
    ],
)
def test_rule_rejects_with_file_field_and_reason(changes: dict[str, Any], expected: str) -> None:
    assert expected in problems_of(with_changes(**changes))


def test_all_problems_are_reported_at_once() -> None:
    doc = with_changes(
        translator__mtu=10, mappings__0__ipv4="x", mappings__1__allow=["tcp/0"], extra=1
    )
    reported = problems_of(doc)
    assert len(reported) == 4, reported


def test_invalid_yaml_names_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("translator:\n  tun_device: [unclosed\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    text = str(info.value)
    assert str(path) in text and "invalid YAML" in text and "line" in text


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nope.yaml")
    assert "cannot read" in str(info.value)


def test_mapping_without_allow_exposes_only_echo_and_check_warns() -> None:
    doc = with_changes(mappings__0__allow=KeyError)
    cfg = parse_config(doc, "test.yaml")
    assert [str(r) for r in cfg.mappings[0].allow] == ["icmp"]
    assert any("mappings[0].allow: empty" in w and "ICMP echo" in w for w in config_warnings(cfg))


def test_disabled_firewall_warns() -> None:
    cfg = parse_config(with_changes(firewall={"enabled": False}), "test.yaml")
    assert any("firewall.enabled: false" in w for w in config_warnings(cfg))


def test_range_mapping_and_defaults() -> None:
    doc = with_changes(
        mappings__1__ipv6="2001:db8:3::/120",
        mappings__1__ipv4="192.0.2.0/24",
        mappings__0__ipv4="203.0.113.50",
    )
    cfg = parse_config(doc, "t.yaml")
    assert cfg.mappings[1].ipv4.num_addresses == 256
    assert cfg.translator.lease_time == 7200 and cfg.translator.udp_zero_checksum == "compute"
    assert cfg.translator.unconfirmed_lease_time == 30
    short = parse_config(with_changes(translator__lease_time=10), "t.yaml")
    assert short.translator.unconfirmed_lease_time == 10
    assert cfg.wan.proxy_ndp is True and cfg.firewall.enabled is True
    assert cfg.metrics.listen == "127.0.0.1:9864"


def test_metrics_listen_null_disables_endpoint() -> None:
    cfg = parse_config(with_changes(metrics={"listen": None}), "t.yaml")
    assert cfg.metrics.listen is None


# -- property tests: nothing but ConfigError escapes, whatever the YAML holds ------------

yaml_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True),
    st.text(max_size=20),
    st.sampled_from(["198.51.100.0/24", "2001:db8::1", "tcp/80", "icmp", "eth0", "::", "0/0"]),
)
yaml_docs = st.recursive(
    yaml_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(
            st.one_of(
                st.text(max_size=12),
                st.sampled_from(
                    [
                        "translator",
                        "mappings",
                        "wan",
                        "lan",
                        "name",
                        "ipv6",
                        "ipv4",
                        "allow",
                        "pool4",
                        "prefix",
                        "dns",
                        "metrics",
                        "firewall",
                        "listen",
                        "interface",
                    ]
                ),
                st.integers(),
            ),
            children,
            max_size=5,
        ),
    ),
    max_leaves=25,
)


@settings(max_examples=300, deadline=None)
@given(yaml_docs)
def test_arbitrary_documents_raise_only_config_error(doc: Any) -> None:
    try:
        parse_config(doc, "fuzz.yaml")
    except ConfigError as exc:
        assert exc.problems and all(p.file == "fuzz.yaml" for p in exc.problems)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_mutated_valid_documents_raise_only_config_error(data: st.DataObject) -> None:
    doc = copy.deepcopy(BASE)
    section = data.draw(st.sampled_from(["translator", "wan", "lan"]))
    key = data.draw(st.sampled_from(sorted(doc[section]) + ["extra"]))
    doc[section][key] = data.draw(yaml_docs)
    index = data.draw(st.integers(0, 1))
    mkey = data.draw(st.sampled_from(["name", "ipv6", "ipv4", "allow", "sources", "hostname"]))
    doc["mappings"][index][mkey] = data.draw(yaml_docs)
    try:
        parse_config(doc, "fuzz.yaml")
    except ConfigError as exc:
        assert exc.problems


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_arbitrary_text_raises_only_config_error(text: str) -> None:
    from publisher.config import parse_config_text

    try:
        parse_config_text(text, "fuzz.yaml")
    except ConfigError as exc:
        assert exc.problems


def test_check_rejects_a_dns_name_published_twice(tmp_path: Path) -> None:
    doc = with_changes(
        mappings__1__ipv6="2001:db8:3::/120",
        mappings__1__ipv4="192.0.2.0/24",
        mappings__1__name="lab",
        mappings__0__ipv4="203.0.113.50",
        mappings__0__name="lab-7",
    )
    doc["dns"] = {"zone": "cam.example.org."}
    path = tmp_path / "names.yaml"
    path.write_text(yaml.safe_dump(doc))
    proc = subprocess.run(
        [sys.executable, "-m", "publisher.cli", "check", "-c", str(path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert proc.returncode == 1
    assert (
        f"{path}: mappings[1].hostname: DNS name lab-7.cam.example.org. of 'lab' is also "
        "published by mappings[0] ('lab-7'); choose another hostname"
    ) in proc.stdout


def test_a_dns_server_name_is_warned_about_not_refused() -> None:
    """dnspython resolves no names: such a value passed check silently and failed
    every update with a bare ValueError. A warning, so that an upgrade does not stop
    a daemon whose only fault is this setting; the update says it clearly."""
    named = with_changes(dns={"zone": "cam.example.org", "server": "ns1.example.org:53"})
    [warning] = [w for w in config_warnings(parse_config(named)) if "dns.server" in w]
    assert "dns.server: 'ns1.example.org' is not an IP address" in warning
    v6 = with_changes(dns={"zone": "cam.example.org", "server": "[2001:db8::53]:53"})
    assert not [w for w in config_warnings(parse_config(v6)) if "dns.server" in w]


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"mappings__0__name": "cam\n"}, "mappings[0].name"),
        ({"translator__tun_device": "rn64t\n"}, "translator.tun_device"),
        ({"mappings__0__hostname": "cam.x\n"}, "mappings[0].hostname"),
    ],
)
def test_a_trailing_newline_is_not_a_valid_name(changes: dict[str, Any], field: str) -> None:
    """`$` matched before a trailing newline, which then reached nsupdate scripts,
    zone files and hosts snippets as a line break."""
    assert any(f"test.yaml: {field}" in p for p in problems_of(with_changes(**changes)))
