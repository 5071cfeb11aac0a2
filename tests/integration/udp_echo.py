"""A UDP echo server for the labs: echoes each datagram back, reports the peer on request.

A datagram ``WHO`` is answered with the sender's address as the device saw it,
which is how tests check that IPv6 clients appear as pool4 addresses.
"""

from __future__ import annotations

import socket
import sys


def main() -> None:
    host, port = sys.argv[1], int(sys.argv[2])
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    while True:
        data, peer = sock.recvfrom(65535)
        sock.sendto(peer[0].encode() if data == b"WHO" else data, peer)


if __name__ == "__main__":
    main()
