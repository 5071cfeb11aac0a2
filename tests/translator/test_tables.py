"""EAM (RFC 7757) and RFC 6052 tables: build-time validation and lookups."""

from __future__ import annotations

import ipaddress

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6
from tr_testlib import CLIENT6, assert_checksums, make_translator

from translator import Action, DropReason, Pool4, Tables, Translator, TranslatorSettings

A4 = ipaddress.IPv4Address("192.0.2.33").packed

# RFC 6052 §2.4 Table 2: 192.0.2.33 embedded with each prefix length.
RFC6052_EXAMPLES = [
    ("2001:db8::/32", "2001:db8:c000:221::"),
    ("2001:db8:100::/40", "2001:db8:1c0:2:21::"),
    ("2001:db8:122::/48", "2001:db8:122:c000:2:2100::"),
    ("2001:db8:122:300::/56", "2001:db8:122:3c0:0:221::"),
    ("2001:db8:122:344::/64", "2001:db8:122:344:c0:2:2100:0"),
    ("2001:db8:122:344::/96", "2001:db8:122:344::c000:221"),
]


def p6(text: str) -> bytes:
    return ipaddress.IPv6Address(text).packed


@pytest.mark.parametrize(("prefix", "address"), RFC6052_EXAMPLES)
def test_rfc6052_table_2(prefix, address):
    t = Tables.build(prefix=prefix)
    assert t.embed(A4) == p6(address)
    assert t.extract(p6(address)) == A4
    m4 = t.lookup4(A4)
    m6 = t.lookup6(p6(address))
    assert m4 is not None and m6 is not None
    assert m4[0] == p6(address) and m6[0] == A4
    assert m4[1] == m6[1] and m4[2] == m6[2] == -1


@pytest.mark.parametrize(("prefix", "address"), RFC6052_EXAMPLES[1:5])
def test_rfc6052_u_octet_and_suffix_must_be_zero(prefix, address):
    """§2.2: bits 64-71 are zero; a non-canonical address is not IPv4-embedded."""
    t = Tables.build(prefix=prefix)
    raw = bytearray(p6(address))
    raw[8] = 1
    assert t.extract(bytes(raw)) is None
    raw = bytearray(p6(address))
    raw[15] = 1
    assert t.extract(bytes(raw)) is None


@pytest.mark.parametrize(("prefix", "address"), RFC6052_EXAMPLES)
def test_rfc6052_translation_all_lengths(prefix, address):
    """Packets through every prefix length keep valid checksums (per-packet deltas)."""
    tr = make_translator(prefix=prefix, eam=[])
    o = tr.translate(bytes(IPv6(src=CLIENT6, dst=address) / UDP(sport=1, dport=2) / b"x"), 1.0)
    assert o.action == Action.FORWARD
    assert assert_checksums(o.packets[0])[IP].dst == "192.0.2.33"


def test_wkp_with_non_global():
    t = Tables.build(prefix="64:ff9b::/96")
    assert t.embed(ipaddress.IPv4Address("10.1.2.3").packed) is None
    assert t.lookup6(p6("64:ff9b::10.1.2.3")) is None
    assert t.lookup6(p6("64:ff9b::192.0.2.33")) is None  # TEST-NET-1 is not global
    assert t.lookup6(p6("64:ff9b::8.8.8.8")) == (
        b"\x08\x08\x08\x08",
        t.lookup6(p6("64:ff9b::8.8.8.8"))[1],
        -1,
    )
    with pytest.raises(ValueError, match="RFC 6052"):
        Tables.build(eam=[("64:ff9b::a00:1/128", "10.0.0.1/32")])


@pytest.mark.parametrize(
    ("eam", "prefix", "message"),
    [
        ([("2001:db8::/120", "10.0.0.0/25")], None, "suffix lengths differ"),
        (
            [("2001:db8::/120", "10.0.0.0/24"), ("2001:db8::80/121", "10.1.0.0/25")],
            None,
            "IPv6 side overlaps",
        ),
        (
            [("2001:db8::1/128", "10.0.0.1/32"), ("2001:db8::2/128", "10.0.0.1/32")],
            None,
            "IPv4 side overlaps",
        ),
        (
            [("2001:db8::1/128", "10.0.0.1/32"), ("2001:db8::1/128", "10.0.0.2/32")],
            None,
            r"eam\[1\]",
        ),
        ([("2001:db8::1/64", "10.0.0.1/32")], None, r"eam\[0\]\[0\]"),
        ([("10.0.0.1/32", "10.0.0.1/32")], None, "not an IPv6 network"),
        ([("2001:db8::1/128", "2001:db8::1/128")], None, "not an IPv4 network"),
        ([("2001:db8::1/128",)], None, "expected"),
        ([], "2001:db8::/33", "/32, /40"),
        ([], "2001:db8:0:0:ff00::/96", "64-71"),
        ([], "10.0.0.0/8", "not an IPv6"),
        ([], "garbage", "prefix"),
    ],
)
def test_build_rejects(eam, prefix, message):
    with pytest.raises(ValueError, match=message):
        Tables.build(eam=eam, prefix=prefix)


def test_tables_constructor_is_private():
    with pytest.raises(TypeError):
        Tables()


def test_eam_accepts_ipaddress_objects_and_lpm():
    t = Tables.build(
        eam=[
            (ipaddress.IPv6Network("2001:db8:1::/112"), ipaddress.IPv4Network("10.1.0.0/16")),
            ("2001:db8:2::/120", "10.2.0.0/24"),
            ("2001:db8:2::100/128", "10.3.0.1/32"),
            ("2001:db8:3::/104", "20.0.0.0/8"),
        ],
        prefix="2001:db8:100::/40",
    )
    assert t.lookup6(p6("2001:db8:1::abcd")) == (bytes([10, 1, 0xAB, 0xCD]), t.eam[0].delta, 0)
    assert t.lookup6(p6("2001:db8:2::ff"))[:1] == (bytes([10, 2, 0, 0xFF]),)
    assert t.lookup6(p6("2001:db8:2::100"))[2] == 2
    assert t.lookup6(p6("2001:db8:3::2:304"))[0] == bytes([20, 2, 3, 4])
    assert t.lookup4(bytes([10, 3, 0, 1]))[0] == p6("2001:db8:2::100")
    assert t.lookup4(bytes([10, 1, 0xAB, 0xCD]))[0] == p6("2001:db8:1::abcd")
    assert t.lookup4(bytes([10, 2, 0, 5]))[2] == 1
    # 20.9.9.9 is inside 20.0.0.0/8 (entry 3), which beats the RFC 6052 prefix.
    assert t.lookup4(bytes([20, 9, 9, 9]))[2] == 3
    assert t.lookup4(bytes([21, 9, 9, 9]))[2] == -1
    assert t.lookup6(p6("2001:db8:100::1")) is None  # not canonical RFC 6052
    assert t.lookup6(p6("2001:db8:1c0:2:21::"))[0] == A4  # prefix, after EAM misses


def test_eam_delta_is_constant_over_a_range():
    t = Tables.build(eam=[("2001:db8:2::/104", "10.0.0.0/8")])
    for tail in (0, 1, 0xFFFF, 0x123456, 0xFFFFFF):
        a4 = (0x0A000000 | tail).to_bytes(4, "big")
        a6, d, _ = t.lookup4(a4)
        s6 = int.from_bytes(a6, "big") % 0xFFFF
        s4 = int.from_bytes(a4, "big") % 0xFFFF
        assert (s6 - s4) % 0xFFFF == d % 0xFFFF


def test_translator_refuses_eam_overlapping_pool():
    settings = TranslatorSettings(ipv4_address="198.51.100.1", ipv6_address="2001:db8::1")
    pool = Pool4("198.51.100.0/24")
    with pytest.raises(ValueError, match="pool4"):
        Translator(settings, Tables.build(eam=[("2001:db8::5/128", "198.51.100.5/32")]), pool)
    tr = Translator(settings, Tables.build(), pool)
    with pytest.raises(ValueError, match="pool4"):
        tr.tables = Tables.build(eam=[("2001:db8::/120", "198.51.100.0/24")])


def test_table_swap_keeps_pool(tr):
    o = tr.translate(bytes(IPv6(src=CLIENT6, dst="2001:db8:200::50") / UDP()), 1.0)
    assert o.action == Action.FORWARD
    tr.tables = Tables.build(eam=[("2001:db8:200::60/128", "192.0.2.60/32")])
    o = tr.translate(bytes(IPv6(src=CLIENT6, dst="2001:db8:200::60") / UDP()), 2.0)
    assert (assert_checksums(o.packets[0])[IP].src, o.mapping) == ("198.51.100.2", 0)
    assert tr.pool.in_use == 1


def test_ten_thousand_entries_lookup_is_indexed():
    eam = [
        (f"2001:db8:5::{i:x}/128", str(ipaddress.IPv4Address(0x0A000000 + i)) + "/32")
        for i in range(10_000)
    ]
    eam += [
        (f"2001:db8:6:{i:x}::/120", str(ipaddress.IPv4Address(0x0B000000 + (i << 8))) + "/24")
        for i in range(2_000)
    ]
    tr = make_translator(eam=eam)
    v = tr.translate(bytes(IPv6(src=CLIENT6, dst="2001:db8:5::270f") / UDP(sport=1, dport=2)), 1.0)
    assert (assert_checksums(v.packets[0])[IP].dst, v.mapping) == ("10.0.39.15", 9_999)
    v = tr.translate(bytes(IPv6(src=CLIENT6, dst="2001:db8:6:7cf::9") / UDP()), 1.0)
    assert (assert_checksums(v.packets[0])[IP].dst, v.mapping) == ("11.7.207.9", 11_999)
    assert len(tr.tables._ranges6) == 1 and len(tr.tables._host6) == 10_000


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ipv4_address": "x"}, "ipv4_address"),
        ({"ipv6_address": "1.2.3.4"}, "ipv6_address"),
        ({"rfc6791_pool4": ("203.0.113.1/24",)}, r"rfc6791_pool4\[0\]"),
        ({"lowest_ipv6_mtu": 1200}, "lowest_ipv6_mtu"),
        ({"mtu": 1279}, "mtu"),
        ({"udp_zero_checksum": "maybe"}, "udp_zero_checksum"),
        ({"icmp_errors_per_second": -1}, "icmp_errors_per_second"),
    ],
)
def test_settings_validation(kwargs, message):
    base = {"ipv4_address": "198.51.100.1", "ipv6_address": "2001:db8::1"}
    base.update(kwargs)
    with pytest.raises(ValueError, match=message):
        TranslatorSettings(**base)


@pytest.mark.parametrize(
    "v4", ["0.1.2.3", "127.0.0.1", "224.0.0.1", "239.1.1.1", "255.255.255.255"]
)
def test_prefix_never_embeds_martians(v4):
    t = Tables.build(prefix="2001:db8:100::/40")
    a4 = ipaddress.IPv4Address(v4).packed
    assert t.embed(a4) is None and t.lookup4(a4) is None
    raw = Tables.build(prefix="2001:db8:122:344::/96")
    assert raw.lookup6(p6(f"2001:db8:122:344::{v4}")) is None


def test_table_swap_releases_leases_the_new_tables_map(tr):
    client = "2001:db8:ffff::c000:263"  # 192.0.2.99 under 2001:db8:ffff::/96
    v = tr.translate(bytes(IPv6(src=client, dst="2001:db8:200::50") / UDP()), 1.0)
    assert assert_checksums(v.packets[0])[IP].src == "198.51.100.2"
    tr.tables = Tables.build(
        eam=[("2001:db8:200::50/128", "192.0.2.50/32")], prefix="2001:db8:ffff::/96"
    )
    assert tr.pool.in_use == 0
    # The new prefix is routed into the translator now, so that source is a forgery.
    v = tr.translate(bytes(IPv6(src=client, dst="2001:db8:200::50") / UDP()), 2.0)
    assert (v.action, v.reason) == (Action.DROP, DropReason.SPOOFED_SOURCE)
    assert tr.pool.in_use == 0


def test_rfc6791_pool_spreads_and_is_stable():
    tr = make_translator(rfc6791_pool4=("203.0.113.0/29", "192.0.2.200/32"))
    picks = {
        tr.rfc6791_address(ipaddress.IPv6Address(f"2001:db8:9::{i:x}").packed) for i in range(64)
    }
    allowed = {f"203.0.113.{i}" for i in range(1, 7)} | {"192.0.2.200"}
    assert {str(ipaddress.IPv4Address(p)) for p in picks} == allowed
    a = ipaddress.IPv6Address("2001:db8:9::1").packed
    assert tr.rfc6791_address(a) == tr.rfc6791_address(a)
