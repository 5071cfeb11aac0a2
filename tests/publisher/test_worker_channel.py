"""The supervisor's calls to a worker stay matched after a timeout (CallChannel)."""

from __future__ import annotations

import pickle
import socket
import threading
import time

import pytest

from publisher.worker import _LEN, CallChannel, recv_message, send_message


def fake_worker(sock: socket.socket, script: list[tuple[float, bool]]) -> threading.Thread:
    """Answer each request with (seq, request name) after ``delay``; with ``split``
    the reply goes out in two halves, ``delay`` apart (a reply cut by a timeout)."""

    def serve() -> None:
        for delay, split in script:
            seq, name = recv_message(sock)
            data = pickle.dumps((seq, f"reply to {name}"))
            frame = _LEN.pack(len(data)) + data
            if split:
                sock.sendall(frame[:7])
                time.sleep(delay)
                sock.sendall(frame[7:])
            else:
                time.sleep(delay)
                sock.sendall(frame)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("split", [False, True])
def test_a_late_reply_is_dropped_not_taken_for_the_next_call(split: bool) -> None:
    ours, theirs = socket.socketpair()
    try:
        worker = fake_worker(theirs, [(0.6, split), (0.0, False), (0.0, False)])
        channel = CallChannel(ours)
        with pytest.raises(OSError):  # TimeoutError (socket.timeout on Python 3.9)
            channel.call(("snapshot",), timeout=0.2)
        assert channel.call(("apply",), timeout=5) == "reply to apply"
        assert channel.call(("snapshot",), timeout=5) == "reply to snapshot"
        worker.join(timeout=5)
    finally:
        ours.close()
        theirs.close()


def test_the_worker_side_echoes_the_number() -> None:
    ours, theirs = socket.socketpair()
    try:
        send_message(theirs, (7, "x"))  # what a reply looks like on the wire
        assert CallChannel(ours).receive(time.monotonic() + 1) == (7, "x")
    finally:
        ours.close()
        theirs.close()
