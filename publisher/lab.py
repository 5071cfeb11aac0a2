"""Network namespace labs: the demo, the benchmark and the integration tests share them.

A :class:`Lab` owns namespaces whose names are unique per run (pid + counter),
so parallel runs and leftovers from a crashed run never collide.  Interface
names only need to be unique inside their namespace, so veth ends are created
directly in their namespaces and can keep readable names (``wan0``, ``lan0``).
Everything a lab made is removed by :meth:`Lab.close`, which the pytest
fixtures call on every exit path, a failed test included.

:func:`home_router_lab` builds the standard three-host topology the
translator tests use (documentation addresses only)::

    client (IPv6 only) --wan0-- router (revnat64) --lan0-- device (IPv4 only)
    2001:db8:1::2/64        2001:db8:1::1/64  192.0.2.1/24       192.0.2.50/24
"""

from __future__ import annotations

import itertools
import os
import shlex
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")

_counter = itertools.count()

CLIENT6 = "2001:db8:1::2"
ROUTER_WAN6 = "2001:db8:1::1"
ROUTER_LAN4 = "192.0.2.1"
DEVICE4 = "192.0.2.50"
DEVICE6 = "2001:db8:200::50"
TRANSLATOR4 = "198.51.100.1"
TRANSLATOR6 = "2001:db8:200::1"
POOL4 = "198.51.100.0/24"


def run(
    cmd: Sequence[str] | str, check: bool = True, timeout: float = 30, **kw: Any
) -> subprocess.CompletedProcess[str]:
    """subprocess.run with text output, a timeout and a useful error."""
    argv = shlex.split(cmd) if isinstance(cmd, str) else list(cmd)
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)
    if check and proc.returncode != 0:
        raise RuntimeError(
            f"command failed ({proc.returncode}): {' '.join(argv)}\n"
            f"stdout: {proc.stdout}\nstderr: {proc.stderr}"
        )
    return proc


@dataclass
class Netns:
    name: str
    lab: Lab

    def argv(self, cmd: Sequence[str] | str) -> list[str]:
        args = shlex.split(cmd) if isinstance(cmd, str) else list(cmd)
        return ["ip", "netns", "exec", self.name, *args]

    def run(
        self, cmd: Sequence[str] | str, check: bool = True, timeout: float = 30, **kw: Any
    ) -> subprocess.CompletedProcess[str]:
        return run(self.argv(cmd), check=check, timeout=timeout, **kw)

    def popen(self, cmd: Sequence[str] | str, **kw: Any) -> subprocess.Popen[bytes]:
        kw.setdefault("stdout", subprocess.PIPE)
        kw.setdefault("stderr", subprocess.PIPE)
        proc = subprocess.Popen(self.argv(cmd), start_new_session=True, **kw)
        self.lab.processes.append(proc)
        return proc

    def sysctl(self, key: str, value: str | int) -> None:
        self.run(["sysctl", "-qw", f"{key}={value}"])

    def nstat_csum_errors(self) -> dict[str, int]:
        """Checksum error counters of this namespace's stack (must stay 0 in strict labs)."""
        out = self.run(["nstat", "-az"]).stdout
        found = {}
        for line in out.splitlines():
            parts = line.split()
            if len(parts) >= 2 and "CsumErrors" in parts[0]:
                found[parts[0]] = int(parts[1])
        return found


@dataclass
class Lab:
    tag: str = "lab"
    namespaces: list[Netns] = field(default_factory=list)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.uid = f"{os.getpid() % 100000}x{next(_counter)}"

    def netns(self, role: str) -> Netns:
        name = f"rn64-{self.tag}-{role}-{self.uid}"
        run(["ip", "netns", "add", name])
        ns = Netns(name, self)
        self.namespaces.append(ns)
        ns.run("ip link set lo up")
        return ns

    def veth(self, a: Netns, a_if: str, b: Netns, b_if: str, mtu: int = 1500) -> None:
        run(
            [
                "ip",
                "link",
                "add",
                a_if,
                "netns",
                a.name,
                "mtu",
                str(mtu),
                "type",
                "veth",
                "peer",
                "name",
                b_if,
                "netns",
                b.name,
                "mtu",
                str(mtu),
            ]
        )
        a.run(f"ip link set {a_if} up")
        b.run(f"ip link set {b_if} up")

    def close(self) -> None:
        for proc in reversed(self.processes):
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
            for stream in (proc.stdout, proc.stderr, proc.stdin):
                if stream is not None:
                    stream.close()
        for ns in reversed(self.namespaces):
            # Killing every process in the namespace lets its devices go with it.
            pids = run(["ip", "netns", "pids", ns.name], check=False).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            run(["ip", "netns", "del", ns.name], check=False)
        self.namespaces.clear()
        self.processes.clear()

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class HomeRouterLab:
    lab: Lab
    client: Netns
    router: Netns
    device: Netns


def strict_checksums(lab: HomeRouterLab) -> None:
    """Make every checksum real: veth otherwise passes partial checksums unverified."""
    for ns, dev in ((lab.router, "wan0"), (lab.router, "lan0")):
        ns.run(["ethtool", "-K", dev, "tx", "off"])
    for ns, dev in ((lab.client, "wan0"), (lab.device, "lan0")):
        ns.run(["ethtool", "-K", dev, "rx", "off"])


def home_router_lab(
    lab: Lab, wan_mtu: int = 1500, lan_mtu: int = 1500, strict: bool = True
) -> HomeRouterLab:
    """client (IPv6 only) -- router -- device (IPv4 only), addressed and routed."""
    client, router, device = lab.netns("client"), lab.netns("router"), lab.netns("device")
    lab.veth(client, "wan0", router, "wan0", mtu=wan_mtu)
    lab.veth(router, "lan0", device, "lan0", mtu=lan_mtu)
    for ns in (client, router, device):
        # No DAD delay, no router solicitations: addresses are usable at once.
        ns.sysctl("net.ipv6.conf.all.accept_dad", 0)
        ns.sysctl("net.ipv6.conf.default.accept_dad", 0)
    client.run(f"ip -6 addr add {CLIENT6}/64 dev wan0 nodad")
    client.run(f"ip -6 route add default via {ROUTER_WAN6} dev wan0")
    router.run(f"ip -6 addr add {ROUTER_WAN6}/64 dev wan0 nodad")
    router.run(f"ip addr add {ROUTER_LAN4}/24 dev lan0")
    device.run(f"ip addr add {DEVICE4}/24 dev lan0")
    device.run(f"ip route add default via {ROUTER_LAN4} dev lan0")
    device.sysctl("net.ipv6.conf.all.disable_ipv6", 1)
    result = HomeRouterLab(lab, client, router, device)
    if strict:
        strict_checksums(result)
    return result


def wait_for(
    predicate: Callable[[], T | None],
    timeout: float = 10.0,
    interval: float = 0.05,
    what: str = "condition",
) -> T:
    """Poll until predicate() is truthy; bounded in time."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)
