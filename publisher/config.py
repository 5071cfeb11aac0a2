"""The revnat64 configuration: YAML in, frozen dataclasses out.

Every problem is collected, not just the first one, so a user fixes a broken
file in one pass.  Each problem names the file, the field path in the same
spelling the user wrote (``mappings[2].ipv4``) and the reason.  Nothing but
:class:`ConfigError` escapes :func:`load_config` / :func:`parse_config`, whatever
the YAML holds (a property test feeds it arbitrary documents).

Validation here is purely about the file.  Checks against the running system
(does the LAN interface exist, does pool4 collide with a route) live in
:mod:`publisher.netlink`, which ``revnat64 check`` and the daemon call.
"""

from __future__ import annotations

import ipaddress
import re
import sys
from collections.abc import Callable, Iterable
from collections.abc import Mapping as TMapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from pathlib import Path
from typing import Any, TextIO, TypeVar, cast

import yaml

from publisher.prefix import (
    PLACEHOLDER,
    is_relative,
    read_prefix,
    remembered,
    resolve,
    resolve_address,
)

__all__ = [
    "AllowRule",
    "Config",
    "ConfigError",
    "PrefixMissing",
    "DaemonSettings",
    "DnsSettings",
    "FirewallSettings",
    "LanSettings",
    "Mapping",
    "MetricsSettings",
    "Problem",
    "TranslatorSection",
    "WanSettings",
    "config_warnings",
    "is_ip_host",
    "load_config",
    "load_config_compact",
    "parse_config",
]

# libyaml's loader parses a 10,000-mapping file ten times faster, in a fraction of the
# memory; the pure-Python one is the fallback where PyYAML was built without it.
SAFE_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

DEFAULT_STATE_DIR = "/var/lib/revnat64"

# (\Z, not $: "$" also matches before a trailing newline, which would let a name
# carry one into generated nsupdate scripts, zone files and rules.)
# RFC 6052 section 2.2: the only legal prefix lengths.
RFC6052_LENGTHS = frozenset({32, 40, 48, 56, 64, 96})
WELL_KNOWN_PREFIX = IPv6Network("64:ff9b::/96")
RESERVED_ZERO8 = IPv6Network("::/8")  # unspecified, loopback, IPv4-compatible (RFC 4291)
IFNAME_RE = re.compile(r"^[A-Za-z0-9_.@:-]{1,15}\Z")
MAPPING_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\Z")
DNS_LABEL_RE = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)\Z")
INSTANCE_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}\Z")
ALLOW_RE = re.compile(r"^(tcp|udp)/(\d{1,5})(?:-(\d{1,5}))?\Z")
RATE_RE = re.compile(r"^(\d{1,6})/(second|minute|hour)\Z")


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a config file."""

    file: str
    path: str
    reason: str

    def __str__(self) -> str:
        where = f"{self.file}: {self.path}" if self.path else self.file
        return f"{where}: {self.reason}"


class ConfigError(Exception):
    """The config cannot be used; ``problems`` says every reason why."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class PrefixMissing(ConfigError):
    """``wan.prefix_from`` has no usable prefix now (the daemon waits for one)."""


# (interface, wan.prefix_within) -> the prefix to publish in, or None
PrefixLookup = Callable[[str, "tuple[IPv6Network, ...]"], "IPv6Network | None"]


@dataclass(frozen=True)
class AllowRule:
    """What the internet may reach on a mapping: ``tcp/80``, ``udp/7000-7010`` or ``icmp``."""

    proto: str  # "tcp" | "udp" | "icmp"
    port_min: int = 0
    port_max: int = 0

    def __str__(self) -> str:
        if self.proto == "icmp":
            return "icmp"
        if self.port_min == self.port_max:
            return f"{self.proto}/{self.port_min}"
        return f"{self.proto}/{self.port_min}-{self.port_max}"


@dataclass(frozen=True)
class Mapping:
    """One published device or range (an explicit address mapping, RFC 7757).

    The two networks are kept as (integer, prefix length) and rebuilt as
    ``ipaddress`` objects when read: held as objects, ten thousand mappings cost
    the supervisor about 8 MiB (a /128 or /32 network carries its own address
    object and a ``hosts`` closure), and the supervisor keeps its config for
    the daemon's lifetime.  Build one with :meth:`Mapping.of`.
    """

    name: str
    ipv6_int: int
    ipv6_len: int
    ipv4_int: int
    ipv4_len: int
    allow: tuple[AllowRule, ...]
    sources: tuple[IPv6Network, ...] = ()
    hostname: str = ""
    masquerade: bool = False
    rate_limit: str | None = None
    allow_given: bool = True  # False: no allow list, so only ICMP echo is exposed

    @classmethod
    def of(cls, name: str, ipv6: IPv6Network, ipv4: IPv4Network, *args: Any, **kw: Any) -> Mapping:
        """A mapping of ``ipv6`` <-> ``ipv4``; the other arguments are the fields after them."""
        return cls(
            name,
            int(ipv6.network_address),
            ipv6.prefixlen,
            int(ipv4.network_address),
            ipv4.prefixlen,
            *args,
            **kw,
        )

    @property
    def ipv6(self) -> IPv6Network:
        return IPv6Network((self.ipv6_int, self.ipv6_len))

    @property
    def ipv4(self) -> IPv4Network:
        return IPv4Network((self.ipv4_int, self.ipv4_len))

    @property
    def ipv6_span(self) -> tuple[int, int]:
        """First and last address of the IPv6 side, as integers."""
        return self.ipv6_int, self.ipv6_int | ((1 << (128 - self.ipv6_len)) - 1)

    @property
    def ipv4_span(self) -> tuple[int, int]:
        """First and last address of the IPv4 side, as integers."""
        return self.ipv4_int, self.ipv4_int | ((1 << (32 - self.ipv4_len)) - 1)

    @property
    def is_range(self) -> bool:
        return self.ipv4_len < 32


# What a mapping without an allow list exposes; one shared tuple for all of them.
ICMP_ONLY = (AllowRule("icmp"),)


@dataclass(frozen=True)
class TranslatorSection:
    tun_device: str
    ipv4_address: IPv4Address
    ipv6_address: IPv6Address
    pool4: IPv4Network
    prefix: IPv6Network | None = None
    publish_prefix: IPv6Network | None = None
    rfc6791_pool4: tuple[IPv4Network, ...] = ()
    mtu: int = 1500
    lowest_ipv6_mtu: int = 1280
    udp_zero_checksum: str = "compute"
    lease_time: int = 7200
    unconfirmed_lease_time: int = 30
    lease_limit_per_prefix: int = 16
    lease_limit_prefix_len: int = 64
    icmp_errors_per_second: int = 100
    offloads: bool = True
    workers: int = 1
    udp_gro_forwarding: bool = False


@dataclass(frozen=True)
class WanSettings:
    interface: str
    proxy_ndp: bool = True
    prefix_from: str | None = None
    """The interface whose global prefix ``::suffix`` addresses follow (publisher.prefix)."""
    prefix: IPv6Network | None = None
    """The prefix they were resolved against (prefix.PLACEHOLDER while there is none)."""
    prefix_within: tuple[IPv6Network, ...] = ()
    """Where the ISP delegates from; prefixes outside are never followed."""


@dataclass(frozen=True)
class LanSettings:
    interface: str
    ipv4_networks: tuple[IPv4Network, ...] = ()


@dataclass(frozen=True)
class FirewallSettings:
    enabled: bool = True
    backend: str = "nftables"  # "nftables" | "iptables"
    check_interval: int = 5
    """Seconds between the daemon's checks that its rules are still there; 0: none."""


@dataclass(frozen=True)
class DnsSettings:
    zone: str = ""
    ttl: int = 300
    server: str | None = None
    tsig_key_file: str | None = None
    update_on_change: bool = False
    ptr: bool = False
    resolver: str | None = None
    # Whose names these are when several revnat64 hosts update one zone; "" is
    # the unnamed instance (the only one before instances existed).
    instance: str = ""


@dataclass(frozen=True)
class MetricsSettings:
    listen: str | None = "127.0.0.1:9864"
    textfile: str | None = None
    textfile_interval: int = 15


@dataclass(frozen=True)
class DaemonSettings:
    state_dir: str = DEFAULT_STATE_DIR
    control_socket: str = "/run/revnat64/control.sock"
    log_level: str = "info"


@dataclass(frozen=True)
class Config:
    """A validated revnat64 configuration."""

    path: str
    translator: TranslatorSection
    wan: WanSettings
    lan: LanSettings
    mappings: tuple[Mapping, ...]
    firewall: FirewallSettings = field(default_factory=FirewallSettings)
    dns: DnsSettings = field(default_factory=DnsSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    daemon: DaemonSettings = field(default_factory=DaemonSettings)

    @property
    def waiting_for_prefix(self) -> bool:
        """``wan.prefix_from`` has no prefix yet: the ::suffix addresses sit in PLACEHOLDER."""
        return bool(self.wan.prefix_from) and self.wan.prefix == PLACEHOLDER

    @property
    def lease_file(self) -> Path:
        return Path(self.daemon.state_dir) / "leases.json"

    def fqdn(self, mapping: Mapping) -> str:
        """The DNS name a mapping is published under (absolute, with the trailing dot)."""
        zone = self.dns.zone.rstrip(".")
        host = mapping.hostname or mapping.name
        return f"{host}.{zone}." if zone else f"{host}."


# --------------------------------------------------------------------------
# The parser: a small cursor over the YAML tree that records problems.

T = TypeVar("T")
A = TypeVar("A", IPv4Address, IPv6Address)
N = TypeVar("N", IPv4Network, IPv6Network)
_MISSING = object()


class _Reader:
    """Reads typed fields out of the YAML tree, recording problems instead of raising."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.problems: list[Problem] = []
        self.partial_translator: tuple[Any, Any, Any, Any] = (None, None, None, None)
        self.prefix_from: str | None = None  # wan.prefix_from, read before the sections
        self.prefix: IPv6Network | None = None  # what ::suffix addresses resolve against

    def problem(self, path: str, reason: str) -> None:
        self.problems.append(Problem(self.file, path, reason))

    def section(self, node: Any, path: str, known: Iterable[str]) -> dict[str, Any]:
        if node is None:
            return {}
        if not isinstance(node, dict):
            self.problem(path, f"must be a mapping of keys, not {_kind(node)}")
            return {}
        known_set = set(known)
        for key in node:
            if not isinstance(key, str):
                self.problem(path, f"key {key!r} is not a string")
            elif key not in known_set:
                hint = _closest(key, known_set)
                extra = f" (did you mean {hint!r}?)" if hint else ""
                self.problem(_join(path, key), f"unknown key{extra}")
        return {k: v for k, v in node.items() if isinstance(k, str) and k in known_set}

    def get(
        self,
        node: dict[str, Any],
        path: str,
        key: str,
        conv: Callable[[Any], T],
        default: Any = _MISSING,
    ) -> T | None:
        where = _join(path, key)
        if key not in node or node[key] is None:
            if default is _MISSING:
                self.problem(where, "is required")
                return None
            return default  # type: ignore[no-any-return]
        try:
            return conv(node[key])
        except (ValueError, TypeError) as exc:
            self.problem(where, str(exc))
            return None


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def _closest(key: str, known: set[str]) -> str | None:
    import difflib

    matches = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.7)
    return matches[0] if matches else None


# Converters: each raises ValueError/TypeError with a reason a user understands.


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"must be a string, not {_kind(value)}")
    return value


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"must be true or false, not {_kind(value)}")
    return value


def _int_in(lo: int, hi: int) -> Callable[[Any], int]:
    def conv(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"must be an integer, not {_kind(value)}")
        if not lo <= value <= hi:
            raise ValueError(f"must be between {lo} and {hi}, not {value}")
        return value

    return conv


def _choice(*options: str) -> Callable[[Any], str]:
    def conv(value: Any) -> str:
        if value not in options:
            raise ValueError(f"must be one of {', '.join(options)}, not {value!r}")
        return str(value)

    return conv


def _ifname(value: Any) -> str:
    name = _str(value)
    if not IFNAME_RE.match(name):
        raise ValueError(
            f"{name!r} is not a valid interface name (1-15 characters, no spaces or /)"
        )
    return name


def _address(kind: type[A], family: str) -> Callable[[Any], A]:
    def conv(value: Any) -> A:
        text = _str(value)
        try:
            return kind(text)
        except ValueError:
            raise ValueError(f"{text!r} is not an {family} address") from None

    return conv


def _network(kind: type[N], family: str) -> Callable[[Any], N]:
    """A prefix converter; a prefix with host bits set gets the likely intended one."""

    def conv(value: Any) -> N:
        text = _str(value)
        try:
            return kind(text, strict=True)
        except ValueError as exc:
            if "host bits set" in str(exc):
                meant = kind(text, strict=False)
                raise ValueError(f"{text!r} has host bits set (did you mean {meant}?)") from None
            raise ValueError(f"{text!r} is not an {family} address or prefix") from None

    return conv


_ipv4_address = _address(IPv4Address, "IPv4")
_ipv6_address = _address(IPv6Address, "IPv6")
_ipv4_network = _network(IPv4Network, "IPv4")
_ipv6_network = _network(IPv6Network, "IPv6")


def _relative6(r: _Reader, absolute: Callable[[Any], T], single: bool) -> Callable[[Any], T]:
    """``absolute``, or a ``::suffix`` inside the current prefix of ``wan.prefix_from``."""

    def conv(value: Any) -> T:
        text = _str(value).strip()
        if not is_relative(text):
            return absolute(value)
        if r.prefix_from is None:
            raise ValueError(
                f"{text!r} is a suffix (it starts with ::); set wan.prefix_from to the "
                "interface whose prefix it goes with, or write the whole address"
            )
        if r.prefix is None:
            return None  # type: ignore[return-value]  # wan.prefix_from's problem says why
        if single:
            return resolve_address(text, r.prefix)  # type: ignore[return-value]
        return resolve(text, r.prefix)  # type: ignore[return-value]

    return conv


def _hostport(value: Any) -> str:
    """``host:port`` with IPv6 hosts in brackets; returned unchanged once checked."""
    text = _str(value)
    split_hostport(text)
    return text


def is_ip_host(hostport: str) -> bool:
    """Whether the host of ``host:port`` is an IP address (not a name)."""
    try:
        ipaddress.ip_address(split_hostport(hostport)[0].strip("[]"))
    except ValueError:
        return False
    return True


def split_hostport(text: str) -> tuple[str, int]:
    """Split ``127.0.0.1:53`` / ``[::1]:53`` into host and port, with a clear error."""
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ValueError(f"{text!r} must look like [ipv6]:port")
        port_text = rest[1:]
        try:
            IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} in {text!r} is not an IPv6 address") from None
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or not host:
            raise ValueError(f"{text!r} must look like host:port (IPv6 as [addr]:port)")
        if ":" in host:
            raise ValueError(f"{text!r}: write an IPv6 host in brackets, as [addr]:port")
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"port {port_text!r} in {text!r} must be 1-65535")
    return host, int(port_text)


def _allow_rule(value: Any) -> AllowRule:
    if not isinstance(value, str):
        raise TypeError(f"must be a string like tcp/80, udp/7000-7010 or icmp, not {_kind(value)}")
    text = value.strip().lower()
    if text in ("icmp", "icmpv6", "ping"):
        return AllowRule("icmp")
    m = ALLOW_RE.match(text)
    if not m:
        raise ValueError(f"{value!r} is not tcp/PORT, udp/PORT, tcp/LOW-HIGH or icmp")
    lo = int(m.group(2))
    hi = int(m.group(3)) if m.group(3) else lo
    if not 1 <= lo <= 65535 or not 1 <= hi <= 65535:
        raise ValueError(f"{value!r}: ports must be 1-65535")
    if lo > hi:
        raise ValueError(f"{value!r}: range runs backwards")
    return AllowRule(m.group(1), lo, hi)


def _rate(value: Any) -> str:
    text = _str(value)
    if not RATE_RE.match(text):
        raise ValueError(f"{text!r} must look like 20/second, 100/minute or 1000/hour")
    return text


def _listen(value: Any) -> str | None:
    if value is False:
        return None
    return _hostport(value)


def _list_of(
    r: _Reader, node: dict[str, Any], path: str, key: str, conv: Callable[[Any], T]
) -> tuple[T, ...]:
    if key not in node or node[key] is None:
        return ()
    items = node[key]
    where = _join(path, key)
    if isinstance(items, (str, int)) and not isinstance(items, bool):
        items = [items]
    if not isinstance(items, list):
        r.problem(where, f"must be a list, not {_kind(items)}")
        return ()
    out: list[T] = []
    for i, item in enumerate(items):
        try:
            out.append(conv(item))
        except (ValueError, TypeError) as exc:
            r.problem(f"{where}[{i}]", str(exc))
    return tuple(out)


# --------------------------------------------------------------------------
# Sections


def _parse_translator(r: _Reader, node: Any) -> TranslatorSection | None:
    p = "translator"
    d = r.section(
        node,
        p,
        (
            "tun_device",
            "ipv4_address",
            "ipv6_address",
            "pool4",
            "prefix",
            "publish_prefix",
            "rfc6791_pool4",
            "mtu",
            "lowest_ipv6_mtu",
            "udp_zero_checksum",
            "lease_time",
            "unconfirmed_lease_time",
            "lease_limit_per_prefix",
            "lease_limit_prefix_len",
            "icmp_errors_per_second",
            "offloads",
            "workers",
            "udp_gro_forwarding",
        ),
    )
    if node is None:
        r.problem(p, "is required")
        return None
    tun = r.get(d, p, "tun_device", _ifname, "revnat64")
    v4 = r.get(d, p, "ipv4_address", _ipv4_address)
    v6 = r.get(d, p, "ipv6_address", _relative6(r, _ipv6_address, single=True))
    pool4 = r.get(d, p, "pool4", _ipv4_network)
    prefix = r.get(d, p, "prefix", _ipv6_network, None)
    publish_prefix = r.get(d, p, "publish_prefix", _relative6(r, _ipv6_network, False), None)
    rfc6791 = _list_of(r, d, p, "rfc6791_pool4", _ipv4_network)
    mtu = r.get(d, p, "mtu", _int_in(1280, 65535), 1500)
    lowest = r.get(d, p, "lowest_ipv6_mtu", _int_in(1280, 65535), 1280)
    udp0 = r.get(d, p, "udp_zero_checksum", _choice("compute", "drop"), "compute")
    lease_time = r.get(d, p, "lease_time", _int_in(1, 30 * 86400), 7200)
    unconfirmed = r.get(d, p, "unconfirmed_lease_time", _int_in(1, 30 * 86400), None)
    if d.get("unconfirmed_lease_time") is None and lease_time is not None:
        unconfirmed = min(30, lease_time)  # the default never exceeds a short lease_time
    per_prefix = r.get(d, p, "lease_limit_per_prefix", _int_in(1, 1 << 24), 16)
    per_len = r.get(d, p, "lease_limit_prefix_len", _int_in(1, 128), 64)
    icmp_rate = r.get(d, p, "icmp_errors_per_second", _int_in(0, 1_000_000), 100)
    offloads = r.get(d, p, "offloads", _bool, True)
    workers = r.get(d, p, "workers", _int_in(1, 64), 1)
    udp_gro = r.get(d, p, "udp_gro_forwarding", _bool, False)

    if prefix is not None and prefix.prefixlen not in RFC6052_LENGTHS:
        r.problem(
            f"{p}.prefix",
            f"RFC 6052 prefixes are /32, /40, /48, /56, /64 or /96, not /{prefix.prefixlen}",
        )
    elif prefix is not None and prefix.network_address.packed[8] != 0:
        r.problem(f"{p}.prefix", "bits 64-71 (the RFC 6052 u-octet) must be zero")
    elif prefix is not None and prefix.subnet_of(RESERVED_ZERO8):
        r.problem(
            f"{p}.prefix",
            f"{prefix} lies in ::/8, reserved by RFC 4291 (and not a ::suffix: the "
            "RFC 6052 prefix is always written in full); use one of your own or 64:ff9b::/96",
        )
    if mtu is not None and lowest is not None and lowest > mtu:
        r.problem(f"{p}.lowest_ipv6_mtu", f"({lowest}) cannot exceed translator.mtu ({mtu})")
    if pool4 is not None and pool4.num_addresses < 2 and v4 is not None and v4 in pool4:
        r.problem(f"{p}.pool4", "has no address left once ipv4_address is reserved")
    if lease_time is not None and unconfirmed is not None and unconfirmed > lease_time:
        r.problem(
            f"{p}.unconfirmed_lease_time",
            f"({unconfirmed}) cannot exceed translator.lease_time ({lease_time})",
        )
        unconfirmed = None
    r.partial_translator = (v4, v6, pool4, prefix)  # for cross-checks even when invalid
    values = (tun, v4, v6, pool4, mtu, lowest, udp0, lease_time, per_prefix, per_len)
    if any(v is None for v in values) or None in (
        icmp_rate,
        offloads,
        workers,
        udp_gro,
        unconfirmed,
    ):
        return None
    return TranslatorSection(
        tun_device=tun,  # type: ignore[arg-type]
        ipv4_address=v4,  # type: ignore[arg-type]
        ipv6_address=v6,  # type: ignore[arg-type]
        pool4=pool4,  # type: ignore[arg-type]
        prefix=prefix,
        publish_prefix=publish_prefix,
        rfc6791_pool4=rfc6791,
        mtu=mtu,  # type: ignore[arg-type]
        lowest_ipv6_mtu=lowest,  # type: ignore[arg-type]
        udp_zero_checksum=udp0,  # type: ignore[arg-type]
        lease_time=lease_time,  # type: ignore[arg-type]
        unconfirmed_lease_time=unconfirmed,  # type: ignore[arg-type]
        lease_limit_per_prefix=per_prefix,  # type: ignore[arg-type]
        lease_limit_prefix_len=per_len,  # type: ignore[arg-type]
        icmp_errors_per_second=icmp_rate,  # type: ignore[arg-type]
        offloads=offloads,  # type: ignore[arg-type]
        workers=workers,  # type: ignore[arg-type]
        udp_gro_forwarding=udp_gro,  # type: ignore[arg-type]
    )


def _parse_mapping(r: _Reader, node: Any, path: str) -> Mapping | None:
    d = r.section(
        node,
        path,
        ("name", "ipv6", "ipv4", "allow", "sources", "hostname", "masquerade", "rate_limit"),
    )
    if not isinstance(node, dict):
        return None
    name = r.get(d, path, "name", _str)
    if name is not None and not MAPPING_NAME_RE.match(name):
        r.problem(
            f"{path}.name",
            f"{name!r} must be lowercase letters, digits and '-', "
            "1-63 characters, not starting or ending with '-'",
        )
        name = None
    v6 = r.get(d, path, "ipv6", _relative6(r, _ipv6_network, single=False))
    v4 = r.get(d, path, "ipv4", _ipv4_network)
    allow = _list_of(r, d, path, "allow", _allow_rule)
    sources = _list_of(r, d, path, "sources", _ipv6_network)
    hostname = r.get(d, path, "hostname", _str, "")
    if hostname and not all(DNS_LABEL_RE.match(lbl) for lbl in hostname.split(".")):
        r.problem(f"{path}.hostname", f"{hostname!r} is not a valid DNS name")
    masq = r.get(d, path, "masquerade", _bool, False)
    rate = r.get(d, path, "rate_limit", _rate, None)
    if v6 is not None and v4 is not None and (128 - v6.prefixlen) != (32 - v4.prefixlen):
        r.problem(
            path,
            f"ipv6 {v6} and ipv4 {v4} must have equal suffix lengths "
            f"(RFC 7757): /{v6.prefixlen} leaves {128 - v6.prefixlen} bits, "
            f"/{v4.prefixlen} leaves {32 - v4.prefixlen}",
        )
        return None
    if name is None or v6 is None or v4 is None or hostname is None or masq is None:
        return None
    # No allow list exposes ICMP echo only: reachable enough to test, nothing more.
    given = "allow" in d and d["allow"] is not None and bool(allow)
    return Mapping.of(
        name,
        v6,
        v4,
        allow if given else ICMP_ONLY,
        sources,
        hostname,
        masq,
        rate,
        allow_given=given,
    )


def _parse_mappings(r: _Reader, node: Any) -> tuple[Mapping, ...]:
    if node is None:
        r.problem("mappings", "is required (a list of devices to publish)")
        return ()
    if not isinstance(node, list):
        r.problem("mappings", f"must be a list, not {_kind(node)}")
        return ()
    out = []
    for i, item in enumerate(node):
        m = _parse_mapping(r, item, f"mappings[{i}]")
        if m is not None:
            out.append((i, m))
    _check_mapping_conflicts(r, out)
    return tuple(m for _, m in out)


def _check_mapping_conflicts(r: _Reader, items: list[tuple[int, Mapping]]) -> None:
    """Duplicate names and overlapping address ranges, on either side (RFC 7757 §3.2)."""
    names: dict[str, int] = {}
    hosts: dict[str, int] = {}
    for i, m in items:
        if m.name in names:
            r.problem(
                f"mappings[{i}].name", f"{m.name!r} is already used by mappings[{names[m.name]}]"
            )
        else:
            names[m.name] = i
        host = (m.hostname or m.name).lower()
        if host in hosts and m.hostname:
            r.problem(
                f"mappings[{i}].hostname",
                f"DNS name {host!r} is already used by mappings[{hosts[host]}]",
            )
        else:
            hosts[host] = i
    for family in ("ipv6", "ipv4"):
        # Sorting by network start turns the all-pairs check into neighbours only;
        # integers, because ipaddress objects for 10,000 mappings are slow and big.
        ordered = sorted(
            items, key=lambda im: (getattr(im[1], f"{family}_int"), getattr(im[1], f"{family}_len"))
        )
        widest: tuple[int, int, int, Mapping] | None = None  # (first, last, index, mapping)
        for i, m in ordered:
            first, last = getattr(m, f"{family}_span")
            if widest is not None and first <= widest[1]:
                j, other = widest[2], widest[3]
                net, other_net = getattr(m, family), getattr(other, family)
                what = "duplicates" if net == other_net else "overlaps"
                (late, late_net), (early, early_net) = sorted(
                    ((i, net), (j, other_net)), reverse=True
                )
                r.problem(
                    f"mappings[{late}].{family}",
                    f"{late_net} {what} {early_net} of mappings[{early}]",
                )
            if widest is None or last > widest[1]:
                widest = (first, last, i, m)


def _parse_simple(
    r: _Reader, node: Any, path: str, spec: dict[str, tuple[Callable[[Any], Any], Any]]
) -> dict[str, Any]:
    d = r.section(node, path, spec)
    return {key: r.get(d, path, key, conv, default) for key, (conv, default) in spec.items()}


def parse_config(data: Any, file: str = "<config>", prefix: IPv6Network | None = None) -> Config:
    """Validate an already-loaded YAML document; raise ConfigError listing every problem.

    ``prefix`` is the current prefix of ``wan.prefix_from`` (the caller reads
    it, see :func:`raw_prefix_from`); addresses written as ``::suffix`` go
    inside it.
    """
    r = _Reader(file)
    top = r.section(
        data, "", ("translator", "wan", "lan", "mappings", "firewall", "dns", "metrics", "daemon")
    )
    if data is None or not isinstance(data, dict):
        if not r.problems:
            r.problem("", "is empty; see mappings.yaml.example")
        raise ConfigError(r.problems)

    r.prefix_from, r.prefix = raw_prefix_from(data), prefix
    tr = _parse_translator(r, top.get("translator"))
    wan_d = r.section(
        top.get("wan"), "wan", ("interface", "proxy_ndp", "prefix_from", "prefix_within")
    )
    if top.get("wan") is None:
        r.problem("wan", "is required")
    wan_if = r.get(wan_d, "wan", "interface", _ifname)
    proxy_ndp = r.get(wan_d, "wan", "proxy_ndp", _bool, True)
    prefix_from = r.get(wan_d, "wan", "prefix_from", _ifname, None)
    if prefix_from is not None and prefix is None:
        r.problem("wan.prefix_from", f"no current prefix of {prefix_from} was given")
    within = _list_of(r, wan_d, "wan", "prefix_within", _ipv6_network)
    if within and prefix_from is None:
        r.problem("wan.prefix_within", "only means something with wan.prefix_from")
    if prefix_from is not None and tr is not None and prefix_from == tr.tun_device:
        r.problem(
            "wan.prefix_from",
            f"{prefix_from} is revnat64's own TUN device; name the interface that carries "
            "the prefix from your ISP (the LAN bridge with DHCPv6-PD, or the WAN)",
        )
    lan_d = r.section(top.get("lan"), "lan", ("interface", "ipv4_networks"))
    if top.get("lan") is None:
        r.problem("lan", "is required")
    lan_if = r.get(lan_d, "lan", "interface", _ifname)
    lan_nets = _list_of(r, lan_d, "lan", "ipv4_networks", _ipv4_network)
    for side, ifname in (("wan", wan_if), ("lan", lan_if)):
        if tr is not None and ifname is not None and ifname == tr.tun_device:
            r.problem(
                "translator.tun_device",
                f"{ifname} is also {side}.interface; revnat64 creates (and at stop "
                "deletes) its TUN device, so it needs a name of its own",
            )
    mappings = _parse_mappings(r, top.get("mappings"))

    fw = _parse_simple(
        r,
        top.get("firewall"),
        "firewall",
        {
            "enabled": (_bool, True),
            "backend": (_choice("nftables", "iptables"), "nftables"),
            "check_interval": (_int_in(0, 3600), 5),
        },
    )
    dns = _parse_simple(
        r,
        top.get("dns"),
        "dns",
        {
            "zone": (_zone, ""),
            "ttl": (_int_in(0, 2**31 - 1), 300),
            "server": (_hostport, None),
            "tsig_key_file": (_str, None),
            "update_on_change": (_bool, False),
            "ptr": (_bool, False),
            "resolver": (_hostport, None),
            "instance": (_instance, ""),
        },
    )
    metrics = _parse_simple(
        r,
        top.get("metrics"),
        "metrics",
        {
            "listen": (_listen, "127.0.0.1:9864"),
            "textfile": (_str, None),
            "textfile_interval": (_int_in(1, 86400), 15),
        },
    )
    if isinstance(top.get("metrics"), dict) and top["metrics"].get("listen", 1) is None:
        metrics["listen"] = None  # an explicit `listen: null` turns the endpoint off
    daemon = _parse_simple(
        r,
        top.get("daemon"),
        "daemon",
        {
            "state_dir": (_str, DEFAULT_STATE_DIR),
            "control_socket": (_str, "/run/revnat64/control.sock"),
            "log_level": (_choice("debug", "info", "warning", "error"), "info"),
        },
    )
    if dns.get("update_on_change") and not dns.get("server"):
        r.problem("dns.server", "is required when dns.update_on_change is true")
    if (dns.get("update_on_change") or dns.get("server")) and not dns.get("zone"):
        r.problem("dns.zone", "is required when dns.server is set")

    _check_translator_against_mappings(r, *r.partial_translator, mappings, lan_nets)

    if r.problems or tr is None or wan_if is None or lan_if is None or proxy_ndp is None:
        if not r.problems:  # pragma: no cover - every None above records a problem
            r.problem("", "invalid")
        raise ConfigError(r.problems)
    return Config(
        path=file,
        translator=tr,
        wan=WanSettings(
            wan_if, proxy_ndp, prefix_from, prefix if prefix_from else None, tuple(within)
        ),
        lan=LanSettings(lan_if, lan_nets),
        mappings=mappings,
        firewall=FirewallSettings(**fw),
        dns=DnsSettings(**dns),
        metrics=MetricsSettings(**metrics),
        daemon=DaemonSettings(**daemon),
    )


def _zone(value: Any) -> str:
    text = _str(value).strip()
    if text in ("", "."):
        raise ValueError("must be a DNS zone such as cam.example.org.")
    labels = text.rstrip(".").split(".")
    if not all(DNS_LABEL_RE.match(lbl) for lbl in labels):
        raise ValueError(f"{text!r} is not a valid DNS zone name")
    return text if text.endswith(".") else text + "."


def _instance(value: Any) -> str:
    """An instance name goes into the ownership TXT strings, so keep it one plain word."""
    text = _str(value)
    if not INSTANCE_RE.match(text):
        raise ValueError(
            f"{text!r} is not an instance name: use 1 to 32 lowercase letters, digits "
            "and hyphens, such as router2"
        )
    return text


def _span(net: IPv4Network | IPv6Network | None) -> tuple[int, int]:
    """First and last address of ``net`` as integers; an empty span for None."""
    if net is None:
        return (0, -1)
    return int(net.network_address), int(net.broadcast_address)


def _check_translator_against_mappings(
    r: _Reader,
    v4: IPv4Address | None,
    v6: IPv6Address | None,
    pool4: IPv4Network | None,
    prefix: IPv6Network | None,
    mappings: tuple[Mapping, ...],
    lan_nets: tuple[IPv4Network, ...],
) -> None:
    """Cross-field rules: the pool, the prefix and the translator's own addresses.

    Runs on whatever parsed, so one bad field does not hide the other problems.
    """
    # Compared as integer spans: one check per mapping, no ipaddress objects.
    pool_span = _span(pool4)
    prefix_span = _span(prefix)
    v6_int = -1 if v6 is None else int(v6)
    v4_int = -1 if v4 is None else int(v4)
    for i, m in enumerate(mappings):
        first6, last6 = m.ipv6_span
        first4, last4 = m.ipv4_span
        if first4 <= pool_span[1] and pool_span[0] <= last4:
            r.problem(
                f"mappings[{i}].ipv4",
                f"{m.ipv4} overlaps translator.pool4 {pool4}; "
                "pool addresses are leased to IPv6 clients",
            )
        if first6 <= prefix_span[1] and prefix_span[0] <= last6:
            r.problem(
                f"mappings[{i}].ipv6",
                f"{m.ipv6} lies inside the RFC 6052 prefix {prefix}; "
                "it would be translated two ways",
            )
        if first6 <= v6_int <= last6:
            r.problem(f"mappings[{i}].ipv6", f"{m.ipv6} contains translator.ipv6_address {v6}")
        if first4 <= v4_int <= last4:
            r.problem(f"mappings[{i}].ipv4", f"{m.ipv4} contains translator.ipv4_address {v4}")
    for j, lan in enumerate(lan_nets):
        if pool4 is not None and lan.overlaps(pool4):
            r.problem(
                "translator.pool4",
                f"{pool4} overlaps the LAN {lan} (lan.ipv4_networks[{j}]); choose an unused range",
            )
    if prefix is not None and prefix == WELL_KNOWN_PREFIX:
        offenders: list[tuple[str, Any]] = [
            ("translator.pool4", pool4),
            ("translator.ipv4_address", v4),
        ]
        offenders += [(f"mappings[{i}].ipv4", m.ipv4) for i, m in enumerate(mappings)]
        for where, addr in offenders:
            if addr is not None and not addr.is_global:
                r.problem(
                    where,
                    f"{addr} is not a global IPv4 address; RFC 6052 §3.1 forbids the "
                    "Well-Known Prefix 64:ff9b::/96 with non-global IPv4 "
                    "(use a network-specific prefix instead)",
                )
    if prefix is not None and v6 is not None and v6 in prefix:
        r.problem("translator.ipv6_address", f"{v6} lies inside translator.prefix {prefix}")


def load_config(
    path: str | Path, placeholder: bool = False, prefix_lookup: PrefixLookup | None = None
) -> Config:
    """Read and validate a YAML config file.

    With ``wan.prefix_from``, the interface's current prefix is read from the
    kernel (``prefix_lookup``, default :func:`publisher.prefix.read_prefix`).
    Without one, :class:`PrefixMissing` is raised, or with ``placeholder``
    (commands that only validate or need no addresses) the suffixes go into
    :data:`publisher.prefix.PLACEHOLDER`.
    """
    file = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([Problem(file, "", f"cannot read: {exc}")]) from None
    return parse_config_text(text, file, placeholder, prefix_lookup)


def load_config_compact(
    path: str | Path, placeholder: bool = False, prefix_lookup: PrefixLookup | None = None
) -> Config:
    """:func:`load_config` for a process that keeps the result: the daemon.

    The parsed YAML tree of a 10,000-mapping file takes about 25 MiB, and the
    Config built from it lands in the gaps between its objects; once the tree
    is freed those sparsely used heap arenas cannot go back to the OS, so the
    3 MiB Config would pin some 25 MiB.  A pickle round trip, after the first
    copy and the tree are gone, rebuilds it in fresh, densely packed memory
    (measured: 4 MiB instead of 27 MiB of RSS; about 40 ms).
    """
    import pickle

    blob = pickle.dumps(load_config(path, placeholder, prefix_lookup), pickle.HIGHEST_PROTOCOL)
    return cast(Config, pickle.loads(blob))


def load_config_or_report(
    path: str | Path, stream: TextIO | None = None, placeholder: bool = False
) -> Config | None:
    """For commands: the config, or None after printing one line per problem."""
    try:
        return load_config(path, placeholder)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=stream if stream is not None else sys.stderr)
        return None


def parse_config_text(
    text: str,
    file: str = "<config>",
    placeholder: bool = False,
    prefix_lookup: PrefixLookup | None = None,
) -> Config:
    try:
        data = yaml.load(text, Loader=SAFE_LOADER)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        reason = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([Problem(file, where, f"invalid YAML: {reason}")]) from None
    except RecursionError:
        raise ConfigError([Problem(file, "", "invalid YAML: nested too deeply")]) from None
    ifname = raw_prefix_from(data)
    if ifname is None:
        return parse_config(data, file)
    within = raw_prefix_within(data)
    if within is None:  # parse_config names the entry that does not parse
        return parse_config(data, file, PLACEHOLDER)
    try:
        if prefix_lookup is not None:
            prefix = prefix_lookup(ifname, within)
        else:  # agree with the running daemon while its prefix is usable
            keep = remembered(raw_state_dir(data), ifname)
            prefix = read_prefix(ifname, keep=keep, within=within)
        where = " inside wan.prefix_within" if within else ""
        why = f"{ifname} has no global IPv6 prefix{where} now"
    except LookupError as exc:
        prefix, why = None, str(exc)
    except Exception as exc:  # netlink trouble: say so, like any other problem
        prefix, why = None, f"cannot read the addresses of {ifname}: {exc}"
    if prefix is None:
        if not placeholder:
            raise PrefixMissing(
                [Problem(file, "wan.prefix_from", f"{why}; the ::suffix addresses need one")]
            )
        prefix = PLACEHOLDER
    return parse_config(data, file, prefix)


def _raw(data: Any, section: str, key: str) -> Any:
    """``section.key`` straight from the YAML tree, before validation; None if absent."""
    node = data.get(section) if isinstance(data, dict) else None
    return node.get(key) if isinstance(node, dict) else None


def raw_state_dir(data: Any) -> str:
    """``daemon.state_dir`` straight from the YAML tree, or its default."""
    value = _raw(data, "daemon", "state_dir")
    return value if isinstance(value, str) and value else DEFAULT_STATE_DIR


def raw_prefix_within(data: Any) -> tuple[IPv6Network, ...] | None:
    """``wan.prefix_within`` straight from the YAML tree; None if an entry does not
    parse (parse_config then reports it, naming the entry)."""
    values = _raw(data, "wan", "prefix_within")
    if values is None:
        return ()
    if not isinstance(values, list):
        return None
    try:
        return tuple(IPv6Network(str(value), strict=True) for value in values)
    except ValueError:
        return None


def raw_prefix_from(data: Any) -> str | None:
    """``wan.prefix_from`` straight from the YAML tree (parse_config validates it)."""
    value = _raw(data, "wan", "prefix_from")
    return value if isinstance(value, str) and value else None


def config_warnings(cfg: Config) -> list[str]:
    """Legal but probably unwanted settings; ``check`` prints these."""
    out = []
    for i, m in enumerate(cfg.mappings):
        if not m.allow_given:
            out.append(f"{cfg.path}: mappings[{i}].allow: empty; {m.name!r} exposes only ICMP echo")
    if not cfg.firewall.enabled:
        out.append(
            f"{cfg.path}: firewall.enabled: false; nothing protects the LAN devices "
            "from the IPv6 internet beyond your own rules"
        )
    if cfg.metrics.listen:
        host, _ = split_hostport(cfg.metrics.listen)
        addr = host.strip("[]")
        try:
            if not ipaddress.ip_address(addr).is_loopback:
                out.append(
                    f"{cfg.path}: metrics.listen: {cfg.metrics.listen} is reachable "
                    "from the network; metrics reveal traffic volumes"
                )
        except ValueError:
            pass
    for field_name in ("server", "resolver"):
        value = getattr(cfg.dns, field_name)
        if value and not is_ip_host(value):
            # A warning, not an error: an upgrade must not stop a daemon whose
            # only fault is a DNS setting that never worked.
            out.append(
                f"{cfg.path}: dns.{field_name}: {split_hostport(value)[0]!r} is not an IP "
                "address; revnat64 sends DNS messages to an address and resolves no "
                "names, so this fails until it is one (e.g. 192.0.2.53:53)"
            )
    if cfg.dns.tsig_key_file and cfg.dns.server is None:
        out.append(f"{cfg.path}: dns.tsig_key_file is set but dns.server is not")
    if cfg.wan.prefix_from and cfg.dns.ptr and cfg.dns.update_on_change:
        out.append(
            f"{cfg.path}: dns.ptr: with wan.prefix_from, every new prefix needs its own "
            "ip6.arpa zone on dns.server; where the ISP keeps those, a renumbering stops "
            "the AAAA updates too (docs/dns.md). Consider ptr: false"
        )
    if cfg.waiting_for_prefix:
        out.append(
            f"{cfg.path}: wan.prefix_from: {cfg.wan.prefix_from} has no global IPv6 prefix "
            f"now; the ::suffix addresses were checked inside {PLACEHOLDER} instead, and the "
            "daemon publishes them once a prefix is there"
        )
    return out


def summary(cfg: Config) -> str:
    """One line for ``check``: what this config publishes."""
    hosts = sum(m.ipv4.num_addresses for m in cfg.mappings)
    parts = [
        f"{len(cfg.mappings)} mapping{'s' if len(cfg.mappings) != 1 else ''}",
        f"{hosts} address{'es' if hosts != 1 else ''}",
        f"pool4 {cfg.translator.pool4}",
        f"tun {cfg.translator.tun_device}",
    ]
    if cfg.translator.prefix is not None:
        parts.append(f"prefix {cfg.translator.prefix}")
    if cfg.wan.prefix_from and not cfg.waiting_for_prefix:
        parts.append(f"addresses in {cfg.wan.prefix} from {cfg.wan.prefix_from}")
    parts.append("firewall " + (cfg.firewall.backend if cfg.firewall.enabled else "off"))
    return f"{cfg.path}: OK: " + ", ".join(parts)


def mapping_items(cfg: Config) -> TMapping[str, Mapping]:
    return {m.name: m for m in cfg.mappings}
