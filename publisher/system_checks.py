"""Checks of a config against the running system, not just the file.

pool4 must be address space that nothing else uses: a collision with the LAN,
the WAN (100.64.0.0/10 is often there) or any routed network breaks traffic in
ways that are hard to see.  The config file cannot know the routing table, so
these checks read it (read-only, no root needed).
"""

from __future__ import annotations

from ipaddress import IPv4Network, ip_network

from publisher.config import Config, Problem


def _ipv4_routes_and_addresses() -> list[tuple[IPv4Network, str]]:
    """Every IPv4 network on an interface address or in the main routing table."""
    from pyroute2 import IPRoute

    found: list[tuple[IPv4Network, str]] = []
    with IPRoute() as ipr:
        names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
        for addr in ipr.get_addr(family=2):
            net = ip_network(f"{addr.get_attr('IFA_ADDRESS')}/{addr['prefixlen']}", strict=False)
            found.append((net, f"address on {names.get(addr['index'], '?')}"))  # type: ignore[arg-type]
        for route in ipr.get_routes(family=2, table=254):
            dst = route.get_attr("RTA_DST")
            if dst is None or route["dst_len"] == 0:
                continue
            oif = names.get(route.get_attr("RTA_OIF"), "?")
            net = ip_network(f"{dst}/{route['dst_len']}", strict=False)
            found.append((net, f"route via {oif}"))  # type: ignore[arg-type]
    return found


def system_problems(cfg: Config) -> list[Problem]:
    """pool4 against this host's addresses and routes (our own TUN excluded)."""
    try:
        nets = _ipv4_routes_and_addresses()
    except OSError:  # no netlink here (not Linux?): the file-level checks still stand
        return []
    problems = []
    tun = cfg.translator.tun_device
    for net, what in nets:
        if what.endswith(f" {tun}"):
            continue
        if net.overlaps(cfg.translator.pool4):
            problems.append(
                Problem(
                    cfg.path,
                    "translator.pool4",
                    f"{cfg.translator.pool4} overlaps {net} ({what}) on this host; "
                    "choose a range nothing else uses",
                )
            )
    return problems
