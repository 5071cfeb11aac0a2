"""Golden tests of the rendered firewall rulesets, and nft's own syntax check of each.

The golden files are the exact ``revnat64 firewall --print`` output; a change
to the ruleset shows up as a readable diff.  Regenerate them with
``REVNAT64_UPDATE_GOLDEN=1 python -m pytest tests/publisher/test_firewall_render.py``
and review the diff before committing.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from publisher.config import Config, parse_config_text
from publisher.firewall import backend_for, render_iptables, render_nftables
from publisher.firewall_common import PortRange, ports_by_proto
from publisher.firewall_iptables import CHAIN_MAX, mapping_chain, plan_iptables
from publisher.firewall_nft import render_fw4_snippet
from tests.netlab import Lab

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("REVNAT64_UPDATE_GOLDEN") == "1"

BASE = """\
translator:
  tun_device: rn64t0
  ipv4_address: 198.51.100.1
  ipv6_address: 2001:db8:200::1
  pool4: 198.51.100.0/24
wan: {interface: wan0}
lan: {interface: br-lan}
"""

SINGLE = (
    BASE
    + """\
mappings:
  - name: frontdoor-cam
    ipv6: 2001:db8:200::50
    ipv4: 192.0.2.50
    allow: [tcp/80, tcp/554, udp/7, icmp]
"""
)

FULL = (
    BASE
    + """\
mappings:
  - name: cam
    ipv6: 2001:db8:200::50
    ipv4: 192.0.2.50
    allow: [tcp/80, tcp/8000-8002, tcp/8001-8010, udp/7000, icmp]
  - name: nas
    ipv6: 2001:db8:200::51
    ipv4: 192.0.2.51
    allow: [tcp/443, udp/5353]
    sources: [2001:db8:1::2/128, 2001:db8:ffff::/48]
    masquerade: true
    rate_limit: 20/second
  - name: lab-range
    ipv6: 2001:db8:200:1::/126
    ipv4: 192.0.2.128/30
    allow: [tcp/8080]
    rate_limit: 100/minute
"""
)

CASES = {
    "firewall_single.nft": (SINGLE, "nftables"),
    "firewall_full.nft": (FULL, "nftables"),
    "firewall_iptables.rules": (FULL, "iptables"),
}


def config(text: str, name: str = "golden.yaml") -> Config:
    return parse_config_text(text, name)


def check_golden(name: str, rendered: str) -> None:
    path = GOLDEN / name
    if UPDATE:
        path.write_text(rendered, encoding="utf-8")
    assert rendered == path.read_text(encoding="utf-8")


@pytest.mark.parametrize("name", sorted(CASES))
def test_print_matches_golden(name: str, tmp_path: Path) -> None:
    """The CLI's --print output, byte for byte."""
    text, backend = CASES[name]
    cfg_file = tmp_path / "golden.yaml"
    cfg_file.write_text(text, encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, "-m", "publisher.cli", "firewall", "-c", "golden.yaml", "--print"]
        + ["--backend", backend],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    check_golden(name, proc.stdout)


@pytest.fixture
def scratch_netns() -> Iterator[str]:
    with Lab("nftc") as lab:
        yield lab.netns("chk").name


@pytest.mark.parametrize("name", sorted(n for n in CASES if n.endswith(".nft")))
def test_rendered_nft_passes_nft_check(name: str, scratch_netns: str, tmp_path: Path) -> None:
    """nft itself parses and evaluates each golden script (``nft -c`` changes nothing)."""
    script = tmp_path / name
    script.write_text(render_nftables(config(CASES[name][0])), encoding="utf-8")
    proc = subprocess.run(
        ["ip", "netns", "exec", scratch_netns, "nft", "-c", "-f", str(script)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr


def test_counters_are_carried_into_the_new_table() -> None:
    rendered = render_nftables(config(SINGLE), {"drop_frontdoor-cam": (7, 700)})
    block = rendered.split("counter drop_frontdoor-cam {", 1)[1].split("}", 1)[0]
    assert "packets 7 bytes 700" in block


def test_a_prefix_keeps_the_ipv4_source_check_and_is_a_forged_source() -> None:
    """The translator drops sources inside the RFC 6052 prefix (routed into the TUN),
    so IPv4 leaving the TUN still comes from pool4 or the error sources only, and a
    source in the prefix arriving from outside is forged."""
    with_prefix = SINGLE.replace(
        "  pool4: 198.51.100.0/24\n", "  pool4: 198.51.100.0/24\n  prefix: 2001:db8:100::/40\n"
    )
    for text in (SINGLE, with_prefix):
        assert "ip saddr != 198.51.100.0/24" in render_nftables(config(text))
        assert "-i rn64t0 -s 198.51.100.0/24 -j REVNAT64-IN4" in render_iptables(config(text))
    assert "2001:db8:100::/40" in render_nftables(config(with_prefix)).split("forged mapped")[0]
    assert "-s 2001:db8:100::/40 -m comment --comment spoofed -j DROP" in render_iptables(
        config(with_prefix)
    )


def test_no_mappings_renders_a_valid_closed_ruleset(scratch_netns: str, tmp_path: Path) -> None:
    cfg = config(BASE + "mappings: []\n")
    script = tmp_path / "empty.nft"
    script.write_text(render_nftables(cfg), encoding="utf-8")
    proc = subprocess.run(
        ["ip", "netns", "exec", scratch_netns, "nft", "-c", "-f", str(script)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert 'counter name "unmapped" drop' in script.read_text()


def test_port_ranges_merge() -> None:
    cfg = config(FULL)
    merged = ports_by_proto(cfg.mappings[0].allow)
    assert merged == {"tcp": [PortRange(80, 80), PortRange(8000, 8010)],
                      "udp": [PortRange(7000, 7000)], "icmp": []}  # fmt: skip


def test_iptables_multiport_is_split_at_15_ports() -> None:
    ports = ", ".join(f"tcp/{p}" for p in range(1000, 1040, 2))  # 20 single ports
    cfg = config(SINGLE.replace("[tcp/80, tcp/554, udp/7, icmp]", f"[{ports}]"))
    rules = [r for r in plan_iptables(cfg).tables[("ip6", "filter")] if "--dports" in r]
    counts = [len(r.split("--dports ")[1].split()[0].split(",")) for r in rules]
    assert counts == [15, 5]


def test_long_mapping_names_fit_iptables_chain_names() -> None:
    long_a, long_b = "a" * 40 + "-x", "a" * 40 + "-y"
    cfg = config(
        BASE
        + f"""mappings:
  - {{name: {long_a}, ipv6: 2001:db8:200::50, ipv4: 192.0.2.50, allow: [tcp/80]}}
  - {{name: {long_b}, ipv6: 2001:db8:200::51, ipv4: 192.0.2.51, allow: [tcp/80]}}
"""
    )
    names = [mapping_chain(m) for m in cfg.mappings]
    assert all(len(n) <= CHAIN_MAX for n in names)
    assert len(set(names)) == 2


def test_apply_refuses_when_firewall_disabled(tmp_path: Path) -> None:
    cfg_file = tmp_path / "off.yaml"
    cfg_file.write_text(SINGLE + "firewall: {enabled: false}\n", encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, "-m", "publisher.cli", "firewall", "-c", str(cfg_file), "--apply"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert proc.returncode == 1
    assert f"{cfg_file}: firewall.enabled is false: refusing to apply" in proc.stderr


def test_backend_for_follows_config_and_override() -> None:
    cfg = config(SINGLE + "firewall: {backend: iptables}\n")
    assert backend_for(cfg).name == "iptables"
    assert backend_for(cfg, "nftables").name == "nftables"
    assert backend_for(config(SINGLE)).name == "nftables"


def rules(snippet: str) -> list[str]:
    return [line for line in snippet.splitlines() if line and not line.startswith("#")]


def test_fw4_snippet_names_the_configured_tun_and_matches_the_shipped_default() -> None:
    snippet = render_fw4_snippet(config(SINGLE + "firewall: {enabled: true}\n"))
    vetted = 'accept comment "revnat64: vetted by table inet revnat64"'
    assert rules(snippet) == [
        f'oifname "rn64t0" meta nfproto ipv6 {vetted}',
        f'iifname "rn64t0" meta nfproto ipv4 {vetted}',
    ]
    shipped = (ROOT / "contrib" / "openwrt" / "fw4-revnat64.nft").read_text(encoding="utf-8")
    default = render_fw4_snippet(config(SINGLE.replace("rn64t0", "revnat64")))
    assert rules(shipped) == rules(default)


@pytest.mark.parametrize(
    "firewall", ["firewall: {enabled: false}\n", "firewall: {enabled: true, backend: iptables}\n"]
)
def test_fw4_snippet_accepts_nothing_without_our_nftables_table(firewall: str) -> None:
    snippet = render_fw4_snippet(config(SINGLE + firewall))
    assert rules(snippet) == []
    assert "Nothing is accepted" in snippet


def test_fw4_snippet_is_written_only_when_it_changes(tmp_path: Path) -> None:
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(SINGLE, encoding="utf-8")
    target = tmp_path / "nftables.d" / "30-revnat64.nft"
    cmd = [sys.executable, "-m", "publisher.cli", "firewall", "-c", str(cfg_file)]
    first = subprocess.run([*cmd, "--fw4-snippet", str(target)], capture_output=True, text=True)
    again = subprocess.run([*cmd, "--fw4-snippet", str(target)], capture_output=True, text=True)
    assert first.returncode == again.returncode == 0, first.stderr + again.stderr
    assert first.stdout.endswith(" updated\n") and again.stdout.endswith(" unchanged\n")
    assert rules(target.read_text(encoding="utf-8"))[0].startswith('oifname "rn64t0"')
    assert oct(target.stat().st_mode & 0o777) == "0o644"


def test_iptables_lock_is_exclusive_and_a_holder_that_hangs_is_named(tmp_path: Path) -> None:
    """apply/remove serialise on <state_dir>/iptables.lock (the watchdog vs firewall-start)."""
    import fcntl
    import threading

    from publisher.firewall_common import FirewallError
    from publisher.firewall_iptables import LOCK_FILE, exclusive

    cfg = config(SINGLE + f"daemon: {{state_dir: {tmp_path}/state}}\n")
    order: list[str] = []
    with exclusive(cfg):

        def second() -> None:
            with exclusive(cfg, timeout=10):
                order.append("second")

        waiter = threading.Thread(target=second)
        waiter.start()
        waiter.join(0.3)
        order.append("first")  # the other one is still waiting for the lock
    waiter.join(10)
    assert order == ["first", "second"]

    path = tmp_path / "state" / LOCK_FILE
    with open(path) as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(FirewallError, match=f"another revnat64 has held {path}"):
            with exclusive(cfg, timeout=0.2):
                pass
