"""wan.prefix_from end to end: the daemon follows a renumbered prefix in the real kernel.

The router namespace gets an interface ``pd0`` that carries the
"delegated" prefix, as a home router's LAN bridge carries the /64 its ISP
delegated.  The camera mapping is written as ``::50``.  The client's default
route points at the router, so it reaches whatever prefix the router has now.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from tests.integration.daemon_lab import ROOT, DaemonLab, base_config
from tests.netlab import Lab, Netns, wait_for

OLD, NEW = "2001:db8:aa::", "2001:db8:bb::"

READ_PREFIX = """
import sys
sys.path.insert(0, sys.argv[1])
from ipaddress import IPv6Network
from publisher.prefix import read_prefix
print(read_prefix("pd0"))
print(read_prefix("pd0", within=(IPv6Network("2001:db8:cc::/48"),)))
try:
    read_prefix("nope0")
except LookupError as exc:
    print(exc)
"""


WATCH_ADDRESSES = """
import select, subprocess, sys, time
sys.path.insert(0, sys.argv[1])
from publisher.nlevents import Changes, NetlinkEvents
events = NetlinkEvents()
def collect(done, seconds=5.0):
    # One change can span several datagrams (a link going down sends its address,
    # route and link messages one after another): gather until done, bounded.
    seen, deadline = Changes(), time.monotonic() + seconds
    while not done(seen) and time.monotonic() < deadline:
        if select.select([events], [], [], max(0.0, deadline - time.monotonic()))[0]:
            seen = seen | events.drain()
    return f"links={seen.links} addresses={seen.addresses} settings={seen.settings}"
def ip(*args):
    subprocess.run(["ip", *args], check=True)
print(collect(lambda c: False, 0.2))
ip("-6", "addr", "add", "2001:db8:aa::1/64", "dev", "pd0", "nodad")
print(collect(lambda c: c.addresses))
print(collect(lambda c: False, 0.3))  # its prefix route follows, and is no change
ip("-6", "addr", "del", "2001:db8:aa::1/64", "dev", "pd0")
print(collect(lambda c: c.addresses))
ip("link", "set", "pd0", "down")
print(collect(lambda c: c.links))
subprocess.run(["sysctl", "-qw", "net.ipv6.conf.pd0.proxy_ndp=1"], check=True)
print(collect(lambda c: c.settings))
subprocess.run(["sysctl", "-qw", "net.ipv4.ip_forward=1"], check=True)
print(collect(lambda c: c.settings))
"""


def relative_config(d: DaemonLab, tmp: Path) -> dict[str, Any]:
    cfg = base_config(tmp, d.tun)
    cfg["wan"]["prefix_from"] = "pd0"
    cfg["mappings"][0]["ipv6"] = "::50"
    return cfg


def link_pd0(ns: Netns) -> None:
    """``pd0``, up: one end of a veth pair inside ``ns`` (this kernel has no dummy links)."""
    ns.run("ip link add pd0 type veth peer name pd0peer")
    ns.run("ip link set pd0peer up")
    ns.run("ip link set pd0 up")


def add_pd0(d: DaemonLab, *prefixes: str) -> None:
    link_pd0(d.router)
    for prefix in prefixes:
        d.router.run(f"ip -6 addr add {prefix}1/64 dev pd0 nodad")


def pings(d: DaemonLab, dst: str) -> bool:
    out = d.client.run(["ping", "-6", "-c", "2", "-i", "0.2", "-W", "1", dst], check=False)
    return "2 received" in out.stdout


def firewall_text(d: DaemonLab) -> str:
    return d.router.run("nft list table inet revnat64").stdout


def tun_routes(d: DaemonLab) -> str:
    return d.router.run(f"ip -6 route show dev {d.tun}").stdout


def cli(d: DaemonLab, *args: str) -> str:
    """``revnat64 ARGS`` in the router namespace; its stdout."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    argv = [sys.executable, "-m", "publisher.cli", *args]
    return d.router.run(argv, env=env, cwd=str(ROOT)).stdout


def status_json(d: DaemonLab) -> dict[str, Any]:
    return json.loads(cli(d, "status", "--json", "-c", str(d.config_path)))  # type: ignore[no-any-return]


def test_read_prefix_picks_the_preferred_global_prefix(lab: Lab, tmp_path: Path) -> None:
    """The kernel's flags and lifetimes as pyroute2 reports them (unique local and
    link-local prefixes are covered by the pure tests: only documentation ranges here)."""
    ns = lab.netns("pfx")
    link_pd0(ns)
    ns.run("ip -6 addr add 2001:db8:aa::1/64 dev pd0 nodad preferred_lft 0")  # deprecated
    ns.run("ip -6 addr add 2001:db8:bb::1/64 dev pd0 nodad preferred_lft 600 valid_lft 900")
    ns.run("ip -6 addr add 2001:db8:cc::1/64 dev pd0 nodad preferred_lft 60 valid_lft 900")
    out = ns.run([sys.executable, "-c", READ_PREFIX, str(ROOT)]).stdout.split("\n")
    assert out[:3] == ["2001:db8:bb::/64", "2001:db8:cc::/64", "no interface nope0"]


def test_netlink_events_wake_on_address_link_and_sysctl_changes(lab: Lab) -> None:
    """The socket the daemon waits on instead of sleeping, and what it tells apart."""
    ns = lab.netns("pev")
    link_pd0(ns)
    out = ns.run([sys.executable, "-c", WATCH_ADDRESSES, str(ROOT)]).stdout.splitlines()
    assert out[0] == "links=False addresses=False settings=False"
    assert out[1] == "links=False addresses=True settings=False"  # added
    assert out[2] == "links=False addresses=False settings=False"  # nothing more that counts
    assert out[3] == "links=False addresses=True settings=False"  # deleted
    assert out[4].startswith("links=True")  # the link went down
    assert out[5].endswith("settings=True")  # proxy_ndp (RTM_NEWNETCONF)
    assert out[6].endswith("settings=True")  # IPv4 forwarding


def test_mapping_follows_a_renumbered_prefix(lab: Lab, tmp_path: Path) -> None:
    d = DaemonLab(lab, tmp_path)
    try:
        add_pd0(d, OLD)
        cfg = relative_config(d, tmp_path)
        cfg["firewall"] = {"enabled": True, "backend": "nftables"}
        d.write_config(cfg)
        d.start()
        assert pings(d, OLD + "50")  # through the firewall's allow list
        assert f"{OLD}50" in firewall_text(d)
        assert f"{OLD}50 " in tun_routes(d)
        assert f"{OLD}50 dev pd0" in d.router.run("ip -6 neigh show proxy").stdout
        st = status_json(d)
        assert (st["published_prefix"], st["prefix_changes"]) == (f"{OLD}/64", 0)
        assert st["prefix_interface"] == "pd0"

        # A second live prefix with a longer lifetime is not a reason to renumber.
        d.router.run(f"ip -6 addr change {OLD}1/64 dev pd0 preferred_lft 600 valid_lft 900")
        d.router.run("ip -6 addr add 2001:db8:cc::1/64 dev pd0 nodad")
        time.sleep(6)  # longer than the daemon's 5 s check
        assert status_json(d)["reloads"] == {"success": 0, "failure": 0}
        # A command on its own agrees with the daemon (state_dir/prefix), not with
        # the longer lifetime.
        assert (tmp_path / "state" / "prefix").read_text() == f"{OLD}/64 pd0\n"
        assert f"addresses in {OLD}/64 from pd0" in cli(d, "check", "-c", str(d.config_path))

        # RFC 4192 renumbering: the new prefix arrives, the old one is deprecated.
        d.router.run(f"ip -6 addr add {NEW}1/64 dev pd0 nodad")
        d.router.run(f"ip -6 addr change {OLD}1/64 dev pd0 preferred_lft 0")
        seen = d.expect_notify("READY=1", timeout=15)
        assert "RELOADING=1" in seen, seen
        assert pings(d, NEW + "50")
        routes = tun_routes(d)
        assert f"{NEW}50 " in routes and f"{OLD}50 " not in routes
        # The address is on-link on pd0, so the router answers neighbour solicitations
        # for it there: the proxy entry moved too.
        proxies = d.router.run("ip -6 neigh show proxy").stdout
        assert f"{NEW}50 dev pd0" in proxies and f"{OLD}50 " not in proxies
        rules = firewall_text(d)
        assert f"{NEW}50" in rules and f"{OLD}50" not in rules
        assert not pings(d, OLD + "50")
        st = status_json(d)
        assert (st["published_prefix"], st["prefix_changes"]) == (f"{NEW}/64", 1)
        assert (tmp_path / "state" / "prefix").read_text() == f"{NEW}/64 pd0\n"
        assert f"the prefix on pd0 changed: {OLD}/64 -> {NEW}/64; reloading" in d.logs()

        # The uplink goes down and takes every prefix with it: keep serving the last one.
        d.router.run("ip -6 addr flush dev pd0 scope global")
        wait_for(lambda: "pd0 has no global IPv6 prefix" in d.logs(), timeout=15, what="log")
        assert pings(d, NEW + "50")
        # It comes back unchanged: no reload.
        d.router.run(f"ip -6 addr add {NEW}1/64 dev pd0 nodad")
        time.sleep(6)  # longer than the daemon's 5 s check
        assert status_json(d)["reloads"] == {"success": 1, "failure": 0}
        assert d.logs().count("has no global IPv6 prefix") == 1
    finally:
        d.close()


def test_daemon_starts_without_a_prefix_and_publishes_when_one_arrives(
    lab: Lab, tmp_path: Path
) -> None:
    """A router starts its services before the ISP has delegated a prefix."""
    d = DaemonLab(lab, tmp_path)
    try:
        add_pd0(d)  # no prefix yet
        d.write_config(relative_config(d, tmp_path))
        d.start()  # READY at once: the IPv4 side and full addresses serve meanwhile
        st = status_json(d)
        assert (st["prefix_interface"], st["published_prefix"]) == ("pd0", "")
        assert "none yet" in cli(d, "status", "-c", str(d.config_path))
        assert "pd0 has no global IPv6 prefix yet" in d.logs()
        assert not (tmp_path / "state" / "prefix").exists()  # the placeholder is not remembered
        d.router.run(f"ip -6 addr add {NEW}1/64 dev pd0 nodad")
        seen = d.expect_notify("READY=1", timeout=15)
        assert "RELOADING=1" in seen, seen
        assert pings(d, NEW + "50")
        st = status_json(d)
        assert (st["published_prefix"], st["prefix_changes"]) == (f"{NEW}/64", 0)  # not a change
        assert f"pd0 has a prefix now, {NEW}/64" in d.logs()
    finally:
        d.close()
