"""Where a ping's added round trip goes, hop by hop: Tayga against revnat64.

    sudo .venv/bin/python bench/latency_hops.py [--count 100] [--interval 0.02]

``bench/run.py`` and ``bench/latency_floor.py`` measure the added RTT as a
whole.  This one builds the same lab for each translator in turn, captures
the pings with tcpdump on the router's WAN veth, the TUN and the LAN veth
(nanosecond timestamps, one capture per interface), pairs the packets of each
echo by sequence number, and prints the median time of every hop:

* ``wan -> tun``: the kernel routes the IPv6 request into the TUN;
* ``translate request``: the translator reads it, translates, writes the
  IPv4 packet back (this includes its wake-up);
* ``tun -> lan``, ``device``, ``lan -> tun``: the kernel forwards to the
  device, the device answers, the reply is routed into the TUN;
* ``translate reply`` and ``tun -> wan``: the same way back.

It shows that the translator's own two hops are where revnat64 and Tayga
differ, and that the reply is already queued when the request's write
returns (the ``lan -> tun`` hop is a few microseconds).
"""

from __future__ import annotations

import argparse
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from latency_floor import Starter, rtts_ms  # noqa: E402
from run import TUN, start_revnat64, start_tayga  # noqa: E402

from publisher.lab import DEVICE6, Lab, home_router_lab  # noqa: E402

CONTENDERS: tuple[tuple[str, Starter], ...] = (("tayga", start_tayga), ("revnat64", start_revnat64))
# (interface, IP version, echo kind) in the order one echo passes them.
POINTS = (
    ("wan0", 6, "request"),
    (TUN, 6, "request"),
    (TUN, 4, "request"),
    ("lan0", 4, "request"),
    ("lan0", 4, "reply"),
    (TUN, 4, "reply"),
    (TUN, 6, "reply"),
    ("wan0", 6, "reply"),
)
HOPS = (
    "wan -> tun",
    "translate request",
    "tun -> lan",
    "device",
    "lan -> tun",
    "translate reply",
    "tun -> wan",
)

Point = tuple[str, int, str]


def parse_capture(text: str, dev: str) -> dict[int, dict[Point, float]]:
    """Echo sequence number -> {(dev, version, kind): timestamp} from ``tcpdump -tt`` lines."""
    out: dict[int, dict[Point, float]] = {}
    for line in text.splitlines():
        if "echo request" not in line and "echo reply" not in line:
            continue
        words = line.split()
        try:
            when = float(words[0])
            seq = int(line.split("seq ")[1].split(",")[0].split()[0])
        except (IndexError, ValueError):
            continue
        version = 6 if " IP6 " in line else 4
        kind = "request" if "echo request" in line else "reply"
        out.setdefault(seq, {})[(dev, version, kind)] = when
    return out


def hops_us(name: str, starter: Starter, count: int, interval: str) -> dict[str, float]:
    """Median microseconds per hop for ``count`` pings through one translator."""
    with Lab("hops") as lab, tempfile.TemporaryDirectory() as tmpdir:
        net = home_router_lab(lab, strict=False)
        proc = starter(net, Path(tmpdir))
        captures: dict[str, subprocess.Popen[bytes]] = {}
        try:
            time.sleep(0.5)
            rtts_ms(net, DEVICE6, 5)  # neighbour discovery and the lease first
            for dev in ("wan0", TUN, "lan0"):
                argv = ["tcpdump", "-i", dev, "-nn", "-l", "-tt", "--time-stamp-precision=nano"]
                captures[dev] = net.router.popen(
                    [*argv, "icmp or icmp6"],
                    stdout=open(f"{tmpdir}/{dev}.txt", "wb"),  # noqa: SIM115 - closed by exit
                    stderr=subprocess.DEVNULL,
                )
            time.sleep(1.0)  # tcpdump is listening
            net.client.run(
                ["ping", "-6", "-c", str(count), "-i", interval, DEVICE6],
                check=False,
                timeout=count + 10,
            )
            time.sleep(0.5)
        finally:
            for capture in captures.values():
                capture.send_signal(signal.SIGINT)
                capture.wait(timeout=10)
            proc.terminate()
            proc.wait(timeout=15)
        seen: dict[int, dict[Point, float]] = {}
        for dev in captures:
            for seq, points in parse_capture(Path(f"{tmpdir}/{dev}.txt").read_text(), dev).items():
                seen.setdefault(seq, {}).update(points)
    per_hop: dict[str, list[float]] = {hop: [] for hop in (*HOPS, "total")}
    for points in seen.values():
        if not all(p in points for p in POINTS):
            continue
        times = [points[p] for p in POINTS]
        for hop, a, b in zip(HOPS, times, times[1:]):
            per_hop[hop].append((b - a) * 1e6)
        per_hop["total"].append((times[-1] - times[0]) * 1e6)
    if len(per_hop["total"]) < count // 2:
        raise RuntimeError(f"{name}: only {len(per_hop['total'])} of {count} echoes seen whole")
    return {hop: statistics.median(v) for hop, v in per_hop.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=100, help="pings per translator")
    parser.add_argument("--interval", default="0.02", help="seconds between pings")
    args = parser.parse_args()
    results = {name: hops_us(name, run_, args.count, args.interval) for name, run_ in CONTENDERS}
    print(f"{'hop':18} " + " ".join(f"{name:>9}" for name in results))
    for hop in (*HOPS, "total"):
        print(f"{hop:18} " + " ".join(f"{r[hop]:7.1f}us" for r in results.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
