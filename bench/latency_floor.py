"""How much round-trip time any Python translator adds here: Tayga, the floor, revnat64.

    sudo .venv/bin/python bench/latency_floor.py [--rounds 3] [--count 100] [--strict]

Issue 8 asks for at most 1.5x Tayga's added ping latency.  This benchmark
shows how much of that is within reach of Python at all.  It builds the
``bench/run.py`` lab fresh for each of three contenders, in turns, and pings the
device through each one:

* ``tayga``: Tayga 0.9.2 (C);
* ``floor``: ``bench/echo_probe.py``, a Python loop that carries one echo flow
  with everything precomputed and nothing checked, waiting as revnat64's
  worker does (``poll``, then non-blocking reads).  It is the least any Python
  translator built that way can do per packet;
* ``floor_blocking``: the same probe sleeping in a blocking ``read``;
* ``revnat64``: the real daemon, with the same configuration as ``bench/run.py``.

Added latency is the median ping RTT to the device minus the median to the
router's own address, as in ``bench/run.py``.  The report gives the median over
all rounds and the ratios to Tayga.  ``--strict`` turns checksum offloads off
on the lab's veths, so the end hosts verify every checksum (the probe's
included).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from run import TUN, route_tun, start_revnat64, start_tayga  # noqa: E402

from publisher.lab import (  # noqa: E402
    CLIENT6,
    DEVICE4,
    DEVICE6,
    ROUTER_WAN6,
    HomeRouterLab,
    Lab,
    home_router_lab,
)

PROBE_CLIENT4 = "198.51.100.2"  # the first pool4 address, as a pool lease would be
INTERVAL = "0.02"


def start_probe(net: HomeRouterLab, blocking: bool) -> subprocess.Popen[bytes]:
    probe = ROOT / "bench" / "echo_probe.py"
    wait = ["--blocking"] if blocking else []
    proc = net.router.popen(
        [sys.executable, str(probe), *wait, TUN, CLIENT6, DEVICE6, PROBE_CLIENT4, DEVICE4],
        stdout=subprocess.PIPE,
    )
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != b"ready":
        proc.kill()
        raise RuntimeError("echo_probe.py did not start")
    route_tun(net)
    return proc


def start_floor(net: HomeRouterLab, tmp: Path) -> subprocess.Popen[bytes]:
    return start_probe(net, blocking=False)


def start_floor_blocking(net: HomeRouterLab, tmp: Path) -> subprocess.Popen[bytes]:
    return start_probe(net, blocking=True)


Starter = Callable[[HomeRouterLab, Path], "subprocess.Popen[bytes]"]
CONTENDERS: tuple[tuple[str, Starter], ...] = (
    ("tayga", start_tayga),
    ("floor", start_floor),
    ("floor_blocking", start_floor_blocking),
    ("revnat64", start_revnat64),
)


def rtts_ms(net: HomeRouterLab, dst: str, count: int) -> list[float]:
    out = net.client.run(
        ["ping", "-6", "-c", str(count), "-i", INTERVAL, dst], check=False, timeout=count + 10
    ).stdout
    lines = [line for line in out.splitlines() if "time=" in line]
    return [float(line.split("time=")[1].split()[0]) for line in lines]


def added_ms(name: str, starter: Starter, count: int, strict: bool) -> float:
    with Lab("floor") as lab, tempfile.TemporaryDirectory() as tmpdir:
        net = home_router_lab(lab, strict=strict)
        proc = starter(net, Path(tmpdir))
        try:
            time.sleep(0.5)
            rtts_ms(net, DEVICE6, 5)  # neighbour discovery and leases settle first
            router = rtts_ms(net, ROUTER_WAN6, count)
            device = rtts_ms(net, DEVICE6, count)
        finally:
            proc.terminate()
            proc.wait(timeout=15)
    if len(device) < count // 2 or not router:
        raise RuntimeError(f"{name}: only {len(device)} of {count} pings came back")
    return statistics.median(device) - statistics.median(router)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--count", type=int, default=100, help="pings per measurement")
    parser.add_argument("--strict", action="store_true", help="end hosts verify checksums")
    parser.add_argument("--json", default=str(ROOT / "bench" / "results" / "latency_floor.json"))
    args = parser.parse_args()
    runs: dict[str, list[float]] = {name: [] for name, _ in CONTENDERS}
    for r in range(args.rounds):
        for name, starter in CONTENDERS:
            ms = added_ms(name, starter, args.count, args.strict)
            runs[name].append(ms)
            print(f"round {r + 1} {name:15} added {ms * 1000:6.1f} us", flush=True)
    medians = {name: statistics.median(v) for name, v in runs.items()}
    tayga = medians["tayga"]
    print(f"\n{'contender':10} {'added RTT':>10} {'vs tayga':>9}")
    for name, ms in medians.items():
        print(f"{name:10} {ms * 1000:7.1f} us {ms / tayga:8.2f}x")
    print(f"revnat64 above the floor: {(medians['revnat64'] - medians['floor']) * 1000:.1f} us")
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps(
            {
                "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "strict": args.strict,
                "added_ms": runs,
                "ratio_to_tayga": {n: ms / tayga for n, ms in medians.items()},
            },
            indent=2,
        )
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
