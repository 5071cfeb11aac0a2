"""The control socket, over a real unix socket (the handlers stand in for the daemon)."""

from __future__ import annotations

import os
import socket
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from publisher.control import ControlError, ControlServer, DaemonNotRunning, request
from publisher.snapshot import Snapshot
from tests.publisher.metrics_samples import sample_snapshot


@pytest.fixture
def sock_path(tmp_path: Path) -> str:
    # Unix socket paths are limited to 107 bytes; pytest's tmp_path is well under.
    return str(tmp_path / "run" / "control.sock")


@pytest.fixture
def server(sock_path: str) -> Iterator[ControlServer]:
    snap = sample_snapshot()
    srv = ControlServer(sock_path, {"status": snap.to_json})
    try:
        yield srv
    finally:
        srv.stop()


def test_status_round_trip(server: ControlServer) -> None:
    assert Snapshot.from_json(request(server.path, "status")) == sample_snapshot()


def test_ping_answers_without_a_handler(server: ControlServer) -> None:
    assert request(server.path, "ping") == "pong"


def test_socket_is_private_to_root_and_group(server: ControlServer) -> None:
    mode = os.stat(server.path).st_mode
    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) == 0o660
    assert os.listdir(os.path.dirname(server.path)) == ["control.sock"]


def test_unknown_command_names_the_known_ones(server: ControlServer) -> None:
    with pytest.raises(ControlError, match=r"unknown command 'reboot' \(known: ping, status\)"):
        request(server.path, "reboot")


def test_failing_handler_is_an_error_reply_not_a_dead_server(sock_path: str) -> None:
    def broken() -> str:
        raise RuntimeError("pool is locked")

    srv = ControlServer(sock_path, {"status": broken})
    try:
        with pytest.raises(ControlError, match="status failed in the daemon: pool is locked"):
            request(sock_path, "status")
        assert request(sock_path, "ping") == "pong"
    finally:
        srv.stop()


def test_large_reply_arrives_whole(sock_path: str) -> None:
    big = "x" * 3_000_000
    srv = ControlServer(sock_path, {"dump": lambda: big})
    try:
        assert request(sock_path, "dump") == big
    finally:
        srv.stop()


def test_concurrent_clients(server: ControlServer) -> None:
    results: list[str] = []
    errors: list[BaseException] = []

    def client() -> None:
        try:
            results.append(request(server.path, "ping"))
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=client) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert errors == []
    assert results == ["pong"] * 20


def test_slow_daemon_times_out(sock_path: str) -> None:
    release = threading.Event()

    def stuck() -> str:
        release.wait(10)
        return "late"

    srv = ControlServer(sock_path, {"status": stuck})
    try:
        with pytest.raises(ControlError, match="did not answer 'status'"):
            request(sock_path, "status", timeout=0.2)
    finally:
        release.set()
        srv.stop()


def test_stop_removes_the_socket(sock_path: str) -> None:
    srv = ControlServer(sock_path, {})
    srv.stop()
    assert not os.path.exists(sock_path)
    with pytest.raises(DaemonNotRunning, match="no control socket at"):
        request(sock_path, "ping")


def make_stale_socket(path: str) -> None:
    """What a crashed daemon leaves behind: a socket file nobody listens on."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    s.close()


def test_stale_socket_means_not_running_and_is_replaced(sock_path: str) -> None:
    make_stale_socket(sock_path)
    with pytest.raises(DaemonNotRunning, match="nothing answers"):
        request(sock_path, "ping")
    srv = ControlServer(sock_path, {})
    try:
        assert request(sock_path, "ping") == "pong"
    finally:
        srv.stop()


def test_second_daemon_does_not_steal_a_live_socket(server: ControlServer) -> None:
    with pytest.raises(ControlError, match="another revnat64 daemon is already answering"):
        ControlServer(server.path, {})
    assert request(server.path, "ping") == "pong"


def test_refuses_to_replace_a_regular_file(tmp_path: Path) -> None:
    path = tmp_path / "control.sock"
    path.write_text("precious")
    with pytest.raises(ControlError, match="not a socket is in the way"):
        ControlServer(str(path), {})
    assert path.read_text() == "precious"


def test_stop_leaves_a_newer_daemons_socket_alone(sock_path: str) -> None:
    """A daemon that took over the path (after ours was removed) keeps its socket."""
    old = ControlServer(sock_path, {})
    os.unlink(sock_path)
    new = ControlServer(sock_path, {"status": lambda: "new"})
    try:
        old.stop()
        assert request(sock_path, "status") == "new"
    finally:
        new.stop()


def test_raw_protocol_is_one_line_in_and_ok_plus_payload_out(server: ControlServer) -> None:
    """What `socat - UNIX-CONNECT:/run/revnat64/control.sock` users see."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(server.path)
        s.sendall(b"ping\n")
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    assert data == b"ok\npong"
