"""A point-in-time copy of everything the daemon counts, for metrics and ``status``.

The data path counts in plain integers (a dict increment per packet, no
prometheus-client call); on a scrape or a ``status`` request the daemon copies
those integers into a :class:`Snapshot`.  Everything that shows the daemon's
state to people or to Prometheus reads a Snapshot and nothing else, so the
exporter, the textfile writer and ``revnat64 status`` can never disagree, and
none of them touches live daemon objects from another thread.

A Snapshot crosses process boundaries twice: from worker processes to the
supervisor (summed with :meth:`Snapshot.merge`) and over the control socket to
``revnat64 status`` (:meth:`Snapshot.to_json` / :meth:`Snapshot.from_json`).
JSON has no tuple keys, so the keyed counters travel as lists of rows.

Client addresses appear only in :attr:`Snapshot.leases`, which ``status``
prints and the exporter never turns into labels (one series per client would
let any scanner blow up Prometheus' memory).

Traffic that no mapping owns (through the RFC 6052 ``translator.prefix``)
is counted under :data:`PREFIX_MAPPING`, a name no config can give a mapping,
so it sits in the same ``packets``/``bytes`` dicts without ever colliding.

The JSON format grows only by optional fields: a reader fills a field the
daemon did not send (``prefix``, ``worker_usage``) with its default, and a
reader ignores fields it does not know, so ``status`` and the daemon may be
one version apart in either direction.  :data:`FORMAT_VERSION` changes only
when a field changes its meaning.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, NamedTuple

__all__ = [
    "DIRECTIONS",
    "FORMAT_VERSION",
    "PREFIX_MAPPING",
    "MappingInfo",
    "Snapshot",
    "WorkerUsage",
]

DIRECTIONS = ("6to4", "4to6")
FORMAT_VERSION = 1
# The mapping name for traffic no mapping owns.  Mapping names match
# ^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$ (publisher.config), so a leading "_" is free.
PREFIX_MAPPING = "_prefix"


class MappingInfo(NamedTuple):
    """What ``status`` shows about one mapping besides its counters.

    A named tuple rather than a dataclass: the daemon holds one per mapping in
    each process, and a tuple is the smallest immutable record (10,000 of them).
    """

    name: str
    ipv6: str
    ipv4: str
    hostname: str = ""


@dataclass(frozen=True)
class WorkerUsage:
    """What one data-plane worker process costs, measured when it is asked for a snapshot.

    prometheus-client's ``process_*`` metrics describe only the supervisor,
    while the workers spend most of the CPU.  ``pid`` is for ``status`` only;
    it is never a metric label (it changes on every restart).
    """

    index: int
    pid: int
    cpu_seconds: float  # user + system, like process_cpu_seconds_total
    resident_bytes: int
    open_fds: int


@dataclass
class Snapshot:
    """Counters and state of the daemon (or of one worker process) at one moment.

    Counters only ever grow while the daemon runs; gauges (``pool_in_use``,
    ``pool_size``, ``workers``) and the state strings describe the present.
    """

    mappings: list[MappingInfo] = field(default_factory=list)
    # (mapping name, "6to4" | "4to6") -> packets translated / bytes of the output packets
    packets: dict[tuple[str, str], int] = field(default_factory=dict)
    bytes: dict[tuple[str, str], int] = field(default_factory=dict)
    # translator drop reason label -> packets
    dropped: dict[str, int] = field(default_factory=dict)
    # ("icmpv6" | "icmpv4", type label) -> ICMP errors the translator generated
    icmp_errors: dict[tuple[str, str], int] = field(default_factory=dict)
    pool_in_use: int = 0
    pool_size: int = 0
    leases_created: int = 0
    leases_expired: int = 0
    # unconfirmed leases handed to another client because the pool was full
    leases_reclaimed_unconfirmed: int = 0
    # "exhausted" | "prefix_limit" -> lease requests refused
    pool_refused: dict[str, int] = field(default_factory=dict)
    # mapping name -> (packets, bytes) from the nftables named counters; {} when disabled
    firewall_drops: dict[str, tuple[int, int]] = field(default_factory=dict)
    # "success" | "failure" -> config (re)loads
    reloads: dict[str, int] = field(default_factory=dict)
    last_reload_timestamp: float = 0.0
    started_timestamp: float = 0.0
    firewall_state: str = "disabled"  # "applied" | "disabled" | "error: ..."
    firewall_reapplied: int = 0  # times the daemon found its rules gone and put them back
    # routes, proxy NDP entries and sysctls the kernel dropped (a link went down, a route was
    # deleted) and the daemon put back
    network_restored: int = 0
    network_problem: str = ""  # what the last repair could not do ("" when all is well)
    # wan.prefix_from: the interface ("" without), the prefix the ::suffix addresses
    # are in ("" while the daemon waits for one), and the reloads that followed a
    # new prefix there
    prefix_interface: str = ""
    published_prefix: str = ""
    prefix_changes: int = 0
    dns_state: str = "disabled"  # "disabled" | "ok <when>" | "error: ..."
    # The background DNS update (dns.update_on_change): its state word ("disabled",
    # "never", "running", "ok", "retrying", "conflict", "error"), the runs that found
    # the server unreachable, and the unix time of the last success (0: never).
    dns_update_state: str = "disabled"
    dns_update_unreachable: int = 0
    dns_last_success_timestamp: float = 0.0
    # (ipv6 client, ipv4 lease, idle seconds): for status only, never a metric label
    leases: list[tuple[str, str, float]] = field(default_factory=list)
    workers: int = 1
    # translator.prefix ("" when none): the traffic counted under PREFIX_MAPPING goes there
    prefix: str = ""
    # one entry per worker process, sorted by index; [] from a part that is not a worker
    worker_usage: list[WorkerUsage] = field(default_factory=list)

    # ------------------------------------------------------------------ JSON

    def to_json(self) -> str:
        """Serialise for the control socket (keys sorted, so equal snapshots give equal text)."""
        doc: dict[str, Any] = {
            "format": FORMAT_VERSION,
            "mappings": [[m.name, m.ipv6, m.ipv4, m.hostname] for m in self.mappings],
            "packets": _pair_rows(self.packets),
            "bytes": _pair_rows(self.bytes),
            "dropped": dict(self.dropped),
            "icmp_errors": _pair_rows(self.icmp_errors),
            "pool_in_use": self.pool_in_use,
            "pool_size": self.pool_size,
            "leases_created": self.leases_created,
            "leases_expired": self.leases_expired,
            "leases_reclaimed_unconfirmed": self.leases_reclaimed_unconfirmed,
            "pool_refused": dict(self.pool_refused),
            "firewall_drops": {k: [p, b] for k, (p, b) in self.firewall_drops.items()},
            "reloads": dict(self.reloads),
            "last_reload_timestamp": self.last_reload_timestamp,
            "started_timestamp": self.started_timestamp,
            "firewall_state": self.firewall_state,
            "firewall_reapplied": self.firewall_reapplied,
            "network_restored": self.network_restored,
            "network_problem": self.network_problem,
            "prefix_interface": self.prefix_interface,
            "published_prefix": self.published_prefix,
            "prefix_changes": self.prefix_changes,
            "dns_state": self.dns_state,
            "dns_update_state": self.dns_update_state,
            "dns_update_unreachable": self.dns_update_unreachable,
            "dns_last_success_timestamp": self.dns_last_success_timestamp,
            "leases": [[c, a, idle] for c, a, idle in self.leases],
            "workers": self.workers,
            "prefix": self.prefix,
            "worker_usage": [
                [u.index, u.pid, u.cpu_seconds, u.resident_bytes, u.open_fds]
                for u in self.worker_usage
            ],
        }
        return json.dumps(doc, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Snapshot:
        """Parse :meth:`to_json` output; a ValueError says which field is wrong."""
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"status reply is not JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise ValueError("status reply is not a JSON object")
        if doc.get("format") != FORMAT_VERSION:
            raise ValueError(
                f"status reply has format {doc.get('format')!r}, this revnat64 reads "
                f"format {FORMAT_VERSION} (is the daemon a different version?)"
            )
        try:
            return cls(
                mappings=[MappingInfo(*map(str, row)) for row in doc["mappings"]],
                packets=_pairs_from_rows(doc["packets"]),
                bytes=_pairs_from_rows(doc["bytes"]),
                dropped=_int_dict(doc["dropped"]),
                icmp_errors=_pairs_from_rows(doc["icmp_errors"]),
                pool_in_use=int(doc["pool_in_use"]),
                pool_size=int(doc["pool_size"]),
                leases_created=int(doc["leases_created"]),
                leases_expired=int(doc["leases_expired"]),
                leases_reclaimed_unconfirmed=int(doc.get("leases_reclaimed_unconfirmed", 0)),
                pool_refused=_int_dict(doc["pool_refused"]),
                firewall_drops={
                    str(k): (int(p), int(b)) for k, (p, b) in doc["firewall_drops"].items()
                },
                reloads=_int_dict(doc["reloads"]),
                last_reload_timestamp=float(doc["last_reload_timestamp"]),
                started_timestamp=float(doc["started_timestamp"]),
                firewall_state=str(doc["firewall_state"]),
                dns_state=str(doc["dns_state"]),
                leases=[(str(c), str(a), float(idle)) for c, a, idle in doc["leases"]],
                workers=int(doc["workers"]),
                # Optional: a daemon one version older does not send them.
                prefix=str(doc.get("prefix", "")),
                firewall_reapplied=int(doc.get("firewall_reapplied", 0)),
                network_restored=int(doc.get("network_restored", 0)),
                network_problem=str(doc.get("network_problem", "")),
                prefix_interface=str(doc.get("prefix_interface", "")),
                published_prefix=str(doc.get("published_prefix", "")),
                prefix_changes=int(doc.get("prefix_changes", 0)),
                dns_update_state=str(doc.get("dns_update_state", "disabled")),
                dns_update_unreachable=int(doc.get("dns_update_unreachable", 0)),
                dns_last_success_timestamp=float(doc.get("dns_last_success_timestamp", 0.0)),
                worker_usage=[
                    WorkerUsage(int(i), int(pid), float(cpu), int(rss), int(fds))
                    for i, pid, cpu, rss, fds in doc.get("worker_usage", [])
                ],
            )
        except KeyError as exc:
            raise ValueError(f"status reply lacks the field {exc.args[0]!r}") from None
        except (TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"status reply has a malformed field: {exc}") from None

    # ----------------------------------------------------------------- merge

    @staticmethod
    def merge(parts: list[Snapshot]) -> Snapshot:
        """Combine the snapshots of several worker processes into the daemon's one.

        The rule, which the daemon's processes must follow:

        * ``parts[0]`` is the supervisor's own snapshot.  It alone owns the
          configuration-level state, which is copied from it: ``mappings``,
          ``firewall_drops`` (read once from nftables: summing would multiply
          them), ``reloads``, both timestamps and both state strings.
        * Counters of the data path are summed over all parts: ``packets``,
          ``bytes``, ``dropped``, ``icmp_errors``, ``leases_created``,
          ``leases_expired``, ``leases_reclaimed_unconfirmed``, ``pool_refused``.
          A part that never saw an event simply reports 0 or leaves the key out.
        * The pool gauges (``pool_in_use``, ``pool_size``) and the lease list
          come from the one part that owns the pool: the first part with
          ``pool_size > 0`` (parts that do not own it report ``pool_size=0``).
        * ``workers`` is the sum of the parts' ``workers``: each part says how
          many translating workers it stands for (a supervisor that does not
          translate reports 0).
        * ``prefix`` is configuration: copied from ``parts[0]``.
        * ``worker_usage`` is kept per worker, never summed: the parts' lists
          are concatenated and sorted by worker index.
        """
        if not parts:
            raise ValueError("Snapshot.merge needs at least one snapshot")
        head = parts[0]
        owner = next((p for p in parts if p.pool_size > 0), head)
        return Snapshot(
            mappings=list(head.mappings),
            packets=_sum_dicts(p.packets for p in parts),
            bytes=_sum_dicts(p.bytes for p in parts),
            dropped=_sum_dicts(p.dropped for p in parts),
            icmp_errors=_sum_dicts(p.icmp_errors for p in parts),
            pool_in_use=owner.pool_in_use,
            pool_size=owner.pool_size,
            leases_created=sum(p.leases_created for p in parts),
            leases_expired=sum(p.leases_expired for p in parts),
            leases_reclaimed_unconfirmed=sum(p.leases_reclaimed_unconfirmed for p in parts),
            pool_refused=_sum_dicts(p.pool_refused for p in parts),
            firewall_drops=dict(head.firewall_drops),
            reloads=dict(head.reloads),
            last_reload_timestamp=head.last_reload_timestamp,
            started_timestamp=head.started_timestamp,
            firewall_state=head.firewall_state,
            firewall_reapplied=head.firewall_reapplied,
            network_restored=head.network_restored,
            network_problem=head.network_problem,
            prefix_interface=head.prefix_interface,
            published_prefix=head.published_prefix,
            prefix_changes=head.prefix_changes,
            dns_state=head.dns_state,
            dns_update_state=head.dns_update_state,
            dns_update_unreachable=head.dns_update_unreachable,
            dns_last_success_timestamp=head.dns_last_success_timestamp,
            leases=list(owner.leases),
            workers=sum(p.workers for p in parts),
            prefix=head.prefix,
            worker_usage=sorted((u for p in parts for u in p.worker_usage), key=lambda u: u.index),
        )


def _pair_rows(counts: dict[tuple[str, str], int]) -> list[list[Any]]:
    return [[a, b, n] for (a, b), n in sorted(counts.items())]


def _pairs_from_rows(rows: Any) -> dict[tuple[str, str], int]:
    return {(str(a), str(b)): int(n) for a, b, n in rows}


def _int_dict(node: Any) -> dict[str, int]:
    return {str(k): int(v) for k, v in node.items()}


def _sum_dicts(dicts: Any) -> dict[Any, int]:
    total: dict[Any, int] = {}
    for d in dicts:
        for key, value in d.items():
            total[key] = total.get(key, 0) + value
    return total
