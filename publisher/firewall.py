"""Firewall management: the rules that make each mapping's ``allow`` list true.

Publishing a webcam must not publish anything else.  The policy (spelled out
in ``docs/firewall.md``) is rendered by one of two backends:

* :mod:`publisher.firewall_nft` (default): ``table inet revnat64``, replaced
  atomically with ``nft -f``; other tables (OpenWrt's ``inet fw4``) are never
  touched.
* :mod:`publisher.firewall_iptables`: chains of our own in iptables and
  ip6tables, for Asuswrt-Merlin, idempotent and hooked by one jump each.

Callers (the daemon, the CLI, metrics) use :func:`backend_for`, which picks the
backend from ``firewall.backend`` or an override and returns an object with
``render()``, ``apply()``, ``remove()``, ``is_applied()`` and
``drop_counters()``.  Rendering is pure; only ``apply``/``remove``/reads run
the firewall tools, and their failures are :class:`FirewallError` naming what
was being done to which object, with the tool's own message.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from publisher import firewall_iptables, firewall_nft
from publisher.config import Config
from publisher.firewall_common import FirewallError
from publisher.firewall_iptables import render_iptables
from publisher.firewall_nft import render_fw4_snippet, render_nftables
from publisher.netlink import atomic_write

__all__ = [
    "BACKENDS",
    "FirewallBackend",
    "FirewallError",
    "IptablesBackend",
    "NftablesBackend",
    "apply",
    "backend_for",
    "cmd_firewall",
    "is_applied",
    "read_drop_counters",
    "remove",
    "render_iptables",
    "render_nftables",
]


class FirewallBackend(Protocol):
    """What the daemon and the CLI need from a backend."""

    name: str
    gone_hint: str  # what usually removes the rules, for the daemon's watchdog log
    grace_checks: int  # watchdog checks that may find the rules gone before it re-applies

    def render(self) -> str: ...
    def apply(self) -> None: ...
    def remove(self) -> None: ...
    def is_applied(self) -> bool: ...
    def drop_counters(self) -> dict[str, tuple[int, int]]: ...


@dataclass(frozen=True)
class NftablesBackend:
    """``table inet revnat64``; ``netns`` runs nft inside that network namespace (labs, tests)."""

    cfg: Config
    netns: str | None = None
    name: str = "nftables"
    gone_hint = "a `flush ruleset`, e.g. systemctl restart nftables"
    grace_checks = 0
    """The daemon puts the table back when it disappears: one atomic nft
    transaction, safe even if ``revnat64 firewall --apply`` runs at the same
    moment."""

    def render(self) -> str:
        return render_nftables(self.cfg)

    def apply(self) -> None:
        firewall_nft.apply(self.cfg, self.netns)

    def remove(self) -> None:
        firewall_nft.remove(self.cfg, self.netns)

    def is_applied(self) -> bool:
        return firewall_nft.is_applied(self.cfg, self.netns)

    def drop_counters(self) -> dict[str, tuple[int, int]]:
        return firewall_nft.read_drop_counters(self.cfg, self.netns)

    def counters(self) -> dict[str, tuple[int, int]]:
        """Every named counter, the global ones (spoofed, unmapped, into_tun) included."""
        return firewall_nft.read_counters(self.cfg, self.netns)


@dataclass(frozen=True)
class IptablesBackend:
    """Chains of our own in iptables and ip6tables (Asuswrt-Merlin)."""

    cfg: Config
    netns: str | None = None
    name: str = "iptables"
    gone_hint = "a firewall restart or an iptables flush"
    grace_checks = 1
    """A firewall restart (Merlin's, ufw's, an ``iptables-restore`` of a saved
    ruleset) drops our chains and jumps; with a FORWARD policy of ACCEPT that
    leaves the devices open.  The daemon puts them back when two checks in a
    row (5-10 s) find them gone, which leaves Merlin's firewall-start the
    time to do it first.  Apply holds a lock, so both may run at the same
    moment without duplicating a jump."""

    def render(self) -> str:
        return render_iptables(self.cfg)

    def apply(self) -> None:
        firewall_iptables.apply(self.cfg, self.netns)

    def remove(self) -> None:
        firewall_iptables.remove(self.cfg, self.netns)

    def is_applied(self) -> bool:
        return firewall_iptables.is_applied(self.cfg, self.netns)

    def drop_counters(self) -> dict[str, tuple[int, int]]:
        return firewall_iptables.read_drop_counters(self.cfg, self.netns)


BACKENDS: dict[str, type[NftablesBackend] | type[IptablesBackend]] = {
    "nftables": NftablesBackend,
    "iptables": IptablesBackend,
}


def backend_for(
    cfg: Config, override: str | None = None, netns: str | None = None
) -> NftablesBackend | IptablesBackend:
    """The backend named by ``override`` or else ``cfg.firewall.backend``."""
    name = override or cfg.firewall.backend
    try:
        return BACKENDS[name](cfg, netns)
    except KeyError:
        raise FirewallError(
            f"unknown firewall backend {name!r} (choose {', '.join(BACKENDS)})"
        ) from None


def apply(cfg: Config) -> None:
    """Apply the configured backend's ruleset."""
    backend_for(cfg).apply()


def remove(cfg: Config) -> None:
    """Remove the configured backend's ruleset (idempotent)."""
    backend_for(cfg).remove()


def is_applied(cfg: Config) -> bool:
    return backend_for(cfg).is_applied()


def read_drop_counters(cfg: Config) -> dict[str, tuple[int, int]]:
    """Mapping name -> (packets, bytes) the firewall refused, for metrics."""
    return backend_for(cfg).drop_counters()


def write_fw4_snippet(cfg: Config, path: str) -> int:
    """Write (or print, for ``-``) :func:`render_fw4_snippet`; only when it differs."""
    text = render_fw4_snippet(cfg)
    if path == "-":
        sys.stdout.write(text)
        return 0
    target = Path(path)
    try:
        if target.exists() and target.read_text(encoding="utf-8") == text:
            print(f"revnat64: {target} unchanged")
            return 0
        atomic_write(target, text, mode=0o644)
    except OSError as exc:
        print(f"revnat64: writing the fw4 snippet {target}: {exc}", file=sys.stderr)
        return 1
    print(f"revnat64: {target} updated")
    return 0


def cmd_firewall(args: argparse.Namespace) -> int:
    """``revnat64 firewall -c FILE --print|--apply|--remove [--backend B]``."""
    from publisher.config import load_config_or_report

    # The fw4 snippet names the TUN only, so it needs no current prefix.
    cfg = load_config_or_report(args.config, placeholder=bool(getattr(args, "fw4_snippet", None)))
    if cfg is None:
        return 1
    if getattr(args, "fw4_snippet", None):
        return write_fw4_snippet(cfg, args.fw4_snippet)
    backend = backend_for(cfg, getattr(args, "backend", None))
    if args.print:
        sys.stdout.write(backend.render())
        return 0
    try:
        if args.apply:
            if not cfg.firewall.enabled:
                print(
                    f"{cfg.path}: firewall.enabled is false: refusing to apply; set it to "
                    "true, or manage the firewall yourself (see docs/firewall.md)",
                    file=sys.stderr,
                )
                return 1
            backend.apply()
            print(f"revnat64: {backend.name} ruleset applied for {len(cfg.mappings)} mappings")
        else:
            backend.remove()
            print(f"revnat64: {backend.name} ruleset removed")
    except FirewallError as exc:
        print(f"revnat64: {exc}", file=sys.stderr)
        return 1
    return 0
