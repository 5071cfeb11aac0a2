"""The data-plane worker: one single-threaded process that owns the TUN fd.

The supervisor (``publisher.daemon``) runs threads for the metrics endpoint,
the control socket and DNS updates.  The packet path runs in a forked child
with no threads at all: measured on the test lab, a single idle helper thread
in the same process tripled the latency a ping sees through the translator,
because every wake-up from ``poll`` then goes through the GIL hand-off.

Supervisor and worker talk over a socketpair with length-prefixed pickles
(both sides are the same program; nothing from the network is unpickled):

* ``("snapshot",)``  -> a :class:`~publisher.snapshot.Snapshot` of the counters,
  the pool and the leases, built between two packet batches;
* ``("apply", plane, tables)`` -> swap in new settings from a :class:`Plane` and
  the :class:`~translator.Tables` the supervisor built from it (pickled on
  their own, see :func:`pack_tables`);
* ``("stop",)``      -> save the leases and exit.

The worker exits on its own, after saving the leases, when the supervisor
disappears (EOF on the socket) or on SIGTERM.

With ``translator.workers: N > 1`` there are N workers, one per queue of a
multi-queue TUN.  Besides its queue fd each one receives the same memfd,
which it maps ``MAP_SHARED`` as the lease table of a
:class:`~translator.shared_pool.SharedPool4`; POSIX record locks
(``fcntl.lockf``) on that memfd are the cross-process lock, which the kernel
drops if a holder dies.  Worker 0 is the lease owner: it restores
``leases.json`` before the others start, saves it, and alone reports the pool
gauges and lease list, so :meth:`Snapshot.merge` takes them once.
"""

from __future__ import annotations

import fcntl
import logging
import mmap
import os
import pickle
import select
import signal
import socket
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from publisher.config import Config
from publisher.netlink import atomic_write
from publisher.snapshot import DIRECTIONS, PREFIX_MAPPING, MappingInfo, Snapshot, WorkerUsage
from translator import DropReason, Pool4, Tables, Translator, TranslatorSettings
from translator.offload import TUN_F_USO4
from translator.shared_pool import SharedPool4, buffer_size
from translator.tun import (
    BATCH_LIMIT,
    ICMPV4_ERROR_NAMES,
    ICMPV6_ERROR_NAMES,
    Counters,
    DataPath,
)

log = logging.getLogger("revnat64.worker")

LEASE_SAVE_INTERVAL = 30.0
LEASE_EXPIRE_INTERVAL = 10.0
_LEN = struct.Struct("!I")


@dataclass(frozen=True)
class Plane:
    """Everything the data plane needs from a config; small, picklable, comparable.

    The EAM table is read off ``mappings`` (same order, same strings) rather
    than kept twice: with 10,000 mappings every copy costs each process
    megabytes.
    """

    settings: TranslatorSettings
    prefix: str | None
    mappings: tuple[MappingInfo, ...]
    pool4: str
    lease_time: float
    limit_per_prefix: int
    limit_prefix_len: int
    reserved: tuple[str, ...]
    lease_file: str
    unconfirmed_time: float = 30.0

    @property
    def pool_key(self) -> tuple[Any, ...]:
        return (
            self.pool4,
            self.lease_time,
            self.unconfirmed_time,
            self.limit_per_prefix,
            self.limit_prefix_len,
            self.reserved,
        )

    def tables(self) -> Tables:
        """Build the lookup tables (ValueError names the offending entry)."""
        return Tables.build(eam=[(m.ipv6, m.ipv4) for m in self.mappings], prefix=self.prefix)

    @property
    def pool_table_key(self) -> tuple[Any, ...]:
        """What fixes the shared lease table's layout (a change needs a restart)."""
        return (self.pool4, self.reserved)

    def new_pool(self) -> Pool4:
        return Pool4(
            self.pool4,
            lease_time=self.lease_time,
            limit_per_prefix=self.limit_per_prefix,
            limit_prefix_len=self.limit_prefix_len,
            reserved=self.reserved,
            unconfirmed_time=self.unconfirmed_time,
        )

    def new_shared_pool(self, table: SharedTable) -> SharedPool4:
        return SharedPool4(
            table.buffer,
            table.lock,
            self.pool4,
            lease_time=self.lease_time,
            limit_per_prefix=self.limit_per_prefix,
            limit_prefix_len=self.limit_prefix_len,
            reserved=self.reserved,
            unconfirmed_time=self.unconfirmed_time,
        )


class LockfLock:
    """An exclusive POSIX record lock on a file, as a context manager.

    Record locks belong to the process, so each worker excludes the others
    through the same shared memfd, and a worker that dies drops its lock.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __enter__(self) -> None:
        fcntl.lockf(self.fd, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        fcntl.lockf(self.fd, fcntl.LOCK_UN)


@dataclass
class SharedTable:
    """The shared lease table as one worker maps it: the memfd, its mapping, the lock."""

    fd: int
    buffer: mmap.mmap
    lock: LockfLock

    @classmethod
    def create(cls, pool4: str) -> int:
        """A zero-filled memfd big enough for ``pool4``'s table (the supervisor's side)."""
        fd = os.memfd_create("revnat64-pool4", os.MFD_CLOEXEC)
        os.ftruncate(fd, buffer_size(pool4))
        return fd

    @classmethod
    def attach(cls, fd: int) -> SharedTable:
        size = os.fstat(fd).st_size
        return cls(fd, mmap.mmap(fd, size, mmap.MAP_SHARED), LockfLock(fd))


def plane_from_config(cfg: Config) -> Plane:
    tr = cfg.translator
    settings = TranslatorSettings(
        ipv4_address=str(tr.ipv4_address),
        ipv6_address=str(tr.ipv6_address),
        rfc6791_pool4=tuple(str(n) for n in tr.rfc6791_pool4),
        lowest_ipv6_mtu=tr.lowest_ipv6_mtu,
        mtu=tr.mtu,
        udp_zero_checksum=tr.udp_zero_checksum,
        icmp_errors_per_second=tr.icmp_errors_per_second,
    )
    return Plane(
        settings=settings,
        prefix=str(tr.prefix) if tr.prefix is not None else None,
        mappings=tuple(
            MappingInfo(m.name, str(m.ipv6), str(m.ipv4), m.hostname) for m in cfg.mappings
        ),
        pool4=str(tr.pool4),
        lease_time=float(tr.lease_time),
        limit_per_prefix=tr.lease_limit_per_prefix,
        limit_prefix_len=tr.lease_limit_prefix_len,
        reserved=tuple(str(a) for a in (tr.ipv4_address,) if a in tr.pool4),
        lease_file=str(cfg.lease_file),
        unconfirmed_time=float(tr.unconfirmed_lease_time),
    )


# -- framing --------------------------------------------------------------------------


def pack_tables(tables: Tables) -> bytes:
    """``tables`` as the supervisor sends them to the workers (``pickle.loads`` undoes it)."""
    return pickle.dumps(tables, protocol=pickle.HIGHEST_PROTOCOL)


def send_message(sock: socket.socket, obj: Any) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    sock.sendall(_LEN.pack(len(data)) + data)


def recv_message(sock: socket.socket) -> Any:
    """One message; EOFError when the peer is gone."""
    header = _recv_exact(sock, _LEN.size)
    return pickle.loads(_recv_exact(sock, _LEN.unpack(header)[0]))


class CallChannel:
    """The supervisor's end of a worker channel: numbered calls, replies matched.

    A call that times out leaves its reply on its way; read by the next call it
    put every later reply one behind (a reload "failed" on a snapshot's reply
    while the worker had applied it). Each request now carries a number the
    worker echoes, a late reply is dropped, and bytes read before a timeout are
    kept, so a reply cut by one is never misread by the next.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.seq = 0
        self._buffer = bytearray()

    def call(self, message: tuple[Any, ...], timeout: float) -> Any:
        self.seq += 1
        deadline = time.monotonic() + timeout
        self.sock.settimeout(timeout)
        send_message(self.sock, (self.seq, *message))
        while True:
            seq, reply = self.receive(deadline)
            if seq == self.seq:
                return reply
            log.debug("dropped a late worker reply (call %d, now at %d)", seq, self.seq)

    def receive(self, deadline: float) -> Any:
        """The next whole message; TimeoutError at ``deadline``, EOFError when gone."""
        buffer = self._buffer
        while True:
            if len(buffer) >= _LEN.size:
                size = _LEN.unpack_from(buffer)[0]
                if len(buffer) >= _LEN.size + size:
                    data = bytes(buffer[_LEN.size : _LEN.size + size])
                    del buffer[: _LEN.size + size]
                    return pickle.loads(data)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("the worker did not answer in time")
            self.sock.settimeout(remaining)
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise EOFError("peer closed the worker channel")
            buffer += chunk


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    chunks = []
    while n:
        chunk = sock.recv(n)
        if not chunk:
            raise EOFError("peer closed the worker channel")
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


# -- counters that outlive a table generation -----------------------------------------


@dataclass
class Totals:
    """Counters folded in under mapping names (indices change on reload)."""

    packets: dict[tuple[str, str], int] = field(default_factory=dict)
    bytes: dict[tuple[str, str], int] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)
    icmp_errors: dict[tuple[str, int], int] = field(default_factory=dict)

    def copy(self) -> Totals:
        return Totals(
            dict(self.packets), dict(self.bytes), dict(self.dropped), dict(self.icmp_errors)
        )

    def absorb(self, names: list[str], c: Counters) -> None:
        """Add ``c`` (indexed like ``names``, plus the no-mapping slot at the end)."""
        for d, direction in enumerate(DIRECTIONS):
            # The extra slot (mapping index -1) goes under the reserved PREFIX_MAPPING.
            for i, name in enumerate([*names, PREFIX_MAPPING]):
                key = (name, direction)
                self.packets[key] = self.packets.get(key, 0) + c.packets[d][i]
                self.bytes[key] = self.bytes.get(key, 0) + c.bytes[d][i]
        for reason in DropReason:
            if c.dropped[reason]:
                self.dropped[reason.label] = self.dropped.get(reason.label, 0) + c.dropped[reason]
        for icmp_key, value in c.icmp_errors.items():
            self.icmp_errors[icmp_key] = self.icmp_errors.get(icmp_key, 0) + value


# -- what a worker costs ------------------------------------------------------------------

_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def measure_usage(index: int) -> WorkerUsage:
    """CPU, resident memory and open fds of this process, read on request only.

    Three cheap reads (process CPU clock, ``/proc/self/statm``, ``/proc/self/fd``) per
    snapshot, nothing per packet.  Where /proc is missing the memory and fd
    figures are 0 rather than an error: a scrape must not fail over them.
    """
    try:
        # Nanoseconds on the CPU: os.times() counts in 10 ms ticks, too coarse for
        # a worker that translates a few thousand packets between scrapes.
        cpu = time.clock_gettime(time.CLOCK_PROCESS_CPUTIME_ID)
    except OSError:
        times = os.times()
        cpu = times.user + times.system
    try:
        with open("/proc/self/statm", "rb") as statm:
            resident = int(statm.read().split()[1]) * _PAGE_SIZE
    except (OSError, IndexError, ValueError):
        resident = 0
    try:
        # The directory's own fd, open while it is listed, is not one of ours.
        fds = max(0, len(os.listdir("/proc/self/fd")) - 1)
    except OSError:
        fds = 0
    return WorkerUsage(
        index=index,
        pid=os.getpid(),
        cpu_seconds=cpu,
        resident_bytes=resident,
        open_fds=fds,
    )


# -- the worker -------------------------------------------------------------------------


class Worker:
    """Runs in the child process: translation loop plus the supervisor's requests."""

    def __init__(
        self,
        fd: int,
        offloads: int,
        plane: Plane,
        tables: Tables,
        channel: socket.socket,
        index: int = 0,
        table: SharedTable | None = None,
    ) -> None:
        self.fd = fd
        self.offloads = offloads
        self.plane = plane
        self.channel = channel
        self.index = index
        self.table = table
        self.owner = index == 0  # restores, saves and reports the leases
        self.pool: Pool4 | SharedPool4 = (
            plane.new_pool() if table is None else plane.new_shared_pool(table)
        )
        if self.owner:
            self._restore_leases()
        self.counters = Counters(len(plane.mappings))
        self.totals = Totals()
        self.datapath = DataPath(fd, Translator(plane.settings, tables, self.pool), self.counters)
        self._install(plane.settings, self.datapath.translator.tables)
        self.stopping = False

    def _install(self, settings: TranslatorSettings, tables: Tables) -> None:
        """The translator, plus a twin with MTU rules lifted for TCP super-packets.

        The twin shares tables and pool; a super-packet is cut to the real MTU
        by the kernel after translation, so the size checks do not apply to it.
        """
        self.datapath.translator = Translator(settings, tables, self.pool)
        self.datapath.gso_translator = (
            Translator.for_super_packets(settings, tables, self.pool) if self.offloads else None
        )
        # Coalesced UDP trains are written as USO super-packets.
        self.datapath.udp_trains = bool(self.offloads & TUN_F_USO4)
        self.datapath.select_loop()

    # -- leases ------------------------------------------------------------------------

    def _restore_leases(self) -> None:
        try:
            text = Path(self.plane.lease_file).read_text()
        except FileNotFoundError:
            return
        except OSError as exc:
            log.warning("cannot read leases %s: %s", self.plane.lease_file, exc)
            return
        kept = self.pool.restore(text, time.monotonic())
        log.info("restored %d pool4 leases from %s", kept, self.plane.lease_file)

    def save_leases(self) -> None:
        if not self.owner:
            return
        try:
            atomic_write(
                Path(self.plane.lease_file), self.pool.dump(time.monotonic()), sync_directory=False
            )
        except OSError as exc:
            log.warning("cannot save leases to %s: %s", self.plane.lease_file, exc)

    # -- requests from the supervisor ----------------------------------------------------

    def handle(self, message: tuple[Any, ...]) -> Any:
        command = message[0]
        if command == "snapshot":
            return self.snapshot()
        if command == "apply":
            return self.apply(message[1], pickle.loads(message[2]))
        if command == "stop":
            self.stopping = True
            return "ok"
        return ("error", f"unknown worker command {command!r}")

    def apply(self, plane: Plane, tables: Tables) -> tuple[str, str]:
        old = self.plane
        self.totals.absorb([m.name for m in old.mappings], self.counters)
        self.counters = Counters(len(plane.mappings))
        self.datapath.counters = self.counters
        note = ""
        if plane.pool_key != old.pool_key and self.table is not None:
            # The table stays (the supervisor refuses layout changes); new limits
            # apply to new leases and no active lease is dropped.
            self.pool = plane.new_shared_pool(self.table)
            note = "pool4 settings changed: leases kept in the shared table"
        elif plane.pool_key != old.pool_key:
            pool = plane.new_pool()
            kept = pool.restore(self.pool.dump(time.monotonic()), time.monotonic())
            self.pool = pool
            note = f"pool4 settings changed: kept {kept} leases that still fit"
        if plane.pool_key != old.pool_key or plane.settings != old.settings:
            self._install(plane.settings, tables)
        else:
            self.datapath.translator.tables = tables
            if self.datapath.gso_translator is not None:
                self.datapath.gso_translator.tables = tables
        self.plane = plane
        if plane.lease_file != old.lease_file:
            self.save_leases()
        return ("ok", note)

    def snapshot(self) -> Snapshot:
        now = time.monotonic()
        names = [m.name for m in self.plane.mappings]
        totals = self.totals.copy()
        totals.absorb(names, self.counters)
        for name in names:
            for direction in DIRECTIONS:
                totals.packets.setdefault((name, direction), 0)
                totals.bytes.setdefault((name, direction), 0)
        for direction in DIRECTIONS:
            # Left out while it is 0: without translator.prefix it would only be noise;
            # the exporter emits it at 0 when a prefix is configured.
            for counts in (totals.packets, totals.bytes):
                if not counts.get((PREFIX_MAPPING, direction)):
                    counts.pop((PREFIX_MAPPING, direction), None)
        dropped = {
            r.label: totals.dropped.get(r.label, 0) for r in DropReason if r is not DropReason.NONE
        }
        icmp_errors: dict[tuple[str, str], int] = {}
        for (family, icmp_type), count in totals.icmp_errors.items():
            table = ICMPV6_ERROR_NAMES if family == "icmpv6" else ICMPV4_ERROR_NAMES
            key = (family, table.get(icmp_type, f"type_{icmp_type}"))
            icmp_errors[key] = icmp_errors.get(key, 0) + count
        pool = self.pool
        # The pool's counters are this worker's own (they add up over workers); its
        # gauges and lease list describe the one table, so only the owner reports them.
        # No mappings: the supervisor's part carries them (Snapshot.merge), and 10,000
        # of them pickled on every scrape would only be thrown away there.
        return Snapshot(
            packets=totals.packets,
            bytes=totals.bytes,
            dropped=dropped,
            icmp_errors=icmp_errors,
            pool_in_use=pool.in_use if self.owner else 0,
            pool_size=pool.size if self.owner else 0,
            leases_created=pool.created,
            leases_expired=pool.expired,
            leases_reclaimed_unconfirmed=pool.reclaimed_unconfirmed,
            pool_refused={"exhausted": pool.refused_exhausted, "prefix_limit": pool.refused_limit},
            leases=(
                [(v6, v4, max(0.0, now - seen)) for v6, v4, seen in pool.leases()]
                if self.owner
                else []
            ),
            workers=1,
            worker_usage=[measure_usage(self.index)],
        )

    def lease_mark(self) -> Any:
        """Changes when the leases need saving."""
        pool = self.pool
        if isinstance(pool, SharedPool4):
            return pool.version
        return (pool.created, pool.expired, pool.confirmed)

    # -- the loop ------------------------------------------------------------------------

    def serve_forever(self) -> int:
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor decides
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        poller = select.poll()
        poller.register(self.fd, select.POLLIN)
        poller.register(self.channel.fileno(), select.POLLIN)
        poller.register(wake_r, select.POLLIN)
        channel_fd = self.channel.fileno()
        send_message(self.channel, ("ready", os.getpid()))
        next_expire = time.monotonic() + LEASE_EXPIRE_INTERVAL
        next_save = time.monotonic() + LEASE_SAVE_INTERVAL
        saved_mark, last_save = self.lease_mark(), 0.0
        try:
            while not self.stopping:
                dirty = self.owner and self.lease_mark() != saved_mark
                ready = {fd for fd, _ in poller.poll(250 if dirty else 1000)}
                now = time.monotonic()
                asked = channel_fd in ready
                while self.datapath.run_batch(now) == BATCH_LIMIT and not self.stopping:
                    now = time.monotonic()
                    if select.select([channel_fd], [], [], 0)[0]:
                        asked = True
                        break  # answer the supervisor between batches
                if wake_r in ready:
                    try:
                        while os.read(wake_r, 512):
                            pass
                    except BlockingIOError:
                        pass
                if asked:
                    try:
                        message = recv_message(self.channel)
                    except (EOFError, OSError):
                        log.info("supervisor gone; worker exiting")
                        break
                    seq, *request = message
                    send_message(self.channel, (seq, self.handle(tuple(request))))
                if now >= next_expire:
                    self.pool.expire(now)
                    next_expire = now + LEASE_EXPIRE_INTERVAL
                # New leases reach the disk within a second, so even SIGKILL keeps them.
                mark = self.lease_mark()
                if self.owner and (
                    now >= next_save or (mark != saved_mark and now >= last_save + 1.0)
                ):
                    self.save_leases()
                    saved_mark, last_save = mark, now
                    next_save = now + LEASE_SAVE_INTERVAL
        finally:
            self.save_leases()
            signal.set_wakeup_fd(-1)
            os.close(wake_r)
            os.close(wake_w)
        return 0

    def _on_term(self, signum: int, frame: Any) -> None:
        self.stopping = True


def worker_main(channel: socket.socket) -> int:
    """The child's entry: receive the TUN fd (and the lease table's memfd), then serve."""
    _, fds, _, _ = socket.recv_fds(channel, 1, 2)
    if not fds:
        return 1
    message = recv_message(channel)
    if message[0] != "init":
        return 1
    _, plane, tables, offloads, level, index = message
    from publisher.logs import setup_logging

    setup_logging(logging.getLevelName(level))
    trim_memory(packet_heap=True)
    table = SharedTable.attach(fds[1]) if len(fds) > 1 else None
    worker = Worker(fds[0], offloads, plane, pickle.loads(tables), channel, index, table)
    del message, plane, tables  # the worker holds what it keeps
    return worker.serve_forever()


# glibc mallopt(3) parameter numbers (<malloc.h>).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 128 * 1024  # glibc's own starting value
# A TSO super-packet is up to 64 KiB, and each one briefly allocates a few
# buffers that size. With a 128 KiB trim threshold a free at the top of the
# heap shrinks it (brk) and the next packet grows it again, page faults and
# page clearing included. (glibc raises its thresholds by itself only after
# the process frees a large mmap-ed block, which a process compiling its
# modules from source did at start-up and one loading .pyc files did not:
# that alone moved TCP throughput by 25-45% between identical runs.) The
# worker keeps up to 1 MiB of free heap instead, whatever its history.
PACKET_HEAP_KEEP = 1 << 20


def pin_mmap_threshold() -> None:
    """Keep glibc's mmap threshold at 128 KiB instead of letting it grow; best effort.

    glibc raises the threshold each time an mmap'ed block is freed, so after
    the first metrics scrape (dicts and pickles of a few hundred KiB with
    10,000 mappings) such blocks come from the heap, which keeps the pages.
    Pinned, every large block goes back to the OS when it is freed (measured
    with 10,000 mappings: the worker stays at 26 MiB instead of growing to
    30 MiB over a few scrapes). Packet buffers (at most 64 KiB) stay below it.
    Forked workers inherit the setting.
    """
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    except (OSError, AttributeError):
        pass


def trim_memory(packet_heap: bool = False) -> None:
    """Hand freed heap back to the kernel (glibc keeps it otherwise); best effort.

    With ``packet_heap`` (the worker), also keep PACKET_HEAP_KEEP of free heap
    so that super-packet buffers do not shrink and regrow the heap per packet.
    """
    import ctypes
    import gc

    gc.collect()
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim(0)
        if packet_heap:
            libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
            libc.mallopt(M_TRIM_THRESHOLD, PACKET_HEAP_KEEP)
    except (OSError, AttributeError):
        pass


class WorkerHandle:
    """The supervisor's side: fork the worker early, hand it the TUN, talk to it, stop it.

    The fork happens before the supervisor loads the config or imports
    pyroute2, so the worker does not carry the control plane's memory: the
    TUN fd follows later over the socketpair (SCM_RIGHTS).
    """

    def __init__(self) -> None:
        import threading

        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        pid = os.fork()
        if pid == 0:  # the worker
            status = 1
            try:
                parent.close()
                status = worker_main(child)
            except BaseException:
                log.exception("worker failed")
            finally:
                os._exit(status)
        child.close()
        self.pid = pid
        self.channel = parent
        self.calls = CallChannel(parent)
        self.lock = threading.Lock()

    def start(
        self,
        fd: int,
        offloads: int,
        plane: Plane,
        tables: bytes,
        level: int,
        index: int = 0,
        table_fd: int = -1,
        timeout: float = 60.0,
    ) -> None:
        """Give the worker its TUN queue fd, the shared table (if any) and its first
        plane; wait until it serves."""
        self.channel.settimeout(timeout)
        socket.send_fds(self.channel, [b"F"], [fd] if table_fd < 0 else [fd, table_fd])
        send_message(self.channel, ("init", plane, tables, offloads, level, index))
        hello = self.calls.receive(time.monotonic() + timeout)
        if hello[0] != "ready":
            raise RuntimeError(f"worker sent {hello!r} instead of ready")

    def call(self, *message: Any, timeout: float = 10.0) -> Any:
        with self.lock:
            return self.calls.call(message, timeout)

    def alive(self) -> bool:
        try:
            pid, _ = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            return False
        return pid == 0

    def stop(self, timeout: float = 5.0) -> None:
        try:
            self.call("stop", timeout=timeout)
        except (OSError, EOFError):
            pass
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.alive():
            time.sleep(0.02)
        if self.alive():
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        self.channel.close()
