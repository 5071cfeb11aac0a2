"""A home-router lab with the real revnat64 daemon running in the router namespace.

The daemon runs as ``python -m publisher.cli run`` inside the router's
namespace, exactly as a user would start it, with ``NOTIFY_SOCKET`` pointing at
a datagram socket the test owns: the lab waits for the daemon's own
``READY=1`` instead of sleeping, and sees every RELOADING/READY it sends.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from tests.netlab import (
    DEVICE4,
    DEVICE6,
    POOL4,
    TRANSLATOR4,
    TRANSLATOR6,
    HomeRouterLab,
    Lab,
    home_router_lab,
)

ROOT = Path(__file__).resolve().parents[2]
ECHO_SERVER = ROOT / "tests" / "integration" / "udp_echo.py"


def base_config(tmp: Path, tun: str, **overrides: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
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
                "name": "camera",
                "ipv6": DEVICE6,
                "ipv4": DEVICE4,
                "allow": ["tcp/1-65535", "udp/1-65535", "icmp"],
            },
        ],
        "firewall": {"enabled": False},
        "metrics": {"listen": None},
        "daemon": {
            "state_dir": str(tmp / "state"),
            "control_socket": str(tmp / "control.sock"),
            "log_level": "debug",
        },
    }
    for key, value in overrides.items():
        cfg[key] = value
    return cfg


class DaemonLab:
    """The lab plus a running daemon; ``close()`` stops it and removes the lab."""

    def __init__(
        self,
        lab: Lab,
        tmp: Path,
        config: dict[str, Any] | None = None,
        wan_mtu: int = 1500,
        lan_mtu: int = 1500,
    ) -> None:
        self.lab = lab
        self.tmp = tmp
        self.tun = f"rn64{lab.uid}"[:15]
        self.net: HomeRouterLab = home_router_lab(lab, wan_mtu=wan_mtu, lan_mtu=lan_mtu)
        self.config_path = tmp / "mappings.yaml"
        self.write_config(config or base_config(tmp, self.tun))
        self.notify_path = tmp / "notify.sock"
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(str(self.notify_path))
        self.log_path = tmp / "daemon.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def client(self):  # type: ignore[no-untyped-def]
        return self.net.client

    @property
    def router(self):  # type: ignore[no-untyped-def]
        return self.net.router

    @property
    def device(self):  # type: ignore[no-untyped-def]
        return self.net.device

    def write_config(self, cfg: dict[str, Any]) -> None:
        self.config = cfg
        self.config_path.write_text(yaml.safe_dump(cfg))

    def launch(self) -> subprocess.Popen[bytes]:
        """Start the daemon and return at once (start() also waits for READY=1)."""
        env = dict(os.environ, NOTIFY_SOCKET=str(self.notify_path), PYTHONPATH=str(ROOT))
        env.pop("JOURNAL_STREAM", None)
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed with the process
        self.proc = self.router.popen(
            [sys.executable, "-m", "publisher.cli", "run", "-c", str(self.config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=str(ROOT),
        )
        log.close()
        return self.proc

    def start(self, timeout: float = 20.0) -> None:
        self.launch()
        self.expect_notify("READY=1", timeout)

    def expect_notify(self, wanted: str, timeout: float = 20.0) -> list[str]:
        """Wait for a notify datagram containing ``wanted``; return every line seen."""
        deadline = time.monotonic() + timeout
        seen: list[str] = []
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited with {self.proc.returncode}:\n{self.logs()}")
            self.notify.settimeout(max(0.05, min(0.5, deadline - time.monotonic())))
            try:
                data = self.notify.recv(4096).decode()
            except socket.timeout:
                continue
            seen.extend(data.splitlines())
            if wanted in data.splitlines():
                return seen
        raise TimeoutError(f"no {wanted} from the daemon in {timeout}s; saw {seen}\n{self.logs()}")

    def reload(self) -> list[str]:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGHUP)
        seen = self.expect_notify("READY=1")
        assert "RELOADING=1" in seen, seen
        return seen

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        assert self.proc is not None
        os.kill(self.proc.pid, sig)
        return self.proc.wait(timeout=timeout)

    def logs(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.stop(timeout=10)
            except Exception:
                self.proc.kill()
        self.notify.close()

    # -- traffic helpers -----------------------------------------------------

    def start_udp_echo(self, port: int = 7) -> None:
        self.device.popen([sys.executable, str(ECHO_SERVER), "0.0.0.0", str(port)])
        self.device.run(
            [
                sys.executable,
                "-c",
                f"import socket,time\nfor _ in range(100):\n"
                f"  s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);s.settimeout(0.1)\n"
                f"  s.sendto(b'x',('127.0.0.1',{port}))\n"
                f"  try:\n    s.recv(10); break\n  except OSError: time.sleep(0.05)",
            ],
        )

    def udp_echo(self, size: int, dst: str = DEVICE6, port: int = 7, count: int = 1) -> int:
        """Send ``count`` datagrams of ``size`` bytes; return how many came back intact."""
        code = (
            "import os,socket,sys\n"
            f"s=socket.socket(socket.AF_INET6,socket.SOCK_DGRAM);s.settimeout(2)\n"
            "ok=0\n"
            f"for i in range({count}):\n"
            f"  data=os.urandom({size})\n"
            f"  s.sendto(data,('{dst}',{port}))\n"
            "  try:\n"
            "    back=s.recv(65535)\n"
            "    ok+= back==data\n"
            "  except OSError: pass\n"
            "print(ok)\n"
        )
        out = self.client.run([sys.executable, "-c", code], timeout=5 + 3 * count).stdout
        return int(out.strip())


def open_daemon_lab(lab: Lab, tmp: Path, **kw: Any) -> DaemonLab:
    return DaemonLab(lab, tmp, **kw)
