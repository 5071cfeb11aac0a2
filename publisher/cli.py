"""The ``revnat64`` command line.

Each subcommand's options are declared here, in one place, so ``--help`` shows
the whole surface; the work itself lives in the module named by the handler
and is imported only when that subcommand runs (``check`` must not pay for
pyroute2, and ``dns`` must not need root).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from publisher import __version__

DEFAULT_CONFIG = "/etc/revnat64/mappings.yaml"

# subcommand -> "module:function"; the function takes the parsed args and returns an exit status.
HANDLERS = {
    "check": "publisher.cli:cmd_check",
    "run": "publisher.daemon:cmd_run",
    "demo": "publisher.demo:cmd_demo",
    "dns": "publisher.dns:cmd_dns",
    "firewall": "publisher.firewall:cmd_firewall",
    "status": "publisher.status:cmd_status",
    "diagnose": "publisher.diagnose:cmd_diagnose",
    "install-systemd": "publisher.install:cmd_install_systemd",
}


class _IntermixedParser(argparse.ArgumentParser):
    """A subcommand parser that takes options between positionals.

    ``revnat64 diagnose camera --from 2001:db8:1::2 tcp/80`` would otherwise
    stop at ``tcp/80``: plain argparse fills optional positionals before the
    first option and refuses what comes after.
    """

    _intermixing = False

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        if self._intermixing:  # parse_known_intermixed_args calls back in here
            return super().parse_known_args(args, namespace)
        self._intermixing = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._intermixing = False


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="revnat64",
        description="Publish IPv4-only LAN devices on global IPv6 addresses "
        "through a stateless NAT64 (SIIT) translator.",
    )
    parser.add_argument("--version", action="version", version=f"revnat64 {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_IntermixedParser)
    sub.required = True

    def add(name: str, help_text: str, config: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        if config:
            p.add_argument(
                "-c",
                "--config",
                default=DEFAULT_CONFIG,
                metavar="FILE",
                help=f"the YAML config (default {DEFAULT_CONFIG})",
            )
        return p

    p = add("check", "Validate a config file; print a summary, or one line per problem.")
    p.add_argument("--quiet", "-q", action="store_true", help="print nothing when valid")

    p = add("run", "Run the translator daemon in the foreground until SIGTERM or SIGINT.")
    p.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        help="override daemon.log_level from the config",
    )

    p = add(
        "demo",
        "Build a namespace lab (IPv6 client, router, IPv4-only camera), publish the "
        "camera through revnat64, fetch its page over IPv6 and tear it all down.",
        config=False,
    )
    p.add_argument("--keep", action="store_true", help="leave the lab running and explain it")
    p.add_argument(
        "--cleanup", action="store_true", help="remove labs left running by --keep, then exit"
    )

    p = add("dns", "Print AAAA/PTR records for the mappings, or update and check them in DNS.")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--format",
        choices=("zone", "dnsmasq", "unbound", "hosts", "nsupdate", "json"),
        default="zone",
        help="print records in this format (default zone)",
    )
    mode.add_argument(
        "--update", action="store_true", help="send an RFC 2136 update to dns.server (TSIG)"
    )
    mode.add_argument(
        "--check", action="store_true", help="resolve every name and compare with the config"
    )
    p.add_argument("--ptr", action="store_true", help="include PTR records (ip6.arpa)")

    p = add("firewall", "Show, apply or remove the firewall rules that enforce the allow lists.")
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument(
        "--print", action="store_true", help="print the exact ruleset, change nothing"
    )
    mode.add_argument("--apply", action="store_true", help="replace our ruleset atomically")
    mode.add_argument("--remove", action="store_true", help="remove our ruleset")
    mode.add_argument(
        "--fw4-snippet",
        metavar="PATH",
        help="OpenWrt: write the fw4 forward-chain snippet for this config to PATH "
        "('-': print it); says 'updated' when PATH changed, so fw4 needs a reload",
    )
    p.add_argument(
        "--backend",
        choices=("nftables", "iptables"),
        help="override firewall.backend from the config",
    )

    p = add("status", "Show mappings, traffic, leases and health from the running daemon.")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = add(
        "diagnose",
        "Follow one packet from an IPv6 client to a published device through this router "
        "(routes, proxy NDP, firewall, translation, ARP, the way back, counters) and say "
        "where it would stop. Sends nothing.",
    )
    p.add_argument("target", help="a published IPv6 address, a mapping name or its DNS name")
    p.add_argument(
        "service",
        nargs="?",
        default="icmp",
        help="tcp/PORT, udp/PORT or icmp (default icmp: a ping)",
    )
    p.add_argument(
        "--from",
        dest="source",
        metavar="CLIENT",
        help="the client's IPv6 address (it matters for sources, leases and the return route)",
    )
    p.add_argument(
        "--watch",
        type=float,
        metavar="SECONDS",
        help="then watch the mapping's counters this long while you send from the client, "
        "and say what happened to those packets (at most 3600)",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="machine-readable output (the watch's progress on stderr)",
    )

    p = add(
        "install-systemd",
        "Install the systemd unit and an example config (does not start the service).",
        config=False,
    )
    p.add_argument("--prefix", default="/", help="install root (default /)")
    return parser


def cmd_check(args: argparse.Namespace) -> int:
    from publisher.config import config_warnings, load_config_or_report, summary
    from publisher.system_checks import system_problems

    cfg = load_config_or_report(args.config, stream=sys.stdout, placeholder=True)
    if cfg is None:
        return 1
    from publisher.dns_records import name_collisions

    problems = name_collisions(cfg) + system_problems(cfg)
    for problem in problems:
        print(problem)
    if problems:
        return 1
    for warning in config_warnings(cfg):
        print(f"warning: {warning}", file=sys.stderr)
    if not args.quiet:
        print(summary(cfg))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    module_name, func_name = HANDLERS[args.command].split(":")
    handler = getattr(importlib.import_module(module_name), func_name)
    try:
        return int(handler(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
