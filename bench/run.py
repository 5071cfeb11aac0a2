"""Side-by-side benchmark: Tayga 0.9.2 and revnat64 in the same lab, in the same run.

    sudo .venv/bin/python bench/run.py [--seconds 10] [--json bench/results/latest.json]

For each translator the lab is built fresh (client -- router -- device, as in
the tests, but with the kernel's default offloads: this is the throughput
lab, not the checksum lab), the translator is started on the router with the
same routes and MTU, and then:

* iperf3 TCP, device -> client (``-R``) and client -> device;
* iperf3 UDP with 64-byte payloads, client -> device: packets received/s,
  three times: with the kernel's defaults (veth: GRO off), with GRO and
  ``rx-udp-gro-forwarding`` on the router's wan0 and lan0 (what
  ``translator.udp_gro_forwarding`` sets), and with that plus threaded NAPI on
  the router's wan0.  The third one is a lab device: a sender in the next
  namespace runs veth's NAPI poll in its own softirq right after each send,
  one datagram per poll, so GRO has nothing to merge; a NAPI thread lets
  datagrams queue up the way a NIC's interrupt coalescing does.  Both
  translators get the same settings;
* ping6 through the translator: median RTT (and the router-only baseline);
* translator RSS (from /proc), idle and after the run;
* revnat64 only: 10,000 mappings vs 1, and metrics on vs off.

It prints a table of absolute figures and ratios (revnat64 / Tayga) and writes
JSON.  Absolute numbers on a shared 2-core machine are noise; the ratios of
runs taken minutes apart on the same machine are the result.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402

from publisher.lab import (  # noqa: E402
    DEVICE4,
    DEVICE6,
    POOL4,
    TRANSLATOR4,
    TRANSLATOR6,
    HomeRouterLab,
    Lab,
    home_router_lab,
    run,
    wait_for,
)

TUN = "nat64"
INTERVAL = "0.02"
WORKERS = 1  # --workers: revnat64 translator.workers
PARALLEL = 1  # --parallel: iperf3 streams (one flow stays on one TUN queue)


@dataclass
class Result:
    name: str
    figures: dict[str, float] = field(default_factory=dict)


def rss_kib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return float(line.split()[1])
    return 0.0


def translator_rss_kib(net: HomeRouterLab) -> float:
    """RSS of every process in the router namespace: the translator's (revnat64 has two)."""
    pids = run(["ip", "netns", "pids", net.router.name]).stdout.split()  # asked from outside
    total = 0.0
    for pid in pids:
        try:
            total += rss_kib(int(pid))
        except (OSError, ValueError):
            pass
    return total


def route_tun(net: HomeRouterLab) -> None:
    """The routes Tayga users add by hand (revnat64 adds the same ones itself)."""
    r = net.router
    r.run(f"ip link set {TUN} up")
    r.run(f"ip -6 route replace {DEVICE6}/128 dev {TUN}")
    r.run(f"ip -6 route replace {TRANSLATOR6}/128 dev {TUN}")
    r.run(f"ip route replace {POOL4} dev {TUN}")
    r.sysctl("net.ipv6.conf.all.forwarding", 1)
    r.sysctl("net.ipv4.ip_forward", 1)


def start_tayga(net: HomeRouterLab, tmp: Path) -> subprocess.Popen[bytes]:
    conf = tmp / "tayga.conf"
    (tmp / "tayga-data").mkdir(exist_ok=True)
    conf.write_text(
        f"tun-device {TUN}\nipv4-addr {TRANSLATOR4}\nipv6-addr {TRANSLATOR6}\n"
        f"dynamic-pool {POOL4}\nmap {DEVICE4} {DEVICE6}\ndata-dir {tmp / 'tayga-data'}\n"
    )
    net.router.run(["tayga", "--config", str(conf), "--mktun"])
    proc = net.router.popen(
        ["tayga", "--config", str(conf), "--nodetach"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for(lambda: TUN in net.router.run("ip -o link").stdout, what="tayga's TUN")
    route_tun(net)
    return proc


def revnat64_config(tmp: Path, mappings: int, metrics: bool) -> Path:
    maps: list[dict[str, Any]] = [
        {"name": "device", "ipv6": DEVICE6, "ipv4": DEVICE4, "allow": ["tcp/1-65535"]}
    ]
    for i in range(1, mappings):
        # Filler mappings, never sent to: 2001:db8:f00::/112 <-> 198.18.0.0/15.  The
        # IPv4 documentation ranges hold 768 addresses, too few for 10,000 one-to-one
        # mappings, so the IPv4 side takes RFC 2544's benchmarking range instead, which
        # is reserved for labs like this one and never routed (RFC 6890).
        maps.append(
            {
                "name": f"filler-{i}",
                "ipv6": f"2001:db8:f00::{i:x}",
                "ipv4": f"198.{18 + (i >> 16)}.{(i >> 8) & 255}.{i & 255}",
            }
        )
    cfg = {
        "translator": {
            "tun_device": TUN,
            "ipv4_address": TRANSLATOR4,
            "ipv6_address": TRANSLATOR6,
            "pool4": POOL4,
            "workers": WORKERS,
        },
        "wan": {"interface": "wan0", "proxy_ndp": False},
        "lan": {"interface": "lan0"},
        "mappings": maps,
        "firewall": {"enabled": False},
        "metrics": {"listen": "127.0.0.1:9864" if metrics else None},
        "daemon": {
            "state_dir": str(tmp / "state"),
            "control_socket": str(tmp / "ctl.sock"),
            "log_level": "warning",
        },
    }
    path = tmp / f"revnat64-{mappings}-{int(metrics)}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def start_revnat64(
    net: HomeRouterLab, tmp: Path, mappings: int = 1, metrics: bool = False
) -> subprocess.Popen[bytes]:
    config = revnat64_config(tmp, mappings, metrics)
    notify_path = tmp / f"notify-{time.monotonic_ns()}.sock"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    env = dict(os.environ, NOTIFY_SOCKET=str(notify_path), PYTHONPATH=str(ROOT))
    proc = net.router.popen(
        [sys.executable, "-m", "publisher.cli", "run", "-c", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
    )
    notify.settimeout(60)
    try:
        while "READY=1" not in notify.recv(4096).decode():
            pass
    finally:
        notify.close()
    return proc


def iperf(net: HomeRouterLab, seconds: int, reverse: bool = False, udp: bool = False) -> float:
    """Bits/s (TCP) or packets/s received (UDP 64-byte) through the translator."""
    server = net.device.popen(
        ["iperf3", "-s", "-1", "-B", DEVICE4], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    time.sleep(0.3)
    args = ["iperf3", "-c", DEVICE6, "-t", str(seconds), "-J", "-P", str(PARALLEL)]
    if reverse:
        args.append("-R")
    if udp:
        args += ["-u", "-l", "64", "-b", "0"]
    out = net.client.run(args, timeout=seconds + 30, check=False).stdout
    server.wait(timeout=10)
    try:
        end = json.loads(out)["end"]
    except (ValueError, KeyError):
        return 0.0
    if udp:
        s = end["sum"]
        return float((s["packets"] - s["lost_packets"]) / s["seconds"])
    return float(end["sum_received"]["bits_per_second"])


def udp_gro_forwarding(net: HomeRouterLab, on: bool, threaded: bool = False) -> None:
    """GRO + UDP GRO forwarding on the router's interfaces (as the daemon's option does)."""
    value = "on" if on else "off"
    threaded_napi = ["sh", "-c", f"echo {int(threaded)} > /sys/class/net/wan0/threaded"]
    if not on:
        net.router.run(threaded_napi)  # only while NAPI exists, i.e. while GRO is on
    for dev in ("wan0", "lan0"):
        net.router.run(["ethtool", "-K", dev, "gro", value, "rx-udp-gro-forwarding", value])
    if on:
        net.router.run(threaded_napi)


def ping_median_ms(net: HomeRouterLab, dst: str, count: int = 50) -> float:
    out = net.client.run(
        ["ping", "-6", "-c", str(count), "-i", INTERVAL, dst], check=False, timeout=count + 10
    ).stdout
    rtts = [
        float(line.split("time=")[1].split()[0]) for line in out.splitlines() if "time=" in line
    ]
    return statistics.median(rtts) if rtts else float("nan")


def measure(name: str, starter: Any, seconds: int, extra: bool, flood: int = 0) -> Result:
    result = Result(name)
    with Lab("bench") as lab, tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        net = home_router_lab(lab, strict=False)
        proc = starter(net, tmp)
        time.sleep(0.5)
        result.figures["rss_idle_kib"] = translator_rss_kib(net)
        router_rtt = ping_median_ms(net, "2001:db8:1::1")
        result.figures["ping_median_ms"] = ping_median_ms(net, DEVICE6)
        result.figures["added_rtt_ms"] = result.figures["ping_median_ms"] - router_rtt
        result.figures["tcp_device_to_client_bps"] = iperf(net, seconds, reverse=True)
        result.figures["tcp_client_to_device_bps"] = iperf(net, seconds)
        result.figures["udp64_pps"] = iperf(net, seconds, udp=True)
        udp_gro_forwarding(net, True)
        result.figures["udp64_pps_gro_fwd"] = iperf(net, seconds, udp=True)
        udp_gro_forwarding(net, True, threaded=True)
        result.figures["udp64_pps_gro_fwd_threaded_napi"] = iperf(net, seconds, udp=True)
        udp_gro_forwarding(net, False)
        result.figures["rss_after_kib"] = translator_rss_kib(net)
        if flood:
            iperf(net, flood, udp=True)
            result.figures["rss_after_flood_kib"] = translator_rss_kib(net)
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=15)
        if extra:
            for mappings, metrics, key in ((10000, False, "10k_mappings"), (1, True, "metrics_on")):
                proc = start_revnat64(net, tmp, mappings=mappings, metrics=metrics)
                time.sleep(0.5)
                result.figures[f"tcp_device_to_client_bps_{key}"] = iperf(net, seconds, True)
                result.figures[f"rss_{key}_kib"] = translator_rss_kib(net)
                os.kill(proc.pid, signal.SIGTERM)
                proc.wait(timeout=15)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=10, help="per iperf3 run (default 10)")
    parser.add_argument("--json", default=str(ROOT / "bench" / "results" / "latest.json"))
    parser.add_argument("--only", choices=("tayga", "revnat64"), help="run just one")
    parser.add_argument("--workers", type=int, default=1, help="revnat64 translator.workers")
    parser.add_argument("--parallel", type=int, default=1, help="iperf3 streams (-P)")
    parser.add_argument(
        "--flood-seconds", type=int, default=60, help="UDP flood before the last RSS reading"
    )
    args = parser.parse_args()
    global WORKERS, PARALLEL
    WORKERS, PARALLEL = args.workers, args.parallel
    if shutil.which("tayga") is None and args.only != "revnat64":
        print("tayga is not installed (apt install tayga)", file=sys.stderr)
        return 1
    results = []
    if args.only != "revnat64":
        results.append(
            measure("tayga", start_tayga, args.seconds, extra=False, flood=args.flood_seconds)
        )
    if args.only != "tayga":
        results.append(
            measure("revnat64", start_revnat64, args.seconds, extra=True, flood=args.flood_seconds)
        )
    report(results, Path(args.json))
    return 0


def report(results: list[Result], json_path: Path) -> None:
    by = {r.name: r.figures for r in results}
    keys = sorted({k for r in results for k in r.figures})
    print(f"\n{'figure':38} " + " ".join(f"{r.name:>14}" for r in results) + "   ratio")
    for key in keys:
        row = [by[r.name].get(key) for r in results]
        cells = " ".join(f"{_fmt(key, v):>14}" for v in row)
        ratio = ""
        if len(results) == 2 and row[0] and row[1]:
            ratio = f"{row[1] / row[0]:7.2f}x"
        print(f"{key:38} {cells}   {ratio}")
    rn = by.get("revnat64", {})
    if rn.get("tcp_device_to_client_bps") and rn.get("tcp_device_to_client_bps_10k_mappings"):
        r = rn["tcp_device_to_client_bps_10k_mappings"] / rn["tcp_device_to_client_bps"]
        print(f"revnat64 10k mappings vs 1: {r:.2f}x")
    if rn.get("tcp_device_to_client_bps") and rn.get("tcp_device_to_client_bps_metrics_on"):
        r = rn["tcp_device_to_client_bps_metrics_on"] / rn["tcp_device_to_client_bps"]
        print(f"revnat64 metrics on vs off: {r:.2f}x")
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(
        json.dumps(
            {
                "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "machine": {
                    "kernel": platform.release(),
                    "cpus": os.cpu_count(),
                    "python": platform.python_version(),
                },
                "results": by,
            },
            indent=2,
        )
    )
    print(f"\nwrote {json_path}")


def _fmt(key: str, value: float | None) -> str:
    if value is None:
        return "-"
    if key.endswith("_bps") or "_bps_" in key:
        return f"{value / 1e9:.2f} Gbit/s"
    if key.endswith("_kib"):
        return f"{value / 1024:.1f} MiB"
    if "_pps" in key:
        return f"{value / 1000:.1f} kpps"
    return f"{value:.3f} ms" if key.endswith("_ms") else f"{value:.2f}"


if __name__ == "__main__":
    sys.exit(main())
