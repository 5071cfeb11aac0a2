"""Dynamic prefixes: choosing the interface's prefix, resolving ::suffix addresses, config."""

from __future__ import annotations

import copy
import re
from ipaddress import IPv6Address, IPv6Network
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from publisher.config import (
    ConfigError,
    PrefixMissing,
    config_warnings,
    load_config,
    parse_config,
    summary,
)
from publisher.prefix import (
    FOREVER,
    PLACEHOLDER,
    PREFIX_STATE_FILE,
    InterfaceAddress,
    choose_prefix,
    remembered,
    remembered_text,
    resolve,
)

NEW = IPv6Network("2001:db8:bb::/64")
OLD = IPv6Network("2001:db8:aa::/64")

RELATIVE: dict[str, Any] = {
    "translator": {
        "tun_device": "revnat64",
        "ipv4_address": "198.51.100.1",
        "ipv6_address": "::1",
        "pool4": "198.51.100.0/24",
        "publish_prefix": "::/64",
    },
    "wan": {"interface": "eth0", "prefix_from": "br-lan"},
    "lan": {"interface": "br-lan"},
    "mappings": [
        {"name": "cam", "ipv6": "::50", "ipv4": "192.0.2.50", "allow": ["tcp/80"]},
        {"name": "lab", "ipv6": "::80/121", "ipv4": "192.0.2.128/25", "allow": ["icmp"]},
        {"name": "nas", "ipv6": "2001:db8:200::51", "ipv4": "192.0.2.51", "allow": ["icmp"]},
    ],
}


def problems(doc: dict[str, Any], prefix: IPv6Network | None = NEW) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(doc, "test.yaml", prefix)
    return [str(p) for p in info.value.problems]


# -- choosing the prefix ----------------------------------------------------------------


def addr(net: str, deprecated: bool = False, preferred: int = 3600) -> InterfaceAddress:
    return InterfaceAddress(IPv6Network(net, strict=False), deprecated, preferred)


def test_renumbering_prefers_the_new_prefix_over_the_deprecated_old_one() -> None:
    old = addr("2001:db8:aa::1/64", deprecated=True, preferred=0)
    assert choose_prefix([old, addr("2001:db8:bb::1/64")]) == NEW
    assert choose_prefix([addr("2001:db8:bb::1/64"), old]) == NEW


def test_longest_preferred_lifetime_wins_and_ties_go_to_the_lowest() -> None:
    short, long = addr("2001:db8:aa::1/64", preferred=60), addr("2001:db8:bb::1/64")
    assert choose_prefix([short, long]) == NEW
    assert choose_prefix([addr("2001:db8:bb::1/64"), addr("2001:db8:aa::1/64")]) == OLD


@pytest.mark.parametrize(
    "net",
    ["fe80::1/64", "fd00:1::1/64", "2001:db8:aa::1/128", "::1/128", "ff02::1/16"],
)
def test_unpublishable_addresses_are_not_prefixes(net: str) -> None:
    assert choose_prefix([addr(net)]) is None
    assert choose_prefix([addr(net), addr("2001:db8:bb::1/64")]) == NEW


def test_only_deprecated_means_no_prefix() -> None:
    assert choose_prefix([addr("2001:db8:aa::1/64", preferred=0)]) is None
    assert choose_prefix([]) is None


# -- resolving suffixes ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("suffix", "expected"),
    [
        ("::50", "2001:db8:bb::50/128"),
        ("::80/121", "2001:db8:bb::80/121"),
        ("::/64", "2001:db8:bb::/64"),
        ("::1:2:3:4", "2001:db8:bb:0:1:2:3:4/128"),
    ],
)
def test_suffix_goes_into_the_host_part(suffix: str, expected: str) -> None:
    assert resolve(suffix, NEW) == IPv6Network(expected)


@pytest.mark.parametrize(
    ("suffix", "reason"),
    [
        ("::1:0:0:0:50", "does not fit in the host part of the current prefix 2001:db8:bb::/64"),
        ("::/56", "does not fit"),
        ("::81/121", "has host bits set (did you mean ::80/121?)"),
        ("::cam", "is not an IPv6 suffix"),
    ],
)
def test_bad_suffix_says_why(suffix: str, reason: str) -> None:
    with pytest.raises(ValueError, match=re.escape(reason)):
        resolve(suffix, NEW)


@given(st.integers(min_value=1, max_value=2**64 - 1), st.integers(min_value=0, max_value=2**64 - 1))
def test_resolved_address_keeps_prefix_and_suffix(suffix: int, net64: int) -> None:
    prefix = IPv6Network((net64 << 64, 64))
    got = resolve(str(IPv6Address(suffix)), prefix)
    assert got.prefixlen == 128
    assert got.subnet_of(prefix)
    assert int(got.network_address) & (2**64 - 1) == suffix


# -- the config -------------------------------------------------------------------------


def test_relative_addresses_resolve_inside_the_given_prefix() -> None:
    cfg = parse_config(RELATIVE, "test.yaml", NEW)
    assert cfg.translator.ipv6_address == IPv6Address("2001:db8:bb::1")
    assert cfg.translator.publish_prefix == NEW
    assert [str(m.ipv6) for m in cfg.mappings] == [
        "2001:db8:bb::50/128",
        "2001:db8:bb::80/121",
        "2001:db8:200::51/128",  # written in full: stays
    ]
    assert (cfg.wan.prefix_from, cfg.wan.prefix) == ("br-lan", NEW)
    assert "addresses in 2001:db8:bb::/64 from br-lan" in summary(cfg)
    assert not [w for w in config_warnings(cfg) if "prefix_from" in w]


def test_same_file_with_another_prefix_moves_only_the_relative_addresses() -> None:
    a, b = parse_config(RELATIVE, "t", OLD), parse_config(RELATIVE, "t", NEW)
    assert [m.ipv6.subnet_of(OLD) for m in a.mappings] == [True, True, False]
    assert [m.ipv6.subnet_of(NEW) for m in b.mappings] == [True, True, False]
    assert [m.ipv4 for m in a.mappings] == [m.ipv4 for m in b.mappings]


def test_suffix_without_prefix_from_names_file_field_and_fix() -> None:
    doc = copy.deepcopy(RELATIVE)
    del doc["wan"]["prefix_from"]
    got = problems(doc, None)
    assert "test.yaml: mappings[0].ipv6: '::50' is a suffix (it starts with ::); set " in got[2]
    assert [p.split(":")[1].strip() for p in got] == [
        "translator.ipv6_address",
        "translator.publish_prefix",
        "mappings[0].ipv6",
        "mappings[1].ipv6",
    ]


def test_suffix_too_big_for_the_prefix_is_a_problem_of_its_field() -> None:
    doc = copy.deepcopy(RELATIVE)
    doc["mappings"][0]["ipv6"] = "::1:0:0:0:50"
    assert problems(doc) == [
        "test.yaml: mappings[0].ipv6: '::1:0:0:0:50' does not fit in the host part of "
        "the current prefix 2001:db8:bb::/64 (64 bits)"
    ]


def test_relative_translator_address_must_be_an_address() -> None:
    doc = copy.deepcopy(RELATIVE)
    doc["translator"]["ipv6_address"] = "::1/127"
    assert problems(doc) == [
        "test.yaml: translator.ipv6_address: '::1/127': an address, not a prefix, is needed here"
    ]


def test_relative_mapping_clash_is_found_after_resolving() -> None:
    doc = copy.deepcopy(RELATIVE)
    doc["mappings"][2]["ipv6"] = "2001:db8:bb::50"  # the same as cam's ::50 in NEW
    assert parse_config(doc, "t", OLD)  # no clash in the old prefix
    assert any("mappings[2].ipv6" in p for p in problems(doc))


def test_no_prefix_given_is_a_problem_of_prefix_from() -> None:
    assert problems(RELATIVE, None) == [
        "test.yaml: wan.prefix_from: no current prefix of br-lan was given"
    ]


def write(tmp_path: Path, doc: dict[str, Any]) -> Path:
    path = tmp_path / "mappings.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_loading_reads_the_prefix_of_the_named_interface(tmp_path: Path) -> None:
    asked: list[str] = []

    def lookup(ifname: str, within: tuple[IPv6Network, ...]) -> IPv6Network:
        asked.append(ifname)
        return NEW

    cfg = load_config(write(tmp_path, RELATIVE), prefix_lookup=lookup)
    assert asked == ["br-lan"] and cfg.mappings[0].ipv6 == IPv6Network("2001:db8:bb::50/128")


def test_loading_without_a_prefix_fails_unless_a_placeholder_will_do(tmp_path: Path) -> None:
    path = write(tmp_path, RELATIVE)
    with pytest.raises(PrefixMissing) as info:
        load_config(path, prefix_lookup=lambda _, __: None)
    assert [str(p) for p in info.value.problems] == [
        f"{path}: wan.prefix_from: br-lan has no global IPv6 prefix now; "
        "the ::suffix addresses need one"
    ]
    cfg = load_config(path, placeholder=True, prefix_lookup=lambda _, __: None)
    assert cfg.wan.prefix == PLACEHOLDER
    assert cfg.mappings[0].ipv6.subnet_of(PLACEHOLDER)
    warning = [w for w in config_warnings(cfg) if "prefix_from" in w]
    assert warning and "daemon publishes them once a prefix is there" in warning[0]
    assert "addresses in" not in summary(cfg)


def test_loading_names_a_missing_interface(tmp_path: Path) -> None:
    def lookup(ifname: str, within: tuple[IPv6Network, ...]) -> IPv6Network:
        raise LookupError(f"no interface {ifname}")

    with pytest.raises(PrefixMissing, match="wan.prefix_from: no interface br-lan; "):
        load_config(write(tmp_path, RELATIVE), prefix_lookup=lookup)


def test_config_without_prefix_from_never_looks_up_a_prefix(tmp_path: Path) -> None:
    doc = copy.deepcopy(RELATIVE)
    del doc["wan"]["prefix_from"]
    doc["translator"]["ipv6_address"] = "2001:db8:200::1"
    del doc["translator"]["publish_prefix"]
    for m, full in zip(doc["mappings"], ("2001:db8:200::50", "2001:db8:200:1::80/121")):
        m["ipv6"] = full

    def lookup(ifname: str, within: tuple[IPv6Network, ...]) -> IPv6Network:
        raise AssertionError("looked up a prefix")

    cfg = load_config(write(tmp_path, doc), prefix_lookup=lookup)
    assert cfg.wan.prefix_from is None and cfg.wan.prefix is None


def test_the_prefix_in_use_is_kept_while_it_is_usable() -> None:
    """Two live prefixes whose lifetimes count down out of step must not flip-flop."""
    a, b = addr("2001:db8:aa::1/64", preferred=100), addr("2001:db8:bb::1/64", preferred=200)
    assert choose_prefix([a, b]) == NEW
    assert choose_prefix([a, b], keep=OLD) == OLD
    deprecated = addr("2001:db8:aa::1/64", deprecated=True, preferred=0)
    assert choose_prefix([deprecated, b], keep=OLD) == NEW
    assert choose_prefix([b], keep=OLD) == NEW


def test_prefix_from_cannot_be_the_tun_device() -> None:
    doc = copy.deepcopy(RELATIVE)
    doc["wan"]["prefix_from"] = "revnat64"
    assert problems(doc) == [
        "test.yaml: wan.prefix_from: revnat64 is revnat64's own TUN device; name the "
        "interface that carries the prefix from your ISP (the LAN bridge with DHCPv6-PD, "
        "or the WAN)"
    ]


def test_the_daemons_prefix_is_remembered_for_its_interface_only(tmp_path: Path) -> None:
    (tmp_path / PREFIX_STATE_FILE).write_text(remembered_text(OLD, "br-lan"))
    assert remembered(str(tmp_path), "br-lan") == OLD
    assert remembered(str(tmp_path), "eth0") is None
    assert remembered(str(tmp_path / "nowhere"), "br-lan") is None
    (tmp_path / PREFIX_STATE_FILE).write_text("garbage\n")
    assert remembered(str(tmp_path), "br-lan") is None


def test_ptr_updates_with_a_dynamic_prefix_are_warned_about() -> None:
    doc = copy.deepcopy(RELATIVE)
    doc["dns"] = {"zone": "cam.example.org.", "server": "192.0.2.53:53"}
    assert not [w for w in config_warnings(parse_config(doc, "t", NEW)) if "dns.ptr" in w]
    doc["dns"].update(ptr=True, update_on_change=True)
    warned = [w for w in config_warnings(parse_config(doc, "t", NEW)) if "dns.ptr" in w]
    assert warned and "every new prefix needs its own ip6.arpa zone" in warned[0]


def test_prefix_within_ignores_prefixes_outside_the_isps_block() -> None:
    """A forged RA offering a prefix of its own is not followed (wan.prefix_within)."""
    isp = (IPv6Network("2001:db8:b0::/44"),)
    forged = addr("2001:db8:aa::1/64", preferred=FOREVER)
    real = addr("2001:db8:bb::1/64", preferred=600)
    assert choose_prefix([forged, real]) == OLD
    assert choose_prefix([forged, real], within=isp) == NEW
    assert choose_prefix([forged], within=isp) is None
    assert choose_prefix([forged, real], keep=OLD, within=isp) == NEW


def test_prefix_within_is_passed_to_the_lookup_and_checked(tmp_path: Path) -> None:
    doc = copy.deepcopy(RELATIVE)
    doc["wan"]["prefix_within"] = ["2001:db8:b0::/44"]
    seen: list[tuple[IPv6Network, ...]] = []

    def lookup(ifname: str, within: tuple[IPv6Network, ...]) -> IPv6Network:
        seen.append(within)
        return NEW

    cfg = load_config(write(tmp_path, doc), prefix_lookup=lookup)
    assert seen == [(IPv6Network("2001:db8:b0::/44"),)]
    assert cfg.wan.prefix_within == seen[0]
    with pytest.raises(PrefixMissing, match="no global IPv6 prefix inside wan.prefix_within"):
        load_config(write(tmp_path, doc), prefix_lookup=lambda _, __: None)

    doc["wan"]["prefix_within"] = ["2001:db8:b0::/44", "isp-block"]
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, doc), prefix_lookup=lookup)
    assert [p.path for p in info.value.problems] == ["wan.prefix_within[1]"]

    doc["wan"]["prefix_within"] = ["2001:db8:b0::/44"]
    del doc["wan"]["prefix_from"]
    assert "test.yaml: wan.prefix_within: only means something with wan.prefix_from" in problems(
        doc, None
    )


def test_no_dns_update_is_sent_while_waiting_for_a_first_prefix(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The placeholder's addresses must never reach the zone."""
    import publisher.dns_update as dns_update
    from publisher.daemon import Daemon

    started: list[object] = []
    cancelled: list[bool] = []
    monkeypatch.setattr(dns_update, "start_background_update", lambda *a: started.append(a))
    monkeypatch.setattr(dns_update, "cancel_background_update", lambda: cancelled.append(True))
    doc = copy.deepcopy(RELATIVE)
    doc["dns"] = {"zone": "cam.example.org.", "server": "192.0.2.53:53", "update_on_change": True}
    waiting = parse_config(doc, "t", PLACEHOLDER)
    assert waiting.waiting_for_prefix
    Daemon._maybe_update_dns(object(), waiting)  # type: ignore[arg-type]
    assert started == [] and cancelled == [True]
    ready = parse_config(doc, "t", NEW)
    assert not ready.waiting_for_prefix
    Daemon._maybe_update_dns(object(), ready)  # type: ignore[arg-type]
    assert len(started) == 1
