"""The nftables backend: one table of our own, ``table inet revnat64``, replaced atomically.

:func:`render_nftables` is pure: config in, an ``nft -f`` script out.  The script
starts with ``table inet revnat64 {}`` and ``delete table inet revnat64`` and
then declares the whole table, so nft applies create-if-missing, delete and
re-create as one transaction: the kernel never sees a half-written ruleset,
and applying twice gives the same ruleset.  No other table is named, so
OpenWrt's ``inet fw4`` (which fw4 flushes on every reload) is never touched.

Our base chains only ever *drop* what concerns the published devices and
otherwise accept.  In nftables an accept ends only the base chain it happens
in: every base chain on a hook must accept a packet for it to pass, so our
accepts open nothing that another table (fw4) closes, and fw4 must itself let
the TUN traffic through (``docs/firewall.md``).

Drops are counted in named counters (``drop_<mapping>``, ``spoofed``,
``unmapped``, ``into_tun``) that :func:`read_counters` reads back for
metrics.  Deleting the table would reset them, so :func:`apply` reads them
first and writes the values into the new table.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from collections.abc import Mapping as TMapping
from dataclasses import dataclass

from publisher.config import Config, Mapping
from publisher.firewall_common import (
    FirewallError,
    PortRange,
    bare,
    describe,
    ports_by_proto,
    run_command,
    spoof_sources4,
    spoof_sources6,
)

__all__ = [
    "TABLE",
    "apply",
    "is_applied",
    "read_counters",
    "read_drop_counters",
    "remove",
    "render_nftables",
]

TABLE = "inet revnat64"
# Our filter chains run just before fw4's (priority filter = 0) so our drop
# counters see every packet that we refuse; the order does not change verdicts.
FORWARD_PRIORITY = "filter - 5"
NAT_PRIORITY = "srcnat - 5"
# RFC 4890 section 4.3.1: Packet Too Big must never be dropped, or PMTU discovery breaks.
ALWAYS_ICMPV6 = "packet-too-big"

COUNTER_SPOOFED = "spoofed"
COUNTER_UNMAPPED = "unmapped"
COUNTER_INTO_TUN = "into_tun"
DROP_PREFIX = "drop_"


def drop_counter_name(mapping: Mapping) -> str:
    return f"{DROP_PREFIX}{mapping.name}"


def _set(items: Sequence[object]) -> str:
    """An nft anonymous set, or the bare element when there is one (as ``nft list`` shows it)."""
    texts = [str(i) for i in items]
    return texts[0] if len(texts) == 1 else "{ " + ", ".join(texts) + " }"


def _ports(spans: Sequence[PortRange]) -> str:
    return _set([str(s.low) if s.low == s.high else f"{s.low}-{s.high}" for s in spans])


def _counter_block(name: str, comment: str, values: tuple[int, int] | None) -> list[str]:
    lines = [f"\tcounter {name} {{", f'\t\tcomment "{comment}"']
    if values is not None:
        lines.append(f"\t\tpackets {values[0]} bytes {values[1]}")
    return [*lines, "\t}", ""]


def _allow_rules(m: Mapping, family: str, limit: str) -> list[str]:
    """Accept rules for one mapping's allow list (family ``ip6`` or ``ip``)."""
    rules = []
    for proto, spans in ports_by_proto(m.allow).items():
        if proto == "icmp":
            match = "icmpv6 type echo-request" if family == "ip6" else "icmp type echo-request"
            what = "icmp echo"
        else:
            match = f"{proto} dport {_ports(spans)}"
            what = ", ".join(
                f"{proto}/{s.low}" if s.low == s.high else f"{proto}/{s.low}-{s.high}"
                for s in spans
            )
        rules.append(f'{match}{limit} accept comment "{m.name}: allow {what}"')
    return rules


def _chain(name: str, rules: Iterable[str], hook: str | None = None) -> list[str]:
    lines = [f"\tchain {name} {{"]
    if hook:
        lines.append(f"\t\t{hook}")
    lines += [f"\t\t{r}" for r in rules]
    return [*lines, "\t}", ""]


def render_nftables(cfg: Config, counters: TMapping[str, tuple[int, int]] | None = None) -> str:
    """The complete ``nft -f`` script that atomically replaces ``table inet revnat64``.

    ``counters`` (name -> packets, bytes), when given, seeds the named counters so
    a re-apply does not reset the drop statistics.
    """
    tun = cfg.translator.tun_device
    lan = cfg.lan.interface
    counters = counters or {}
    out = [
        "#!/usr/sbin/nft -f",
        f"# revnat64 firewall for {cfg.path}: generated, do not edit (docs/firewall.md).",
        "# The first two commands make the delete safe when the table is absent; nft",
        "# applies the whole file as one transaction.",
        f"table {TABLE} {{}}",
        f"delete table {TABLE}",
        f"table {TABLE} {{",
    ]
    for m in cfg.mappings:
        out += _counter_block(
            drop_counter_name(m),
            f"{describe(m)}: dropped",
            counters.get(drop_counter_name(m)),
        )
    for name, comment in (
        (COUNTER_SPOOFED, "forged translator or mapped sources"),
        (COUNTER_UNMAPPED, "translator traffic to unmapped addresses"),
        (COUNTER_INTO_TUN, "new IPv4 connections into the translator"),
    ):
        out += _counter_block(name, comment, counters.get(name))
    for m in cfg.mappings:
        if m.rate_limit:
            out += [f"\tlimit rate_{m.name} {{", f"\t\trate {m.rate_limit}", "\t}", ""]

    # Anti-spoofing before conntrack, so forged packets never create state.
    pre = [f'iifname {{ "{tun}", "lo" }} accept comment "the translator itself"']
    pre.append(
        f"ip saddr {_set([bare(n) for n in spoof_sources4(cfg)])} "
        f'counter name "{COUNTER_SPOOFED}" drop comment "forged translator IPv4 source"'
    )
    pre.append(
        f"ip6 saddr {_set([bare(n) for n in spoof_sources6(cfg)])} "
        f'counter name "{COUNTER_SPOOFED}" drop comment "forged mapped IPv6 source"'
    )
    out += _chain("prerouting", pre, "type filter hook prerouting priority raw; policy accept;")

    fwd = [
        "ct state established,related accept comment "
        '"replies, and ICMP errors of accepted flows (PMTU)"',
        f'oifname "{tun}" meta nfproto ipv6 jump to_tun6',
        f'iifname "{tun}" meta nfproto ipv4 jump from_tun4',
        f'oifname "{tun}" meta nfproto ipv4 counter name "{COUNTER_INTO_TUN}" drop '
        'comment "only replies may enter the translator from IPv4"',
    ]
    out += _chain(
        "forward", fwd, f"type filter hook forward priority {FORWARD_PRIORITY}; policy accept;"
    )

    to6 = []
    from4 = []
    if cfg.mappings:
        mapped6 = _set([bare(m.ipv6) for m in cfg.mappings])
        to6.append(
            f"ip6 daddr {mapped6} icmpv6 type {ALWAYS_ICMPV6} accept "
            'comment "RFC 4890 4.3.1: PMTU discovery"'
        )
        to6.append(
            "ip6 daddr vmap { "
            + ", ".join(f"{bare(m.ipv6)} : goto in6_{m.name}" for m in cfg.mappings)
            + " }"
        )
    to6.append(f'counter name "{COUNTER_UNMAPPED}" drop comment "not a mapped IPv6 address"')
    out += _chain("to_tun6", to6)

    # IPv4 out of the TUN comes from a pool4 lease, or is an error from the translator's
    # own address or the RFC 6791 pool: nothing else (the translator drops the rest).
    from4.append(
        f"ip saddr != {_set([bare(n) for n in spoof_sources4(cfg)])} "
        f'counter name "{COUNTER_SPOOFED}" drop comment "not a translator source"'
    )
    if cfg.mappings:
        from4.append(
            "ip daddr vmap { "
            + ", ".join(f"{bare(m.ipv4)} : goto in4_{m.name}" for m in cfg.mappings)
            + " }"
        )
    from4.append(f'counter name "{COUNTER_UNMAPPED}" drop comment "not a mapped LAN host"')
    out += _chain("from_tun4", from4)

    for m in cfg.mappings:
        drop = f'counter name "{drop_counter_name(m)}" drop'
        rules = []
        if m.sources:
            rules.append(
                f"ip6 saddr != {_set([bare(s) for s in m.sources])} {drop} "
                f'comment "{m.name}: source not allowed"'
            )
        limit = f' limit name "rate_{m.name}"' if m.rate_limit else ""
        rules += _allow_rules(m, "ip6", limit)
        rules.append(f'{drop} comment "{m.name}: not in the allow list"')
        out += _chain(f"in6_{m.name}", rules)
    for m in cfg.mappings:
        drop = f'counter name "{drop_counter_name(m)}" drop'
        rules = _allow_rules(m, "ip", "")
        rules.append(f'{drop} comment "{m.name}: not in the allow list (IPv4 side)"')
        out += _chain(f"in4_{m.name}", rules)

    masq = [m for m in cfg.mappings if m.masquerade]
    if masq:
        nat = [
            f'iifname "{tun}" oifname "{lan}" ip daddr {bare(m.ipv4)} masquerade '
            f'comment "{m.name}: the device sees the router\'s LAN address"'
            for m in masq
        ]
        out += _chain(
            "postrouting", nat, f"type nat hook postrouting priority {NAT_PRIORITY}; policy accept;"
        )
    if out[-1] == "":
        out.pop()
    out.append("}")
    return "\n".join(out) + "\n"


FW4_HEADER = """\
# revnat64 on OpenWrt (fw4): let the translator's traffic through fw4's forward chain.
# Generated by `revnat64 firewall --fw4-snippet` from {path}; the init script
# rewrites it at every start, so edit the YAML, not this file.
#
# fw4 includes this file at the top of its own `forward` chain (inside `table
# inet fw4`), so it survives every fw4 reload. A packet passes a hook only if
# every base chain on it accepts: revnat64's `table inet revnat64` enforces
# each mapping's allow list, and fw4's forward chain would otherwise drop
# traffic to and from the TUN, which belongs to no fw4 zone. Only traffic the
# revnat64 table has vetted matches here: IPv6 into the TUN to mapped
# addresses and IPv4 out of it to mapped hosts. fw4's `ct state
# established,related accept` covers the replies.
"""


def render_fw4_snippet(cfg: Config) -> str:
    """The fw4 forward-chain snippet for ``cfg`` (contrib/openwrt/fw4-revnat64.nft).

    It names the configured TUN device.  Without revnat64's nftables table
    (``firewall.enabled: false``, or the iptables backend) it accepts nothing:
    accepting then would open the TUN path completely, so fw4 keeps dropping
    until the owner writes rules of their own.
    """
    out = FW4_HEADER.format(path=cfg.path)
    if not (cfg.firewall.enabled and cfg.firewall.backend == "nftables"):
        return out + (
            "#\n# Nothing is accepted: this config has no revnat64 nftables table\n"
            "# (firewall.enabled is false, or firewall.backend is not nftables), and\n"
            "# accepting here would expose every port of every mapped device.\n"
        )
    tun = cfg.translator.tun_device
    comment = 'comment "revnat64: vetted by table inet revnat64"'
    return out + (
        f'oifname "{tun}" meta nfproto ipv6 accept {comment}\n'
        f'iifname "{tun}" meta nfproto ipv4 accept {comment}\n'
    )


def _where(netns: str | None) -> str:
    return f" in netns {netns}" if netns else ""


def is_applied(cfg: Config, netns: str | None = None) -> bool:
    """Whether our table exists (whatever its content).

    Asks for the table names only: listing the table itself prints every set
    element, megabytes with 10,000 mappings, and the daemon asks every few
    seconds (and on every scrape).

    A failing ``nft`` raises FirewallError: that is not "the rules are gone"
    (which made the watchdog apply them again, fail, and warn every check).
    """
    family = TABLE.split()[0]
    proc = run_command(["nft", "list", "tables", family], "listing the tables", netns=netns)
    return f"table {TABLE}" in (line.strip() for line in proc.stdout.splitlines())


@dataclass(frozen=True)
class ForeignChain:
    """A base chain on the forward hook in a table that is not ours."""

    family: str
    table: str
    name: str
    policy: str
    names_tun: bool  # the chain's rules name the TUN device (fw4's snippet, a zone)

    def describe(self) -> str:
        return f"table {self.family} {self.table} chain {self.name}"


# The families whose forward hook sees translated traffic: IPv6 into the TUN, IPv4 out.
FORWARD_FAMILIES = ("inet", "ip", "ip6")


def foreign_forward_chains(tun_device: str, netns: str | None = None) -> list[ForeignChain]:
    """Other tables' base chains on the forward hook, and whether each names ``tun_device``.

    A packet leaves the forward hook only if every base chain on it accepts:
    our table's accept does not outvote fw4's (or Docker's iptables-nft)
    ``policy drop``.  Only chains with that policy are listed in full.
    """
    proc = run_command(["nft", "-j", "list", "chains"], "listing the chains", netns=netns)
    try:
        items = json.loads(proc.stdout)["nftables"]
    except (ValueError, KeyError, TypeError) as exc:
        raise FirewallError(f"listing the chains: bad JSON: {exc}") from None
    found = []
    for item in items:
        chain = item.get("chain") if isinstance(item, dict) else None
        if not chain or chain.get("hook") != "forward" or chain.get("table") == "revnat64":
            continue
        family = str(chain.get("family"))
        if family not in FORWARD_FAMILIES:
            continue
        table, name, policy = str(chain["table"]), str(chain["name"]), str(chain.get("policy"))
        names_tun = False
        if policy == "drop":
            listing = run_command(
                ["nft", "list", "chain", family, table, name],
                f"listing chain {name} of table {family} {table}",
                netns=netns,
            ).stdout
            # Our iptables backend's jump vets the TUN traffic in its own chain.
            names_tun = f'"{tun_device}"' in listing or "jump REVNAT64-FWD" in listing
        found.append(ForeignChain(family, table, name, policy, names_tun))
    return found


def read_counters(cfg: Config, netns: str | None = None) -> dict[str, tuple[int, int]]:
    """Every named counter in our table: name -> (packets, bytes); empty when not applied."""
    if not is_applied(cfg, netns):
        return {}
    proc = run_command(
        ["nft", "-j", "list", "counters", "table", *TABLE.split()],
        f"reading the counters of table {TABLE}{_where(netns)}",
        netns=netns,
    )
    try:
        items = json.loads(proc.stdout)["nftables"]
    except (ValueError, KeyError, TypeError) as exc:
        raise FirewallError(f"reading the counters of table {TABLE}: bad JSON: {exc}") from None
    found = {}
    for item in items:
        counter = item.get("counter") if isinstance(item, dict) else None
        if counter and counter.get("table") == "revnat64":
            found[str(counter["name"])] = (int(counter["packets"]), int(counter["bytes"]))
    return found


def read_drop_counters(cfg: Config, netns: str | None = None) -> dict[str, tuple[int, int]]:
    """Mapping name -> (packets, bytes) refused by the firewall; zeros when not applied."""
    raw = read_counters(cfg, netns)
    return {m.name: raw.get(drop_counter_name(m), (0, 0)) for m in cfg.mappings}


def apply(cfg: Config, netns: str | None = None) -> None:
    """Replace our table with the one the config describes, in one nft transaction."""
    script = render_nftables(cfg, read_counters(cfg, netns))
    n = len(cfg.mappings)
    run_command(
        ["nft", "-f", "-"],
        f"replacing table {TABLE}{_where(netns)} with the rules for {n} "
        f"mapping{'s' if n != 1 else ''} from {cfg.path}",
        stdin=script,
        netns=netns,
    )


def remove(cfg: Config, netns: str | None = None) -> None:
    """Delete our table; no error when it is already gone."""
    run_command(
        ["nft", "-f", "-"],
        f"deleting table {TABLE}{_where(netns)}",
        stdin=f"table {TABLE} {{}}\ndelete table {TABLE}\n",
        netns=netns,
    )
