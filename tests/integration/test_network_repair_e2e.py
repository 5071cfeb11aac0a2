"""The daemon puts back what the kernel drops behind its back: proxy NDP after a WAN flap.

A link going down flushes its proxy NDP entries (the kernel's neighbour table
goes with the link), and most network managers remove and re-add the link's
addresses too.  A mapped address that is on-link on the WAN (the single-/64
ISP setup) then stops being answered for, silently, until something puts the
entries back.  These tests flap the router's real WAN veth under the running
daemon and ping the mapped address from the client after each repair.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

from tests.integration.daemon_lab import ROOT, DaemonLab, base_config
from tests.netlab import DEVICE6, ROUTER_WAN6, wait_for

ONLINK6 = "2001:db8:1::50"  # inside the WAN /64: the router must answer for it there


def proxies(d: DaemonLab) -> str:
    return d.router.run("ip -6 neigh show proxy").stdout


def proxy_ndp(d: DaemonLab) -> str:
    return d.router.run("sysctl -n net.ipv6.conf.wan0.proxy_ndp").stdout.strip()


def pings(d: DaemonLab) -> bool:
    d.client.run("ip -6 neigh flush dev wan0")  # ask the router again, no cached answer
    out = d.client.run(["ping", "-6", "-c", "2", "-i", "0.2", "-W", "1", ONLINK6], check=False)
    return " 0 received" not in out.stdout and "received" in out.stdout


def status(d: DaemonLab) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    argv = [sys.executable, "-m", "publisher.cli", "status", "--json", "-c", str(d.config_path)]
    return json.loads(d.router.run(argv, env=env, cwd=str(ROOT)).stdout)  # type: ignore[no-any-return]


def restored(d: DaemonLab) -> int:
    return int(status(d)["network_restored"])


def flap_wan(d: DaemonLab) -> None:
    d.router.run("ip link set wan0 down")
    d.router.run("ip link set wan0 up")


def test_proxy_entries_come_back_after_a_wan_link_flap(dlab: DaemonLab) -> None:
    d = dlab
    cfg = base_config(d.tmp, d.tun)
    cfg["mappings"][0]["ipv6"] = ONLINK6
    d.write_config(cfg)
    d.start()
    assert f"{ONLINK6} dev wan0 proxy" in proxies(d)
    assert pings(d)

    # The usual case: the link flaps, its addresses go with it, and the
    # network manager adds them back once it is up.
    flap_wan(d)
    assert proxies(d).strip() == ""  # what the kernel did
    d.router.run(f"ip -6 addr replace {ROUTER_WAN6}/64 dev wan0 nodad")
    wait_for(lambda: ONLINK6 in proxies(d), timeout=10, what="the proxy entry back")
    assert pings(d)

    # keep_addr_on_down: the address stays, only the entries go. Nothing but
    # the link event says so.
    d.router.sysctl("net.ipv6.conf.wan0.keep_addr_on_down", 1)
    before = restored(d)
    flap_wan(d)
    wait_for(lambda: ONLINK6 in proxies(d), timeout=10, what="the proxy entry back")
    assert pings(d)
    assert restored(d) == before + 1
    assert "gone behind our back (a link down or recreated, a route deleted?)" in d.logs()

    # proxy_ndp switched off (and the entry removed) by hand: the kernel's netconf
    # notification wakes the daemon, which puts both back without a reload.
    d.router.run(f"ip -6 neigh del proxy {ONLINK6} dev wan0")
    d.router.sysctl("net.ipv6.conf.wan0.proxy_ndp", 0)
    wait_for(lambda: proxy_ndp(d) == "1", timeout=10, what="proxy_ndp put back")
    wait_for(lambda: ONLINK6 in proxies(d), timeout=10, what="the proxy entry back")
    assert pings(d)
    assert restored(d) == before + 3

    # Forwarding switched off: the same.
    d.router.sysctl("net.ipv6.conf.all.forwarding", 0)
    wait_for(
        lambda: d.router.run("sysctl -n net.ipv6.conf.all.forwarding").stdout.strip() == "1",
        timeout=10,
        what="forwarding put back",
    )
    assert pings(d)


def test_an_address_that_comes_later_gets_its_proxy_entry(dlab: DaemonLab) -> None:
    """The WAN has no address when the daemon starts (DHCPv6 is slow): no reload needed."""
    d = dlab
    d.router.run(f"ip -6 addr del {ROUTER_WAN6}/64 dev wan0")
    cfg = base_config(d.tmp, d.tun)
    cfg["mappings"][0]["ipv6"] = ONLINK6
    d.write_config(cfg)
    d.start()
    assert proxies(d).strip() == ""  # nothing is on-link yet
    d.router.run(f"ip -6 addr add {ROUTER_WAN6}/64 dev wan0 nodad")
    wait_for(lambda: ONLINK6 in proxies(d), timeout=10, what="the proxy entry")
    assert proxy_ndp(d) == "1"
    assert pings(d)
    assert restored(d) == 0  # planned anew, not repaired


def test_a_tun_set_down_comes_back_up_with_its_routes(dlab: DaemonLab) -> None:
    """Down drops every route through the TUN, and up alone does not bring them back."""
    d = dlab
    d.start()
    routes = d.router.run(f"ip -6 route show dev {d.tun}").stdout
    assert f"{DEVICE6} " in routes
    d.router.run(f"ip link set {d.tun} down")
    wait_for(
        lambda: f"{DEVICE6} " in d.router.run(f"ip -6 route show dev {d.tun}").stdout,
        timeout=10,
        what="the routes back",
    )
    assert d.router.run(f"ip -6 route show dev {d.tun}").stdout == routes
    assert d.router.run(f"ip route show dev {d.tun}").stdout.strip()  # pool4, IPv4 side
    out = d.client.run(["ping", "-6", "-c", "2", "-i", "0.2", "-W", "1", DEVICE6], check=False)
    assert "2 received" in out.stdout
    ours = [
        line
        for family in ("-4", "-6")
        for line in d.router.run(f"ip {family} route show proto 164").stdout.splitlines()
    ]
    assert restored(d) == 1 + len(ours)  # the TUN, then each of our routes
    assert "was down: set up; route " in d.logs()


def test_routes_deleted_by_hand_come_back_and_removed_mappings_stay_removed(
    dlab: DaemonLab,
) -> None:
    d = dlab
    cfg = base_config(d.tmp, d.tun)
    cfg["mappings"].append({"name": "nas", "ipv6": "2001:db8:200::51", "ipv4": "192.0.2.51"})
    d.write_config(cfg)
    d.start()

    def tun_routes() -> str:
        return d.router.run(f"ip -6 route show dev {d.tun}").stdout

    d.router.run(f"ip -6 route del {DEVICE6}/128 dev {d.tun}")
    wait_for(lambda: f"{DEVICE6} " in tun_routes(), timeout=10, what="the route back")
    d.router.run("ip route flush proto 164")  # every IPv4 route of ours: pool4
    wait_for(
        lambda: d.router.run(f"ip route show dev {d.tun}").stdout.strip(),
        timeout=10,
        what="the pool4 route back",
    )
    out = d.client.run(["ping", "-6", "-c", "2", "-i", "0.2", "-W", "1", DEVICE6], check=False)
    assert "2 received" in out.stdout
    assert restored(d) == 2
    assert f"route {DEVICE6}/128 dev {d.tun} (was gone)" in d.logs()

    # The daemon's own deletions are not repairs: a removed mapping stays removed.
    cfg["mappings"].pop()
    d.write_config(cfg)
    d.reload()
    assert "2001:db8:200::51 " not in tun_routes()
    d.router.run(f"ip link set {d.tun} mtu 1400")  # a link event: the daemon looks again
    d.router.run(f"ip link set {d.tun} mtu 1500")
    deadline = time.monotonic() + 2.5  # two rounds of FOLLOW_SPACING, bounded
    while time.monotonic() < deadline:
        assert "2001:db8:200::51 " not in tun_routes()
        time.sleep(0.2)
    assert restored(d) == 2


def test_a_route_someone_else_put_in_the_way_is_left_and_reported(dlab: DaemonLab) -> None:
    """As at start: revnat64 never takes over a route it did not make."""
    d = dlab
    d.start()
    # Someone else's route takes the place of ours in one step (two steps would
    # race the daemon, which puts ours back the moment it is deleted).
    d.router.run(f"ip -6 route replace blackhole {DEVICE6}/128")
    d.router.run(f"ip link set {d.tun} mtu 1400")  # a link event: the daemon looks
    wait_for(
        lambda: "did not make is in the way" in status(d)["network_problem"],
        timeout=10,
        what="the repair to report the route in the way",
    )
    assert "blackhole" in d.router.run(f"ip -6 route show {DEVICE6}/128").stdout
    assert "revnat64 did not make is in the way" in d.logs()
    d.router.run(f"ip -6 route del blackhole {DEVICE6}/128")  # the owner steps back
    d.router.run(f"ip link set {d.tun} mtu 1500")  # a link event: the daemon looks again
    wait_for(lambda: not status(d)["network_problem"], timeout=10, what="the repair")
    assert f"{DEVICE6} " in d.router.run(f"ip -6 route show dev {d.tun}").stdout
