"""sd_notify(3) without libsystemd: one datagram to $NOTIFY_SOCKET.

systemd's protocol is a single AF_UNIX datagram of newline-separated
``KEY=value`` lines; an ``@`` prefix names an abstract socket.  When the
variable is unset (not under systemd, or a plain foreground run) every call
is a cheap no-op.
"""

from __future__ import annotations

import os
import socket
import time


def notify(*lines: str) -> bool:
    """Send ``lines`` to the service manager; return whether anything was sent."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall("\n".join(lines).encode())
    except OSError:
        return False
    return True


def reloading() -> bool:
    """RELOADING=1 with the timestamp Type=notify-reload (systemd 253+) requires."""
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return notify("RELOADING=1", f"MONOTONIC_USEC={usec}")
