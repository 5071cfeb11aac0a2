"""The revnat64 daemon: lifecycle around the translator's data path.

One process, one thread on the packet path.  The main loop polls the TUN fd
and a self-pipe that signal handlers write to (``signal.set_wakeup_fd``), so
SIGHUP and SIGTERM are handled between packet batches, never inside one:

* start: clean up a previous crash, create the TUN, routes, proxy NDP and
  forwarding sysctls, restore pool leases, apply the firewall, start the
  metrics endpoint and control socket, then ``READY=1``;
* SIGHUP: validate the new config completely before touching anything; a
  broken one is logged and the old one keeps serving.  A good one is applied
  as a diff (routes, proxy entries, firewall) and the translator's tables are
  swapped in one assignment, so flows through unchanged mappings continue;
* SIGTERM/SIGINT: save leases, remove everything we created, exit 0.
"""

from __future__ import annotations

import argparse
import logging
import os
import select
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from publisher import sdnotify
from publisher.config import Config, ConfigError, load_config
from publisher.netlink import NetlinkError, NetlinkManager, atomic_write, plan
from translator import DropReason, Pool4, Tables, Translator, TranslatorSettings
from translator.tun import (
    BATCH_LIMIT,
    ICMPV4_ERROR_NAMES,
    ICMPV6_ERROR_NAMES,
    Counters,
    DataPath,
    open_tun,
)

log = logging.getLogger("revnat64")

LEASE_SAVE_INTERVAL = 30.0
LEASE_EXPIRE_INTERVAL = 10.0
DIRECTIONS = ("6to4", "4to6")


class StartupError(RuntimeError):
    """The daemon cannot start; the message says what failed on which object."""


# -- config -> translator -----------------------------------------------------


def translator_settings(cfg: Config) -> TranslatorSettings:
    tr = cfg.translator
    return TranslatorSettings(
        ipv4_address=str(tr.ipv4_address),
        ipv6_address=str(tr.ipv6_address),
        rfc6791_pool4=tuple(str(n) for n in tr.rfc6791_pool4),
        lowest_ipv6_mtu=tr.lowest_ipv6_mtu,
        mtu=tr.mtu,
        udp_zero_checksum=tr.udp_zero_checksum,
        icmp_errors_per_second=tr.icmp_errors_per_second,
    )


def translator_tables(cfg: Config) -> Tables:
    prefix = str(cfg.translator.prefix) if cfg.translator.prefix is not None else None
    return Tables.build(eam=[(str(m.ipv6), str(m.ipv4)) for m in cfg.mappings], prefix=prefix)


def pool_key(cfg: Config) -> tuple[Any, ...]:
    tr = cfg.translator
    return (
        tr.pool4,
        tr.lease_time,
        tr.lease_limit_per_prefix,
        tr.lease_limit_prefix_len,
        tr.ipv4_address,
    )


def new_pool(cfg: Config) -> Pool4:
    tr = cfg.translator
    reserved = tuple(str(a) for a in (tr.ipv4_address,) if a in tr.pool4)
    return Pool4(
        str(tr.pool4),
        lease_time=float(tr.lease_time),
        limit_per_prefix=tr.lease_limit_per_prefix,
        limit_prefix_len=tr.lease_limit_prefix_len,
        reserved=reserved,
    )


# -- logging --------------------------------------------------------------------

_SYSLOG_PRIORITY = {
    logging.DEBUG: 7,
    logging.INFO: 6,
    logging.WARNING: 4,
    logging.ERROR: 3,
    logging.CRITICAL: 2,
}


class JournalFormatter(logging.Formatter):
    """``<6>message`` under journald (it reads the priority prefix), timestamps elsewhere."""

    def __init__(self, journal: bool) -> None:
        super().__init__()
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        if self.journal:
            return f"<{_SYSLOG_PRIORITY.get(record.levelno, 6)}>{text}"
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(record.created))
        return f"{stamp} {record.levelname.lower():7} {text}"


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JournalFormatter(journal=bool(os.environ.get("JOURNAL_STREAM"))))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("pyroute2").setLevel(logging.WARNING)


# -- the daemon -----------------------------------------------------------------


@dataclass
class Totals:
    """Counters that outlive a table generation (mapping indices change on reload)."""

    packets: dict[tuple[str, str], int] = field(default_factory=dict)
    bytes: dict[tuple[str, str], int] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)
    icmp_errors: dict[tuple[str, int], int] = field(default_factory=dict)

    def absorb(self, names: list[str], c: Counters) -> None:
        for d, direction in enumerate(DIRECTIONS):
            for i, name in enumerate(names):
                key = (name, direction)
                self.packets[key] = self.packets.get(key, 0) + c.packets[d][i]
                self.bytes[key] = self.bytes.get(key, 0) + c.bytes[d][i]
        for reason in DropReason:
            if c.dropped[reason]:
                self.dropped[reason.label] = self.dropped.get(reason.label, 0) + c.dropped[reason]
        for icmp_key, value in c.icmp_errors.items():
            self.icmp_errors[icmp_key] = self.icmp_errors.get(icmp_key, 0) + value


class SnapshotBroker:
    """Lets other threads ask for a snapshot that the main loop builds.

    Daemon state (counters, the pool, the tables) is only ever touched by the
    main thread, so the metrics and control threads never see a half-swapped
    reload or a dict changing size under them.  They queue a request and poke
    a pipe the main loop polls; the loop answers between packet batches.
    """

    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.lock = threading.Lock()
        self.pending: list[tuple[threading.Event, list[Any]]] = []

    def request(self, timeout: float = 5.0) -> Any:
        event, box = threading.Event(), []  # type: ignore[var-annotated]
        with self.lock:
            self.pending.append((event, box))
        try:
            os.write(self.write_fd, b"s")
        except BlockingIOError:
            pass
        if not event.wait(timeout):
            raise TimeoutError("the daemon's main loop did not answer in time")
        return box[0]

    def serve(self, build: Any) -> None:
        try:
            while os.read(self.read_fd, 512):
                pass
        except BlockingIOError:
            pass
        with self.lock:
            pending, self.pending = self.pending, []
        if not pending:
            return
        result = build()
        for event, box in pending:
            box.append(result)
            event.set()

    def close(self) -> None:
        os.close(self.read_fd)
        os.close(self.write_fd)


class Daemon:
    def __init__(self, config_path: str, log_level: str | None = None) -> None:
        self.config_path = config_path
        self.log_level_override = log_level
        self.cfg: Config
        self.fd = -1
        self.netlink: NetlinkManager | None = None
        self.translator: Translator
        self.pool: Pool4
        self.counters: Counters
        self.datapath: DataPath
        self.totals = Totals()
        self.stopping = False
        self.reload_requested = False
        self.reloads = {"success": 0, "failure": 0}
        self.last_reload = 0.0
        self.started = time.time()
        self.firewall: Any = None
        self.firewall_state = "disabled"
        self.services: list[Any] = []  # things with .close()/.stop() on shutdown
        self.broker = SnapshotBroker()

    # -- lifecycle ------------------------------------------------------------

    def start(self) -> None:
        cfg = load_config(self.config_path)  # ConfigError propagates to the CLI
        setup_logging(self.log_level_override or cfg.daemon.log_level)
        try:
            settings, tables = translator_settings(cfg), translator_tables(cfg)
        except ValueError as exc:
            raise StartupError(f"{cfg.path}: mappings: {exc}") from exc
        self.cfg = cfg
        state_dir = Path(cfg.daemon.state_dir)
        state_dir.mkdir(parents=True, exist_ok=True)

        self.netlink = NetlinkManager(cfg.translator.tun_device, state_dir / "netstate.json")
        for line in self.netlink.recover_leftovers():
            log.warning("crash recovery: %s", line)
        try:
            self.fd = open_tun(cfg.translator.tun_device)
        except OSError as exc:
            raise StartupError(f"creating TUN device {cfg.translator.tun_device}: {exc}") from exc
        self.netlink.bring_up_tun(cfg.translator.mtu)
        self._apply_network(cfg)

        self.pool = new_pool(cfg)
        self._restore_leases()
        self.translator = Translator(settings, tables, self.pool)
        self.counters = Counters(len(cfg.mappings))
        self.datapath = DataPath(self.fd, self.translator, self.counters)
        self._apply_firewall(cfg)
        self.last_reload = time.time()
        self._start_services(cfg)
        self._maybe_update_dns(cfg)
        log.info(
            "revnat64 started: %d mappings on %s, pool4 %s",
            len(cfg.mappings),
            cfg.translator.tun_device,
            cfg.translator.pool4,
        )

    def _apply_network(self, cfg: Config) -> None:
        assert self.netlink is not None
        desired = plan(cfg, self.netlink.onlink_prefixes())
        for warning in desired.warnings:
            log.warning("%s", warning)
        for change in self.netlink.apply(desired):
            log.info("netlink: %s", change)

    def _apply_firewall(self, cfg: Config) -> None:
        """Hook for the firewall backend; a no-op when it is disabled."""
        if not cfg.firewall.enabled:
            self.firewall_state = "disabled"
            return
        try:
            from publisher.firewall import backend_for
        except ImportError:
            self.firewall_state = "unavailable"
            log.error("firewall.enabled is true but no firewall backend is installed")
            return
        self.firewall = backend_for(cfg)
        self.firewall.apply()
        self.firewall_state = "applied"
        log.info("firewall: %s rules applied", cfg.firewall.backend)

    # -- observability ----------------------------------------------------------

    def _start_services(self, cfg: Config) -> None:
        """Control socket, metrics endpoint and textfile writer (threads, off the packet path)."""
        from publisher.control import ControlServer

        self.services.append(
            ControlServer(cfg.daemon.control_socket, {"status": lambda: self.export().to_json()})
        )
        if cfg.metrics.listen:
            from publisher.metrics import start_http_server

            server = start_http_server(cfg.metrics.listen, self.export)
            self.services.append(server)
            log.info("metrics on %s", server.url)
        if cfg.metrics.textfile:
            from publisher.metrics import TextfileWriter

            writer = TextfileWriter(
                cfg.metrics.textfile, float(cfg.metrics.textfile_interval), self.export
            )
            writer.start()
            self.services.append(writer)

    def _maybe_update_dns(self, cfg: Config) -> None:
        if cfg.dns.update_on_change and cfg.dns.server:
            from publisher.dns_update import start_background_update

            start_background_update(cfg, logging.getLogger("revnat64.dns"))

    def export(self) -> Any:
        """A Snapshot for exporters; runs in their thread, the counters come from the loop."""
        snap = self.broker.request()
        firewall = self.firewall
        if firewall is not None:
            try:
                snap.firewall_drops = firewall.drop_counters()
            except Exception as exc:  # a failing nft must not break the scrape
                snap.firewall_state = f"error: reading counters: {exc}"
        if self.cfg.dns.update_on_change and self.cfg.dns.server:
            from publisher.dns_update import dns_update_status

            st = dns_update_status()
            when = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(st.finished_at or 0))
            snap.dns_state = f"{st.state} {when}: {st.message}".strip()
        return snap

    def snapshot(self) -> Any:
        """Build a Snapshot of live state; main thread only (via the broker)."""
        from publisher.snapshot import MappingInfo, Snapshot

        now = time.monotonic()
        names = [m.name for m in self.cfg.mappings]
        totals = Totals(
            dict(self.totals.packets),
            dict(self.totals.bytes),
            dict(self.totals.dropped),
            dict(self.totals.icmp_errors),
        )
        totals.absorb(names, self.counters)
        for name in names:
            for direction in DIRECTIONS:
                totals.packets.setdefault((name, direction), 0)
                totals.bytes.setdefault((name, direction), 0)
        dropped = {
            reason.label: totals.dropped.get(reason.label, 0)
            for reason in DropReason
            if reason.label != "none"
        }
        icmp_errors: dict[tuple[str, str], int] = {}
        for (family, icmp_type), count in totals.icmp_errors.items():
            table = ICMPV6_ERROR_NAMES if family == "icmpv6" else ICMPV4_ERROR_NAMES
            key = (family, table.get(icmp_type, f"type_{icmp_type}"))
            icmp_errors[key] = icmp_errors.get(key, 0) + count
        pool = self.pool
        return Snapshot(
            mappings=[
                MappingInfo(m.name, str(m.ipv6), str(m.ipv4), m.hostname) for m in self.cfg.mappings
            ],
            packets=totals.packets,
            bytes=totals.bytes,
            dropped=dropped,
            icmp_errors=icmp_errors,
            pool_in_use=pool.in_use,
            pool_size=pool.size,
            leases_created=pool.created,
            leases_expired=pool.expired,
            pool_refused={"exhausted": pool.refused_exhausted, "prefix_limit": pool.refused_limit},
            reloads=dict(self.reloads),
            last_reload_timestamp=self.last_reload,
            started_timestamp=self.started,
            firewall_state=self.firewall_state,
            dns_state="disabled",
            leases=[(v6, v4, max(0.0, now - seen)) for v6, v4, seen in pool.leases()],
            workers=1,
        )

    def _restore_leases(self) -> None:
        path = self.cfg.lease_file
        try:
            text = path.read_text()
        except FileNotFoundError:
            return
        except OSError as exc:
            log.warning("cannot read leases %s: %s", path, exc)
            return
        kept = self.pool.restore(text, time.monotonic())
        log.info("restored %d pool4 leases from %s", kept, path)

    def save_leases(self) -> None:
        try:
            atomic_write(self.cfg.lease_file, self.pool.dump(time.monotonic()))
        except OSError as exc:
            log.warning("cannot save leases to %s: %s", self.cfg.lease_file, exc)

    def status_line(self) -> str:
        return (
            f"STATUS={len(self.cfg.mappings)} mappings, "
            f"{self.pool.in_use}/{self.pool.size} pool4 leases"
        )

    def run(self) -> int:
        wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        signal.signal(signal.SIGHUP, self._on_hup)
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        poller = select.poll()
        poller.register(self.fd, select.POLLIN)
        poller.register(wake_r, select.POLLIN)
        poller.register(self.broker.read_fd, select.POLLIN)
        sdnotify.notify("READY=1", self.status_line())
        next_expire = time.monotonic() + LEASE_EXPIRE_INTERVAL
        next_save = time.monotonic() + LEASE_SAVE_INTERVAL
        saved_mark, last_save = (self.pool.created, self.pool.expired), 0.0
        try:
            while not self.stopping:
                try:
                    poller.poll(
                        250 if (self.pool.created, self.pool.expired) != saved_mark else 1000
                    )
                except InterruptedError:
                    pass
                now = time.monotonic()
                while self.datapath.run_batch(now) == BATCH_LIMIT and not self.stopping:
                    if self.reload_requested:
                        break
                    if self.broker.pending:
                        self.broker.serve(self.snapshot)
                    now = time.monotonic()
                self.broker.serve(self.snapshot)
                try:
                    while os.read(wake_r, 512):
                        pass
                except BlockingIOError:
                    pass
                if self.reload_requested:
                    self.reload_requested = False
                    self.reload()
                if now >= next_expire:
                    self.pool.expire(now)
                    next_expire = now + LEASE_EXPIRE_INTERVAL
                # New leases are saved within a second, so even SIGKILL keeps them;
                # otherwise a periodic save records last-seen times.
                mark = (self.pool.created, self.pool.expired)
                if now >= next_save or (mark != saved_mark and now >= last_save + 1.0):
                    self.save_leases()
                    saved_mark, last_save = mark, now
                    next_save = now + LEASE_SAVE_INTERVAL
        finally:
            signal.set_wakeup_fd(-1)
            os.close(wake_r)
            os.close(wake_w)
        return 0

    def _on_hup(self, signum: int, frame: Any) -> None:
        self.reload_requested = True

    def _on_stop(self, signum: int, frame: Any) -> None:
        self.stopping = True

    # -- reload -----------------------------------------------------------------

    def reload(self) -> bool:
        """Apply a new config, or keep the old one when the new one is not usable."""
        sdnotify.reloading()
        log.info("reloading %s", self.config_path)
        ok = False
        try:
            ok = self._reload()
        finally:
            self.reloads["success" if ok else "failure"] += 1
            sdnotify.notify("READY=1", self.status_line())
        return ok

    def _reload(self) -> bool:
        old = self.cfg
        try:
            new = load_config(self.config_path)
            settings, tables = translator_settings(new), translator_tables(new)
        except ConfigError as exc:
            for problem in exc.problems:
                log.error("reload rejected: %s", problem)
            log.error("keeping the previous configuration")
            return False
        except ValueError as exc:
            log.error(
                "reload rejected: %s: mappings: %s; keeping the previous configuration",
                self.config_path,
                exc,
            )
            return False
        if new.translator.tun_device != old.translator.tun_device:
            log.error(
                "reload rejected: translator.tun_device changed (%s -> %s); "
                "that needs a restart; keeping the previous configuration",
                old.translator.tun_device,
                new.translator.tun_device,
            )
            return False
        try:
            if new.translator.mtu != old.translator.mtu and self.netlink is not None:
                self.netlink.bring_up_tun(new.translator.mtu)
            self._apply_network(new)
            if new.firewall.enabled or old.firewall.enabled:
                self._reload_firewall(old, new)
        except (NetlinkError, RuntimeError, OSError) as exc:
            log.error("reload failed while applying: %s; restoring the previous state", exc)
            try:
                self._apply_network(old)
                if old.firewall.enabled:
                    self._apply_firewall(old)
            except Exception as undo_exc:
                log.error("could not fully restore the previous state: %s", undo_exc)
            return False

        # Fold the old generation's counters in under the old names, then swap.
        self.totals.absorb([m.name for m in old.mappings], self.counters)
        self.counters = Counters(len(new.mappings))
        self.datapath.counters = self.counters
        if pool_key(new) != pool_key(old):
            pool = new_pool(new)
            kept = pool.restore(self.pool.dump(time.monotonic()), time.monotonic())
            log.info("pool4 settings changed: kept %d leases that still fit", kept)
            self.pool = pool
        if pool_key(new) != pool_key(old) or settings != self.translator.settings:
            self.translator = Translator(settings, tables, self.pool)
            self.datapath.translator = self.translator
        else:
            self.translator.tables = tables
        self.cfg = new
        self.last_reload = time.time()
        log.info("reloaded: %d mappings", len(new.mappings))
        self._maybe_update_dns(new)
        return True

    def _reload_firewall(self, old: Config, new: Config) -> None:
        if not new.firewall.enabled:
            if self.firewall is not None:
                self.firewall.remove()
                self.firewall = None
            self.firewall_state = "disabled"
            return
        if self.firewall is not None and old.firewall.backend != new.firewall.backend:
            self.firewall.remove()
        self._apply_firewall(new)

    # -- stop -------------------------------------------------------------------

    def stop(self) -> None:
        """Remove everything we created; each step runs even if an earlier one failed."""
        sdnotify.notify("STOPPING=1")
        for service in self.services:
            try:
                (getattr(service, "close", None) or service.stop)()
            except Exception as exc:
                log.warning("stopping %r: %s", service, exc)
        self.services.clear()
        if hasattr(self, "pool") and hasattr(self, "cfg"):
            self.save_leases()
        if self.firewall is not None:
            try:
                self.firewall.remove()
            except Exception as exc:
                log.error("removing firewall rules: %s", exc)
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self.netlink is not None:
            try:
                self.netlink.teardown()
            except Exception as exc:
                log.error("removing routes and proxy entries: %s", exc)
        log.info("revnat64 stopped")


def cmd_run(args: argparse.Namespace) -> int:
    daemon = Daemon(args.config, args.log_level)
    try:
        daemon.start()
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        daemon.stop()
        return 1
    except (StartupError, NetlinkError, OSError, RuntimeError) as exc:
        log.error("cannot start: %s", exc)
        daemon.stop()
        return 1
    try:
        return daemon.run()
    finally:
        daemon.stop()
