"""The iptables backend, for routers without nftables (Asuswrt-Merlin).

The policy is the one the nftables backend renders (``docs/firewall.md``),
written as chains of our own: ``REVNAT64-PRE`` (raw PREROUTING, anti-spoofing),
``REVNAT64-FWD`` (filter FORWARD), ``REVNAT64-IN4`` (IPv4 out of the TUN),
``REVNAT64-POST`` (nat POSTROUTING, masquerade) and one ``RN64-<mapping>``
chain per mapping, in both ``iptables`` and ``ip6tables``.

Applying is idempotent and, per table, atomic: the chains' contents go
through ``iptables-restore --noflush``, where declaring a chain creates it or
empties it, so the new rules replace the old ones in one commit and no other
chain is touched.  Chains of ours that the new config no longer needs are
emptied and deleted in the same commit.  Each chain is hooked from its
built-in chain by a single jump, added only when ``-C`` says it is missing.

Applying is check-then-add, so two at once (the daemon's watchdog and
Merlin's ``firewall-start`` after a firewall restart) could both add a
jump.  Apply and remove therefore hold an exclusive ``flock`` on
``<daemon.state_dir>/iptables.lock`` (:func:`exclusive`).

Unlike nftables, an ACCEPT in a chain called from FORWARD ends FORWARD, so
the router's own rules (Merlin drops forwarded IPv6 by default) no longer
see the traffic our allow lists accept; everything else returns to them.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shlex
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network

from publisher.config import Config, Mapping
from publisher.firewall_common import (
    FirewallError,
    PortRange,
    ports_by_proto,
    run_command,
    spoof_sources4,
    spoof_sources6,
)

__all__ = [
    "Hook",
    "IptablesPlan",
    "apply",
    "is_applied",
    "plan_iptables",
    "read_drop_counters",
    "remove",
    "render_iptables",
]

FAMILIES = ("ip6", "ip")
TOOL = {"ip6": "ip6tables", "ip": "iptables"}
OUR_PREFIXES = ("REVNAT64-", "RN64-")
CHAIN_MAX = 28  # XT_EXTENSION_MAXNAMELEN - 1
MULTIPORT_MAX = 15  # xt_multiport: a range counts as two
HASHLIMIT_UNITS = {"second": "sec", "minute": "min", "hour": "hour"}
MAX_UNHOOK = 32  # bound on removing duplicate jumps someone else added
LOCK_FILE = "iptables.lock"
LOCK_TIMEOUT = 60.0  # another apply is seconds at most; waiting longer means it hangs


@dataclass(frozen=True)
class Hook:
    """A single jump from a built-in chain into one of ours."""

    family: str
    table: str
    builtin: str
    chain: str

    def argv(self, op: str) -> list[str]:
        return [TOOL[self.family], "-t", self.table, op, self.builtin, "-j", self.chain]


@dataclass(frozen=True)
class IptablesPlan:
    """The desired state: restore input per family and table, and the hooks."""

    tables: dict[tuple[str, str], list[str]]  # (family, table) -> restore lines, no COMMIT
    chains: dict[tuple[str, str], list[str]]  # (family, table) -> our chain names
    hooks: tuple[Hook, ...]


def mapping_chain(m: Mapping) -> str:
    """``RN64-<name>``, shortened with a hash when the name is too long for iptables."""
    if len("RN64-" + m.name) <= CHAIN_MAX:
        return "RN64-" + m.name
    digest = hashlib.sha1(m.name.encode()).hexdigest()[:8]
    return f"RN64-{m.name[: CHAIN_MAX - 14]}-{digest}"


def _hashlimit(m: Mapping) -> list[str]:
    """One token bucket per mapping, shared by its rules through the hashlimit name."""
    if not m.rate_limit:
        return []
    count, unit = m.rate_limit.split("/")
    name = "rn64-" + hashlib.sha1(m.name.encode()).hexdigest()[:10]
    return [
        "-m",
        "hashlimit",
        "--hashlimit-upto",
        f"{count}/{HASHLIMIT_UNITS[unit]}",
        "--hashlimit-name",
        name,
    ]


def _net(net: IPv4Network | IPv6Network) -> str:
    return str(net)


def _comment(text: str) -> list[str]:
    return ["-m", "comment", "--comment", text]


def _port_chunks(spans: Sequence[PortRange]) -> list[list[PortRange]]:
    chunks: list[list[PortRange]] = [[]]
    used = 0
    for span in spans:
        cost = 1 if span.low == span.high else 2
        if used + cost > MULTIPORT_MAX:
            chunks.append([])
            used = 0
        chunks[-1].append(span)
        used += cost
    return chunks


def _port_match(proto: str, chunk: Sequence[PortRange]) -> list[str]:
    texts = [str(s.low) if s.low == s.high else f"{s.low}:{s.high}" for s in chunk]
    if len(texts) == 1:
        return ["-p", proto, "-m", proto, "--dport", texts[0]]
    return ["-p", proto, "-m", "multiport", "--dports", ",".join(texts)]


def _allow_matches(m: Mapping, family: str) -> list[tuple[list[str], str]]:
    """(match arguments, what) for each allow rule of a mapping in one family."""
    out = []
    for proto, spans in ports_by_proto(m.allow).items():
        if proto == "icmp":
            if family == "ip6":
                match = ["-p", "ipv6-icmp", "-m", "icmp6", "--icmpv6-type", "echo-request"]
            else:
                match = ["-p", "icmp", "-m", "icmp", "--icmp-type", "echo-request"]
            out.append((match, "icmp echo"))
            continue
        for chunk in _port_chunks(spans):
            what = ", ".join(
                f"{proto}/{s.low}" if s.low == s.high else f"{proto}/{s.low}-{s.high}"
                for s in chunk
            )
            out.append((_port_match(proto, chunk), what))
    return out


def _quote(word: str) -> str:
    """iptables-restore understands double quotes only (and names and comments hold none)."""
    return f'"{word}"' if not word or any(c in word for c in " '\t") else word


def _rule(chain: str, *args: str | list[str]) -> str:
    argv = ["-A", chain]
    for a in args:
        argv += [a] if isinstance(a, str) else a
    return " ".join(_quote(w) for w in argv)


def plan_iptables(cfg: Config) -> IptablesPlan:
    """The whole desired iptables state for a config (pure)."""
    tun, lan = cfg.translator.tun_device, cfg.lan.interface
    tables: dict[tuple[str, str], list[str]] = {}
    chains: dict[tuple[str, str], list[str]] = {}
    established = ["-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED"]

    for family in FAMILIES:
        spoofed = spoof_sources6(cfg) if family == "ip6" else spoof_sources4(cfg)
        pre = [
            _rule("REVNAT64-PRE", "-i", tun, _comment("the translator itself"), "-j", "RETURN"),
            _rule("REVNAT64-PRE", "-i", "lo", "-j", "RETURN"),
        ]
        pre += [
            _rule("REVNAT64-PRE", "-s", _net(n), _comment("spoofed"), "-j", "DROP") for n in spoofed
        ]
        chains[(family, "raw")] = ["REVNAT64-PRE"]
        tables[(family, "raw")] = pre

        fwd_chains = ["REVNAT64-FWD"]
        fwd = [
            _rule("REVNAT64-FWD", "-i", tun, established, "-j", "ACCEPT"),
            _rule(
                "REVNAT64-FWD",
                "-o",
                tun,
                established,
                _comment("replies, and ICMP errors of accepted flows (PMTU)"),
                "-j",
                "ACCEPT",
            ),
        ]
        body: list[str] = []
        if family == "ip6":
            for m in cfg.mappings:
                fwd.append(
                    _rule(
                        "REVNAT64-FWD",
                        "-o",
                        tun,
                        "-d",
                        _net(m.ipv6),
                        ["-p", "ipv6-icmp", "-m", "icmp6", "--icmpv6-type", "packet-too-big"],
                        _comment("RFC 4890 4.3.1: PMTU discovery"),
                        "-j",
                        "ACCEPT",
                    )
                )
            for m in cfg.mappings:
                fwd.append(
                    _rule("REVNAT64-FWD", "-o", tun, "-d", _net(m.ipv6), "-j", mapping_chain(m))
                )
            fwd.append(_rule("REVNAT64-FWD", "-o", tun, _comment("unmapped"), "-j", "DROP"))
        else:
            fwd_chains.append("REVNAT64-IN4")
            fwd += [
                _rule("REVNAT64-FWD", "-i", tun, "-s", _net(n), "-j", "REVNAT64-IN4")
                for n in spoof_sources4(cfg)
            ]
            fwd.append(_rule("REVNAT64-FWD", "-i", tun, _comment("spoofed"), "-j", "DROP"))
            fwd.append(_rule("REVNAT64-FWD", "-o", tun, _comment("into_tun"), "-j", "DROP"))
            body += [
                _rule("REVNAT64-IN4", "-d", _net(m.ipv4), "-j", mapping_chain(m))
                for m in cfg.mappings
            ]
            body.append(_rule("REVNAT64-IN4", _comment("unmapped"), "-j", "DROP"))
        for m in cfg.mappings:
            chain = mapping_chain(m)
            fwd_chains.append(chain)
            srcs: list[list[str]] = [[]]
            if family == "ip6" and m.sources:
                srcs = [["-s", _net(s)] for s in m.sources]
            limit = _hashlimit(m) if family == "ip6" else []
            for src in srcs:
                for match, what in _allow_matches(m, family):
                    body.append(
                        _rule(
                            chain,
                            src,
                            match,
                            limit,
                            _comment(f"{m.name}: allow {what}"),
                            "-j",
                            "ACCEPT",
                        )
                    )
            body.append(_rule(chain, _comment(f"drop_{m.name}"), "-j", "DROP"))
        chains[(family, "filter")] = fwd_chains
        tables[(family, "filter")] = fwd + body

    post = []
    sources = spoof_sources4(cfg)
    for m in cfg.mappings:
        if not m.masquerade:
            continue
        for src in [["-s", _net(n)] for n in sources]:
            post.append(
                _rule(
                    "REVNAT64-POST",
                    "-o",
                    lan,
                    src,
                    "-d",
                    _net(m.ipv4),
                    _comment(f"{m.name}: masquerade"),
                    "-j",
                    "MASQUERADE",
                )
            )
    chains[("ip", "nat")] = ["REVNAT64-POST"]
    tables[("ip", "nat")] = post

    hooks = []
    for family in FAMILIES:
        hooks.append(Hook(family, "raw", "PREROUTING", "REVNAT64-PRE"))
        hooks.append(Hook(family, "filter", "FORWARD", "REVNAT64-FWD"))
    hooks.append(Hook("ip", "nat", "POSTROUTING", "REVNAT64-POST"))
    return IptablesPlan(tables, chains, tuple(hooks))


def _restore_text(
    plan: IptablesPlan, family: str, stale: dict[tuple[str, str], list[str]] | None = None
) -> str:
    lines = []
    for (fam, table), rules in plan.tables.items():
        if fam != family:
            continue
        lines.append(f"*{table}")
        lines += [f":{c} - [0:0]" for c in plan.chains[(fam, table)]]
        lines += rules
        old = (stale or {}).get((fam, table), [])
        lines += [f"-F {c}" for c in old] + [f"-X {c}" for c in old]
        lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def render_iptables(cfg: Config) -> str:
    """What ``apply`` feeds to ip6tables-restore / iptables-restore, and the hooks it adds."""
    plan = plan_iptables(cfg)
    out = [
        f"# revnat64 firewall (iptables backend) for {cfg.path}: generated, do not edit.",
        "# Each block goes to <tool>-restore --noflush: declaring a chain creates or",
        "# empties it, so a block replaces our chains in one commit.",
    ]
    for family in FAMILIES:
        out.append(f"# ---- {TOOL[family]}-restore --noflush ----")
        out.append(_restore_text(plan, family).rstrip("\n"))
    out.append("# ---- hooks, each added once (-C before -I) ----")
    out += ["# " + shlex.join(h.argv("-I")) for h in plan.hooks]
    return "\n".join(out) + "\n"


def _where(netns: str | None) -> str:
    return f" in netns {netns}" if netns else ""


def _our_chains(family: str, table: str, netns: str | None) -> list[str]:
    """Chains of ours that exist now in one table (read from <tool>-save)."""
    proc = run_command(
        [f"{TOOL[family]}-save", "-t", table],
        f"listing {TOOL[family]} table {table}{_where(netns)}",
        netns=netns,
    )
    found = []
    for line in proc.stdout.splitlines():
        if line.startswith(":"):
            name = line[1:].split()[0]
            if name.startswith(OUR_PREFIXES):
                found.append(name)
    return found


def _hooked(hook: Hook, netns: str | None) -> bool:
    try:
        run_command(hook.argv("-C"), "checking a hook", netns=netns)
    except FirewallError:
        return False
    return True


@contextmanager
def exclusive(cfg: Config, timeout: float = LOCK_TIMEOUT) -> Iterator[None]:
    """Hold the iptables lock of ``cfg``'s state directory (one changer at a time).

    ``flock`` belongs to the open file, so a holder that dies releases it.
    """
    os.makedirs(cfg.daemon.state_dir, exist_ok=True)
    path = os.path.join(cfg.daemon.state_dir, LOCK_FILE)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise FirewallError(
                        f"another revnat64 has held {path} for {timeout:.0f} s; "
                        "not changing the iptables rules at the same time"
                    ) from None
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)  # releases the lock


def apply(cfg: Config, netns: str | None = None) -> None:
    """Replace our chains (atomically per table) and add any missing hook."""
    with exclusive(cfg):
        _apply(cfg, netns)


def _apply(cfg: Config, netns: str | None) -> None:
    plan = plan_iptables(cfg)
    for family in FAMILIES:
        stale = {}
        for fam, table in plan.tables:
            if fam == family:
                wanted = set(plan.chains[(fam, table)])
                stale[(fam, table)] = [c for c in _our_chains(fam, table, netns) if c not in wanted]
        run_command(
            [f"{TOOL[family]}-restore", "--noflush"],
            f"replacing the revnat64 chains in {TOOL[family]}{_where(netns)} "
            f"for {len(cfg.mappings)} mappings from {cfg.path}",
            stdin=_restore_text(plan, family, stale),
            netns=netns,
        )
    for hook in plan.hooks:
        if not _hooked(hook, netns):
            run_command(
                [*hook.argv("-I")[:-2], "1", "-j", hook.chain],
                f"hooking {hook.chain} into {hook.table} {hook.builtin} "
                f"({TOOL[hook.family]}){_where(netns)}",
                netns=netns,
            )


def remove(cfg: Config, netns: str | None = None) -> None:
    """Unhook and delete every chain of ours; no error when nothing is there."""
    with exclusive(cfg):
        _remove(cfg, netns)


def _remove(cfg: Config, netns: str | None) -> None:
    """Each family on its own: one whose tool fails (ip6tables gone) must not keep
    the other's chains in place. The failures are raised together at the end."""
    plan = plan_iptables(cfg)
    failures: list[str] = []
    for family in FAMILIES:
        try:
            _remove_family(plan, family, netns)
        except FirewallError as exc:
            failures.append(str(exc))
    if failures:
        raise FirewallError("; ".join(failures))


def _remove_family(plan: IptablesPlan, family: str, netns: str | None) -> None:
    for hook in plan.hooks:
        if hook.family != family:
            continue
        for _ in range(MAX_UNHOOK):
            if not _hooked(hook, netns):
                break
            run_command(
                hook.argv("-D"),
                f"unhooking {hook.chain} from {hook.table} {hook.builtin} "
                f"({TOOL[hook.family]}){_where(netns)}",
                netns=netns,
            )
    lines = []
    for table in sorted({t for f, t in plan.tables if f == family}):
        ours = _our_chains(family, table, netns)
        if ours:
            lines += [f"*{table}", *(f"-F {c}" for c in ours)]
            lines += [f"-X {c}" for c in ours] + ["COMMIT"]
    if lines:
        run_command(
            [f"{TOOL[family]}-restore", "--noflush"],
            f"deleting the revnat64 chains from {TOOL[family]}{_where(netns)}",
            stdin="\n".join(lines) + "\n",
            netns=netns,
        )


def is_applied(cfg: Config, netns: str | None = None) -> bool:
    """Whether our forward chain is hooked in both families."""
    return all(_hooked(h, netns) for h in plan_iptables(cfg).hooks if h.builtin == "FORWARD")


def read_drop_counters(cfg: Config, netns: str | None = None) -> dict[str, tuple[int, int]]:
    """Mapping name -> (packets, bytes) dropped, summed over iptables and ip6tables."""
    totals = {f"drop_{m.name}": [0, 0] for m in cfg.mappings}
    for family in FAMILIES:
        if not _hooked(Hook(family, "filter", "FORWARD", "REVNAT64-FWD"), netns):
            continue
        proc = run_command(
            [f"{TOOL[family]}-save", "-c", "-t", "filter"],
            f"reading the revnat64 counters from {TOOL[family]}{_where(netns)}",
            netns=netns,
        )
        for line in proc.stdout.splitlines():
            if not line.startswith("[") or "--comment" not in line:
                continue
            counts, _, rule = line.partition(" ")
            words = shlex.split(rule)
            comment = words[words.index("--comment") + 1]
            if comment in totals:
                packets, _, nbytes = counts.strip("[]").partition(":")
                totals[comment][0] += int(packets)
                totals[comment][1] += int(nbytes)
    return {
        m.name: (totals[f"drop_{m.name}"][0], totals[f"drop_{m.name}"][1]) for m in cfg.mappings
    }
