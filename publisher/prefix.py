"""Dynamic prefixes: IPv6 addresses written relative to the prefix a router has now.

Many ISPs hand a home router a new IPv6 prefix on every reconnect, or every
day.  Addresses written out in full then point into someone else's network
after the change.  With ``wan.prefix_from: IFNAME`` a config may write an
address as a suffix that starts with ``::`` (``::50``, or ``::80/121`` for a
range); it stands for that suffix inside the global prefix the interface
carries at the moment (:func:`resolve`).  The daemon looks again every few
seconds and reloads itself when the prefix has changed, so routes, proxy NDP,
the firewall, the translator's tables and (with ``dns.update_on_change``) the
AAAA records follow.

:func:`choose_prefix` and :func:`resolve` are pure; :func:`read_prefix` asks
the kernel (netlink, through pyroute2).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from ipaddress import IPv6Address, IPv6Network
from typing import Any

# Not prefixes to publish from: link-local, unique local (RFC 4193), multicast,
# loopback/unspecified and IPv4-mapped space.
NOT_PUBLISHABLE = tuple(
    IPv6Network(n) for n in ("fe80::/10", "fc00::/7", "ff00::/8", "::/8", "::ffff:0:0/96")
)
IFA_F_DEPRECATED = 0x20
IFA_F_TENTATIVE = 0x40
FOREVER = 0xFFFFFFFF

PREFIX_STATE_FILE = "prefix"
"""In ``daemon.state_dir``: the prefix the running daemon publishes in, and its interface."""

PLACEHOLDER = IPv6Network("2001:db8:ffff:ffff::/64")
"""What ``revnat64 check`` resolves suffixes against while the interface has no
prefix: the file can still be validated (a documentation prefix, never applied)."""


@dataclass(frozen=True)
class InterfaceAddress:
    """One IPv6 address on the interface, as far as choosing a prefix cares."""

    network: IPv6Network  # the on-link prefix the address belongs to
    deprecated: bool = False
    preferred: int = FOREVER  # seconds of preferred lifetime left


def choose_prefix(
    addresses: Iterable[InterfaceAddress],
    keep: IPv6Network | None = None,
    within: Sequence[IPv6Network] = (),
) -> IPv6Network | None:
    """The prefix to publish from: global, not deprecated, longest preferred lifetime.

    During a renumbering the old prefix stays on the interface, deprecated
    (preferred lifetime 0), until it times out; the new one is preferred.  A
    /128 (a DHCPv6 address without a prefix) has no room for a suffix.

    ``keep`` (the prefix in use) wins while it is still usable: with two
    prefixes whose lifetimes count down and are refreshed at different
    moments, "longest" alone would flip between them and renumber the
    devices every few seconds.  Otherwise ties go to the lowest prefix.

    ``within`` (``wan.prefix_within``), when given, is where the ISP delegates
    from: a prefix outside all of it is ignored, so a forged router
    advertisement cannot move the published addresses into a prefix of its own.
    """
    best: tuple[int, IPv6Network] | None = None
    for a in addresses:
        net = a.network
        if a.deprecated or a.preferred == 0 or net.prefixlen >= 128:
            continue
        if any(net.subnet_of(bad) for bad in NOT_PUBLISHABLE):
            continue
        if within and not any(net.subnet_of(ok) for ok in within):
            continue
        if net == keep:
            return net
        key = (-a.preferred, net)
        if best is None or key < (-best[0], best[1]):
            best = (a.preferred, net)
    return None if best is None else best[1]


def is_relative(text: str) -> bool:
    """Whether a configured IPv6 value is a suffix for ``wan.prefix_from``."""
    return text.startswith("::")


def resolve(text: str, prefix: IPv6Network) -> IPv6Network:
    """``::50`` -> the /128 with that suffix in ``prefix``; ``::80/121`` -> that range.

    ValueError (for the config's problem list) when the text is not a suffix or
    does not fit in the host part of ``prefix``.
    """
    try:
        suffix = IPv6Network(text, strict=True)
    except ValueError as exc:
        if "host bits set" in str(exc):
            meant = IPv6Network(text, strict=False)
            raise ValueError(f"{text!r} has host bits set (did you mean {meant}?)") from None
        raise ValueError(f"{text!r} is not an IPv6 suffix such as ::50 or ::80/121") from None
    host_bits = 128 - prefix.prefixlen
    value = int(suffix.network_address)
    if value >> host_bits or suffix.prefixlen < prefix.prefixlen:
        raise ValueError(
            f"{text!r} does not fit in the host part of the current prefix {prefix} "
            f"({host_bits} bits)"
        )
    return IPv6Network((int(prefix.network_address) | value, suffix.prefixlen))


def resolve_address(text: str, prefix: IPv6Network) -> IPv6Address:
    """:func:`resolve` for a single address (no ``/len``)."""
    if "/" in text:
        raise ValueError(f"{text!r}: an address, not a prefix, is needed here")
    return resolve(text, prefix).network_address


def read_prefix(
    ifname: str,
    ipr: Any = None,
    keep: IPv6Network | None = None,
    within: Sequence[IPv6Network] = (),
) -> IPv6Network | None:
    """The prefix :func:`choose_prefix` picks among ``ifname``'s addresses now.

    LookupError if there is no such interface.  ``ipr`` is an open pyroute2
    ``IPRoute`` to reuse (the daemon's); without it one is opened for the call.
    """
    if ipr is None:
        from pyroute2 import IPRoute

        with IPRoute() as own:
            return read_prefix(ifname, own, keep, within)
    found = ipr.link_lookup(ifname=ifname)
    if not found:
        raise LookupError(f"no interface {ifname}")
    rows = []
    for msg in ipr.get_addr(family=10, index=found[0]):
        flags = msg.get_attr("IFA_FLAGS")
        if flags is None:
            flags = msg["flags"]
        cache = msg.get_attr("IFA_CACHEINFO")
        preferred = FOREVER if cache is None else int(cache["ifa_preferred"])
        net = IPv6Network(f"{msg.get_attr('IFA_ADDRESS')}/{msg['prefixlen']}", strict=False)
        rows.append(InterfaceAddress(net, bool(flags & IFA_F_DEPRECATED), preferred))
    return choose_prefix(rows, keep, within)


def remembered_text(prefix: IPv6Network, ifname: str) -> str:
    """The PREFIX_STATE_FILE line for ``prefix`` on ``ifname``."""
    return f"{prefix} {ifname}\n"


def remembered(state_dir: str, ifname: str) -> IPv6Network | None:
    """The prefix the daemon last published in on ``ifname``; None if unknown.

    Commands prefer it (as ``keep``) so that they agree with the daemon while
    it is still usable.  Unreadable or stale files are simply ignored.
    """
    try:
        with open(f"{state_dir}/{PREFIX_STATE_FILE}", encoding="ascii") as f:
            words = f.read(200).split()
        if len(words) == 2 and words[1] == ifname:
            return IPv6Network(words[0])
    except (OSError, ValueError, UnicodeDecodeError):
        pass
    return None
