"""What both firewall backends share: the error type, the policy read from the config.

The nftables and iptables renderers express one policy (see ``docs/firewall.md``)
in two languages.  The decisions that do not depend on the language live
here, so the two cannot drift apart: which IPv4 sources may legitimately come
out of the TUN, how an allow list splits by protocol, and how command
failures turn into a :class:`FirewallError` that says what was being done.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network

from publisher.config import AllowRule, Config, Mapping

__all__ = [
    "FirewallError",
    "PortRange",
    "bare",
    "describe",
    "ports_by_proto",
    "run_command",
    "spoof_sources4",
    "spoof_sources6",
]


class FirewallError(RuntimeError):
    """Applying, removing or reading the firewall failed; the message says what and where."""


@dataclass(frozen=True)
class PortRange:
    low: int
    high: int


def ports_by_proto(allow: Sequence[AllowRule]) -> dict[str, list[PortRange]]:
    """``tcp``/``udp`` -> sorted, merged port ranges; ``icmp`` maps to an empty list when allowed.

    Merging keeps sets free of overlapping intervals, which nft refuses.
    """
    out: dict[str, list[PortRange]] = {}
    for proto in ("tcp", "udp"):
        spans = sorted((r.port_min, r.port_max) for r in allow if r.proto == proto)
        merged: list[list[int]] = []
        for low, high in spans:
            if merged and low <= merged[-1][1] + 1:
                merged[-1][1] = max(merged[-1][1], high)
            else:
                merged.append([low, high])
        if merged:
            out[proto] = [PortRange(lo, hi) for lo, hi in merged]
    if any(r.proto == "icmp" for r in allow):
        out["icmp"] = []
    return out


def bare(net: IPv4Network | IPv6Network) -> str:
    """A host network as the bare address (as nft lists it), anything else as a prefix."""
    return str(net.network_address) if net.prefixlen == net.max_prefixlen else str(net)


def describe(mapping: Mapping) -> str:
    """``name: ipv6 <-> ipv4`` for comments."""
    return f"{mapping.name}: {bare(mapping.ipv6)} <-> {bare(mapping.ipv4)}"


def spoof_sources4(cfg: Config) -> list[IPv4Network]:
    """IPv4 sources only the translator sends from: pool4, the RFC 6791 pool, its own address."""
    tr = cfg.translator
    nets = [tr.pool4, *tr.rfc6791_pool4]
    own = IPv4Network(f"{tr.ipv4_address}/32")
    if not any(own.subnet_of(n) for n in nets):
        nets.append(own)
    return nets


def spoof_sources6(cfg: Config) -> list[IPv6Network]:
    """IPv6 sources only the translator sends from: mapped addresses, its own address
    and the RFC 6052 prefix (all routed into the TUN; the translator drops them too)."""
    nets = [m.ipv6 for m in cfg.mappings]
    for extra in (IPv6Network(f"{cfg.translator.ipv6_address}/128"), cfg.translator.prefix):
        if extra is not None and not any(extra.subnet_of(n) for n in nets):
            # nft refuses overlapping elements in one set: the wider one stands for both.
            nets = [n for n in nets if not n.subnet_of(extra)] + [extra]
    return nets


def run_command(
    argv: Sequence[str], doing: str, stdin: str | None = None, netns: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a firewall tool; on failure raise FirewallError naming ``doing`` and the tool's words."""
    full = ["ip", "netns", "exec", netns, *argv] if netns else list(argv)
    try:
        proc = subprocess.run(
            full, input=stdin, capture_output=True, text=True, timeout=60, check=False
        )
    except FileNotFoundError:
        raise FirewallError(f"{doing}: {full[0]} is not installed") from None
    except subprocess.TimeoutExpired:
        raise FirewallError(f"{doing}: {' '.join(argv)} did not finish in 60 s") from None
    if proc.returncode != 0:
        message = (proc.stderr or proc.stdout).strip() or f"exit status {proc.returncode}"
        raise FirewallError(f"{doing}: {' '.join(argv)} failed: {message}")
    return proc
