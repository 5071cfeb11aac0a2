"""``revnat64 install-systemd``: put the systemd unit and a starting config in place.

The unit in ``systemd/revnat64.service`` is written for a distribution package
(``/usr/bin/revnat64``, ``/usr/libexec/revnat64/revnat64-reload``).  A pip
install lives elsewhere, usually in a virtualenv, so this command rewrites those
paths to the revnat64 that is running it, then installs:

- the unit into ``etc/systemd/system/`` (replaced: it is ours);
- the reload helper into ``usr/local/libexec/revnat64/`` (replaced, mode 0755);
- on systemd >= 253, a drop-in that switches to ``Type=notify-reload``;
- ``etc/revnat64/mappings.yaml.example`` (replaced), and ``mappings.yaml`` from
  it only when there is none: a user's config is never overwritten.

Everything goes under ``--prefix`` (default ``/``), so packagers and tests can
install into a staging tree.  Nothing is started or enabled; the command prints
the steps that do that.  The files ship inside the package (``publisher/data``,
symlinks to the canonical copies in the source tree that setuptools copies as
files), so this works after ``pip install .`` without the source tree.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

__all__ = [
    "InstallResult",
    "NOTIFY_RELOAD_MIN_SYSTEMD",
    "cmd_install_systemd",
    "find_revnat64_command",
    "install_systemd",
    "render_unit",
    "systemd_version",
]

# systemd 253 added Type=notify-reload (systemd.service(5)).
NOTIFY_RELOAD_MIN_SYSTEMD = 253

PACKAGED_REVNAT64 = "/usr/bin/revnat64"
PACKAGED_RELOAD_HELPER = "/usr/libexec/revnat64/revnat64-reload"

UNIT_PATH = "etc/systemd/system/revnat64.service"
DROPIN_PATH = "etc/systemd/system/revnat64.service.d/notify-reload.conf"
HELPER_PATH = "usr/local/libexec/revnat64/revnat64-reload"
CONFIG_PATH = "etc/revnat64/mappings.yaml"
EXAMPLE_PATH = "etc/revnat64/mappings.yaml.example"

# Directories the service's sandbox hides or a dynamic user cannot read.
HIDDEN_FROM_SERVICE = ("/home", "/root", "/run/user")


@dataclass
class InstallResult:
    """What an install did, for the command to print and tests to check."""

    written: list[Path] = field(default_factory=list)
    kept: list[Path] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def packaged_file(name: str) -> str:
    """The text of a file shipped in ``publisher/data``."""
    return (resources.files("publisher") / "data" / name).read_text(encoding="utf-8")


def find_revnat64_command() -> list[str]:
    """The command that runs this revnat64, as an argv prefix.

    The console script next to the running interpreter wins (a virtualenv's
    ``bin/``), then the script this process was started as, then PATH.  When
    revnat64 runs from a source tree without an installed script, the unit
    calls the interpreter with ``-m publisher.cli``.
    """
    beside_python = Path(sys.executable).parent / "revnat64"
    if beside_python.is_file() and os.access(beside_python, os.X_OK):
        return [str(beside_python)]
    started_as = Path(sys.argv[0])
    if started_as.name == "revnat64" and started_as.is_file():
        return [str(started_as.absolute())]
    on_path = shutil.which("revnat64")
    if on_path:
        return [str(Path(on_path).absolute())]
    return [str(Path(sys.executable).absolute()), "-m", "publisher.cli"]


def _unit_quote(word: str) -> str:
    """Quote one argument for a systemd Exec line (double quotes, backslash escapes)."""
    if word and not re.search(r'[\s"\'\\$%;]', word):
        return word
    escaped = word.replace("\\", "\\\\").replace('"', '\\"').replace("$", "$$").replace("%", "%%")
    return f'"{escaped}"'


def render_unit(template: str, command: list[str], reload_helper: str) -> str:
    """The unit with the packaged paths replaced by ``command`` and ``reload_helper``.

    ``command`` replaces every ``/usr/bin/revnat64`` word; as the helper's last
    argument it becomes one quoted word, which the helper splits again.
    """
    if PACKAGED_REVNAT64 not in template or PACKAGED_RELOAD_HELPER not in template:
        raise ValueError(
            f"the unit template names neither {PACKAGED_REVNAT64} nor {PACKAGED_RELOAD_HELPER}"
        )
    exec_words = " ".join(_unit_quote(w) for w in command)
    helper_arg = _unit_quote(" ".join(shlex.quote(w) for w in command))
    out = []
    for line in template.splitlines(keepends=True):
        if line.startswith("ExecReload=" + PACKAGED_RELOAD_HELPER):
            line = line.replace(PACKAGED_RELOAD_HELPER, _unit_quote(reload_helper), 1)
            head, _, tail = line.rpartition(PACKAGED_REVNAT64)
            line = head + helper_arg + tail
        elif line.startswith(("ExecStart=", "ExecReload=")):
            line = line.replace(PACKAGED_REVNAT64, exec_words)
        out.append(line)
    return "".join(out)


def systemd_version() -> int | None:
    """The installed systemd's version number, or None without systemd."""
    systemctl = shutil.which("systemctl")
    if systemctl is None:
        return None
    try:
        first = subprocess.run(
            [systemctl, "--version"], capture_output=True, text=True, check=True, timeout=10
        ).stdout.split("\n", 1)[0]
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.match(r"systemd (\d+)", first)
    return int(match.group(1)) if match else None


def _write(path: Path, text: str, mode: int, result: InstallResult) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.chmod(mode)
    tmp.replace(path)
    result.written.append(path)


def install_systemd(prefix: Path, command: list[str], systemd: int | None) -> InstallResult:
    """Install unit, reload helper, drop-in (systemd >= 253) and config under ``prefix``."""
    result = InstallResult()
    helper_target = "/" + HELPER_PATH
    unit = render_unit(packaged_file("revnat64.service"), command, helper_target)
    _write(prefix / UNIT_PATH, unit, 0o644, result)
    _write(prefix / HELPER_PATH, packaged_file("revnat64-reload"), 0o755, result)

    dropin = prefix / DROPIN_PATH
    if systemd is not None and systemd >= NOTIFY_RELOAD_MIN_SYSTEMD:
        _write(dropin, packaged_file("notify-reload.conf"), 0o644, result)
    elif dropin.exists():
        # Left from an install on a newer systemd: Type=notify-reload would not load here.
        dropin.unlink()

    example = packaged_file("mappings.yaml.example")
    # 0644: the service runs as a dynamic user that must read the config.
    # Secrets (the TSIG key) stay in their own file, handed over by LoadCredential=.
    _write(prefix / EXAMPLE_PATH, example, 0o644, result)
    config = prefix / CONFIG_PATH
    if config.exists():
        result.kept.append(config)
    else:
        _write(config, example, 0o644, result)

    executable = Path(command[0]).resolve()
    for hidden in HIDDEN_FROM_SERVICE:
        if executable.is_relative_to(hidden):
            result.warnings.append(
                f"{command[0]} runs {executable}, under {hidden}: the service's "
                f"sandbox (ProtectHome=, a dynamic user) cannot reach it there. "
                "Install revnat64 into a virtualenv under /opt (python3 -m venv "
                "/opt/revnat64 && /opt/revnat64/bin/pip install SOURCE-OR-WHEEL) and "
                "run /opt/revnat64/bin/revnat64 install-systemd"
            )
    if systemd is None:
        result.warnings.append(
            "systemctl not found: installed the Type=notify unit; on systemd >= "
            f"{NOTIFY_RELOAD_MIN_SYSTEMD} run this again to add the notify-reload drop-in"
        )
    return result


def next_steps(prefix: Path) -> str:
    config = "/" + CONFIG_PATH
    lines = [
        "Next steps:",
        f"  1. edit {config} (addresses, interfaces, mappings)",
        f"  2. revnat64 check -c {config}",
        "  3. systemctl daemon-reload && systemctl enable --now revnat64",
        "  4. revnat64 status; journalctl -u revnat64",
    ]
    if prefix != Path("/"):
        lines.insert(1, f"  (files were installed under {prefix}; copy them to / first)")
    return "\n".join(lines)


def cmd_install_systemd(args: argparse.Namespace) -> int:
    prefix = Path(args.prefix)
    try:
        result = install_systemd(prefix, find_revnat64_command(), systemd_version())
    except OSError as exc:
        print(f"install-systemd: cannot install under {prefix}: {exc}", file=sys.stderr)
        return 1
    for path in result.written:
        print(f"installed {path}")
    for path in result.kept:
        print(f"kept {path} (yours; the current example is {path}.example)")
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(next_steps(prefix))
    return 0
