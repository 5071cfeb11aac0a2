"""Memory of the revnat64 processes: idle, under load, with many leases and mappings.

    sudo .venv/bin/python bench/memory.py [--only-mappings]

Prints a Markdown table (supervisor RSS, worker RSS, RSS sum, PSS sum) for:
idle with the three mappings of a ``mappings.yaml.example``-like config;
during an iperf3 TCP run through a mapping; with 200 pool4 leases (UDP from
200 client addresses); and with 10,000 mappings, after one metrics scrape
and after twenty (a scrape's garbage sets a high-water mark).  RSS counts
the pages the forked worker still shares with the supervisor in both
processes; PSS (``/proc/PID/smaps_rollup``) splits each shared page between
its users, so the PSS sum is what the daemon really costs.
``--only-mappings`` skips the traffic rows (no iperf3 load on a shared
machine).  The numbers feed docs/install-openwrt.md and docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import run as bench_run  # noqa: E402
import yaml  # noqa: E402
from run import iperf, rss_kib, start_revnat64  # noqa: E402

from publisher.lab import DEVICE6, HomeRouterLab, Lab, Netns, home_router_lab, run  # noqa: E402


def pss_kib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return float(line.split()[1])
    return 0.0


def processes(router: Netns) -> tuple[list[float], float]:
    """RSS in MiB of the router namespace's processes (supervisor first), and their PSS sum."""
    pids = sorted(map(int, run(["ip", "netns", "pids", router.name]).stdout.split()))
    return [rss_kib(p) / 1024 for p in pids], sum(pss_kib(p) for p in pids) / 1024


def scrape(net: HomeRouterLab) -> None:
    """One metrics scrape, so the rows include what answering it leaves behind."""
    code = "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9864/metrics').read()"
    net.router.run([sys.executable, "-c", code])


def many_mappings(
    net: HomeRouterLab, tmp: Path, mappings: int, scrapes: int = 1
) -> tuple[list[float], float]:
    proc = start_revnat64(net, tmp, mappings=mappings, metrics=True)
    try:
        for _ in range(scrapes):
            scrape(net)
            time.sleep(0.5)
        time.sleep(1)
        return processes(net.router)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def traffic_rows(net: HomeRouterLab, tmp: Path) -> list[tuple[str, tuple[list[float], float]]]:
    """Idle, under iperf3 load and with 200 leases, three mappings, metrics on."""
    rows = []
    proc = start_revnat64(net, tmp, mappings=3, metrics=True)
    time.sleep(1)
    rows.append(("idle, 3 mappings, metrics on", processes(net.router)))
    loaded: list[tuple[list[float], float]] = []

    def sample() -> None:
        for _ in range(6):
            loaded.append(processes(net.router))
            time.sleep(1)

    sampler = threading.Thread(target=sample)
    sampler.start()
    iperf(net, 6, reverse=True)
    sampler.join()
    peak = [max(col) for col in zip(*(rss for rss, _ in loaded))]
    rows.append(("under load (iperf3 TCP, peak)", (peak, max(pss for _, pss in loaded))))
    for i in range(200):
        net.client.run(
            ["ip", "-6", "addr", "add", f"2001:db8:1::1:{i:x}/64", "dev", "wan0", "nodad"]
        )
    code = (
        "import socket, sys\n"
        "for i in range(200):\n"
        "    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)\n"
        "    s.bind((f'2001:db8:1::1:{i:x}', 0))\n"
        "    s.sendto(b'x', (sys.argv[1], 9))\n"
        "    s.close()\n"
    )
    net.client.run([sys.executable, "-c", code, DEVICE6])
    time.sleep(2)
    rows.append(("200 leases", processes(net.router)))
    proc.terminate()
    proc.wait(timeout=15)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only-mappings", action="store_true", help="skip the traffic rows")
    args = parser.parse_args()
    rows = []
    with Lab("mem") as lab, tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        net = home_router_lab(lab, strict=False)
        # A generous per-prefix limit, so one /64 can hold 200 leases.
        original = bench_run.revnat64_config

        def config(tmp: Path, mappings: int, metrics: bool) -> Path:
            path = original(tmp, mappings, metrics)
            data = yaml.safe_load(path.read_text())
            data["translator"]["lease_limit_per_prefix"] = 1024
            path.write_text(yaml.safe_dump(data))
            return path

        bench_run.revnat64_config = config
        if args.only_mappings:
            rows.append(("idle, 3 mappings, after a scrape", many_mappings(net, tmp, 3)))
        else:
            rows.extend(traffic_rows(net, tmp))
        rows.append(("idle, 10,000 mappings, after a scrape", many_mappings(net, tmp, 10000)))
        rows.append(("10,000 mappings, after 20 scrapes", many_mappings(net, tmp, 10000, 20)))
    print("| state | supervisor RSS | worker RSS | RSS sum | PSS sum |")
    print("| --- | --- | --- | --- | --- |")
    for state, (values, pss) in rows:
        sup, worker = values[0], sum(values[1:])
        print(
            f"| {state} | {sup:.1f} MiB | {worker:.1f} MiB | {sup + worker:.1f} MiB "
            f"| {pss:.1f} MiB |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
