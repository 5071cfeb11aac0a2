"""``revnat64 demo``: the whole job on one machine, in under a minute.

It builds three network namespaces with documentation addresses only,

    client (IPv6 only) ── router (revnat64) ── camera (IPv4 only)

starts a small camera web server (a page plus a JPEG snapshot) on the IPv4-only
host, runs the real daemon on the router with a generated config, fetches the
page and the snapshot from the client over IPv6, and shows what happened: what
the camera saw as the client's address, the DNS record revnat64 would publish,
and the daemon's counters.  Then it tears everything down, unless ``--keep``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml

from publisher.lab import (
    CLIENT6,
    DEVICE4,
    DEVICE6,
    POOL4,
    TRANSLATOR4,
    TRANSLATOR6,
    Lab,
    home_router_lab,
    run,
    wait_for,
)

DEMO_TAG = "demo"
CAMERA_PORT = 80
# A 1x1 grey baseline JPEG: enough for any image viewer to open the "snapshot".
SNAPSHOT_JPEG = bytes.fromhex(
    "ffd8ffe000104a46494600010100000100010000ffdb004300080606070605080707070909080a0c140d0c0b"
    "0b0c1912130f141d1a1f1e1d1a1c1c20242e2720222c231c1c2837292c30313434341f27393d38323c2e3334"
    "32ffc0000b080001000101011100ffc4001f0000010501010101010100000000000000000102030405060708"
    "090a0bffc400b5100002010303020403050504040000017d01020300041105122131410613516107227114"
    "328191a1082342b1c11552d1f02433627282090a161718191a25262728292a3435363738393a434445464748"
    "494a535455565758595a636465666768696a737475767778797a838485868788898a92939495969798999aa2"
    "a3a4a5a6a7a8a9aab2b3b4b5b6b7b8b9bac2c3c4c5c6c7c8c9cad2d3d4d5d6d7d8d9dae1e2e3e4e5e6e7e8e9"
    "eaf1f2f3f4f5f6f7f8f9faffda0008010100003f00fbd3ffd9"
)


class CameraHandler(BaseHTTPRequestHandler):
    """The IPv4-only "camera": it only ever sees IPv4 clients."""

    server_version = "DemoCam/1.0"

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        peer = self.client_address[0]
        if self.path == "/snapshot.jpg":
            body, ctype = SNAPSHOT_JPEG, "image/jpeg"
        elif self.path == "/whoami":
            body, ctype = peer.encode(), "text/plain"
        else:
            body = (
                "<html><head><title>Front door camera</title></head><body>"
                "<h1>Front door camera</h1>"
                f"<p>IPv4-only device at {DEVICE4}. You connected from <b>{peer}</b>.</p>"
                '<img src="/snapshot.jpg" alt="snapshot"></body></html>\n'
            ).encode()
            ctype = "text/html"
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        sys.stderr.write(f"camera: {self.client_address[0]} {format % args}\n")


def serve_camera(port: int = CAMERA_PORT) -> None:
    """Run the camera's web server (called inside the camera namespace)."""
    server = ThreadingHTTPServer(("0.0.0.0", port), CameraHandler)
    server.serve_forever()


def demo_config(tmp: Path, tun: str) -> dict[str, Any]:
    return {
        "translator": {
            "tun_device": tun,
            "ipv4_address": TRANSLATOR4,
            "ipv6_address": TRANSLATOR6,
            "pool4": POOL4,
        },
        "wan": {"interface": "wan0"},
        "lan": {"interface": "lan0"},
        "mappings": [
            {
                "name": "frontdoor-cam",
                "hostname": "frontdoor",
                "ipv6": DEVICE6,
                "ipv4": DEVICE4,
                "allow": ["tcp/80", "icmp"],
            }
        ],
        "firewall": {"enabled": _have_nft()},
        "dns": {"zone": "cam.example.org.", "ttl": 300},
        "metrics": {"listen": None},
        "daemon": {
            "state_dir": str(tmp / "state"),
            "control_socket": str(tmp / "control.sock"),
            "log_level": "info",
        },
    }


def _have_nft() -> bool:
    try:
        import publisher.firewall  # noqa: F401
    except ImportError:
        return False
    return shutil.which("nft") is not None


def _step(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def _client_fetch(lab_client: Any, url: str) -> bytes:
    code = (
        "import sys,urllib.request\n"
        f"sys.stdout.buffer.write(urllib.request.urlopen('{url}', timeout=10).read())\n"
    )
    proc = subprocess.run(
        lab_client.argv([sys.executable, "-c", code]), capture_output=True, timeout=30
    )
    if proc.returncode != 0:
        raise RuntimeError(f"fetching {url} from the client failed: {proc.stderr.decode()}")
    return proc.stdout


def _wait_ready(notify: socket.socket, daemon: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if daemon.poll() is not None:
            raise RuntimeError(f"revnat64 exited early:\n{log.read_text(errors='replace')}")
        notify.settimeout(0.5)
        try:
            if "READY=1" in notify.recv(4096).decode().splitlines():
                return
        except socket.timeout:
            continue
    raise RuntimeError("revnat64 did not become ready within 30 s")


def cleanup_leftovers() -> int:
    """Remove namespaces of demos left running with --keep (or killed)."""
    names = [line.split()[0] for line in run("ip netns list").stdout.splitlines() if line]
    ours = [n for n in names if n.startswith(f"rn64-{DEMO_TAG}-")]
    for name in ours:
        for pid in run(["ip", "netns", "pids", name], check=False).stdout.split():
            try:
                os.kill(int(pid), signal.SIGTERM)
            except (ProcessLookupError, ValueError):
                pass
    time.sleep(1.0 if ours else 0)
    for name in ours:
        run(["ip", "netns", "del", name], check=False)
    for tmp in Path(tempfile.gettempdir()).glob("revnat64-demo-*"):
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"removed {len(ours)} demo namespace(s)")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    if getattr(args, "cleanup", False):
        return cleanup_leftovers()
    if os.geteuid() != 0:
        print("revnat64 demo needs root (it creates network namespaces)", file=sys.stderr)
        return 1
    if not os.path.exists("/dev/net/tun"):
        print("revnat64 demo needs /dev/net/tun (modprobe tun)", file=sys.stderr)
        return 1
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="revnat64-demo-"))
    lab = Lab(DEMO_TAG)
    keep = bool(args.keep)
    try:
        return _demo(lab, tmp, keep, started)
    finally:
        if not keep:
            lab.close()
            shutil.rmtree(tmp, ignore_errors=True)


def _demo(lab: Lab, tmp: Path, keep: bool, started: float) -> int:
    from publisher.config import load_config

    _step("Building the lab: client (IPv6 only) -- router (revnat64) -- camera (IPv4 only)")
    net = home_router_lab(lab, strict=False)
    client, router, camera = net.client, net.router, net.device
    print(f"  client  {client.name:28} {CLIENT6}/64")
    print(f"  router  {router.name:28} wan0 2001:db8:1::1/64, lan0 192.0.2.1/24")
    print(f"  camera  {camera.name:28} {DEVICE4}/24, no IPv6 at all")

    _step(f"Starting the camera's web server on {DEVICE4}:{CAMERA_PORT}")
    camera_log = (tmp / "camera.log").open("wb")
    lab.processes.append(
        subprocess.Popen(
            camera.argv(
                [sys.executable, "-c", "from publisher.demo import serve_camera; serve_camera()"]
            ),
            stdout=camera_log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    )
    wait_for(
        lambda: (
            camera.run(
                [
                    sys.executable,
                    "-c",
                    f"import socket;socket.create_connection(('127.0.0.1',{CAMERA_PORT}),1)",
                ],
                check=False,
            ).returncode
            == 0
        ),
        timeout=15,
        what="the camera's web server",
    )

    tun = f"rn64demo{lab.uid}"[:15]
    config_path = tmp / "mappings.yaml"
    config_path.write_text(yaml.safe_dump(demo_config(tmp, tun), sort_keys=False))
    cfg = load_config(config_path)
    _step(f"Starting revnat64 on the router (config {config_path})")
    print(textwrap.indent(config_path.read_text().split("dns:")[0].rstrip(), "  | "))
    notify_path = tmp / "notify.sock"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    log_path = tmp / "revnat64.log"
    env = dict(os.environ, NOTIFY_SOCKET=str(notify_path))
    env.pop("JOURNAL_STREAM", None)
    with log_path.open("wb") as log_file:
        daemon = subprocess.Popen(
            router.argv([sys.executable, "-m", "publisher.cli", "run", "-c", str(config_path)]),
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    lab.processes.append(daemon)
    try:
        _wait_ready(notify, daemon, log_path)
    finally:
        notify.close()
    print(f"  ready: TUN {tun}, route {DEVICE6}/128 -> {tun}, pool4 {POOL4}")

    _step(f"Fetching http://[{DEVICE6}]/ from the IPv6-only client")
    page = _client_fetch(client, f"http://[{DEVICE6}]/").decode()
    title = page.split("<h1>")[1].split("</h1>")[0]
    print(f"  got {len(page)} bytes: {title!r}")
    snapshot = _client_fetch(client, f"http://[{DEVICE6}]/snapshot.jpg")
    if snapshot != SNAPSHOT_JPEG:
        raise RuntimeError("the snapshot arrived damaged")
    print(f"  snapshot.jpg: {len(snapshot)} bytes, intact")
    seen = _client_fetch(client, f"http://[{DEVICE6}]/whoami").decode()
    print(f"  the camera saw the client {CLIENT6} as {seen} (a pool4 lease)")
    ping = client.run(["ping", "-6", "-c", "3", "-i", "0.2", "-W", "2", DEVICE6], check=False)
    summary = [line for line in ping.stdout.splitlines() if "transmitted" in line]
    print(f"  ping6 {DEVICE6}: {summary[0] if summary else ping.stdout.strip()}")

    if cfg.firewall.enabled:
        code = (
            "import socket\ntry:\n"
            f"    socket.create_connection(('{DEVICE6}', 22), timeout=1)\n    print('open')\n"
            "except OSError as e:\n    print('blocked' if isinstance(e, TimeoutError) else e)\n"
        )
        probe = client.run([sys.executable, "-c", code], check=False).stdout.strip()
        print(f"  tcp/22 (not in the allow list): {probe} by the firewall")
        why = subprocess.run(
            router.argv(
                [sys.executable, "-m", "publisher.cli", "diagnose", "-c", str(config_path)]
                + [cfg.mappings[0].name, "tcp/22", "--from", CLIENT6]
            ),
            capture_output=True,
            text=True,
            timeout=30,
            env=env,
        )
        verdict = (why.stdout.strip().splitlines() or [why.stderr.strip()])[-1]
        print(f"  revnat64 diagnose {cfg.mappings[0].name} tcp/22: {verdict}")

    _step("The DNS record revnat64 would publish (revnat64 dns --format zone)")
    from publisher.dns_records import build_records, render

    zone = render(build_records(cfg), "zone")
    print(textwrap.indent("\n".join(ln for ln in zone.splitlines() if "AAAA" in ln.split()), "  "))
    _show_status(router, config_path)

    elapsed = time.monotonic() - started
    if keep:
        _step(f"Done in {elapsed:.1f} s. The lab keeps running; try it by hand:")
        print(
            textwrap.dedent(f"""\
              ip netns exec {client.name} curl -g 'http://[{DEVICE6}]/'
              ip netns exec {client.name} ping -6 -c 3 {DEVICE6}
              ip netns exec {router.name} ip -6 route show dev {tun}
              ip netns exec {router.name} nft list table inet revnat64
              ip netns exec {router.name} revnat64 diagnose -c {config_path} \\
                  {cfg.mappings[0].name} tcp/80 --from {CLIENT6}
              kill -HUP {daemon.pid}     # reload {config_path}
              revnat64 demo --cleanup   # remove the lab
            daemon log: {log_path}""")
        )
        return 0
    _step("Stopping revnat64 (SIGTERM) and removing the lab")
    os.kill(daemon.pid, signal.SIGTERM)
    status = daemon.wait(timeout=15)
    leftovers = router.run("ip -o link show", check=False).stdout.count(tun)
    print(f"  revnat64 exited with status {status}; TUN devices left behind: {leftovers}")
    print(f"\nDemo finished in {elapsed:.1f} s: an IPv4-only camera answered an IPv6 client.")
    return 0 if status == 0 and leftovers == 0 else 1


def _show_status(router: Any, config_path: Path) -> None:
    """The daemon's own view, exactly as ``revnat64 status`` prints it."""
    proc = subprocess.run(
        router.argv([sys.executable, "-m", "publisher.cli", "status", "-c", str(config_path)]),
        capture_output=True,
        text=True,
        timeout=20,
    )
    _step("The daemon's own counters (revnat64 status)")
    print(textwrap.indent((proc.stdout or proc.stderr).rstrip(), "  "))
