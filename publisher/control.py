"""The daemon's local control socket: one command in, one answer out.

The protocol is deliberately the smallest that works with ``socat`` by hand::

    client -> daemon:  COMMAND "\\n"                      (UTF-8, one line)
    daemon -> client:  "ok\\n" PAYLOAD   or   "error\\n" MESSAGE
    daemon closes the connection; end of stream ends the payload.

``status`` answers with :meth:`publisher.snapshot.Snapshot.to_json`, ``ping``
with ``pong``.  The daemon passes the handlers in; this module knows only the
transport, so the protocol can be tested against the real socket without a
daemon.

Access control is the file mode: the socket is created 0660 (root and the
socket's group), and it reaches that mode before it appears under its real
name, because it is bound under a temporary name, chmod-ed, then renamed into
place.  A socket file left behind by a crashed daemon is replaced; a socket
another daemon still answers on is not (two daemons would fight over the TUN
device and the firewall).
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import socketserver
import stat
import threading
from collections.abc import Callable

__all__ = [
    "ControlError",
    "ControlServer",
    "DaemonNotRunning",
    "request",
]

log = logging.getLogger(__name__)

SOCKET_MODE = 0o660
MAX_COMMAND = 256  # bytes; commands are single words
READ_TIMEOUT = 5.0  # seconds a client may take to send its command


class ControlError(RuntimeError):
    """Talking to the daemon failed, or the daemon answered with an error."""


class DaemonNotRunning(ControlError):
    """Nothing listens on the control socket (no file, or a stale one)."""


class _Handler(socketserver.StreamRequestHandler):
    server: _UnixServer

    def handle(self) -> None:
        self.connection.settimeout(READ_TIMEOUT)
        try:
            line = self.rfile.readline(MAX_COMMAND + 1)
        except OSError:
            return
        command = line.decode("utf-8", "replace").strip()
        reply = self.server.owner.answer(command)
        try:
            self.wfile.write(reply.encode("utf-8"))
        except OSError:
            pass  # the client went away; nothing to tell it


class _UnixServer(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True
    request_queue_size = 64  # socketserver's 5 refuses bursts (EAGAIN on AF_UNIX connect)
    owner: ControlServer

    def server_bind(self) -> None:
        path = str(self.server_address)
        tmp = f"{path}.{os.getpid()}.tmp"
        _unlink_if_socket(tmp)
        self.socket.bind(tmp)
        try:
            os.chmod(tmp, SOCKET_MODE)
            os.rename(tmp, path)
        except OSError:
            _unlink_if_socket(tmp)
            raise
        self.inode = os.stat(path).st_ino


class ControlServer:
    """Answers commands on a unix socket from a background thread until :meth:`stop`.

    ``handlers`` maps command names to functions returning the reply text; a
    handler that raises produces an error reply (and a log line), never a
    dead server.  ``ping`` answers ``pong`` unless a handler overrides it.
    """

    def __init__(self, path: str, handlers: dict[str, Callable[[], str]]) -> None:
        self.path = path
        self.handlers: dict[str, Callable[[], str]] = {"ping": lambda: "pong", **handlers}
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, mode=0o755, exist_ok=True)
        _remove_stale_socket(path)
        self._server = _UnixServer(path, _Handler, bind_and_activate=False)
        self._server.owner = self
        try:
            self._server.server_bind()
            self._server.server_activate()
        except OSError as exc:
            self._server.server_close()
            raise ControlError(f"cannot create control socket {path}: {exc}") from exc
        self._thread = threading.Thread(
            target=self._server.serve_forever, name=f"control-{path}", daemon=True
        )
        self._thread.start()

    def answer(self, command: str) -> str:
        """The full reply for one command line (public so the daemon can test handlers)."""
        handler = self.handlers.get(command)
        if handler is None:
            known = ", ".join(sorted(self.handlers))
            return f"error\nunknown command {command!r} (known: {known})"
        try:
            return "ok\n" + handler()
        except Exception as exc:
            log.exception("control command %r failed", command)
            return f"error\n{command} failed in the daemon: {exc}"

    def stop(self) -> None:
        """Stop answering and remove the socket file (only if it is still ours)."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
        try:
            if os.stat(self.path).st_ino == self._server.inode:
                os.unlink(self.path)
        except FileNotFoundError:
            pass


def _unlink_if_socket(path: str) -> None:
    try:
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)
    except FileNotFoundError:
        pass


def _remove_stale_socket(path: str) -> None:
    """Remove a socket file nobody listens on; refuse to touch anything else."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ControlError(
            f"cannot create control socket {path}: a file that is not a socket is in the way"
        )
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        log.info("removing stale control socket %s", path)
        os.unlink(path)
        return
    except OSError as exc:
        raise ControlError(f"cannot check existing control socket {path}: {exc}") from exc
    finally:
        probe.close()
    raise ControlError(f"another revnat64 daemon is already answering on {path}; stop it first")


def request(path: str, command: str, timeout: float = 2.0) -> str:
    """Send one command to the daemon and return its payload.

    Raises :class:`DaemonNotRunning` when no daemon listens on ``path``, and
    :class:`ControlError` for every other failure, with the reason.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(path)
        except FileNotFoundError:
            raise DaemonNotRunning(f"no control socket at {path}") from None
        except ConnectionRefusedError:
            raise DaemonNotRunning(f"nothing answers on the control socket {path}") from None
        except PermissionError:
            raise ControlError(
                f"permission denied on the control socket {path} "
                "(run as root or as a member of the socket's group)"
            ) from None
        except OSError as exc:
            if exc.errno == errno.ENOTSOCK:
                raise DaemonNotRunning(f"{path} is not a socket") from None
            raise ControlError(f"cannot connect to the control socket {path}: {exc}") from None
        chunks = []
        try:
            sock.sendall(command.encode("utf-8") + b"\n")
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
        except socket.timeout:
            raise ControlError(
                f"the daemon did not answer {command!r} on {path} within {timeout:g}s"
            ) from None
        except OSError as exc:
            raise ControlError(f"talking to the daemon on {path} failed: {exc}") from None
    finally:
        sock.close()
    status, _, payload = b"".join(chunks).decode("utf-8", "replace").partition("\n")
    if status == "ok":
        return payload
    if status == "error":
        raise ControlError(f"the daemon refused {command!r}: {payload}")
    raise ControlError(f"unexpected reply to {command!r} on {path}: {status[:80]!r}")
