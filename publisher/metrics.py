"""Prometheus metrics from daemon snapshots: HTTP endpoint and node-exporter textfile.

The packet path never calls prometheus-client.  It counts in plain integers,
and :class:`SnapshotCollector` turns a :class:`~publisher.snapshot.Snapshot`
into metric families only when somebody scrapes (or when the textfile writer
wakes up), so a scrape costs one snapshot and the data path costs one dict
increment per packet.

Names follow the Prometheus conventions: the ``revnat64_`` prefix, base units
(bytes, seconds), ``_total`` on counters, and labels of low cardinality only:
mapping names, directions, drop reasons and ICMP types, all bounded by the
config and the translator's code.  Client addresses never become labels.
Traffic that no mapping owns (through ``translator.prefix``) carries the
reserved ``mapping="_prefix"``, which no configured mapping can be named.

The data plane runs in worker processes, which prometheus-client's
``process_*`` metrics (the supervisor's) do not see; each worker measures
itself when asked for a snapshot, and the ``revnat64_worker_*`` families
export that per worker, labelled by worker index only.

Every series the config implies is emitted from the first scrape on, at 0 if
nothing happened yet (every mapping in both directions, both reload results,
both refusal reasons), because ``rate()`` and ``increase()`` need a sample
before the first event to see that event at all.

Two ways out:

* :func:`start_http_server` serves ``/metrics`` on ``metrics.listen`` from a
  thread, together with the standard ``process_*`` metrics of the daemon's
  main process (memory and CPU are worth watching on a small router).
* :func:`write_textfile` / :class:`TextfileWriter` write the same revnat64
  metrics atomically into a ``.prom`` file for node-exporter's textfile
  collector (OpenWrt's prometheus-node-exporter-lua).  The ``process_*``
  metrics are left out there: node-exporter exports its own ``process_*``
  series and the textfile collector refuses duplicates.
"""

from __future__ import annotations

import gc
import logging
import os
import platform
import socket
import sys
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from socketserver import TCPServer, ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, ProcessCollector, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from publisher import __version__
from publisher.config import split_hostport
from publisher.snapshot import DIRECTIONS, PREFIX_MAPPING, Snapshot

__all__ = [
    "MetricsServer",
    "SnapshotCollector",
    "TextfileWriter",
    "build_registry",
    "parse_listen",
    "render",
    "start_http_server",
    "write_textfile",
]

log = logging.getLogger(__name__)

SnapshotFn = Callable[[], Snapshot]

# Always emitted, so alerts on them work before the first event.
RELOAD_RESULTS = ("success", "failure")
REFUSAL_REASONS = ("exhausted", "prefix_limit")
DNS_UPDATE_STATES = ("never", "running", "ok", "retrying", "conflict", "error")


class SnapshotCollector(Collector):
    """A prometheus-client collector that reads one Snapshot per collection."""

    def __init__(self, snapshot_fn: SnapshotFn) -> None:
        self._snapshot_fn = snapshot_fn

    def collect(self) -> Iterator[Metric]:
        # One snapshot per scrape: every family below describes the same moment.
        snap = self._snapshot_fn()
        yield from _traffic_families(snap)
        yield from _drop_families(snap)
        yield from _pool_families(snap)
        yield from _firewall_families(snap)
        yield from _daemon_families(snap)
        yield from _dns_families(snap)
        yield from _worker_families(snap)


def _mapping_directions(snap: Snapshot) -> list[tuple[str, str]]:
    """Every configured mapping in both directions (and the prefix's, when there is
    one), plus any key the counters carry."""
    names = [m.name for m in snap.mappings] + ([PREFIX_MAPPING] if snap.prefix else [])
    keys = [(name, d) for name in names for d in DIRECTIONS]
    seen = set(keys)
    for key in sorted(set(snap.packets) | set(snap.bytes)):
        if key not in seen:
            keys.append(key)
            seen.add(key)
    return keys


def _traffic_families(snap: Snapshot) -> Iterator[Metric]:
    packets = CounterMetricFamily(
        "revnat64_translated_packets",
        "Packets translated, by mapping and direction (6to4: from IPv6 clients to the "
        "IPv4 device; 4to6: the device's replies). Compare the two directions to see "
        'whether a device answers. mapping="_prefix": traffic no mapping owns (through '
        "translator.prefix).",
        labels=("mapping", "direction"),
    )
    octets = CounterMetricFamily(
        "revnat64_translated_bytes",
        "Bytes of translated packets as written out (after translation), by mapping and direction.",
        labels=("mapping", "direction"),
    )
    for key in _mapping_directions(snap):
        packets.add_metric(key, snap.packets.get(key, 0))
        octets.add_metric(key, snap.bytes.get(key, 0))
    yield packets
    yield octets


def _drop_families(snap: Snapshot) -> Iterator[Metric]:
    dropped = CounterMetricFamily(
        "revnat64_dropped_packets",
        "Packets the translator dropped instead of translating, by the translator's "
        "reason code (e.g. no_mapping: addressed to an IPv6/IPv4 address no mapping "
        "or lease covers).",
        labels=("reason",),
    )
    for reason, count in sorted(snap.dropped.items()):
        dropped.add_metric((reason,), count)
    yield dropped
    icmp = CounterMetricFamily(
        "revnat64_icmp_errors_sent",
        "ICMP errors the translator generated itself (not translated ones), by family "
        "(icmpv4 towards the LAN, icmpv6 towards clients) and type. Rate-limited by "
        "translator.icmp_errors_per_second.",
        labels=("family", "type"),
    )
    for (family, kind), count in sorted(snap.icmp_errors.items()):
        icmp.add_metric((family, kind), count)
    yield icmp


def _pool_families(snap: Snapshot) -> Iterator[Metric]:
    yield GaugeMetricFamily(
        "revnat64_pool_addresses_in_use",
        "pool4 addresses currently leased to IPv6 clients.",
        value=snap.pool_in_use,
    )
    yield GaugeMetricFamily(
        "revnat64_pool_addresses",
        "pool4 addresses available for leases in total (translator.pool4 minus reserved "
        "addresses).",
        value=snap.pool_size,
    )
    yield CounterMetricFamily(
        "revnat64_pool_leases_created",
        "pool4 leases handed to new IPv6 clients.",
        value=snap.leases_created,
    )
    yield CounterMetricFamily(
        "revnat64_pool_leases_expired",
        "pool4 leases released after translator.lease_time seconds idle.",
        value=snap.leases_expired,
    )
    yield CounterMetricFamily(
        "revnat64_pool_unconfirmed_reclaimed",
        "unconfirmed pool4 leases (the client never spoke after the device answered) "
        "handed to a new client because no address was free: the churn of a spoofed flood.",
        value=snap.leases_reclaimed_unconfirmed,
    )
    refused = CounterMetricFamily(
        "revnat64_pool_refused",
        "IPv6 clients refused a pool4 lease (their packets dropped): exhausted = no "
        "free address; prefix_limit = the client's prefix already holds "
        "translator.lease_limit_per_prefix leases.",
        labels=("reason",),
    )
    for reason in _with_fixed(REFUSAL_REASONS, snap.pool_refused):
        refused.add_metric((reason,), snap.pool_refused.get(reason, 0))
    yield refused


def _firewall_families(snap: Snapshot) -> Iterator[Metric]:
    packets = CounterMetricFamily(
        "revnat64_firewall_dropped_packets",
        "Packets to a mapping that the revnat64 firewall dropped (not in the mapping's "
        "allow list or sources), read from nftables named counters. Absent when the "
        "firewall is disabled.",
        labels=("mapping",),
    )
    octets = CounterMetricFamily(
        "revnat64_firewall_dropped_bytes",
        "Bytes of the packets counted in revnat64_firewall_dropped_packets_total.",
        labels=("mapping",),
    )
    reapplied = CounterMetricFamily(
        "revnat64_firewall_reapplied",
        "Times the daemon found its firewall rules gone and applied them again (nftables: "
        "a flush ruleset, e.g. an nftables restart; iptables: a firewall restart that "
        "no hook repaired within 5-10 s). Until then the allow lists were not enforced. "
        "Absent when the firewall is disabled.",
    )
    for name, (pkts, nbytes) in sorted(snap.firewall_drops.items()):
        packets.add_metric((name,), pkts)
        octets.add_metric((name,), nbytes)
    if snap.firewall_state != "disabled":
        reapplied.add_metric((), snap.firewall_reapplied)
    yield packets
    yield octets
    yield reapplied


def _daemon_families(snap: Snapshot) -> Iterator[Metric]:
    reloads = CounterMetricFamily(
        "revnat64_reloads",
        "Config loads and reloads (SIGHUP), by result. A failed reload keeps the "
        "previous config running.",
        labels=("result",),
    )
    for result in _with_fixed(RELOAD_RESULTS, snap.reloads):
        reloads.add_metric((result,), snap.reloads.get(result, 0))
    yield reloads
    yield GaugeMetricFamily(
        "revnat64_last_reload_success_timestamp_seconds",
        "Unix time of the last successful config load or reload.",
        value=snap.last_reload_timestamp,
    )
    yield CounterMetricFamily(
        "revnat64_network_restored",
        "Proxy NDP entries and sysctls the kernel dropped behind the daemon's back (a link "
        "going down flushes its proxy entries; a recreated interface starts with proxy_ndp "
        "0; a TUN set down loses its routes; someone deletes a route of ours) and the "
        "daemon put back. Until then the "
        "affected mapped addresses were not reachable.",
        value=snap.network_restored,
    )
    yield GaugeMetricFamily(
        "revnat64_network_repair_failing",
        "1 while the daemon cannot put back routes, proxy NDP entries or sysctls that went "
        "missing (revnat64 status and the log say what); 0 otherwise.",
        value=1 if snap.network_problem else 0,
    )
    yield GaugeMetricFamily(
        "revnat64_mappings",
        "Mappings (published devices or ranges) in the running config.",
        value=len(snap.mappings),
    )
    yield GaugeMetricFamily(
        "revnat64_workers",
        "Translation worker processes the counters are summed over.",
        value=snap.workers,
    )
    info = GaugeMetricFamily(
        "revnat64_build_info",
        "Always 1; the labels say which revnat64 and which Python run.",
        labels=("version", "python"),
    )
    info.add_metric((__version__, platform.python_version()), 1)
    yield info
    yield GaugeMetricFamily(
        "revnat64_start_time_seconds",
        "Unix time the daemon started.",
        value=snap.started_timestamp,
    )
    if snap.prefix_interface:  # only with wan.prefix_from
        published = GaugeMetricFamily(
            "revnat64_published_prefix_info",
            "Always 1; the labels say which prefix the ::suffix addresses are in now "
            "(wan.prefix_from). No series without wan.prefix_from, or while the daemon "
            "waits for a first prefix.",
            labels=("prefix", "interface"),
        )
        if snap.published_prefix:
            published.add_metric((snap.published_prefix, snap.prefix_interface), 1)
        yield published
        changes = CounterMetricFamily(
            "revnat64_prefix_changes",
            "Reloads that followed a new prefix on wan.prefix_from (ISP renumbering). "
            "No series without wan.prefix_from.",
        )
        changes.add_metric((), snap.prefix_changes)
        yield changes


def _dns_families(snap: Snapshot) -> Iterator[Metric]:
    state = GaugeMetricFamily(
        "revnat64_dns_update_state",
        "The background DNS update (dns.update_on_change): 1 for its current state. "
        "retrying = the server could not be reached and the update runs again later; "
        "conflict and error need a person. No series when DNS updates are off.",
        labels=("state",),
    )
    unreachable = CounterMetricFamily(
        "revnat64_dns_update_unreachable",
        "Background DNS updates that could not reach dns.server (each one is retried later).",
    )
    last = GaugeMetricFamily(
        "revnat64_dns_update_last_success_timestamp_seconds",
        "Unix time of the last background DNS update that succeeded; 0 if none has yet.",
    )
    if snap.dns_update_state != "disabled":
        for name in _with_fixed(DNS_UPDATE_STATES, {snap.dns_update_state: 1}):
            state.add_metric((name,), 1 if name == snap.dns_update_state else 0)
        unreachable.add_metric((), snap.dns_update_unreachable)
        last.add_metric((), snap.dns_last_success_timestamp)
    yield state
    yield unreachable
    yield last


def _worker_families(snap: Snapshot) -> Iterator[Metric]:
    cpu = CounterMetricFamily(
        "revnat64_worker_cpu_seconds",
        "CPU time (user + system) of each translation worker process, by worker index. "
        "process_cpu_seconds_total covers only the supervisor.",
        labels=("worker",),
    )
    rss = GaugeMetricFamily(
        "revnat64_worker_resident_memory_bytes",
        "Resident memory of each translation worker process, by worker index.",
        labels=("worker",),
    )
    fds = GaugeMetricFamily(
        "revnat64_worker_open_fds",
        "Open file descriptors of each translation worker process, by worker index.",
        labels=("worker",),
    )
    for usage in snap.worker_usage:
        label = (str(usage.index),)
        cpu.add_metric(label, usage.cpu_seconds)
        rss.add_metric(label, usage.resident_bytes)
        fds.add_metric(label, usage.open_fds)
    yield cpu
    yield rss
    yield fds


def _with_fixed(fixed: Iterable[str], counts: dict[str, int]) -> list[str]:
    """The fixed labels first, then any other label the daemon reported."""
    labels = list(fixed)
    labels += sorted(k for k in counts if k not in labels)
    return labels


def build_registry(snapshot_fn: SnapshotFn, process: bool = True) -> CollectorRegistry:
    """A registry of its own (never the global one) with the snapshot collector.

    ``process=True`` adds prometheus-client's ProcessCollector (memory, CPU,
    open files of this process: the supervisor, not the workers).
    """
    registry = CollectorRegistry()
    registry.register(SnapshotCollector(snapshot_fn))
    if process:
        ProcessCollector(registry=registry)
    return registry


def render(snapshot_fn: SnapshotFn, process: bool = False) -> bytes:
    """The metrics in the Prometheus text format, as a scrape would see them."""
    return generate_latest(build_registry(snapshot_fn, process=process))


# ---------------------------------------------------------------- HTTP endpoint


def parse_listen(text: str) -> tuple[str, int]:
    """``host:port`` / ``[v6]:port`` as in the config; port 0 (any free port) is for tests."""
    head, sep, port = text.rpartition(":")
    if sep and port == "0":
        host, _ = split_hostport(f"{head}:1")
        return host, 0
    return split_hostport(text)


# A connection that has not sent its request within this long is closed, and at
# most this many are served at once; more are closed at once. Without these an idle
# client held a thread and a file descriptor of the supervisor forever: a few
# hundred of them (anyone on the LAN, with the endpoint opened there) and the
# supervisor could no longer open its config, run nft or answer the control socket.
REQUEST_TIMEOUT = 10.0
MAX_CONNECTIONS = 32


class _QuietHandler(WSGIRequestHandler):
    """No access log on stderr: Prometheus scrapes every few seconds."""

    timeout = REQUEST_TIMEOUT  # StreamRequestHandler puts it on the socket

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    max_connections = MAX_CONNECTIONS

    def server_activate(self) -> None:
        self._slots = threading.BoundedSemaphore(self.max_connections)
        super().server_activate()

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)  # full: this one is closed, not queued
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # An idle connection timing out, or a client going away, is not worth a
        # traceback on stderr (socketserver's default); anything else is.
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host name (socket.getfqdn), which can hang
        # for seconds on a router whose resolver is down; the name is never used.
        TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)
        self.setup_environ()


class MetricsServer:
    """A running metrics endpoint; :meth:`close` stops it and frees the port."""

    def __init__(self, server: WSGIServer, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread
        self.host: str = str(server.server_address[0])
        self.port: int = int(server.server_address[1])

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def collect_after_each_request(app: Any) -> Any:
    """Wrap a WSGI app so that each request ends with a full garbage collection.

    Each scrape, served in a new thread, leaves reference cycles behind, and
    with a large config (10,000 mappings: hundreds of thousands of long-lived
    objects) the interpreter rarely gets round to its oldest generation, so
    the supervisor grew by about 6 MiB over 20 scrapes. Collected after each
    scrape it stays flat (bench/memory.py --only-mappings). One collection per
    scrape, in the HTTP thread; the packet path is in the workers.
    """

    def collecting_app(environ: Any, start_response: Any) -> Any:
        try:
            return app(environ, start_response)
        finally:
            gc.collect()

    return collecting_app


def start_http_server(listen: str, snapshot_fn: SnapshotFn) -> MetricsServer:
    """Serve the metrics on ``listen`` (``host:port``, ``[v6]:port``) from a daemon thread.

    Returns at once; binding errors (address in use, address not on this
    host) raise OSError naming the address.
    """
    host, port = parse_listen(listen)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    server_class = type(
        "RevNat64MetricsServer", (_ThreadingWSGIServer,), {"address_family": family}
    )
    app = collect_after_each_request(make_wsgi_app(build_registry(snapshot_fn, process=True)))
    try:
        server: WSGIServer = make_server(host, port, app, server_class, _QuietHandler)
    except OSError as exc:
        raise OSError(exc.errno, f"cannot serve metrics on {listen}: {exc.strerror}") from exc
    thread = threading.Thread(
        target=server.serve_forever, name=f"metrics-http-{listen}", daemon=True
    )
    thread.start()
    return MetricsServer(server, thread)


# --------------------------------------------------------------------- textfile


def write_textfile(path: str, snapshot_fn: SnapshotFn) -> None:
    """Write the metrics to ``path`` atomically (a reader sees the old or the new file).

    The temporary file lives in the same directory, so ``os.replace`` is a
    rename within one file system, and its name does not end in ``.prom``,
    so the textfile collector never reads it half-written.
    """
    text = render(snapshot_fn, process=False)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".revnat64-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(text)
        os.chmod(tmp, 0o644)  # node-exporter may run as another user
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


class TextfileWriter(threading.Thread):
    """Rewrites the textfile every ``interval`` seconds until :meth:`stop`.

    The first write happens at once.  A failed write (disk full, directory
    gone) is logged and retried on the next tick: metrics must never take the
    daemon down.
    """

    def __init__(self, path: str, interval: float, snapshot_fn: SnapshotFn) -> None:
        super().__init__(name=f"metrics-textfile-{path}", daemon=True)
        self.path = path
        self.interval = interval
        self._snapshot_fn = snapshot_fn
        self._stopping = threading.Event()
        self.writes = 0
        self.failures = 0

    def run(self) -> None:
        while True:
            try:
                write_textfile(self.path, self._snapshot_fn)
                self.writes += 1
            except Exception as exc:
                self.failures += 1
                log.warning("cannot write metrics textfile %s: %s", self.path, exc)
            if self._stopping.wait(self.interval):
                return

    def stop(self) -> None:
        """Stop after the current write; the file keeps the last metrics written."""
        self._stopping.set()
        if self.is_alive():
            self.join(timeout=max(5.0, self.interval))
