"""Memory of the revnat64 processes: idle, under load and with many leases.

    sudo .venv/bin/python bench/memory.py

Prints a Markdown table (supervisor RSS, worker RSS, total) for: idle with the
three mappings of ``mappings.yaml.example``-like config; during an iperf3 TCP
run through a mapping; with 200 pool4 leases (UDP from 200 client addresses).
The numbers feed docs/install-openwrt.md and docs/benchmarks.md.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import yaml  # noqa: E402
from run import iperf, rss_kib, start_revnat64  # noqa: E402

from publisher.lab import DEVICE6, Lab, Netns, home_router_lab, run  # noqa: E402


def processes(router: Netns) -> list[float]:
    """RSS in MiB of the router namespace's processes: supervisor first, then the worker."""
    pids = run(["ip", "netns", "pids", router.name]).stdout.split()  # asked from outside
    return [rss_kib(int(p)) / 1024 for p in sorted(pids, key=int)]


def main() -> int:
    rows = []
    with Lab("mem") as lab, tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        net = home_router_lab(lab, strict=False)
        # Three mappings and a generous per-prefix limit, so one /64 can hold 200 leases.
        import run as bench_run

        original = bench_run.revnat64_config

        def config(tmp: Path, mappings: int, metrics: bool) -> Path:
            path = original(tmp, mappings, metrics)
            data = yaml.safe_load(path.read_text())
            data["translator"]["lease_limit_per_prefix"] = 1024
            path.write_text(yaml.safe_dump(data))
            return path

        bench_run.revnat64_config = config
        proc = start_revnat64(net, tmp, mappings=3, metrics=True)
        time.sleep(1)
        rows.append(("idle, 3 mappings, metrics on", processes(net.router)))
        loaded: list[list[float]] = []

        def sample() -> None:
            loaded.append(processes(net.router))

        import threading

        sampler = threading.Thread(target=lambda: [sample() or time.sleep(1) for _ in range(6)])
        sampler.start()
        iperf(net, 6, reverse=True)
        sampler.join()
        peak = [max(col) for col in zip(*loaded)]
        rows.append(("under load (iperf3 TCP, peak)", peak))
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
    print("| state | supervisor RSS | worker RSS | total |")
    print("| --- | --- | --- | --- |")
    for state, values in rows:
        sup, worker = values[0], values[1] if len(values) > 1 else 0.0
        print(f"| {state} | {sup:.1f} MiB | {worker:.1f} MiB | {sup + worker:.1f} MiB |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
