"""Start, reload and stop times of the daemon with many mappings.

    sudo .venv/bin/python bench/startup.py [--mappings 1 10000] [--repeat 3]

For each mapping count, in the namespace lab of ``bench/run.py`` (no
traffic, nothing but the daemon): the time from starting ``revnat64 run``
to its ``READY=1``, from SIGHUP with an unchanged config to the next
``READY=1``, and from SIGTERM to the process's exit.  Each count runs twice,
once as ``bench/run.py`` configures it (routes only: the filler mappings are
not on-link) and once with the filler mappings inside the WAN prefix and
proxy NDP on, so every mapping also needs a proxy entry.  ``--netlink-only``
times :class:`publisher.netlink.NetlinkManager` alone (apply, reload,
teardown against a persistent TUN device), without the daemon around it.
Prints a Markdown table of medians; the figures feed docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import run as bench_run  # noqa: E402
import yaml  # noqa: E402

from publisher.lab import HomeRouterLab, Lab, home_router_lab  # noqa: E402

ONLINK_FILLER = "2001:db8:1::1:{i:x}"  # inside the router's wan0 /64


def write_config(tmp: Path, mappings: int, proxy: bool) -> Path:
    path = bench_run.revnat64_config(tmp, mappings, metrics=False)
    if proxy:
        cfg = yaml.safe_load(path.read_text())
        for i, m in enumerate(cfg["mappings"][1:], start=1):
            m["ipv6"] = ONLINK_FILLER.format(i=i)
        cfg["wan"]["proxy_ndp"] = True
        path.write_text(yaml.safe_dump(cfg))
    return path


class Notify:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(120)

    def wait(self, wanted: str) -> float:
        while wanted not in self.sock.recv(4096).decode().splitlines():
            pass
        return time.monotonic()

    def close(self) -> None:
        self.sock.close()
        self.path.unlink(missing_ok=True)


def time_daemon(net: HomeRouterLab, tmp: Path, config: Path) -> tuple[float, float, float]:
    """Seconds to READY=1, to READY=1 after an unchanged reload, and to exit after SIGTERM."""
    notify = Notify(tmp / f"notify-{time.monotonic_ns()}.sock")
    env = dict(os.environ, NOTIFY_SOCKET=str(notify.path), PYTHONPATH=str(ROOT))
    try:
        started = time.monotonic()
        proc = net.router.popen(
            [sys.executable, "-m", "publisher.cli", "run", "-c", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=env,
        )
        ready = notify.wait("READY=1") - started
        time.sleep(0.5)
        sent = time.monotonic()
        os.kill(proc.pid, signal.SIGHUP)
        reload = notify.wait("READY=1") - sent
        time.sleep(0.5)
        sent = time.monotonic()
        proc.terminate()
        proc.wait(timeout=120)
        stop = time.monotonic() - sent
        if proc.returncode != 0:
            raise RuntimeError(f"daemon exited with {proc.returncode}")
        leftover = net.router.run("ip -6 route show proto 164").stdout
        leftover += net.router.run("ip -6 neigh show proxy").stdout
        if leftover.strip():
            raise RuntimeError(f"daemon left state behind:\n{leftover[:500]}")
        return ready, reload, stop
    finally:
        notify.close()


NETLINK_ONLY = """
import json, subprocess, sys, time
from pathlib import Path
from publisher.config import load_config
from publisher.netlink import NetlinkManager, plan
cfg = load_config(sys.argv[1])
tun = cfg.translator.tun_device
state = Path(sys.argv[2])
nl = NetlinkManager(tun, state)
nl.recover_leftovers()
subprocess.run(["ip", "tuntap", "add", "mode", "tun", "name", tun], check=True)
nl.bring_up_tun(1500)
t0 = time.monotonic()
desired = plan(cfg, nl.onlink_prefixes())
t1 = time.monotonic()
nl.apply(desired)
t2 = time.monotonic()
nl.apply(desired)
t3 = time.monotonic()
nl.teardown()
t4 = time.monotonic()
print(json.dumps([t2 - t1, t3 - t2, t4 - t3, len(desired.routes), len(desired.proxies)]))
"""


def time_netlink(net: HomeRouterLab, tmp: Path, config: Path) -> tuple[float, float, float]:
    out = net.router.run(
        [sys.executable, "-c", NETLINK_ONLY, str(config), str(tmp / "nlstate.json")],
        cwd=str(ROOT),
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        timeout=300,
    ).stdout
    apply, reapply, teardown, _routes, _proxies = yaml.safe_load(out.splitlines()[-1])
    return apply, reapply, teardown


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mappings", type=int, nargs="+", default=[1, 10000])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--netlink-only", action="store_true")
    args = parser.parse_args()
    what = time_netlink if args.netlink_only else time_daemon
    cols = (
        ("apply", "unchanged apply", "teardown")
        if args.netlink_only
        else (
            "start to READY=1",
            "reload to READY=1",
            "stop",
        )
    )
    print(f"| mappings | proxy NDP | {' | '.join(cols)} |")
    print("|---|---|" + "---|" * len(cols))
    with Lab("start") as lab, tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        net = home_router_lab(lab, strict=False)
        for mappings in args.mappings:
            for proxy in (False, True):
                config = write_config(tmp, mappings, proxy)
                runs = [what(net, tmp, config) for _ in range(args.repeat)]
                medians = [statistics.median(col) for col in zip(*runs)]
                cells = " | ".join(f"{m:.2f} s" for m in medians)
                print(f"| {mappings:,} | {'on' if proxy else 'off'} | {cells} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
