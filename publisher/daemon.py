"""The revnat64 daemon: the supervisor around the data-plane worker.

Two kinds of process.  The supervisor (this module) owns everything slow or
threaded: config, netlink, the firewall, DNS updates, the metrics endpoint
and the control socket.  It creates the TUN device and forks single-threaded
workers (``publisher.worker``) that own the packet path and the pool leases:
one with a plain TUN (``translator.workers: 1``), or N, each serving one queue
of a multi-queue TUN and sharing one lease table in a memfd
(``translator.workers: N``; see docs/performance.md).  The status and metrics
combine the workers' snapshots with :meth:`Snapshot.merge`.

* start: clean up a previous crash, create the TUN, routes, proxy NDP and
  forwarding sysctls, start the worker (it restores the leases), apply the
  firewall, start the metrics endpoint and control socket, then ``READY=1``;
* SIGHUP: validate the new config completely before touching anything; a
  broken one is logged and the old one keeps serving.  A good one is applied
  as a diff (routes, proxy entries, firewall) and the worker swaps its tables
  in one assignment, so flows through unchanged mappings continue;
* SIGTERM/SIGINT: the worker saves its leases and exits, then the supervisor
  removes everything it created and exits 0;
* a worker that dies is a fatal error: the supervisor cleans up and exits
  non-zero, so systemd's ``Restart=on-failure`` (or procd's respawn) starts
  everything afresh, leases included.
"""

from __future__ import annotations

import argparse
import errno
import fcntl
import logging
import os
import select
import signal
import sys
import time
from ipaddress import IPv6Network
from pathlib import Path
from typing import Any

from publisher import sdnotify
from publisher.config import SAFE_LOADER, Config, ConfigError, load_config_compact
from publisher.firewall_nft import TABLE
from publisher.logs import setup_logging
from publisher.netlink import (
    RTPROT_REVNAT64,
    NetlinkError,
    NetlinkManager,
    Sysctls,
    atomic_write,
    plan,
)
from publisher.nlevents import NetlinkEvents, TableEvents
from publisher.prefix import PLACEHOLDER, PREFIX_STATE_FILE, read_prefix, remembered_text
from publisher.snapshot import Snapshot
from publisher.worker import (
    Plane,
    SharedTable,
    WorkerHandle,
    pack_tables,
    pin_mmap_threshold,
    plane_from_config,
    trim_memory,
)
from translator.offload import TUN_F_USO4
from translator.tun import describe_offloads, open_tun

log = logging.getLogger("revnat64")
NETLINK_DETAIL_LINES = 32
NETWORK_REPAIR_INTERVAL = 60.0  # the look at routes, proxy entries, sysctls between events
FOLLOW_SPACING = 1.0  # at least this long between two follows of link/address events
LOCK_FILE = "daemon.lock"  # in daemon.state_dir: one daemon per state directory
PREFIX_CHECK_INTERVAL = 5.0  # the periodic look at wan.prefix_from, should a notification be lost


def tun_open_hint(err: int | None, queues: int, failed: int = 0) -> str:
    """What a TUNSETIFF refusal of queue ``failed`` (of ``queues``) usually means.

    Kernels before 3.8 (Merlin's 2.6.36 builds) ignore IFF_MULTI_QUEUE: queue 0
    makes a single-queue device and queue 1 is refused as busy. A device of the
    same name is refused earlier, by recover_leftovers.
    """
    if queues > 1 and (err == errno.EINVAL or (err == errno.EBUSY and failed > 0)):
        return "; several queues need Linux 3.8 or later (else set translator.workers: 1)"
    if err == errno.EBUSY:
        return "; another program took the device name meanwhile"
    return ""


class StartupError(RuntimeError):
    """The daemon cannot start; the message says what failed on which object."""


def validated_plane(cfg: Config) -> tuple[Plane, bytes]:
    """The data-plane view of ``cfg`` and its tables, pickled; ValueError when they
    cannot be built.

    The tables are built here, once, and sent to the workers ready-made: a bad
    table never reaches a worker, and the workers never parse addresses (whose
    short-lived objects would leave their heaps fragmented).  The supervisor
    keeps them only as one pickled blob until the workers have them: a single
    allocation that goes back to the OS whole, where 10,000 mappings' worth of
    small objects would leave holes between the netlink state built meanwhile.
    """
    plane = plane_from_config(cfg)
    return plane, pack_tables(plane.tables())


MAX_WORKERS = 64  # as publisher.config validates translator.workers


def peek_workers(path: str) -> int:
    """``translator.workers`` from the config file, read as a YAML event stream.

    The workers are forked before the config is loaded (so they do not carry
    its objects); this finds their number without building the mappings.
    Anything unreadable counts as 1: the real load reports the problem.
    """
    import yaml

    try:
        with open(path, "rb") as stream:
            depth, key, in_translator = 0, None, False
            expect_key = False
            for event in yaml.parse(stream, Loader=SAFE_LOADER):
                if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
                    if (
                        depth == 1
                        and key == "translator"
                        and isinstance(event, yaml.MappingStartEvent)
                    ):
                        in_translator = True
                    depth += 1
                    expect_key = isinstance(event, yaml.MappingStartEvent)
                    key = None
                    continue
                if isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
                    depth -= 1
                    if in_translator and depth == 1:
                        return 1
                    expect_key = True
                    key = None
                    continue
                if isinstance(event, yaml.ScalarEvent):
                    if expect_key:
                        key = event.value
                        expect_key = False
                    else:
                        if in_translator and depth == 2 and key == "workers":
                            count = int(event.value)
                            return count if 1 <= count <= MAX_WORKERS else 1
                        expect_key = True
                        key = None
    except (OSError, yaml.YAMLError, ValueError):
        return 1
    return 1


# -- the daemon -----------------------------------------------------------------


class Daemon:
    def __init__(self, config_path: str, log_level: str | None = None) -> None:
        self.config_path = config_path
        self.log_level_override = log_level
        self.cfg: Config
        self.plane: Plane
        self.fds: list[int] = []
        self.table_fd = -1
        self.lock_fd = -1  # the state directory's lock, held until stop() is done
        self.tun_ours = False  # set once our first queue is open
        self.offloads = 0
        self.netlink: NetlinkManager | None = None
        self.workers: list[WorkerHandle] = []
        self.stopping = False
        self.reload_requested = False
        self.reloads = {"success": 0, "failure": 0}
        self.last_reload = 0.0
        self.started = time.time()
        self.firewall: Any = None
        self.firewall_state = "disabled"
        self.firewall_reapplied = 0  # times the table was gone and put back
        self.firewall_missing = 0  # checks in a row that found the rules gone
        self.prefix_changes = 0  # reloads that followed a new prefix on wan.prefix_from
        self.prefix_tried: IPv6Network | None = None  # a new prefix whose reload failed
        self.prefix_gone = False  # wan.prefix_from has no prefix (logged once)
        self.events: NetlinkEvents | None = None  # wakes run() on link and address changes
        self.table_events: TableEvents | None = None  # wakes it when our nft table is deleted
        self.table_events_failed = False
        self.network_restored = 0  # routes, proxy entries and sysctls found gone and put back
        self.network_problem = ""  # the last repair failure (logged once)
        # (config, on-link prefixes, the plan's sysctls): replanned only when the first two move
        self.planned: tuple[Config, list[tuple[IPv6Network, str]], Sysctls] | None = None
        self.services: list[Any] = []  # things with .close()/.stop() on shutdown

    # -- lifecycle ------------------------------------------------------------

    def start(self) -> None:
        pin_mmap_threshold()
        # Fork the data-plane workers first, while this process is still small.
        for _ in range(peek_workers(self.config_path)):
            self.workers.append(WorkerHandle())
        self.catch_signals()
        # Without a prefix yet, start anyway: the IPv4 side and the mappings written
        # in full serve, and the ::suffix ones follow once _check_prefix sees one.
        cfg = load_config_compact(self.config_path, placeholder=True)  # ConfigError: CLI
        setup_logging(self.log_level_override or cfg.daemon.log_level)
        if cfg.waiting_for_prefix:
            log.warning(
                "%s has no global IPv6 prefix yet; the ::suffix mappings are published "
                "once it has one",
                cfg.wan.prefix_from,
            )
            self.prefix_gone = True  # said once
        try:
            self.plane, tables = validated_plane(cfg)
        except ValueError as exc:
            raise StartupError(f"{cfg.path}: mappings: {exc}") from exc
        self.cfg = cfg
        count = cfg.translator.workers
        if count != len(self.workers):
            raise StartupError(
                f"{cfg.path}: translator.workers changed while starting "
                f"({len(self.workers)} -> {count}); start again"
            )
        state_dir = Path(cfg.daemon.state_dir)
        state_dir.mkdir(parents=True, exist_ok=True)
        self._lock_state_dir(state_dir)

        self.netlink = NetlinkManager(cfg.translator.tun_device, state_dir / "netstate.json")
        try:
            recovered = self.netlink.recover_leftovers()
        except NetlinkError:
            # Someone else's interface has the TUN's name and nothing was changed:
            # stop() must not tear down either (that would remove the state file a
            # crashed run of ours may have left).
            self.netlink.close()
            self.netlink = None
            raise
        for line in recovered:
            log.warning("crash recovery: %s", line)
        self._open_queues(cfg.translator.tun_device, count, cfg.translator.offloads)
        if cfg.translator.offloads:
            log.info("TUN offloads: %s", describe_offloads(self.offloads))
        if cfg.translator.udp_gro_forwarding and not self.offloads & TUN_F_USO4:
            log.warning(
                "translator.udp_gro_forwarding is on but the TUN has no USO (offloads %s): "
                "the kernel cuts UDP super-packets up again before the translator sees them",
                describe_offloads(self.offloads),
            )
        self.netlink.bring_up_tun(cfg.translator.mtu)
        self._apply_network(cfg)
        if count > 1:
            self.table_fd = SharedTable.create(self.plane.pool4)
        level = logging.getLogger().level
        # One after the other: worker 0 restores the leases before the others serve.
        for index, (worker, fd) in enumerate(zip(self.workers, self.fds)):
            worker.start(fd, self.offloads, self.plane, tables, level, index, self.table_fd)
        # The workers own them now; the device lives while a queue is open there.
        self._close_fds()
        del tables
        trim_memory()
        self._apply_firewall(cfg)
        self.last_reload = time.time()
        self._remember_prefix(cfg)
        self._start_services(cfg)
        self._maybe_update_dns(cfg)
        log.info(
            "revnat64 started: %d mappings on %s, pool4 %s",
            len(cfg.mappings),
            cfg.translator.tun_device,
            cfg.translator.pool4,
        )

    def _lock_state_dir(self, state_dir: Path) -> None:
        """One daemon per state directory, before anything is touched.

        Without it a second ``revnat64 run`` took the first one's state file for
        a crash's leftovers, undid its routes and deleted its TUN, and only then
        found the control socket taken. The lock is an flock, so a killed
        daemon's lock goes with it; the workers, forked earlier, do not hold it.
        """
        path = state_dir / LOCK_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise StartupError(
                f"another revnat64 is running with state directory {state_dir} "
                f"(pid {holder}, lock {path}); stop it first"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.lock_fd = fd

    def _open_queues(self, name: str, count: int, offloads: bool) -> None:
        """One plain TUN fd for one worker, or ``count`` queues of a multi-queue TUN.

        Every queue must be opened with the same flags, so the later queues ask
        for a virtio-net header only if the first one kept it.
        """
        try:
            if count == 1:
                fd, self.offloads = open_tun(name, offloads=offloads)
                self.fds.append(fd)
                return
            fd, self.offloads = open_tun(name, multi_queue=True, offloads=offloads)
            self.fds.append(fd)
            for queue in range(1, count):
                fd, mask = open_tun(name, multi_queue=True, offloads=bool(self.offloads))
                self.fds.append(fd)
                if mask != self.offloads:
                    raise OSError(
                        f"queue {queue} got offloads {describe_offloads(mask)}, "
                        f"queue 0 has {describe_offloads(self.offloads)}"
                    )
        except OSError as exc:
            raise StartupError(
                f"creating TUN device {name} with {count} queue(s): {exc}"
                f"{tun_open_hint(exc.errno, count, len(self.fds))}"
            ) from exc
        finally:
            # Only a device we opened is ours to delete at stop (not one that
            # another program created between recover_leftovers and here).
            self.tun_ours = bool(self.fds)

    def _close_fds(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds.clear()
        if self.table_fd >= 0:
            os.close(self.table_fd)
            self.table_fd = -1

    def _apply_network(self, cfg: Config) -> None:
        """Routes, proxy NDP and sysctls for ``cfg`` (start and reload; raises on failure)."""
        assert self.netlink is not None
        if self.netlink.link_index(cfg.wan.interface) is None:
            log.warning(
                "wan.interface %s does not exist (yet): what it needs (proxy NDP, "
                "features) follows when it appears",
                cfg.wan.interface,
            )
        onlink = self.netlink.onlink_prefixes()
        desired = plan(cfg, onlink)
        for warning in desired.warnings:
            log.warning("%s", warning)
        self._log_network_changes(self.netlink.apply(desired))
        self.planned = (cfg, onlink, desired.sysctls)
        # apply() compares with what it recorded; a reload must also mend what the
        # kernel dropped since (a WAN link flap flushes proxy entries).
        self._mend_network(desired.sysctls)

    def _log_network_changes(self, changes: list[str]) -> None:
        # A few changes are worth a line each; ten thousand routes are worth one line.
        detail = log.info if len(changes) <= NETLINK_DETAIL_LINES else log.debug
        for change in changes:
            detail("netlink: %s", change)
        if len(changes) > NETLINK_DETAIL_LINES:
            log.info("netlink: %d changes (details at log level debug)", len(changes))

    def _apply_firewall(self, cfg: Config) -> None:
        """Apply the firewall backend's ruleset; a no-op when it is disabled."""
        if not cfg.firewall.enabled:
            self.firewall_state = "disabled"
            return
        from publisher.firewall import backend_for

        self.firewall = backend_for(cfg)
        self.firewall.apply()
        self.firewall_state = "applied"
        log.info("firewall: %s rules applied", cfg.firewall.backend)

    # -- observability ----------------------------------------------------------

    def _start_services(self, cfg: Config) -> None:
        """Control socket, metrics endpoint and textfile writer: threads of the supervisor."""
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
        from publisher.dns_update import cancel_background_update, start_background_update

        if cfg.waiting_for_prefix:
            cancel_background_update()  # never publish the placeholder's addresses
            if cfg.dns.update_on_change and cfg.dns.server:
                log.info("dns: the update waits for a prefix on %s", cfg.wan.prefix_from)
        elif cfg.dns.update_on_change and cfg.dns.server:
            start_background_update(cfg, logging.getLogger("revnat64.dns"))
        else:
            cancel_background_update()  # a reload turned updates off: no retries of the old

    def export(self) -> Any:
        """A Snapshot for the exporters: the workers' counters plus the supervisor's state."""
        parts = [worker.call("snapshot") for worker in self.workers]
        head = Snapshot(
            mappings=list(self.plane.mappings), workers=0, prefix=self.plane.prefix or ""
        )
        snap = Snapshot.merge([head, *parts])
        snap.reloads = dict(self.reloads)
        snap.last_reload_timestamp = self.last_reload
        snap.started_timestamp = self.started
        snap.firewall_state = self.firewall_state
        snap.firewall_reapplied = self.firewall_reapplied
        snap.network_restored = self.network_restored
        snap.network_problem = self.network_problem
        snap.prefix_changes = self.prefix_changes
        if self.cfg.wan.prefix_from:
            snap.prefix_interface = self.cfg.wan.prefix_from
            snap.published_prefix = "" if self.cfg.waiting_for_prefix else str(self.cfg.wan.prefix)
        firewall = self.firewall
        if firewall is not None:
            try:
                snap.firewall_drops = firewall.drop_counters()
            except Exception as exc:  # a failing nft must not break the scrape
                snap.firewall_state = f"error: reading counters: {exc}"
        cfg = self.cfg
        if cfg.dns.update_on_change and cfg.dns.server:
            from publisher.dns_update import dns_update_status

            st = dns_update_status()
            if st.finished_at:
                when = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(st.finished_at))
                snap.dns_state = f"{st.state} {when}: {st.message}".strip()
            else:  # the first update is still under way (no 1970 timestamp)
                snap.dns_state = f"{st.state}: {st.message}".strip(": ")
            snap.dns_update_state = st.state
            snap.dns_update_unreachable = st.unreachable
            snap.dns_last_success_timestamp = st.last_success or 0.0
        return snap

    def status_line(self) -> str:
        line = f"STATUS={len(self.cfg.mappings)} mappings on {self.cfg.translator.tun_device}"
        if self.cfg.waiting_for_prefix:
            line += f", waiting for a prefix on {self.cfg.wan.prefix_from}"
        elif self.cfg.wan.prefix_from:
            line += f", prefix {self.cfg.wan.prefix} from {self.cfg.wan.prefix_from}"
        return line

    # -- main loop ----------------------------------------------------------------

    def catch_signals(self) -> None:
        """SIGHUP asks for a reload, SIGTERM/SIGINT for a clean stop.

        Installed as soon as the workers are forked: a signal during start-up
        (procd's reload trigger at boot, ``systemctl stop`` while starting)
        killed the supervisor with the default action, leaving the router changed.
        Start-up finishes, then run() reloads or stops.
        """
        signal.signal(signal.SIGHUP, self._on_hup)
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)

    def run(self) -> int:
        """Wait for signals; the packets are the worker's business."""
        self.catch_signals()
        sdnotify.notify("READY=1", self.status_line())
        next_firewall_check = time.monotonic() + self.cfg.firewall.check_interval
        next_prefix_check = time.monotonic() + PREFIX_CHECK_INTERVAL
        next_repair = time.monotonic() + NETWORK_REPAIR_INTERVAL
        last_follow = 0.0
        self._open_events()
        while not self.stopping:
            if self.reload_requested:
                self.reload_requested = False
                self.reload()
                continue
            for index, worker in enumerate(self.workers):
                if not worker.alive():
                    log.error("data-plane worker %d (pid %d) died; stopping", index, worker.pid)
                    return 1
            interval = self.cfg.firewall.check_interval  # a reload may change it
            if interval and time.monotonic() >= next_firewall_check:
                self._check_firewall()
                next_firewall_check = time.monotonic() + interval
            if time.monotonic() >= next_prefix_check:
                self._check_prefix()
                next_prefix_check = time.monotonic() + PREFIX_CHECK_INTERVAL
            if time.monotonic() >= next_repair:
                self._follow_network()
                last_follow = time.monotonic()
                next_repair = last_follow + NETWORK_REPAIR_INTERVAL
            # Signals interrupt the wait (PEP 475 resumes it after).
            waiting = [e for e in (self.events, self._table_events()) if e is not None]
            if not waiting:
                time.sleep(0.2)
                continue
            ready = select.select(waiting, [], [], 0.2)[0]
            if self.table_events is not None and self.table_events in ready:
                if self._drained(self.table_events):
                    next_firewall_check = 0.0  # our table was deleted: put it back now
            if self.events is not None and self.events in ready:
                changes = self._drained(self.events)
                if changes and changes.addresses:
                    next_prefix_check = 0.0  # a new prefix may have come: look now
                if changes:  # links, on-link prefixes or our routes moved
                    next_repair = min(next_repair, last_follow + FOLLOW_SPACING)
        return 0

    def _drained(self, events: Any) -> Any:
        """``events.drain()``; a socket that fails is closed and the periodic checks go on."""
        try:
            return events.drain()
        except OSError as exc:  # never seen
            log.error("netlink notifications failed (%s); checking periodically", exc)
            events.close()
            if events is self.events:
                self.events = None
            else:
                self.table_events = None
                self.table_events_failed = True
            return None

    def _table_events(self) -> TableEvents | None:
        """The nftables notification socket while the watchdog watches an nftables table."""
        wanted = (
            self.firewall is not None
            and self.firewall.name == "nftables"
            and self.cfg.firewall.check_interval > 0
        )
        if wanted and self.table_events is None and not self.table_events_failed:
            family, name = TABLE.split()
            try:
                self.table_events = TableEvents(family, name)
            except OSError as exc:
                log.warning("cannot watch nftables changes (%s); checking periodically", exc)
                self.table_events_failed = True
        elif not wanted and self.table_events is not None:
            self.table_events.close()
            self.table_events = None
        return self.table_events

    def _open_events(self) -> None:
        try:
            self.events = NetlinkEvents(RTPROT_REVNAT64)
        except OSError as exc:  # the periodic checks alone, then
            log.warning("cannot watch link and address changes (%s); checking periodically", exc)

    def _follow_network(self) -> None:
        """After a link or address change: the plan again, and what the kernel dropped.

        The plan depends on which prefixes are on-link where, and those come
        and go with the WAN (most network managers remove a link's addresses
        when it goes down and add them when it is back).  So a link event can
        move proxy entries; a link that went down took its proxy entries with
        it even when its addresses stayed; a TUN set down or someone's ``ip
        route del`` took routes (:meth:`NetlinkManager.repair`).  Never raises:
        the daemon keeps serving, and says once what it could not do.
        """
        if self.netlink is None:
            return
        try:
            onlink = self.netlink.onlink_prefixes()
            cfg, planned_onlink, sysctls = self.planned or (None, None, ())
            if cfg is not self.cfg or planned_onlink != onlink or self.netlink.features_ready():
                # Planning 10,000 mappings costs 0.1-0.3 s here: only when its input moved.
                desired = plan(self.cfg, onlink)
                self._log_network_changes(self.netlink.apply(desired))
                sysctls = desired.sysctls
                self.planned = (self.cfg, onlink, sysctls)
        except Exception as exc:
            self._network_problem([str(exc)])
            return
        self._mend_network(sysctls)

    def _mend_network(self, sysctls: Sysctls) -> None:
        """Put back what the kernel dropped of the last apply, and the plan's ``sysctls``."""
        assert self.netlink is not None
        try:
            restored, problems = self.netlink.repair(sysctls)
        except Exception as exc:  # netlink failed: say so once, keep serving
            restored, problems = [], [str(exc)]
        if restored:
            self.network_restored += len(restored)
            log.warning(
                "netlink: %d entr%s gone behind our back (a link down or recreated, a "
                "route deleted?); put back: %s",
                len(restored),
                "y was" if len(restored) == 1 else "ies were",
                "; ".join(restored[:NETLINK_DETAIL_LINES]),
            )
        self._network_problem(problems)

    def _network_problem(self, problems: list[str]) -> None:
        problem = "; ".join(problems)
        if problem and problem != self.network_problem:  # once per new problem
            log.error("netlink: %s", problem)
        self.network_problem = problem

    def _check_firewall(self) -> None:
        """Put the firewall back if something removed it.

        ``systemctl restart nftables`` loads /etc/nftables.conf, which usually
        starts with ``flush ruleset``, and a firewall restart on an iptables
        router drops our chains: the allow lists stop being enforced.  This
        closes that hole within ``firewall.check_interval``, says so in the log
        and counts it.  A backend with ``grace_checks`` waits that many checks
        first: Merlin's own firewall-start puts the iptables rules back after
        its firewall restarts, and doing its job for it would be counted (and
        alerted on) as if something had gone wrong.
        """
        firewall = self.firewall
        if firewall is None:
            return
        failing = self.firewall_state.startswith("error")
        try:
            if firewall.is_applied():
                self.firewall_missing = 0
                if failing:  # the tool works again and the rules are there
                    log.info("firewall: the %s rules are in place again", firewall.name)
                    self.firewall_state = "applied"
                return
            self.firewall_missing += 1
            if self.firewall_missing <= firewall.grace_checks:
                return
            if not failing:  # said once; a failing apply is then logged once below
                log.warning(
                    "firewall: the %s rules are gone (%s?); applying them again",
                    firewall.name,
                    firewall.gone_hint,
                )
            firewall.apply()
            if failing:
                log.info("firewall: the %s rules are applied again", firewall.name)
        except Exception as exc:  # keep checking; the state says what is wrong
            state = f"error: {exc}"
            if state != self.firewall_state:  # once per new problem, not every 5 s
                log.error("firewall: %s", exc)
            self.firewall_state = state
            return
        self.firewall_reapplied += 1
        self.firewall_missing = 0
        self.firewall_state = "applied"

    def _check_prefix(self) -> None:
        """Reload when the prefix on ``wan.prefix_from`` is not the one the config uses.

        OpenWrt's hotplug script reloads us on a prefix change as well; this
        check is what systemd and Merlin installs rely on.  While the interface
        has no prefix at all (the uplink is down) the old addresses stay: a
        reconnect usually brings the same prefix back.  A first prefix (the
        daemon started without one) is published the same way, but is not
        counted as a change.
        """
        ifname = self.cfg.wan.prefix_from
        if not ifname:
            return
        try:
            within = self.cfg.wan.prefix_within
            current = read_prefix(ifname, self._ipr(), self.cfg.wan.prefix, within)
        except Exception as exc:  # the interface went away, or netlink failed
            current, why = None, str(exc)
        else:
            where = " inside wan.prefix_within" if self.cfg.wan.prefix_within else ""
            why = f"{ifname} has no global IPv6 prefix{where}"
        waiting = self.cfg.waiting_for_prefix
        if current is None:
            if not self.prefix_gone:
                log.warning("%s; keeping %s until one comes", why, self.cfg.wan.prefix)
            self.prefix_gone = True
            return
        self.prefix_gone = False
        if current == self.cfg.wan.prefix or current == self.prefix_tried:
            return
        if waiting:
            log.warning(
                "%s has a prefix now, %s; publishing the ::suffix mappings", ifname, current
            )
        else:
            log.warning(
                "the prefix on %s changed: %s -> %s; reloading",
                ifname,
                self.cfg.wan.prefix,
                current,
            )
        if self.reload():
            self.prefix_changes += 0 if waiting else 1
            self.prefix_tried = None
            dns = self.cfg.dns
            if dns.zone and not (dns.update_on_change and dns.server):
                log.warning(
                    "dns.update_on_change is off: publish the AAAA records in %s for the "
                    "new prefix yourself (revnat64 dns -c %s)",
                    dns.zone,
                    self.config_path,
                )
        else:
            self.prefix_tried = current  # not again every 5 s; a SIGHUP still retries

    def _remember_prefix(self, cfg: Config) -> None:
        """Tell the commands (dns, firewall) which prefix the daemon publishes in.

        With two live prefixes on the interface (two uplinks, or a renumbering
        that announces both), a command on its own could pick the other one.
        """
        if not cfg.wan.prefix_from or cfg.wan.prefix is None or cfg.waiting_for_prefix:
            return
        path = Path(cfg.daemon.state_dir) / PREFIX_STATE_FILE
        try:
            atomic_write(path, remembered_text(cfg.wan.prefix, cfg.wan.prefix_from), 0o644)
        except OSError as exc:
            log.warning("cannot write %s: %s", path, exc)

    def _ipr(self) -> Any:
        """The daemon's netlink socket, once it has one (None: open one per call)."""
        return self.netlink.ipr if self.netlink is not None else None

    def _keep_prefix(self, ifname: str, within: tuple[IPv6Network, ...]) -> IPv6Network:
        """wan.prefix_from's prefix for a reload: the one in use while it is still usable.

        With none on the interface the last one stays (the uplink is down), or the
        placeholder when there never was one, so a reload that only changes something
        else is not refused for want of a prefix.
        """
        found = read_prefix(ifname, self._ipr(), self.cfg.wan.prefix, within)
        return found or self.cfg.wan.prefix or PLACEHOLDER

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
        except Exception:  # a bug must not take the serving data plane down with it
            log.exception("reload failed; the workers keep the previous tables")
        finally:
            self.reloads["success" if ok else "failure"] += 1
            sdnotify.notify("READY=1", self.status_line())
        return ok

    def _reload(self) -> bool:
        old = self.cfg
        try:
            new = load_config_compact(self.config_path, prefix_lookup=self._keep_prefix)
            plane, tables = validated_plane(new)
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
        if new.translator.workers != old.translator.workers or (
            len(self.workers) > 1 and plane.pool_table_key != self.plane.pool_table_key
        ):
            log.error(
                "reload rejected: translator.workers, or pool4 (or ipv4_address inside it) "
                "with several workers, changed; that needs a restart; "
                "keeping the previous configuration"
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
        notes = set()
        for index, worker in enumerate(self.workers):
            result, note = worker.call("apply", plane, tables)
            if result != "ok":
                # The tables were built once already, so this is not expected; the
                # workers before this one run the new plane, so say so.
                log.error(
                    "reload rejected by data-plane worker %d: %s (workers 0..%d applied it)",
                    index,
                    note,
                    index - 1,
                )
                return False
            if note:
                notes.add(note)
        for note in sorted(notes):
            log.info("%s", note)
        self.cfg, self.plane = new, plane
        self.last_reload = time.time()
        self._remember_prefix(new)
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
        for events in (self.events, self.table_events):
            if events is not None:
                events.close()
        self.events = self.table_events = None
        # Worker 0 last: it saves the leases all workers made.  When the last
        # queue fd closes the TUN goes away.
        for worker in reversed(self.workers):
            worker.stop()
        self.workers.clear()
        self._close_fds()
        if self.netlink is not None:
            try:
                self.netlink.teardown(delete_tun=self.tun_ours)
            except Exception as exc:
                log.error("removing routes and proxy entries: %s", exc)
            self.netlink = None
        # The firewall last: netlink is quick, while nft or iptables can take long
        # (up to their 60 s timeout) and a service manager's stop timeout may end
        # us first; the router is then left with a table of ours, not with routes,
        # proxy entries and sysctls.
        if self.firewall is not None:
            try:
                self.firewall.remove()
            except Exception as exc:
                log.error("removing firewall rules: %s", exc)
            self.firewall = None
        if self.lock_fd >= 0:
            os.close(self.lock_fd)  # last: the next daemon may now start
            self.lock_fd = -1
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
    except (StartupError, NetlinkError, OSError, RuntimeError, EOFError) as exc:
        log.error("cannot start: %s", exc)
        daemon.stop()
        return 1
    except Exception:  # a bug: still remove what was created before saying so
        log.exception("cannot start")
        daemon.stop()
        return 1
    try:
        return daemon.run()
    finally:
        daemon.stop()
