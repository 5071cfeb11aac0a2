"""``revnat64 dns``: print the records, update the primary server, or check resolution.

This module is only the command: it loads the config and hands over to the
module for each concept.  Records and formats are in
:mod:`publisher.dns_records`, the RFC 2136 update (and the daemon's background
hook) in :mod:`publisher.dns_update`, TSIG key files in
:mod:`publisher.dns_tsig`, and the resolver check in :mod:`publisher.dns_check`.

Exit status: 0 when done (or, for ``--check``, when every name matches);
1 for any failure or mismatch; 2 for an unusable config or key file.
"""

from __future__ import annotations

import argparse
import logging
import sys

from publisher.config import Config, is_ip_host, load_config_or_report
from publisher.dns_records import build_records, render

__all__ = ["cmd_dns"]


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def cmd_dns(args: argparse.Namespace) -> int:
    """Entry point for ``revnat64 dns`` (see :mod:`publisher.cli` for the options)."""
    cfg = load_config_or_report(args.config)
    if cfg is None:
        return 2
    ptr = bool(args.ptr or cfg.dns.ptr)
    if not cfg.dns.zone:
        print(f"{cfg.path}: dns.zone: is required for revnat64 dns", file=sys.stderr)
        return 2
    if args.update:
        return _update(cfg, ptr)
    if args.check:
        return _check(cfg, ptr)
    records = build_records(cfg, ptr=ptr)
    for warning in records.warnings:
        _warn(warning)
    sys.stdout.write(render(records, args.format, cfg.dns.server))
    return 0


def _update(cfg: Config, ptr: bool) -> int:
    from publisher.dns_tsig import TsigKeyFileError
    from publisher.dns_update import DnsUpdateError, run_update

    log = logging.getLogger("revnat64.dns")
    if not log.handlers and not logging.getLogger().handlers:
        logging.basicConfig(format="%(message)s", level=logging.WARNING)
    try:
        result = run_update(cfg, ptr=ptr, log=log)
    except TsigKeyFileError as exc:
        print(exc, file=sys.stderr)
        return 2
    except DnsUpdateError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for warning in result.warnings:
        _warn(warning)
    for change in result.plan.changes:
        print(change)
    print(result.summary())
    # Names another instance manages were not published: that is not "done".
    return 1 if result.plan.conflicts else 0


def _check(cfg: Config, ptr: bool) -> int:
    from publisher.dns_check import check_records, format_report, make_resolver, resolver_lookup

    records = build_records(cfg, ptr=ptr)
    for warning in records.warnings:
        _warn(warning)
    if cfg.dns.resolver and not is_ip_host(cfg.dns.resolver):
        print(
            f"{cfg.path}: dns.resolver: {cfg.dns.resolver} names no IP address; "
            "write the resolver's address (e.g. 192.0.2.53:53)",
            file=sys.stderr,
        )
        return 2
    resolver = make_resolver(cfg.dns.resolver)
    results = check_records(records, resolver_lookup(resolver))
    for line in format_report(results):
        print(line)
    bad = sum(1 for r in results if r.state != "ok")
    where = cfg.dns.resolver or "the system resolver"
    if bad:
        print(f"{bad} of {len(results)} record set(s) do not match (asked {where})")
        return 1
    print(f"all {len(results)} record set(s) match (asked {where})")
    return 0
