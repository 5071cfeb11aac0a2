"""The installs: systemd unit, OpenWrt procd/hotplug scripts, Asuswrt-Merlin hooks.

Shell scripts are linted with shellcheck in the dialect they run in.  The unit
is checked with systemd's own ``systemd-analyze``.  The OpenWrt scripts cannot
run under a real procd here, so they run against a stand-in for
``/etc/rc.common`` and procd's shell functions that records every call; the
tests assert on that record.  The Merlin hooks run for real, twice, in a fresh
network namespace with real iptables (see ``test_merlin_hooks_*``).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from publisher import install
from publisher.config import load_config

REPO = Path(__file__).resolve().parents[2]
SYSTEMD = REPO / "systemd"
OPENWRT = REPO / "contrib" / "openwrt"
MERLIN = REPO / "contrib" / "asuswrt-merlin"
DOCS = REPO / "docs"

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")


def systemd_analyze(*args: str) -> subprocess.CompletedProcess[str]:
    assert SYSTEMD_ANALYZE is not None
    return subprocess.run(
        [SYSTEMD_ANALYZE, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "SYSTEMD_PAGER": "", "SYSTEMD_COLORS": "0"},
    )


def installed_systemd_version() -> int:
    out = subprocess.run(
        [SYSTEMD_ANALYZE or "systemd-analyze", "--version"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    match = re.match(r"systemd (\d+)", out)
    assert match, out
    return int(match.group(1))


@pytest.fixture
def installed(tmp_path: Path) -> Path:
    """The unit, helper and config as `install-systemd --prefix` leaves them."""
    prefix = tmp_path / "root"
    rc = install.cmd_install_systemd(argparse.Namespace(prefix=str(prefix)))
    assert rc == 0
    return prefix


# --------------------------------------------------------------------------
# shellcheck


def shell_scripts() -> list[tuple[Path, str]]:
    """Every shell script we ship, with the dialect shellcheck must check it in."""
    scripts = [
        (SYSTEMD / "revnat64-reload", "sh"),
        (OPENWRT / "revnat64.init", "sh"),
        (OPENWRT / "hotplug.d" / "iface" / "90-revnat64", "sh"),
        (OPENWRT / "install.sh", "sh"),
        (MERLIN / "services-start", "sh"),
        (MERLIN / "firewall-start", "sh"),
        (MERLIN / "install.sh", "sh"),
    ]
    return scripts


@pytest.mark.parametrize(
    "script,dialect", shell_scripts(), ids=lambda v: str(v.relative_to(REPO)) if isinstance(v, Path) else v
)
def test_shellcheck_clean(script: Path, dialect: str) -> None:
    assert script.is_file(), f"{script} is missing"
    result = subprocess.run(
        ["shellcheck", "-s", dialect, "-x", "--severity=style", str(script)],
        capture_output=True,
        text=True,
        cwd=script.parent,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_shipped_shell_script_is_checked() -> None:
    checked = {path for path, _ in shell_scripts()}
    shipped = set()
    for root in (SYSTEMD, OPENWRT, MERLIN):
        for path in root.rglob("*"):
            if path.is_file() and path.read_bytes().startswith(b"#!/bin/sh"):
                shipped.add(path)
    assert shipped == checked


# --------------------------------------------------------------------------
# systemd


def test_systemd_unit_verifies_clean(installed: Path) -> None:
    unit = installed / install.UNIT_PATH
    result = systemd_analyze("verify", "--man=no", str(unit))
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", result.stderr


def recorded_exposure() -> float:
    text = (DOCS / "install-systemd.md").read_text(encoding="utf-8")
    match = re.search(r"Overall exposure level for revnat64\.service: (\d+\.\d)", text)
    assert match, "docs/install-systemd.md lost the recorded systemd-analyze security score"
    return float(match.group(1))


def test_systemd_security_exposure_stays_at_recorded_level(installed: Path) -> None:
    unit = installed / install.UNIT_PATH
    recorded = recorded_exposure()
    result = systemd_analyze("security", "--offline=true", "--no-pager", str(unit))
    match = re.search(r"Overall exposure level for revnat64\.service: (\d+\.\d)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= recorded
    # And systemd's own threshold check agrees (it counts in tenths).
    threshold = systemd_analyze(
        "security", "--offline=true", f"--threshold={round(recorded * 10)}", str(unit)
    )
    assert threshold.returncode == 0, threshold.stdout


def test_notify_reload_dropin_matches_systemd_version(installed: Path, tmp_path: Path) -> None:
    """The drop-in needs systemd >= 253; older ones must be the reason it is separate."""
    combined = tmp_path / "revnat64.service"
    combined.write_text(
        (installed / install.UNIT_PATH).read_text(encoding="utf-8")
        + "\n"
        + (SYSTEMD / "notify-reload.d" / "notify-reload.conf").read_text(encoding="utf-8"),
        encoding="utf-8",
    )
    result = systemd_analyze("verify", "--man=no", str(combined))
    if installed_systemd_version() >= install.NOTIFY_RELOAD_MIN_SYSTEMD:
        assert result.returncode == 0 and result.stderr == "", result.stderr
    else:
        assert "Failed to parse service type" in result.stderr, result.stderr


def test_unit_hardening_settings() -> None:
    """The directives the issue asks for are there with the values it asks for."""
    text = (SYSTEMD / "revnat64.service").read_text(encoding="utf-8")
    settings = re.findall(r"^(\w+)=(.*)$", text, re.MULTILINE)
    values: dict[str, list[str]] = {}
    for key, value in settings:
        values.setdefault(key, []).append(value)
    assert values["Type"] == ["notify"]
    assert values["Restart"] == ["on-failure"]
    assert values["Wants"] == ["network-online.target"]
    assert "network-online.target" in values["After"][0].split()
    assert values["CapabilityBoundingSet"] == ["CAP_NET_ADMIN"]
    assert values["AmbientCapabilities"] == ["CAP_NET_ADMIN"]
    assert values["DevicePolicy"] == ["closed"]
    assert values["DeviceAllow"] == ["/dev/net/tun rw"]
    assert values["RestrictAddressFamilies"] == ["AF_UNIX AF_INET AF_INET6 AF_NETLINK"]
    assert values["ProtectSystem"] == ["strict"]
    assert values["ProtectHome"] == ["yes"]
    assert values["PrivateTmp"] == ["yes"]
    assert values["NoNewPrivileges"] == ["yes"]
    assert values["SystemCallFilter"][0] == "@system-service"
    assert values["StateDirectory"] == ["revnat64"]
    assert values["RuntimeDirectory"] == ["revnat64"]
    assert values["ReadWritePaths"] == ["/proc/sys/net"]
    exec_start = values["ExecStart"][0]
    assert exec_start == "/usr/bin/revnat64 run -c /etc/revnat64/mappings.yaml"
    # Every weakened setting carries its reason in the comment just above it.
    for weakened in ("ProcSubset=all", "PrivateNetwork=no", "PrivateUsers=no"):
        before = text.split("\n" + weakened, 1)[0].rsplit("\n", 1)[-1]
        assert before.startswith("#"), f"{weakened} has no comment saying why"


# --------------------------------------------------------------------------
# install-systemd


def test_install_systemd_writes_unit_helper_and_config(installed: Path) -> None:
    unit = (installed / install.UNIT_PATH).read_text(encoding="utf-8")
    command = install.find_revnat64_command()
    exec_start = re.search(r"^ExecStart=(.*)$", unit, re.MULTILINE)
    assert exec_start is not None
    assert exec_start.group(1).startswith(command[0] + " ")
    assert install.PACKAGED_REVNAT64 not in unit
    assert f"ExecReload=/{install.HELPER_PATH} $MAINPID" in unit
    helper = installed / install.HELPER_PATH
    assert helper.stat().st_mode & 0o777 == 0o755
    assert helper.read_bytes() == (SYSTEMD / "revnat64-reload").read_bytes()
    config = installed / install.CONFIG_PATH
    assert config.read_bytes() == (REPO / "mappings.yaml.example").read_bytes()
    # The config it installs is one the daemon accepts.
    assert load_config(config).mappings


def test_install_systemd_never_overwrites_a_config(tmp_path: Path) -> None:
    prefix = tmp_path / "root"
    config = prefix / install.CONFIG_PATH
    config.parent.mkdir(parents=True)
    config.write_text("# mine\n", encoding="utf-8")
    result = install.install_systemd(prefix, ["/usr/bin/revnat64"], 252)
    assert config.read_text(encoding="utf-8") == "# mine\n"
    assert result.kept == [config]
    assert (prefix / install.EXAMPLE_PATH).is_file()
    # Twice is the same as once.
    again = install.install_systemd(prefix, ["/usr/bin/revnat64"], 252)
    assert sorted(again.written) == sorted(result.written)
    assert config.read_text(encoding="utf-8") == "# mine\n"


def test_install_systemd_dropin_only_for_new_systemd(tmp_path: Path) -> None:
    prefix = tmp_path / "root"
    dropin = prefix / install.DROPIN_PATH
    install.install_systemd(prefix, ["/usr/bin/revnat64"], 253)
    assert "Type=notify-reload" in dropin.read_text(encoding="utf-8")
    install.install_systemd(prefix, ["/usr/bin/revnat64"], 252)
    assert not dropin.exists()


def test_render_unit_quotes_a_module_command() -> None:
    template = (SYSTEMD / "revnat64.service").read_text(encoding="utf-8")
    unit = install.render_unit(
        template, ["/opt/rn 64/bin/python", "-m", "publisher.cli"], "/usr/local/libexec/x"
    )
    assert (
        'ExecStart="/opt/rn 64/bin/python" -m publisher.cli run -c /etc/revnat64/mappings.yaml'
        in unit
    )
    assert (
        "ExecReload=/usr/local/libexec/x $MAINPID /etc/revnat64/mappings.yaml "
        "\"'/opt/rn 64/bin/python' -m publisher.cli\"" in unit
    )


def test_install_systemd_warns_about_home(tmp_path: Path) -> None:
    result = install.install_systemd(tmp_path / "root", ["/root/venv/bin/revnat64"], 252)
    assert any("under /root" in w for w in result.warnings)
    clean = install.install_systemd(tmp_path / "root2", ["/opt/revnat64/bin/revnat64"], 252)
    assert not [w for w in clean.warnings if "under" in w]


def test_packaged_data_matches_the_source_tree() -> None:
    pairs = {
        "mappings.yaml.example": REPO / "mappings.yaml.example",
        "revnat64.service": SYSTEMD / "revnat64.service",
        "revnat64-reload": SYSTEMD / "revnat64-reload",
        "notify-reload.conf": SYSTEMD / "notify-reload.d" / "notify-reload.conf",
    }
    for name, source in pairs.items():
        assert install.packaged_file(name) == source.read_text(encoding="utf-8"), name


def test_cli_dispatches_install_systemd(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "publisher.cli", "install-systemd", "--prefix", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "systemctl daemon-reload && systemctl enable --now revnat64" in result.stdout
    assert (tmp_path / install.UNIT_PATH).is_file()
