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
        # rc.common runs init scripts in busybox ash; shellcheck has no busybox
        # dialect, and dash is the closest (POSIX plus `local`).
        (OPENWRT / "revnat64.init", "dash"),
        (OPENWRT / "hotplug.d" / "iface" / "90-revnat64", "sh"),
        (MERLIN / "services-start", "sh"),
        (MERLIN / "firewall-start", "sh"),
        (MERLIN / "wan-event", "sh"),
        (MERLIN / "install.sh", "sh"),
    ]
    return scripts


@pytest.mark.parametrize(
    "script,dialect",
    shell_scripts(),
    ids=lambda v: str(v.relative_to(REPO)) if isinstance(v, Path) else v,
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
    # Every weakened setting sits in a block (no blank line between) that
    # opens with a comment saying why.
    lines = text.splitlines()
    for weakened in ("ProcSubset=all", "PrivateNetwork=no", "PrivateUsers=no", "ReadWritePaths="):
        i = next(n for n, line in enumerate(lines) if line.startswith(weakened))
        while i > 0 and lines[i - 1].strip() and not lines[i - 1].startswith("#"):
            i -= 1
        assert i > 0 and lines[i - 1].startswith("#"), f"{weakened} has no comment saying why"


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


# --------------------------------------------------------------------------
# OpenWrt: the procd init script against a recording stand-in for rc.common

# Stands in for /etc/rc.common + /lib/functions.sh + /lib/functions/procd.sh:
# the same call order as the real ones (procd_open_service, start_service,
# then service_triggers inside the trigger block, procd_close_service), every
# procd_* call appended to $RECORD.  UCI values come from $UCI_FILE as
# CONFIG_<section>_<option>=value lines, as functions.sh keeps them.
RC_COMMON_STANDIN = r"""
initscript=$1
action=$2
record() { printf '%s\n' "$*" >>"$RECORD"; }
for f in procd_open_service procd_close_service procd_open_instance \
	procd_close_instance procd_set_param procd_append_param procd_open_trigger \
	procd_close_trigger procd_add_reload_trigger procd_add_reload_interface_trigger \
	procd_add_interface_trigger procd_send_signal procd_add_jail; do
	eval "$f() { record $f \"\$@\"; }"
done
config_load() { . "$UCI_FILE"; }
config_get() {
	eval "_v=\${CONFIG_$2_$3-}"
	[ -n "$_v" ] || _v=$4
	eval "$1=\$_v"
}
config_get_bool() {
	config_get "$@"
	eval "_v=\$$1"
	case "$_v" in 1|on|true|yes|enabled) _v=1 ;; *) _v=0 ;; esac
	eval "$1=\$_v"
}
. "$initscript"
name=$(basename "$initscript")
rc_procd() {
	procd_open_service "$name" "$initscript"
	"$@"
	procd_open_trigger
	service_triggers
	procd_close_trigger
	procd_close_service
}
start() { rc_procd start_service; }
reload() {
	if type reload_service >/dev/null 2>&1; then reload_service; else start; fi
}
"$action"
"""


def run_procd_action(
    tmp_path: Path,
    action: str,
    uci: dict[str, str],
    check_ok: bool = True,
    fw4_snippet: str | None = None,
) -> tuple[int, list[str], str]:
    """Run ``/etc/init.d/revnat64 ACTION`` under the stand-in; return rc, record, stderr.

    With ``fw4_snippet`` ("updated" or "unchanged") the host has a stand-in
    ``fw4``, and ``revnat64 firewall --fw4-snippet`` answers with that word."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    stub = bin_dir / "revnat64"
    stub.write_text(
        '#!/bin/sh\nprintf "revnat64 %s\\n" "$*" >>"$RECORD"\n'
        f'case "$*" in *--fw4-snippet*) echo "revnat64: snippet {fw4_snippet}";; esac\n'
        f"exit {0 if check_ok else 1}\n"
    )
    stub.chmod(0o755)
    if fw4_snippet is not None:
        fw4 = bin_dir / "fw4"
        fw4.write_text('#!/bin/sh\nprintf "fw4 %s\\n" "$*" >>"$RECORD"\n')
        fw4.chmod(0o755)
    rc_common = tmp_path / "rc.common"
    rc_common.write_text(RC_COMMON_STANDIN)
    uci_file = tmp_path / "uci"
    uci_file.write_text("".join(f"CONFIG_main_{k}='{v}'\n" for k, v in uci.items()))
    record = tmp_path / "record"
    record.write_text("")
    # A private mount namespace with tmpfs over /var/lib and /run: the script
    # creates its state and runtime directories there.
    script = (
        "mount -t tmpfs none /var/lib && mount -t tmpfs none /run && "
        f'exec dash "{rc_common}" "{OPENWRT / "revnat64.init"}" {action}'
    )
    result = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=30,
        env={
            "PATH": f"{bin_dir}:/usr/sbin:/usr/bin:/sbin:/bin",
            "RECORD": str(record),
            "UCI_FILE": str(uci_file),
        },
    )
    return result.returncode, record.read_text().splitlines(), result.stderr


def test_procd_start_registers_instance_and_triggers(tmp_path: Path) -> None:
    rc, calls, err = run_procd_action(
        tmp_path, "start", {"enabled": "1", "config": "/etc/revnat64/mappings.yaml"}
    )
    assert rc == 0, err
    prog = str(tmp_path / "bin" / "revnat64")
    assert calls == [
        "procd_open_service revnat64.init " + str(OPENWRT / "revnat64.init"),
        "revnat64 check --quiet -c /etc/revnat64/mappings.yaml",
        "procd_open_instance main",
        f"procd_set_param command {prog} run -c /etc/revnat64/mappings.yaml",
        "procd_set_param respawn 3600 5 5",
        "procd_set_param reload_signal HUP",
        "procd_set_param term_timeout 15",
        "procd_set_param stdout 1",
        "procd_set_param stderr 1",
        # no /sbin/ujail on this host, so no capabilities file
        "procd_close_instance",
        "procd_open_trigger",
        "procd_add_reload_trigger revnat64",
        "procd_add_reload_interface_trigger wan6",
        "procd_close_trigger",
        "procd_close_service",
    ]


FW4_SNIPPET = "/usr/share/nftables.d/chain-pre/forward/30-revnat64.nft"
WRITE_SNIPPET = f"revnat64 firewall -c /etc/revnat64/mappings.yaml --fw4-snippet {FW4_SNIPPET}"
CHECK = "revnat64 check --quiet -c /etc/revnat64/mappings.yaml"


@pytest.mark.parametrize("result", ["updated", "unchanged"])
def test_procd_start_rewrites_the_fw4_snippet_and_reloads_fw4_only_on_change(
    tmp_path: Path, result: str
) -> None:
    rc, calls, err = run_procd_action(tmp_path, "start", {}, fw4_snippet=result)
    assert rc == 0, err
    assert calls.index(WRITE_SNIPPET) == calls.index(CHECK) + 1
    assert ("fw4 reload" in calls) == (result == "updated")
    # ... and before the daemon is registered, so fw4 lets its first packets through.
    assert calls.index(WRITE_SNIPPET) < calls.index("procd_open_instance main")


def test_procd_leaves_fw4_alone_when_told_to(tmp_path: Path) -> None:
    rc, calls, err = run_procd_action(tmp_path, "start", {"fw4": "0"}, fw4_snippet="updated")
    assert rc == 0, err
    assert WRITE_SNIPPET not in calls and "fw4 reload" not in calls
    assert "procd_open_instance main" in calls


def test_procd_uci_settings_reach_command_and_triggers(tmp_path: Path) -> None:
    rc, calls, err = run_procd_action(
        tmp_path,
        "start",
        {"config": "/srv/rn64.yaml", "wan_interface": "wan6 wanb6", "log_level": "debug"},
    )
    assert rc == 0, err
    prog = str(tmp_path / "bin" / "revnat64")
    assert f"procd_set_param command {prog} run -c /srv/rn64.yaml --log-level debug" in calls
    triggers = [c for c in calls if c.startswith("procd_add_reload_interface_trigger")]
    assert triggers == [
        "procd_add_reload_interface_trigger wan6",
        "procd_add_reload_interface_trigger wanb6",
    ]


def test_procd_disabled_or_invalid_config_registers_no_instance(tmp_path: Path) -> None:
    rc, calls, _ = run_procd_action(tmp_path, "start", {"enabled": "0"})
    assert rc == 0
    assert not [c for c in calls if c.startswith(("procd_open_instance", "revnat64 "))]
    rc, calls, err = run_procd_action(tmp_path, "start", {"enabled": "1"}, check_ok=False)
    assert "is invalid, not starting" in err
    assert not [c for c in calls if c.startswith("procd_open_instance")]


def test_procd_reload_reregisters_then_always_signals(tmp_path: Path) -> None:
    rc, calls, err = run_procd_action(tmp_path, "reload", {"enabled": "1"})
    assert rc == 0, err
    assert calls[-2:] == ["procd_close_service", "procd_send_signal revnat64 main HUP"]
    assert "procd_open_instance main" in calls


def test_capabilities_file_grants_net_admin_only() -> None:
    import json

    caps = json.loads((OPENWRT / "revnat64.capabilities.json").read_text(encoding="utf-8"))
    assert set(caps) == {"bounding", "effective", "ambient", "permitted", "inheritable"}
    assert all(value == ["CAP_NET_ADMIN"] for value in caps.values())


# --------------------------------------------------------------------------
# OpenWrt: the hotplug script


def run_hotplug(
    tmp_path: Path, env: dict[str, str], wan: str = "wan6", enabled: bool = True
) -> list[str]:
    """Source the hotplug script as hotplug-call does; return the calls to the init script."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "uci").write_text(
        f'#!/bin/sh\n[ "$*" = "-q get revnat64.main.wan_interface" ] || exit 1\necho \'{wan}\'\n'
    )
    (bin_dir / "logger").write_text('#!/bin/sh\nprintf "logger %s\\n" "$*" >>"$RECORD"\n')
    initd = tmp_path / "init.d"
    initd.mkdir(exist_ok=True)
    (initd / "revnat64").write_text(
        '#!/bin/sh\nprintf "init %s\\n" "$*" >>"$RECORD"\n'
        f'[ "$1" = enabled ] && exit {0 if enabled else 1}\nexit 0\n'
    )
    for f in (bin_dir / "uci", bin_dir / "logger", initd / "revnat64"):
        f.chmod(0o755)
    record = tmp_path / "record"
    record.write_text("")
    hotplug = OPENWRT / "hotplug.d" / "iface" / "90-revnat64"
    # /etc/init.d/revnat64 is the stub, in a private mount namespace only.
    script = f'mount --bind "{initd}" /etc/init.d && (. "{hotplug}")'
    result = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": f"{bin_dir}:/usr/sbin:/usr/bin:/sbin:/bin", "RECORD": str(record), **env},
    )
    assert result.returncode == 0, result.stderr
    return [line for line in record.read_text().splitlines() if line.startswith("init ")]


@pytest.mark.parametrize(
    "env,wan,enabled,expected",
    [
        (
            {"ACTION": "ifupdate", "IFUPDATE_PREFIXES": "1", "INTERFACE": "wan6"},
            "wan6",
            True,
            ["init enabled", "init reload"],
        ),
        (
            {"ACTION": "ifupdate", "IFUPDATE_PREFIXES": "1", "INTERFACE": "wanb6"},
            "wan6 wanb6",
            True,
            ["init enabled", "init reload"],
        ),
        (
            {"ACTION": "ifupdate", "IFUPDATE_PREFIXES": "1", "INTERFACE": "lan"},
            "wan6",
            True,
            ["init enabled"],
        ),
        ({"ACTION": "ifupdate", "IFUPDATE_ADDRESSES": "1", "INTERFACE": "wan6"}, "wan6", True, []),
        ({"ACTION": "ifupdate", "IFUPDATE_PREFIXES": "0", "INTERFACE": "wan6"}, "wan6", True, []),
        ({"ACTION": "ifup", "IFUPDATE_PREFIXES": "1", "INTERFACE": "wan6"}, "wan6", True, []),
        (
            {"ACTION": "ifupdate", "IFUPDATE_PREFIXES": "1", "INTERFACE": "wan6"},
            "wan6",
            False,
            ["init enabled"],
        ),
    ],
    ids=["wan6", "second-wan", "lan", "addresses-only", "no-prefix-change", "ifup", "disabled"],
)
def test_hotplug_reloads_only_on_wan_prefix_updates(
    tmp_path: Path, env: dict[str, str], wan: str, enabled: bool, expected: list[str]
) -> None:
    assert run_hotplug(tmp_path, env, wan, enabled) == expected


# --------------------------------------------------------------------------
# Asuswrt-Merlin: install.sh appends its hooks once


def test_merlin_install_appends_hooks_once(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "record"
    for tool in ("opkg", "pip3", "nvram"):
        (bin_dir / tool).write_text(
            f'#!/bin/sh\nprintf "{tool} %s\\n" "$*" >>"{record}"\n'
            + ('[ "$1" = get ] && echo 0\n' if tool == "nvram" else "")
            + "exit 0\n"
        )
        (bin_dir / tool).chmod(0o755)
    # pip3 stand-in: "installs" the package from this tree into --target.
    (bin_dir / "pip3").write_text(
        f'#!/bin/sh\nprintf "pip3 %s\\n" "$*" >>"{record}"\n'
        'while [ "$1" != --target ]; do shift; done\n'
        f'mkdir -p "$2" && cp -r "{REPO / "publisher"}" "$2/"\n'
    )
    jffs = tmp_path / "jffs" / "scripts"
    jffs.mkdir(parents=True)
    (jffs / "firewall-start").write_text("#!/bin/sh\necho mine\n")
    dest = tmp_path / "jffs" / "revnat64"
    env = {
        "PATH": f"{bin_dir}:{Path(sys.executable).parent}:/usr/sbin:/usr/bin:/sbin:/bin",
        "DEST": str(dest),
        "JFFS_SCRIPTS": str(jffs),
    }
    for _ in range(2):
        result = subprocess.run(
            ["sh", str(MERLIN / "install.sh"), "/tmp/revnat64-0.1.0-py3-none-any.whl"],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
        assert result.returncode == 0, result.stdout + result.stderr
    services = (jffs / "services-start").read_text().splitlines()
    firewall = (jffs / "firewall-start").read_text().splitlines()
    assert services == ["#!/bin/sh", f"sh {dest}/hooks/services-start # revnat64"]
    assert firewall == [
        "#!/bin/sh",
        "echo mine",
        f'sh {dest}/hooks/firewall-start "$@" # revnat64',
    ]
    assert (jffs / "wan-event").read_text().splitlines() == [
        "#!/bin/sh",
        f'sh {dest}/hooks/wan-event "$@" # revnat64',
    ]
    assert os.access(jffs / "services-start", os.X_OK)
    assert os.access(jffs / "wan-event", os.X_OK)
    config = load_config(dest / "mappings.yaml")
    assert config.firewall.backend == "iptables"
    assert config.daemon.state_dir == f"{dest}/state"
    assert config.daemon.control_socket == "/var/run/revnat64/control.sock"
    calls = record.read_text().splitlines()
    assert calls.count("opkg install python3 python3-pip") == 2
    assert calls.count("nvram set jffs2_scripts=1") == 2  # the stand-in always answers 0
    version = subprocess.run(
        [str(dest / "bin" / "revnat64"), "--version"], capture_output=True, text=True, env=env
    )
    assert version.stdout.startswith("revnat64 "), version.stderr
