"""Netlink notifications that wake the supervisor: links and IPv6 addresses changing.

Two things the kernel changes behind the daemon's back need a prompt answer:

* **A link going down flushes its proxy NDP entries** (the kernel's
  ``neigh_ifdown`` takes the proxy table with it), and an interface that is
  deleted and created again (``ppp0`` on every PPPoE reconnect) also comes
  back with ``proxy_ndp`` at 0.  A mapped address that is on-link on the WAN
  then stops being answered for, silently, until something puts the entries
  back (``NetlinkManager.repair``).
* **A TUN set down loses every route through it**, and setting it up again
  does not bring them back.
* **A new delegated prefix** (``wan.prefix_from``) arrives as an address.

:class:`NetlinkEvents` is a socket subscribed to both groups; the daemon
selects on it instead of sleeping.  It keeps no state: :meth:`drain` only
says which kind of thing changed, and the daemon's checks read the truth
from the kernel.  Lost notifications (``ENOBUFS``) count as both kinds.
:func:`classify` is pure.
"""

from __future__ import annotations

import errno
import socket
import struct
from dataclasses import dataclass

__all__ = ["Changes", "NetlinkEvents", "classify"]

# linux/rtnetlink.h
RTMGRP_LINK = 0x1
RTMGRP_IPV6_IFADDR = 0x100
RTM_NEWLINK, RTM_DELLINK = 16, 17
RTM_NEWADDR, RTM_DELADDR = 20, 21
_NLMSGHDR = struct.Struct("=IHHII")


@dataclass(frozen=True)
class Changes:
    """What the drained notifications were about."""

    links: bool = False
    addresses: bool = False

    def __or__(self, other: Changes) -> Changes:
        return Changes(self.links or other.links, self.addresses or other.addresses)

    def __bool__(self) -> bool:
        return self.links or self.addresses


EVERYTHING = Changes(links=True, addresses=True)


def classify(data: bytes) -> Changes:
    """The kinds of change in one datagram of notifications; pure."""
    links = addresses = False
    offset = 0
    while offset + _NLMSGHDR.size <= len(data):
        length, msg_type = _NLMSGHDR.unpack_from(data, offset)[:2]
        if length < _NLMSGHDR.size:
            break
        links = links or msg_type in (RTM_NEWLINK, RTM_DELLINK)
        addresses = addresses or msg_type in (RTM_NEWADDR, RTM_DELADDR)
        offset += (length + 3) & ~3
    return Changes(links, addresses)


class NetlinkEvents:
    """A non-blocking netlink socket that turns readable when a link or IPv6 address changes."""

    def __init__(self, groups: int = RTMGRP_LINK | RTMGRP_IPV6_IFADDR) -> None:
        self.sock = socket.socket(
            socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC, 0
        )
        try:
            self.sock.bind((0, groups))
        except OSError:
            self.sock.close()
            raise

    def fileno(self) -> int:
        return self.sock.fileno()

    def drain(self) -> Changes:
        """Read every queued notification and say what they were about."""
        seen = Changes()
        while True:
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                return seen
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise
                seen = EVERYTHING  # the kernel dropped some: assume the worst, look at all
                continue
            seen = seen | classify(data)

    def close(self) -> None:
        self.sock.close()
