"""Netlink notifications that wake the supervisor: links, IPv6 addresses, our routes, sysctls.

What the kernel changes behind the daemon's back needs a prompt answer:

* **A link going down flushes its proxy NDP entries** (the kernel's
  ``neigh_ifdown`` takes the proxy table with it), and an interface that is
  deleted and created again (``ppp0`` on every PPPoE reconnect) also comes
  back with ``proxy_ndp`` at 0.  A mapped address that is on-link on the WAN
  then stops being answered for, silently, until something puts the entries
  back (``NetlinkManager.repair``).
* **A TUN set down loses every route through it**, and setting it up again
  does not bring them back.
* **A route of ours deleted by someone else** (``ip route flush``, a script)
  takes its mapping off the air.
* **A new delegated prefix** (``wan.prefix_from``) arrives as an address.
* **Forwarding or proxy_ndp switched off** (a script, another network manager
  writing its own sysctls) silently stops the translated traffic; the kernel
  announces it as an ``RTM_NEWNETCONF``.

:class:`NetlinkEvents` is a socket subscribed to those groups; the daemon
selects on it instead of sleeping.  It keeps no state: :meth:`drain` says
what kind of thing changed (and which of our routes went), and the daemon's
checks read the truth from the kernel.  When the kernel drops notifications
(``ENOBUFS``) everything counts as changed.  :func:`classify` is pure.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Iterator
from dataclasses import dataclass

from publisher.nlbatch import attributes, messages, route_destination

__all__ = ["Changes", "NetlinkEvents", "TableEvents", "classify", "table_deleted"]

# linux/netlink.h, rtnetlink.h
NETLINK_ROUTE = 0
RTMGRP_LINK = 0x1
RTMGRP_IPV4_ROUTE = 0x40
RTMGRP_IPV6_IFADDR = 0x100
RTMGRP_IPV6_ROUTE = 0x400
RTMGRP_IPV4_NETCONF = 1 << (24 - 1)  # RTNLGRP_IPV4_NETCONF (Linux 3.2+; older kernels
RTMGRP_IPV6_NETCONF = 1 << (25 - 1)  # ignore the bits, and the 60 s look remains)
RTM_NEWLINK, RTM_DELLINK = 16, 17
RTM_NEWADDR, RTM_DELADDR = 20, 21
RTM_DELROUTE = 25
RTM_NEWNETCONF = 80
GROUPS = (
    RTMGRP_LINK
    | RTMGRP_IPV6_IFADDR
    | RTMGRP_IPV4_ROUTE
    | RTMGRP_IPV6_ROUTE
    | RTMGRP_IPV4_NETCONF
    | RTMGRP_IPV6_NETCONF
)


@dataclass(frozen=True)
class Changes:
    """What the drained notifications were about.

    ``routes_deleted`` holds the destinations (``address/length``) of deleted
    main-table routes with our protocol number; the daemon puts back those it
    did not delete itself.  ``settings``: an interface's forwarding or proxy_ndp
    setting changed (anyone's, ours included).  ``lost``: the kernel dropped
    notifications, so anything may have changed.
    """

    links: bool = False
    addresses: bool = False
    routes_deleted: frozenset[str] = frozenset()
    lost: bool = False
    settings: bool = False

    def __or__(self, other: Changes) -> Changes:
        return Changes(
            self.links or other.links,
            self.addresses or other.addresses,
            self.routes_deleted | other.routes_deleted,
            self.lost or other.lost,
            self.settings or other.settings,
        )

    def __bool__(self) -> bool:
        return (
            self.links or self.addresses or bool(self.routes_deleted) or self.lost or self.settings
        )


LOST = Changes(links=True, addresses=True, lost=True, settings=True)


def classify(data: bytes, protocol: int = -1) -> Changes:
    """The kinds of change in one datagram of notifications; pure.

    Route deletions count only for routes with ``protocol`` (ours); a
    route added, by us or anyone, is not a change worth waking for.
    """
    links = addresses = settings = False
    deleted: set[str] = set()
    for msg_type, start, end in messages(data):
        links = links or msg_type in (RTM_NEWLINK, RTM_DELLINK)
        addresses = addresses or msg_type in (RTM_NEWADDR, RTM_DELADDR)
        settings = settings or msg_type == RTM_NEWNETCONF
        if msg_type == RTM_DELROUTE:
            dst = route_destination(data, start, end, protocol)
            if dst is not None:
                deleted.add(dst)
    return Changes(links, addresses, frozenset(deleted), settings=settings)


class _Subscription:
    """A non-blocking netlink socket bound to multicast ``groups`` of ``family``."""

    def __init__(self, family: int, groups: int, buffer: int = 0) -> None:
        self.sock = socket.socket(
            socket.AF_NETLINK,
            socket.SOCK_RAW | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC,
            family,
        )
        try:
            if buffer:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, buffer)
            self.sock.bind((0, groups))
        except OSError:
            self.sock.close()
            raise

    def fileno(self) -> int:
        return self.sock.fileno()

    def datagrams(self) -> Iterator[bytes | None]:
        """Every queued datagram; None where the kernel dropped some (``ENOBUFS``)."""
        while True:
            try:
                yield self.sock.recv(65536)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise
                yield None

    def close(self) -> None:
        self.sock.close()


class NetlinkEvents(_Subscription):
    """Readable when a link, IPv6 address, route or forwarding setting changes."""

    def __init__(self, protocol: int = -1, groups: int = GROUPS) -> None:
        # A reload that adds 10,000 mappings announces 10,000 routes: room for most
        # (net.core.rmem_max caps it; an overflow reads as LOST, which is safe).
        super().__init__(NETLINK_ROUTE, groups, buffer=1 << 22)
        self.protocol = protocol  # whose deleted routes to report (the daemon's own)

    def drain(self) -> Changes:
        """Read every queued notification and say what they were about."""
        seen = Changes()
        for data in self.datagrams():
            seen = seen | (LOST if data is None else classify(data, self.protocol))
        return seen


# linux/netfilter/nfnetlink.h, nf_tables.h
NETLINK_NETFILTER = 12
NFNLGRP_NFTABLES = 7
NFNL_SUBSYS_NFTABLES = 10
NFT_MSG_DELTABLE = 2
NFTA_TABLE_NAME = 1
NFGENMSG_SIZE = 4  # family, version, resource id
NFPROTO = {"inet": 1, "ip": 2, "ip6": 10}


def table_deleted(data: bytes, family: int, name: bytes) -> bool:
    """Whether one datagram of nftables notifications deletes table ``family name``; pure."""
    wanted = name + b"\0"
    for msg_type, start, end in messages(data):
        if msg_type != (NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_DELTABLE):
            continue
        if end - start < NFGENMSG_SIZE or data[start] != family:
            continue
        for kind, value in attributes(data, start + NFGENMSG_SIZE, end):
            if kind == NFTA_TABLE_NAME and value == wanted:
                return True
    return False


class TableEvents(_Subscription):
    """Readable when nftables objects change.

    The firewall watchdog looks every ``firewall.check_interval`` seconds
    whether our table is still there; this tells it at once when someone
    deletes it (``flush ruleset``, an nftables restart), so the allow lists
    are enforced again within milliseconds instead of seconds.
    """

    def __init__(self, family: str, table: str) -> None:
        super().__init__(NETLINK_NETFILTER, 1 << (NFNLGRP_NFTABLES - 1))
        self.family = NFPROTO[family]
        self.table = table.encode()

    def drain(self) -> bool:
        """Read every queued notification: True when our table was deleted (or some were lost)."""
        deleted = False
        for data in self.datagrams():
            deleted = deleted or data is None or table_deleted(data, self.family, self.table)
        return deleted
