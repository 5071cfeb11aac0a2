"""`revnat64 diagnose` against the real kernel, nftables and daemon.

One lab, broken and mended one piece at a time: each fault must be the place
the report says the packet stops, and mending it must clear the report.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from publisher.config import parse_config
from publisher.diagnose import check_name, parse_probe
from tests.dnsservers import ZONE, running_named
from tests.integration.daemon_lab import ROOT, DaemonLab, base_config
from tests.netlab import CLIENT6, DEVICE6, ROUTER_LAN4, wait_for

PRINTER6 = "2001:db8:1::50"  # on-link on the router's WAN /64: needs proxy NDP
PRINTER4 = "192.0.2.60"  # nothing answers there


FW4 = """
table inet fw4 {
    chain forward {
        type filter hook forward priority filter; policy drop;
        ct state established,related accept
    }
}
"""


def diagnose(d: DaemonLab, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    argv = [sys.executable, "-m", "publisher.cli", "diagnose", "-c", str(d.config_path), *args]
    return d.router.run(argv, env=env, cwd=str(ROOT), check=False)


def diagnose_cli(d: DaemonLab, command: str, *args: str) -> str:
    """Another ``revnat64`` command for the same config, in the router; its stdout."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    argv = [sys.executable, "-m", "publisher.cli", command, "-c", str(d.config_path), *args]
    return d.router.run(argv, env=env, cwd=str(ROOT)).stdout


def stops_at(d: DaemonLab, *args: str) -> str:
    """The step the report stops at ("" when nothing stops the packet)."""
    result = diagnose(d, *args)
    last = result.stdout.strip().splitlines()[-1]
    if last == "nothing on this router stops it":
        assert result.returncode == 0, result.stdout + result.stderr
        return ""
    assert result.returncode == 1, result.stdout + result.stderr
    assert last.startswith("stops at "), result.stdout
    return last.removeprefix("stops at ").split(":")[0]


def ping(d: DaemonLab, dst: str = DEVICE6, count: int = 1) -> bool:
    out = d.client.run(["ping", "-6", "-c", str(count), "-i", "0.2", "-W", "1", dst], check=False)
    return f"{count} received" in out.stdout


def watch_while_pinging(d: DaemonLab) -> tuple[int, str]:
    """``diagnose --watch`` while the client sends three pings; its exit code and output."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    argv = [sys.executable, "-m", "publisher.cli", "diagnose", "-c", str(d.config_path)]
    proc = d.router.popen(
        [*argv, "camera", "--from", CLIENT6, "--watch", "4"],
        env=env,
        cwd=str(ROOT),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # the static report, then the watch starts
            if line.startswith("watching camera"):
                break
        ping(d, count=3)
        rest = proc.stdout.read()
        return proc.wait(timeout=15), rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_diagnose_finds_each_fault_in_a_real_router(dlab: DaemonLab) -> None:
    d = dlab
    cfg = base_config(d.tmp, d.tun)
    cfg["mappings"][0]["allow"] = ["tcp/80", "icmp"]
    cfg["mappings"].append({"name": "printer", "ipv6": PRINTER6, "ipv4": PRINTER4})
    cfg["firewall"] = {"enabled": True, "check_interval": 0}
    d.write_config(cfg)
    camera = ("camera", "icmp", "--from", CLIENT6)

    # Nothing running: the daemon is the first thing missing.
    assert stops_at(d, *camera) == "daemon"

    # The device has no way back: the router is fine, the counters say one way only.
    d.device.run("ip route del default")
    d.start()

    # The printer is on-link on the WAN: it needs proxy NDP, and the entry the
    # daemon made is found in the kernel's proxy table. (Deleted by hand, the daemon
    # puts it back within moments: test_network_repair_e2e.py; the report for a
    # missing entry is in the unit tests.)
    result = diagnose(d, "printer", "--from", CLIENT6)
    assert "ok    proxy-ndp   answered on wan0" in result.stdout, result.stdout
    # The same report for scripts, here for a port the firewall does not allow.
    out = diagnose(d, "printer", "tcp/22", "--from", CLIENT6, "--json").stdout
    report = json.loads(out)
    assert report["stops_at"]["step"] == "firewall"
    assert report["probe"] == {
        "client": CLIENT6,
        "target": PRINTER6,
        "service": "tcp/22",
        "mapping": "printer",
        "device": PRINTER4,
    }
    assert {f["level"] for f in report["findings"]} <= {"ok", "info", "warn", "fail"}
    steps = [f["step"] for f in report["findings"]]
    assert steps[:5] == ["mapping", "daemon", "forwarding", "route6", "proxy-ndp"]
    assert not ping(d)
    result = diagnose(d, *camera)
    assert result.returncode == 0, result.stdout
    assert "camera has never answered through the translator" in result.stdout
    code, out = watch_while_pinging(d)
    assert code == 1 and "3 packet(s) went to camera and nothing came back" in out, out
    d.device.run(f"ip route add default via {ROUTER_LAN4} dev lan0")
    code, out = watch_while_pinging(d)
    assert code == 0 and "camera: 3 to the device, 3 back: traffic flows both ways" in out, out
    result = diagnose(d, "camera", "tcp/80", "--from", CLIENT6)
    assert result.returncode == 0, result.stdout
    assert "never answered" not in result.stdout
    assert f"{CLIENT6} -> 198.51.100." in result.stdout  # the real lease, from status
    assert "192.0.2.50 answer" in result.stdout  # an ARP entry from the ping

    # The firewall's own policy.
    assert stops_at(d, "camera", "tcp/22", "--from", CLIENT6) == "firewall"

    # (Forwarding switched off behind the daemon's back is put back at once, on the
    # kernel's netconf notification: test_network_repair_e2e.py. The unit tests
    # cover diagnose's step for it.)

    # A policy rule that sends the target elsewhere (a deleted route of ours
    # the daemon puts back at once: test_network_repair_e2e.py).
    d.router.run(f"ip -6 route add unreachable {DEVICE6}/128 table 100")
    d.router.run(f"ip -6 rule add to {DEVICE6}/128 lookup 100 pref 100")
    assert stops_at(d, *camera) == "route6"
    d.router.run(f"ip -6 rule del to {DEVICE6}/128 lookup 100 pref 100")
    assert stops_at(d, *camera) == ""

    # The firewall table flushed (the watchdog is off here): the rules are gone.
    d.router.run("nft delete table inet revnat64")
    assert stops_at(d, *camera) == "firewall"
    d.reload()
    assert stops_at(d, *camera) == ""

    # Another table's forward chain that drops by default (OpenWrt's fw4 without
    # our snippet): our accept does not outvote it, and the report says so.
    d.router.run(["nft", "-f", "-"], input=FW4)
    assert not ping(d)
    result = diagnose(d, *camera)
    assert "warn  firewall    table inet fw4 chain forward drops" in result.stdout, result.stdout
    assert result.stdout.strip().endswith("see the 1 warning(s)")
    snippet = diagnose_cli(d, "firewall", "--fw4-snippet", "-")
    rules = [line for line in snippet.splitlines() if line and line[0] != "#"]
    script = "".join(f"insert rule inet fw4 forward {rule}\n" for rule in rules)
    d.router.run(["nft", "-f", "-"], input=script)
    assert ping(d)
    assert stops_at(d, *camera) == ""
    d.router.run("nft delete table inet fw4")

    # The printer is switched off: nothing answers ARP for it.
    d.router.run(["ping", "-c", "1", "-W", "1", PRINTER4], check=False)
    wait_for(
        lambda: stops_at(d, "printer", "--from", CLIENT6) == "neighbour",
        timeout=10,
        interval=0.5,
        what="the printer's ARP entry to fail",
    )
    # Not published at all, and a bad command line.
    assert stops_at(d, "2001:db8:200::99") == "mapping"
    bad = diagnose(d, "webcam")
    assert bad.returncode == 2 and "neither an IPv6 address nor a mapping name" in bad.stderr


def test_diagnose_asks_a_real_bind_for_the_name(tmp_path: Path) -> None:
    """The clients' resolver is asked for the target's name (named on loopback)."""
    with running_named() as named:  # its zone has printer AAAA 2001:db8:200::99
        found = {}
        for name, ipv6 in (("printer", "::99"), ("printer", "::98"), ("camera", "::50")):
            doc = base_config(tmp_path, "rn64dns")
            doc["dns"] = {"zone": ZONE, "resolver": named.server}
            doc["mappings"] = [{"name": name, "ipv6": f"2001:db8:200{ipv6}", "ipv4": "192.0.2.9"}]
            cfg = parse_config(doc, "test.yaml")
            result = check_name(cfg, parse_probe(cfg, name, "icmp", None))
            assert result is not None and result.name == f"{name}.{ZONE}"
            found[ipv6] = (result.state, result.found)
        assert found == {
            "::99": ("ok", ("2001:db8:200::99",)),
            "::98": ("stale", ("2001:db8:200::99",)),
            "::50": ("missing", ()),
        }
