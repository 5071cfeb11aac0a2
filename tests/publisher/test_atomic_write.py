"""atomic_write on a filling disk: every byte or an error, and the old file stays."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from publisher import netlink
from publisher.netlink import atomic_write


def test_a_short_write_then_a_full_disk_keeps_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """os.write wrote 4096 bytes and reported it; the old code renamed the cut file
    over the good one (a netstate.json of invalid JSON, found after a power cut)."""
    target = tmp_path / "netstate.json"
    target.write_text("old")
    real_write = os.write
    calls = []

    def filling(fd: int, data: bytes | memoryview) -> int:
        calls.append(len(data))
        if len(calls) == 1:
            return real_write(fd, bytes(data[:4096]))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(netlink.os, "write", filling)
    with pytest.raises(OSError) as info:
        atomic_write(target, "x" * 10000)
    assert info.value.errno == errno.ENOSPC
    assert f"writing {target}" in str(info.value)  # which disk is full
    assert calls == [10000, 10000 - 4096]  # the rest was asked for, not dropped
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["netstate.json"]  # no .tmp left


def test_short_writes_are_completed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_write = os.write
    monkeypatch.setattr(netlink.os, "write", lambda fd, data: real_write(fd, bytes(data[:7])))
    atomic_write(tmp_path / "f", "0123456789" * 5, mode=0o640)
    assert (tmp_path / "f").read_text() == "0123456789" * 5
    assert (tmp_path / "f").stat().st_mode & 0o777 == 0o640


def test_a_stale_temporary_file_or_symlink_is_replaced_not_followed(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_text("keep")
    (tmp_path / f".f.{os.getpid()}.tmp").symlink_to(elsewhere)
    atomic_write(tmp_path / "f", "new")
    assert (tmp_path / "f").read_text() == "new" and elsewhere.read_text() == "keep"
