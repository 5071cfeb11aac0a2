"""``revnat64 status``: what the running daemon is doing, as a table for people.

The command asks the daemon for a :class:`~publisher.snapshot.Snapshot` over
the control socket (``daemon.control_socket`` in the config) and renders it.
Rendering is a pure function of the snapshot and the current time, so the
output is tested against a golden file.

When the socket cannot be used (no daemon, or a user outside the socket's
group), the command says so and exits 1; it does not guess from other
sources, because a status that is silently incomplete is worse than none.
"""

from __future__ import annotations

import argparse
import sys
import time

from publisher.config import load_config_or_report
from publisher.control import ControlError, DaemonNotRunning, request
from publisher.snapshot import PREFIX_MAPPING, Snapshot

__all__ = [
    "cmd_status",
    "format_bytes",
    "format_count",
    "format_cpu",
    "format_duration",
    "render_status",
]

MAX_LEASES_SHOWN = 20


def format_count(n: float) -> str:
    """Packets and other counts: 999, 1.2k, 3.4M (SI, three significant digits)."""
    for factor, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= factor * 0.9995:  # 999_999 is 1.00M, not 1000k
            return f"{_three_digits(n / factor)}{suffix}"
    return f"{int(n)}"


def format_bytes(n: float) -> str:
    """Bytes in IEC units: 512 B, 1.5 KiB, 20.3 MiB."""
    for factor, suffix in ((1 << 40, "TiB"), (1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
        if abs(n) >= factor:
            return f"{_three_digits(n / factor)} {suffix}"
    return f"{int(n)} B"


def _three_digits(x: float) -> str:
    if x >= 100:
        return f"{x:.0f}"
    if x >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def format_duration(seconds: float) -> str:
    """Elapsed time, two largest units: 45s, 3m 20s, 5h 2m, 2d 7h."""
    s = max(0, int(seconds))
    days, s = divmod(s, 86400)
    hours, s = divmod(s, 3600)
    minutes, s = divmod(s, 60)
    parts = [(days, "d"), (hours, "h"), (minutes, "m"), (s, "s")]
    while len(parts) > 1 and parts[0][0] == 0:
        parts.pop(0)
    return " ".join(f"{value}{unit}" for value, unit in parts[:2])


def format_cpu(seconds: float) -> str:
    """CPU time: 0.42s, 12.3s under a minute, then as a duration (3m 20s)."""
    if seconds < 60:
        return f"{_three_digits(seconds)}s"
    return format_duration(seconds)


def _host(address: str) -> str:
    """``2001:db8::5/128`` -> ``2001:db8::5``: a single-address mapping reads as an address."""
    for suffix in ("/128", "/32"):
        if address.endswith(suffix):
            return address[: -len(suffix)]
    return address


def _table(header: list[str], rows: list[list[str]], right: set[int]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = []
    for row in [header, *rows]:
        cells = [
            cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
            for i, cell in enumerate(row)
        ]
        lines.append("  ".join(cells).rstrip())
    return lines


def render_status(snap: Snapshot, now: float) -> str:
    """The human status report for one snapshot, as of unix time ``now``."""
    firewall_on = bool(snap.firewall_drops) or snap.firewall_state == "applied"
    header = ["MAPPING", "IPV6", "IPV4", "6TO4 PKTS", "6TO4 BYTES", "4TO6 PKTS", "4TO6 BYTES"]
    if firewall_on:
        header.append("FW DROPS")
    rows = []
    for m in snap.mappings:
        row = [m.name, _host(m.ipv6), _host(m.ipv4)]
        for direction in ("6to4", "4to6"):
            row.append(format_count(snap.packets.get((m.name, direction), 0)))
            row.append(format_bytes(snap.bytes.get((m.name, direction), 0)))
        if firewall_on:
            pkts, nbytes = snap.firewall_drops.get(m.name, (0, 0))
            row.append(f"{format_count(pkts)} ({format_bytes(nbytes)})")
        rows.append(row)
    if snap.prefix or any(key[0] == PREFIX_MAPPING for key in snap.packets):
        # Traffic no mapping owns: clients reaching any IPv4 host through the prefix.
        row = [PREFIX_MAPPING, snap.prefix or "-", "any"]
        for direction in ("6to4", "4to6"):
            row.append(format_count(snap.packets.get((PREFIX_MAPPING, direction), 0)))
            row.append(format_bytes(snap.bytes.get((PREFIX_MAPPING, direction), 0)))
        if firewall_on:
            row.append("-")
        rows.append(row)
    lines = _table(header, rows, right=set(range(3, len(header))))
    if not snap.mappings:
        lines.append("(no mappings configured)")

    lines.append("")
    pct = f" ({100 * snap.pool_in_use / snap.pool_size:.1f}%)" if snap.pool_size else ""
    refused = ", ".join(f"{k} {v}" for k, v in sorted(snap.pool_refused.items()) if v)
    lines.append(
        f"pool4 leases:  {snap.pool_in_use} in use of {snap.pool_size}{pct}; "
        f"{snap.leases_created} created, {snap.leases_expired} expired"
        + (f"; refused: {refused}" if refused else "")
    )
    drops = ", ".join(f"{k} {format_count(v)}" for k, v in sorted(snap.dropped.items()) if v)
    lines.append(f"drops:         {drops or 'none'}")
    icmp_counts = sorted(snap.icmp_errors.items())
    icmp = ", ".join(f"{fam} {kind} {format_count(v)}" for (fam, kind), v in icmp_counts if v)
    if icmp:
        lines.append(f"icmp errors:   {icmp}")
    ok, failed = snap.reloads.get("success", 0), snap.reloads.get("failure", 0)
    if snap.last_reload_timestamp > 0:
        last = f"{format_duration(now - snap.last_reload_timestamp)} ago"
    else:
        last = "never"
    lines.append(f"last reload:   {last} ({ok} succeeded, {failed} failed)")
    firewall = snap.firewall_state
    if snap.firewall_reapplied:
        firewall += f" (found gone and put back {snap.firewall_reapplied}x; see the log)"
    lines.append(f"firewall:      {firewall}")
    if snap.network_problem:
        lines.append(f"network:       problem: {snap.network_problem}")
    if snap.network_restored:
        lines.append(
            f"network:       {snap.network_restored} routes, proxy NDP entries or sysctls were "
            "gone behind the daemon's back and were put back; see the log"
        )
    if snap.prefix_interface:
        n = snap.prefix_changes
        changes = f" (followed {n} change{'s' if n != 1 else ''})" if n else ""
        prefix = snap.published_prefix or "none yet: the ::suffix mappings wait for one"
        lines.append(f"prefix:        {prefix} from {snap.prefix_interface}{changes}")
    lines.append(f"dns:           {snap.dns_state}")
    uptime = format_duration(now - snap.started_timestamp) if snap.started_timestamp else "?"
    lines.append(f"uptime:        {uptime}, {snap.workers} worker(s)")
    for usage in snap.worker_usage:
        lines.append(
            f"{f'worker {usage.index}:':<15}cpu {format_cpu(usage.cpu_seconds)}, "
            f"rss {format_bytes(usage.resident_bytes)}, {usage.open_fds} fds, pid {usage.pid}"
        )

    if snap.leases:
        lines.append("")
        by_idle = sorted(snap.leases, key=lambda lease: (lease[2], lease[0]))
        lease_rows = [[c, a, format_duration(idle)] for c, a, idle in by_idle[:MAX_LEASES_SHOWN]]
        lines += _table(["CLIENT", "POOL4", "IDLE"], lease_rows, right={2})
        if len(by_idle) > MAX_LEASES_SHOWN:
            lines.append(f"... and {len(by_idle) - MAX_LEASES_SHOWN} more")
    return "\n".join(lines) + "\n"


def cmd_status(args: argparse.Namespace) -> int:
    """Print the running daemon's status; 1 when it cannot be reached."""
    cfg = load_config_or_report(args.config, placeholder=True)  # for the socket path
    if cfg is None:
        return 1
    path = cfg.daemon.control_socket
    try:
        reply = request(path, "status")
        snap = Snapshot.from_json(reply)
    except DaemonNotRunning as exc:
        print(
            f"revnat64 status: the daemon is not running ({exc}).\n"
            f"Start it with `systemctl start revnat64` or `revnat64 run -c {args.config}`.",
            file=sys.stderr,
        )
        return 1
    except (ControlError, ValueError) as exc:
        print(f"revnat64 status: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(snap.to_json())
    else:
        sys.stdout.write(render_status(snap, time.time()))
    return 0
