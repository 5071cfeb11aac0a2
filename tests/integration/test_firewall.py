"""The firewall with real nftables and real iptables (nft and legacy), real traffic, in netns.

Phase 1 (no daemon yet): ``tests/integration/firewall_lab.py`` replaces the
TUN with a veth of the same name, so the rules see exactly the interfaces and
addresses they will see in production.  Every "blocked" assertion has a
listener behind it, so a probe that fails is the firewall's doing; the
removal test shows the same probes answer once the rules are gone.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from publisher.config import Config, parse_config_text
from publisher.firewall import IptablesBackend, NftablesBackend, backend_for
from publisher.firewall_common import FirewallError
from publisher.firewall_nft import render_fw4_snippet
from tests.integration.firewall_lab import (
    BULK_BYTES,
    BULK_PORT,
    CAM4,
    CAM6,
    CLIENT_A,
    CLIENT_B,
    CONFIG,
    FOREIGN4,
    LIMITED6,
    NAS4,
    NAS6,
    POOL_CLIENT4,
    RANGE6,
    ROUTER_LAN4,
    UNMAPPED4,
    UNMAPPED6,
    FirewallLab,
    build_firewall_lab,
)
from tests.iptables_variants import VARIANTS, VERSION_MARK, variant_bin_dir
from tests.netlab import Lab

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration


def tcp(dst: str, port: int, src: str | None = None, **kw: object) -> dict[str, object]:
    return {"proto": "tcp", "dst": dst, "port": port, "src": src, **kw}


def udp(dst: str, port: int, src: str | None = None) -> dict[str, object]:
    return {"proto": "udp", "dst": dst, "port": port, "src": src}


def ping(dst: str, src: str | None = None) -> dict[str, object]:
    return {"proto": "icmp", "dst": dst, "src": src}


@pytest.fixture(scope="module")
def cfg() -> Config:
    return parse_config_text(CONFIG, "lab.yaml")


@pytest.fixture(scope="module")
def fwlab() -> Iterator[FirewallLab]:
    with Lab("fw") as lab:
        yield build_firewall_lab(lab)


@pytest.fixture
def nft(fwlab: FirewallLab, cfg: Config) -> Iterator[NftablesBackend]:
    """Our nft table applied in the router; removed afterwards whatever happens."""
    backend = backend_for(cfg, "nftables", netns=fwlab.router.name)
    assert isinstance(backend, NftablesBackend)
    backend.apply()
    try:
        yield backend
    finally:
        backend.remove()


def check(fwlab: FirewallLab, ns_name: str, cases: list[tuple[dict[str, object], bool]]) -> None:
    """Run the probes from one namespace; each must be answered exactly when expected."""
    ns = getattr(fwlab, ns_name)
    results = fwlab.probe(ns, [p for p, _ in cases])
    wrong = [
        (p, expected, got)
        for (p, expected), got in zip(cases, results)
        if (got is not None) != expected
    ]
    assert not wrong, "\n".join(
        f"{p}: expected {'answer' if e else 'drop'}, got {g!r}" for p, e, g in wrong
    )


def test_only_allowed_ports_and_icmp_answer(fwlab: FirewallLab, nft: NftablesBackend) -> None:
    before = nft.counters()
    check(
        fwlab,
        "client",
        [
            (tcp(CAM6, 80), True),
            (tcp(CAM6, 8001), True),
            (udp(CAM6, 7000), True),
            (ping(CAM6), True),
            (tcp(CAM6, 22), False),
            (tcp(CAM6, 9000), False),
            (udp(CAM6, 5353), False),
            (udp(CAM6, 7001), False),
            (tcp(RANGE6, 8080), True),
            (tcp(RANGE6, 22), False),
            (tcp(UNMAPPED6, 80), False),
        ],
    )
    after = nft.counters()
    assert after["drop_cam"][0] >= before["drop_cam"][0] + 4
    assert after["drop_lab-range"][0] > before["drop_lab-range"][0]
    assert after["unmapped"][0] > before["unmapped"][0]
    drops = nft.drop_counters()
    assert drops["cam"] == after["drop_cam"]
    assert set(drops) == {"cam", "nas", "limited", "lab-range"}


def test_allow_lists_do_not_leak_between_mappings(fwlab: FirewallLab, nft: NftablesBackend) -> None:
    check(
        fwlab,
        "client",
        [
            (tcp(NAS6, 443, CLIENT_A), True),
            (udp(NAS6, 5353, CLIENT_A), True),
            (tcp(NAS6, 80, CLIENT_A), False),  # cam's port
            (udp(NAS6, 7000, CLIENT_A), False),  # cam's port
            (ping(NAS6, CLIENT_A), False),  # icmp is in cam's list only
            (tcp(CAM6, 443), False),  # nas's port
        ],
    )


def test_per_mapping_sources(fwlab: FirewallLab, nft: NftablesBackend) -> None:
    before = nft.drop_counters()["nas"][0]
    check(
        fwlab,
        "client",
        [
            (tcp(NAS6, 443, CLIENT_A), True),
            (tcp(NAS6, 443, CLIENT_B), False),
            (udp(NAS6, 5353, CLIENT_B), False),
            (tcp(CAM6, 80, CLIENT_B), True),  # cam has no source restriction
        ],
    )
    assert nft.drop_counters()["nas"][0] >= before + 2


def test_ipv4_side_reaches_only_mapped_hosts(fwlab: FirewallLab, nft: NftablesBackend) -> None:
    """IPv4 out of the TUN: mapped hosts, allowed ports, translator sources only."""
    results = fwlab.probe(
        fwlab.dev6,
        [
            tcp(CAM4, 80, POOL_CLIENT4),
            tcp(NAS4, 443, POOL_CLIENT4),
            tcp(CAM4, 22, POOL_CLIENT4),
            tcp(UNMAPPED4, 80, POOL_CLIENT4),
            tcp(CAM4, 80, FOREIGN4),
            ping(CAM4, POOL_CLIENT4),
        ],
    )
    assert results[0] == f"ok 80 {POOL_CLIENT4}"
    assert results[1] == f"ok 443 {ROUTER_LAN4}"  # nas is masqueraded
    assert results[2:5] == [None, None, None]
    assert results[5] == "pong"


def test_new_connections_into_the_tun_are_dropped(fwlab: FirewallLab, nft: NftablesBackend) -> None:
    before = nft.counters()["into_tun"][0]
    check(
        fwlab,
        "dev4",
        [(tcp(POOL_CLIENT4, 80, CAM4), False), (udp(POOL_CLIENT4, 7000, CAM4), False)],
    )
    assert nft.counters()["into_tun"][0] >= before + 2


def test_forged_sources_are_dropped(fwlab: FirewallLab, nft: NftablesBackend) -> None:
    before = nft.counters()["spoofed"][0]
    fwlab.dev4.run("ip addr replace 198.51.100.9/32 dev lan0")
    fwlab.client.run(f"ip -6 addr replace {CAM6}/128 dev c0 nodad")
    try:
        fwlab.probe(fwlab.dev4, [udp(POOL_CLIENT4, 7000, "198.51.100.9")])
        fwlab.probe(fwlab.client, [udp(NAS6, 5353, CAM6)])
    finally:
        fwlab.dev4.run("ip addr del 198.51.100.9/32 dev lan0")
        fwlab.client.run(f"ip -6 addr del {CAM6}/128 dev c0")
    assert nft.counters()["spoofed"][0] >= before + 2


def test_rate_limit_caps_new_connections(fwlab: FirewallLab, nft: NftablesBackend) -> None:
    """limited: 1/hour, so after the burst every new flow is dropped (no timing involved)."""
    before = nft.drop_counters()["limited"][0]
    results = fwlab.probe(fwlab.client, [udp(LIMITED6, 7001) for _ in range(12)])
    answered = sum(r is not None for r in results)
    assert 1 <= answered <= 6
    assert nft.drop_counters()["limited"][0] >= before + 12 - answered


def test_packet_too_big_passes_for_pmtu(fwlab: FirewallLab, nft: NftablesBackend) -> None:
    """dev6 sends full-size packets; isp's 1280 route answers Packet Too Big through the router."""
    fwlab.dev6.run("ip -6 route flush cache", check=False)
    [got] = fwlab.probe(fwlab.client, [tcp(CAM6, BULK_PORT, CLIENT_A, timeout=20)])
    assert got == f"ok {BULK_PORT} {CLIENT_A} +{BULK_BYTES}"
    route = fwlab.dev6.run(["ip", "-6", "route", "get", CLIENT_A, "from", CAM6]).stdout
    assert re.search(r"\bmtu 1280\b", route), route


FAKE_FW4 = """\
table inet fw4 {
	chain forward {
		type filter hook forward priority filter; policy accept;
		tcp dport 9 accept comment "fake fw4"
	}
	chain custom {
		udp dport 9 accept comment "fake fw4 custom"
	}
}
"""


def test_apply_is_idempotent_leaves_fw4_alone_and_remove_reopens(
    fwlab: FirewallLab, cfg: Config
) -> None:
    backend = backend_for(cfg, "nftables", netns=fwlab.router.name)
    fwlab.router.run(["nft", "-f", "-"], input=FAKE_FW4)
    try:
        fw4 = fwlab.nft("list", "table", "inet", "fw4")
        backend.apply()
        first = fwlab.nft("list", "table", "inet", "revnat64")
        backend.apply()
        assert fwlab.nft("list", "table", "inet", "revnat64") == first
        assert backend.is_applied()
        assert fwlab.nft("list", "table", "inet", "fw4") == fw4
        check(fwlab, "client", [(tcp(CAM6, 22), False)])
        backend.remove()
        backend.remove()  # idempotent
        assert not backend.is_applied()
        assert "revnat64" not in fwlab.nft("list", "tables")
        assert fwlab.nft("list", "table", "inet", "fw4") == fw4
        # With our table gone the very same probes get through: the drops were ours.
        check(fwlab, "client", [(tcp(CAM6, 22), True), (tcp(NAS6, 443, CLIENT_B), True)])
    finally:
        backend.remove()
        fwlab.router.run(["nft", "delete", "table", "inet", "fw4"], check=False)


def test_cli_apply_and_remove(fwlab: FirewallLab, tmp_path: Path) -> None:
    cfg_file = tmp_path / "lab.yaml"
    cfg_file.write_text(CONFIG, encoding="utf-8")

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return fwlab.router.run(
            [sys.executable, "-m", "publisher.cli", "firewall", "-c", str(cfg_file), *args],
            check=False,
            cwd=ROOT,
        )

    try:
        applied = cli("--apply")
        assert applied.returncode == 0, applied.stderr
        assert "table inet revnat64" in fwlab.nft("list", "tables")
        assert cli("--remove").returncode == 0
        assert "revnat64" not in fwlab.nft("list", "tables")
        assert cli("--remove").returncode == 0
    finally:
        cli("--remove")


# --------------------------------------------------------------------------
# iptables backend, with both real variants: iptables-nft (Debian's default)
# and iptables-legacy (what Asuswrt-Merlin runs: the kernel's own xtables).


def iptables_rules(fwlab: FirewallLab) -> list[str]:
    out = fwlab.router.run(["sh", "-c", "iptables-save; ip6tables-save"]).stdout
    return [line for line in out.splitlines() if not line.startswith("#")]


@pytest.fixture(params=VARIANTS)
def iptables_variant(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> str:
    """The variant's tools first in PATH (tests/iptables_variants.py)."""
    bin_dir = variant_bin_dir(tmp_path, request.param)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return str(request.param)


@pytest.fixture
def ipt(fwlab: FirewallLab, cfg: Config, iptables_variant: str) -> Iterator[IptablesBackend]:
    version = fwlab.router.run(["iptables", "-V"]).stdout
    assert VERSION_MARK[iptables_variant] in version, version
    backend = backend_for(cfg, "iptables", netns=fwlab.router.name)
    assert isinstance(backend, IptablesBackend)
    try:
        yield backend
    finally:
        backend.remove()


def test_iptables_apply_twice_no_duplicates_then_remove(
    fwlab: FirewallLab, ipt: IptablesBackend, cfg: Config
) -> None:
    ipt.apply()
    first = iptables_rules(fwlab)
    ipt.apply()
    assert iptables_rules(fwlab) == first
    assert sum(line == "-A FORWARD -j REVNAT64-FWD" for line in first) == 2  # ip + ip6
    assert ipt.is_applied()

    smaller = parse_config_text(CONFIG.split("  - name: lab-range")[0], "lab.yaml")
    backend_for(smaller, "iptables", netns=fwlab.router.name).apply()
    assert not any("RN64-lab-range" in line for line in iptables_rules(fwlab))

    ipt.remove()
    ipt.remove()
    assert not ipt.is_applied()
    left = iptables_rules(fwlab)
    assert [line for line in left if line.startswith("-A")] == []
    assert not any("REVNAT64" in line or "RN64" in line for line in left)


def test_iptables_remove_with_ip6tables_gone_still_removes_the_ipv4_chains(
    fwlab: FirewallLab, ipt: IptablesBackend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One family's tool failing (ip6tables uninstalled under a running daemon) kept
    the other family's chains too: the loop stopped at the first failure."""
    ipt.apply()
    broken = tmp_path / "no-ip6tables"
    broken.mkdir()
    for tool in ("ip6tables", "ip6tables-save", "ip6tables-restore"):
        (broken / tool).write_text("#!/bin/sh\necho 'ip6tables: gone' >&2\nexit 1\n")
        (broken / tool).chmod(0o755)
    path = os.environ["PATH"]
    monkeypatch.setenv("PATH", f"{broken}{os.pathsep}{path}")
    with pytest.raises(FirewallError, match="ip6tables"):
        ipt.remove()
    monkeypatch.setenv("PATH", path)
    ipv4 = fwlab.router.run(["iptables-save"]).stdout
    assert "REVNAT64" not in ipv4 and "RN64" not in ipv4
    assert "REVNAT64" in fwlab.router.run(["ip6tables-save"]).stdout  # could not be touched


def test_iptables_traffic_follows_the_allow_lists(fwlab: FirewallLab, ipt: IptablesBackend) -> None:
    ipt.apply()
    before = ipt.drop_counters()
    check(
        fwlab,
        "client",
        [
            (tcp(CAM6, 80), True),
            (ping(CAM6), True),
            (tcp(CAM6, 22), False),
            (udp(CAM6, 5353), False),
            (tcp(NAS6, 443, CLIENT_A), True),
            (tcp(NAS6, 443, CLIENT_B), False),
            (tcp(NAS6, 80, CLIENT_A), False),
        ],
    )
    results = fwlab.probe(
        fwlab.dev6,
        [tcp(CAM4, 80, POOL_CLIENT4), tcp(CAM4, 22, POOL_CLIENT4), tcp(NAS4, 443, POOL_CLIENT4)],
    )
    assert results == [f"ok 80 {POOL_CLIENT4}", None, f"ok 443 {ROUTER_LAN4}"]
    after = ipt.drop_counters()
    assert after["cam"][0] >= before["cam"][0] + 3
    assert after["nas"][0] >= before["nas"][0] + 2


def test_openwrt_fw4_snippet_lets_vetted_traffic_through_a_dropping_fw4(
    fwlab: FirewallLab, nft: NftablesBackend, cfg: Config, tmp_path: Path
) -> None:
    """The fw4 snippet (`revnat64 firewall --fw4-snippet`, what the OpenWrt init script
    writes) inside an fw4-like forward chain whose policy is drop."""
    included = tmp_path / "30-revnat64.nft"
    included.write_text(render_fw4_snippet(cfg), encoding="utf-8")
    fw4 = f"""table inet fw4 {{
	chain forward {{
		type filter hook forward priority filter; policy drop;
		include "{included}"
		ct state established,related accept
	}}
}}
"""
    fwlab.router.run(["nft", "-f", "-"], input=fw4)
    try:
        check(fwlab, "client", [(tcp(CAM6, 80), True), (ping(CAM6), True), (tcp(CAM6, 22), False)])
        results = fwlab.probe(
            fwlab.dev6, [tcp(CAM4, 80, POOL_CLIENT4), tcp(UNMAPPED4, 80, POOL_CLIENT4)]
        )
        assert results == [f"ok 80 {POOL_CLIENT4}", None]
    finally:
        fwlab.router.run(["nft", "delete", "table", "inet", "fw4"], check=False)
