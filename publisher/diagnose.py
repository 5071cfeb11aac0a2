"""``revnat64 diagnose``: follow one packet from an IPv6 client to a published device.

The forum thread this project grew from ends with a user whose pings to a
webcam vanished without a trace: "the logs don't show that a packet was either
dropped or accepted".  This command walks the path such a packet takes through
the router, one stage at a time, and says where it would stop: the mapping,
the daemon, forwarding, the IPv6 route into the TUN, proxy NDP, the firewall,
the translation, the IPv4 route and ARP entry of the device, the way back, and
what the daemon's counters say happened to real traffic.

It sends nothing.  Routes are asked of the kernel as if the packet came in
from the WAN (RTM_GETROUTE with an input interface), the firewall policy is
read off the config and the table looked for in the kernel, and translation
runs a synthetic packet, and the device's answer to it, through the same
sans-IO translator the worker runs, with the config's tables.

:func:`simulate` and :func:`findings` are pure (unit-tested with made-up
facts); :func:`gather` is the I/O.
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address, IPv6Network
from typing import Any, TextIO

from publisher.config import AllowRule, Config, Mapping
from publisher.dns_check import CheckResult
from publisher.firewall_nft import ForeignChain
from publisher.snapshot import Snapshot
from translator import Action, DropReason, Translator
from translator.checksum import checksum, ones_sum

__all__ = [
    "DEFAULT_CLIENT",
    "Facts",
    "Finding",
    "Probe",
    "RouteLookup",
    "Simulation",
    "Traffic",
    "build_translator",
    "check_name",
    "cmd_diagnose",
    "findings",
    "gather",
    "parse_probe",
    "render",
    "simulate",
    "to_json",
    "watch",
    "watched",
]

# Used when --from is not given: a documentation address, never sent to.
DEFAULT_CLIENT = IPv6Address("2001:db8:ffff::1")
PROBE_PORT = 40000  # the synthetic client's source port
PROBE_PAYLOAD = b"revnat64 diagnose"
DNS_LIFETIME = 3.0  # seconds for the one name lookup
OK, INFO, WARN, FAIL = "ok", "info", "warn", "FAIL"

# linux/neighbour.h NUD_* states
NUD_STATES = {
    0x01: "INCOMPLETE",
    0x02: "REACHABLE",
    0x04: "STALE",
    0x08: "DELAY",
    0x10: "PROBE",
    0x20: "FAILED",
    0x40: "NOARP",
    0x80: "PERMANENT",
}
# linux/rtnetlink.h RTN_* route types
ROUTE_TYPES = {
    1: "unicast",
    2: "local",
    3: "broadcast",
    4: "anycast",
    5: "multicast",
    6: "blackhole",
    7: "unreachable",
    8: "prohibit",
    9: "throw",
}

# Why the translator drops, in words a router owner can act on.
DROP_HINTS = {
    DropReason.NO_MAPPING: "no mapping or RFC 6052 prefix covers the destination",
    DropReason.SPOOFED_SOURCE: "the client's address is one the translator never accepts as a "
    "source (a mapped, pool4-side or non-global address)",
    DropReason.POOL_EXHAUSTED: "pool4 has no free address for a new client",
    DropReason.LEASE_LIMIT: "this client's /64 already holds translator.lease_limit_per_prefix "
    "leases",
    DropReason.HAIRPIN: "the client is itself a mapped address (hairpinning is not translated)",
}


class ProbeError(ValueError):
    """The command line names no published address, or an unknown service."""


@dataclass(frozen=True)
class Probe:
    """The packet to follow: who sends what to which published address."""

    client: IPv6Address
    target: IPv6Address
    service: AllowRule  # tcp/PORT, udp/PORT or icmp (an echo request)
    mapping: Mapping | None  # None: the target is not mapped (say why in findings)
    client_given: bool = True

    @property
    def device(self) -> IPv4Address | None:
        """The LAN address the mapping gives the target."""
        m = self.mapping
        if m is None:
            return None
        return IPv4Address(m.ipv4_int + (int(self.target) - m.ipv6_int))

    def describe(self) -> str:
        what = "ping" if self.service.proto == "icmp" else str(self.service)
        return f"{what} from {self.client} to {self.target}"


def _mapping_for(cfg: Config, target: IPv6Address) -> Mapping | None:
    n = int(target)
    for m in cfg.mappings:
        first, last = m.ipv6_span
        if first <= n <= last:
            return m
    return None


def parse_probe(cfg: Config, target: str, service: str, client: str | None) -> Probe:
    """Read the command line against ``cfg``: target is an IPv6 address, a mapping or hostname."""
    try:
        address = IPv6Address(target)
    except ValueError:
        named = [m for m in cfg.mappings if target in (m.name, m.hostname, cfg.fqdn(m).rstrip("."))]
        if not named:
            known = ", ".join(m.name for m in cfg.mappings[:10]) or "none"
            raise ProbeError(
                f"{target!r} is neither an IPv6 address nor a mapping name (mappings: {known})"
            ) from None
        address = named[0].ipv6.network_address
    text = service.strip().lower()
    if text in ("icmp", "ping"):
        rule = AllowRule("icmp")
    else:
        proto, _, port = text.partition("/")
        if proto not in ("tcp", "udp") or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ProbeError(f"service {service!r}: write tcp/PORT, udp/PORT or icmp")
        rule = AllowRule(proto, int(port), int(port))
    try:
        source = IPv6Address(client) if client else DEFAULT_CLIENT
    except ValueError as exc:
        raise ProbeError(f"--from {client!r}: {exc}") from None
    return Probe(source, address, rule, _mapping_for(cfg, address), client_given=bool(client))


# -- the synthetic packets ---------------------------------------------------------------

_IP6 = struct.Struct("!IHBB16s16s")
_IP4 = struct.Struct("!BBHHHBBH4s4s")
_PORTS = struct.Struct("!HH")


def _l4(proto: str, sport: int, dport: int, echo_type: int, reply: bool) -> tuple[int, bytes, int]:
    """(protocol number, header + payload with a zero checksum, checksum offset)."""
    if proto == "tcp":
        flags = 0x12 if reply else 0x02  # SYN-ACK / SYN
        header = struct.pack(
            "!HHIIBBHHH", sport, dport, 1, 1 if reply else 0, 5 << 4, flags, 65535, 0, 0
        )
        return 6, header, 16
    if proto == "udp":
        body = struct.pack("!HHHH", sport, dport, 8 + len(PROBE_PAYLOAD), 0) + PROBE_PAYLOAD
        return 17, body, 6
    return 0, struct.pack("!BBHHH", echo_type, 0, 0, 0x5244, 1) + PROBE_PAYLOAD, 2


def _with_checksum(body: bytes, at: int, pseudo_sum: int, udp: bool) -> bytes:
    value = checksum(body, pseudo_sum)
    if udp and value == 0:
        value = 0xFFFF
    return body[:at] + struct.pack("!H", value) + body[at + 2 :]


def packet6(src: IPv6Address, dst: IPv6Address, service: AllowRule) -> bytes:
    """The client's first packet: a TCP SYN, a UDP datagram or an ICMPv6 echo request."""
    proto, body, at = _l4(service.proto, PROBE_PORT, service.port_min, 128, reply=False)
    nh = proto or 58
    pseudo = ones_sum(src.packed + dst.packed + struct.pack("!IxxxB", len(body), nh))
    body = _with_checksum(body, at, pseudo, nh == 17)
    return _IP6.pack(6 << 28, len(body), nh, 64, src.packed, dst.packed) + body


def packet4_reply(request4: bytes) -> bytes:
    """The device's answer to a translated request: SYN-ACK, UDP echo or ICMP echo reply."""
    ihl = (request4[0] & 0x0F) * 4
    proto = request4[9]
    src, dst = request4[16:20], request4[12:16]
    if proto == 1:
        name, sport, dport = "icmp", 0, 0
    else:
        dport, sport = _PORTS.unpack_from(request4, ihl)
        name = "tcp" if proto == 6 else "udp"
    nr, body, at = _l4(name, sport, dport, 0, reply=True)
    number = nr or 1
    pseudo = 0 if number == 1 else ones_sum(src + dst + struct.pack("!xBH", number, len(body)))
    body = _with_checksum(body, at, pseudo, number == 17)
    header = _IP4.pack(0x45, 0, 20 + len(body), 0x1234, 0x4000, 64, number, 0, src, dst)
    header = header[:10] + struct.pack("!H", checksum(header)) + header[12:]
    return header + body


@dataclass(frozen=True)
class Simulation:
    """What the translator makes of the probe and of the device's answer to it."""

    forward: str  # "" when forwarded, else why not
    source4: str = ""  # the IPv4 source the device sees
    destination4: str = ""
    ttl: int = 0
    reply: str = ""  # "" when the answer reaches the client, else why not
    reply_source6: str = ""
    reply_destination6: str = ""


def _why(verdict: Any) -> str:
    reason = DropReason(verdict[2])
    text = DROP_HINTS.get(reason, reason.label)
    if verdict[0] is Action.ICMP_ERROR:
        return f"{text} (answered with an ICMP error: {reason.label})"
    return f"{text} (dropped: {reason.label})"


def simulate(translator: Translator, probe: Probe, now: float = 0.0) -> Simulation:
    """Run the probe, then the device's answer, through ``translator`` (its pool takes a lease)."""
    verdict = translator.translate(packet6(probe.client, probe.target, probe.service), now)
    if verdict[0] is not Action.FORWARD or not verdict[1]:
        return Simulation(_why(verdict))
    out = verdict[1][0]
    source4, destination4 = str(IPv4Address(out[12:16])), str(IPv4Address(out[16:20]))
    answer = translator.translate(packet4_reply(out), now)
    if answer[0] is not Action.FORWARD or not answer[1]:
        return Simulation("", source4, destination4, out[8], _why(answer))
    back = answer[1][0]
    return Simulation(
        "",
        source4,
        destination4,
        out[8],
        "",
        str(IPv6Address(back[8:24])),
        str(IPv6Address(back[24:40])),
    )


# -- what the system says ------------------------------------------------------------------


@dataclass(frozen=True)
class RouteLookup:
    """The kernel's answer to ``ip route get``: the output interface or the refusal."""

    interface: str | None = None
    kind: str = "unicast"
    error: str = ""

    def describe(self) -> str:
        if self.error:
            return f"the kernel has no route ({self.error})"
        if self.kind != "unicast":
            return f"the kernel's route is of type {self.kind}"
        return f"routed out of {self.interface}"


@dataclass
class Facts:
    """Everything :func:`findings` needs from the running system; plain data."""

    sysctls: dict[str, str] = field(default_factory=dict)  # path -> value ("" unreadable)
    links: dict[str, bool] = field(default_factory=dict)  # name -> administratively up
    route6: RouteLookup = field(default_factory=RouteLookup)  # target, from the client, in wan
    onlink: list[tuple[IPv6Network, str]] = field(default_factory=list)
    proxies: set[tuple[str, str]] = field(default_factory=set)  # (address, interface)
    route4: RouteLookup = field(default_factory=RouteLookup)  # to the device
    neighbour: str | None = None  # the device's ARP state on route4's interface
    route4_back: RouteLookup = field(default_factory=RouteLookup)  # device -> client's IPv4
    firewall_applied: bool | None = None  # None: not looked at (disabled) or unknown
    firewall_error: str = ""
    foreign_chains: list[ForeignChain] = field(default_factory=list)  # others' forward hooks
    status: Snapshot | None = None
    status_error: str = ""
    dns: CheckResult | None = None  # the clients' resolver on the target's name; None: no name


@dataclass(frozen=True)
class Finding:
    level: str  # OK, INFO, WARN, FAIL
    step: str
    text: str


def _allowed(m: Mapping, service: AllowRule) -> bool:
    for rule in m.allow:
        if rule.proto != service.proto:
            continue
        if rule.proto == "icmp" or rule.port_min <= service.port_min <= rule.port_max:
            return True
    return False


def findings(cfg: Config, probe: Probe, facts: Facts, sim: Simulation | None) -> list[Finding]:
    """Walk the path in the order the packet takes it; pure."""
    walk = _Walk(cfg, probe, facts, sim)
    if not walk.mapping():
        return walk.out
    for step in (
        walk.dns,
        walk.daemon,
        walk.forwarding,
        walk.route6,
        walk.proxy_ndp,
        walk.firewall,
        walk.translate,
        walk.device,
        walk.way_back,
        walk.counters,
    ):
        step()
    return walk.out


class _Walk:
    """One method per step of :func:`findings`; each appends what it finds to ``out``."""

    def __init__(self, cfg: Config, probe: Probe, facts: Facts, sim: Simulation | None) -> None:
        self.cfg, self.probe, self.facts, self.sim = cfg, probe, facts, sim
        self.tr = cfg.translator
        self.snap = facts.status
        self.out: list[Finding] = []
        self.seen4 = ""  # the IPv4 source the device sees, once translation says it

    @property
    def m(self) -> Mapping:
        assert self.probe.mapping is not None  # mapping() stops the walk otherwise
        return self.probe.mapping

    def say(self, level: str, step: str, text: str) -> None:
        self.out.append(Finding(level, step, text))

    def mapping(self) -> bool:
        """The target is published; False ends the walk (nothing after applies)."""
        cfg, tr, target = self.cfg, self.tr, self.probe.target
        if cfg.waiting_for_prefix:
            self.say(
                FAIL,
                "mapping",
                f"no prefix on {cfg.wan.prefix_from} yet: the ::suffix mappings "
                "are not published until one appears",
            )
        m = self.probe.mapping
        if m is None:
            if tr.prefix is not None and target in tr.prefix:
                text = f"{target} is inside the RFC 6052 prefix {tr.prefix}, not a mapping"
                self.say(INFO, "mapping", text)
                return False
            where = ""
            if tr.publish_prefix is not None and target in tr.publish_prefix:
                where = (
                    f" (inside publish_prefix {tr.publish_prefix}: the translator answers "
                    "'address unreachable')"
                )
            self.say(
                FAIL,
                "mapping",
                f"{target} is not a published address{where}; `revnat64 check` lists the mappings",
            )
            return False
        span = f" (range {m.ipv6} -> {m.ipv4})" if m.is_range else ""
        self.say(OK, "mapping", f"{m.name}: {target} -> {self.probe.device}{span}")
        return True

    def dns(self) -> None:
        """What clients that use the name get: the packet only comes if DNS names the target."""
        found = self.facts.dns
        if found is None:
            return
        if found.state == "ok":
            self.say(OK, "dns", f"{found}: clients that use the name find it")
        elif found.state in ("missing", "stale"):
            self.say(
                WARN,
                "dns",
                f"{found}: clients that use the name do not reach {self.probe.target} "
                "(`revnat64 dns --update`, or dns.update_on_change)",
            )
        else:
            self.say(INFO, "dns", str(found))

    def daemon(self) -> None:
        snap, m = self.snap, self.m
        if snap is None:
            self.say(
                FAIL,
                "daemon",
                f"not reachable ({self.facts.status_error}); nothing translates "
                "until `revnat64 run` (or the service) is up",
            )
        elif m.name not in {i.name for i in snap.mappings}:
            self.say(
                FAIL,
                "daemon",
                f"running, but it does not serve {m.name}: reload it "
                "(systemctl reload revnat64, or SIGHUP) after editing the config",
            )
        else:
            text = f"running with {len(snap.mappings)} mapping(s), {snap.workers} worker(s)"
            self.say(OK, "daemon", text)

    def forwarding(self) -> None:
        from publisher.netlink import IPV4_FORWARD, IPV6_FORWARD

        sysctls, links = self.facts.sysctls, self.facts.links
        off = [p for p in (IPV6_FORWARD, IPV4_FORWARD) if sysctls.get(p) != "1"]
        if off:
            values = ", ".join(
                f"{_sysctl_name(p)} is {sysctls.get(p) or 'unreadable'}" for p in off
            )
            self.say(FAIL, "forwarding", f"{values}; the daemon sets 1 while it runs")
        else:
            self.say(OK, "forwarding", "IPv6 and IPv4 forwarding on")
        for role, name in (
            ("wan", self.cfg.wan.interface),
            ("tun", self.tr.tun_device),
            ("lan", self.cfg.lan.interface),
        ):
            if name not in links:
                self.say(FAIL, "interfaces", f"{role} interface {name} does not exist")
            elif not links[name]:
                self.say(FAIL, "interfaces", f"{role} interface {name} is down")

    def route6(self) -> None:
        route, tun = self.facts.route6, self.tr.tun_device
        where = f"{self.probe.target} from {self.cfg.wan.interface}"
        if route.interface == tun and route.kind == "unicast":
            self.say(OK, "route6", f"{where} is routed into {tun}")
        else:
            self.say(FAIL, "route6", f"{where}: {route.describe()}, not into {tun}")

    def proxy_ndp(self) -> None:
        from publisher.netlink import plan, proxy_ndp_sysctl

        target = str(self.probe.target)
        proxies = plan(self.cfg, self.facts.onlink).proxies
        wanted = sorted(p.interface for p in proxies if p.address == target)
        if not wanted:
            self.say(
                INFO,
                "proxy-ndp",
                f"{target} is not on-link on any interface here, so "
                "no proxy NDP is needed; your ISP must route its prefix to this router",
            )
        for ifname in wanted:
            entry = (target, ifname) in self.facts.proxies
            sysctl = self.facts.sysctls.get(proxy_ndp_sysctl(ifname)) == "1"
            if entry and sysctl:
                self.say(OK, "proxy-ndp", f"answered on {ifname} (neighbours there solicit it)")
                continue
            missing = [
                what
                for what, ok in (("the proxy entry", entry), (f"proxy_ndp=1 on {ifname}", sysctl))
                if not ok
            ]
            self.say(
                FAIL,
                "proxy-ndp",
                f"{target} is on-link on {ifname}, but "
                f"{' and '.join(missing)} is missing: neighbours there cannot find it",
            )

    def firewall(self) -> None:
        fw, m, facts = self.cfg.firewall, self.m, self.facts
        if not fw.enabled:
            text = "firewall.enabled is false: nothing limits what reaches the device"
            self.say(WARN, "firewall", text)
        else:
            self._policy(fw.backend)
            if facts.firewall_applied is False:
                self.say(
                    FAIL,
                    "firewall",
                    f"the rules ({fw.backend}) are not in the kernel: "
                    "the running daemon puts them back within firewall.check_interval; "
                    "`revnat64 firewall --apply` does it now",
                )
            elif facts.firewall_error:
                self.say(WARN, "firewall", f"could not read the rules: {facts.firewall_error}")
            drops = self.snap.firewall_drops.get(m.name) if self.snap else None
            if drops and drops[0]:
                self.say(
                    INFO,
                    "firewall",
                    f"dropped {drops[0]} packet(s) to {m.name} so far "
                    "(not allowed, outside sources, or over the rate limit)",
                )
        for chain in facts.foreign_chains:
            if chain.policy == "drop" and not chain.names_tun:
                self.say(
                    WARN,
                    "firewall",
                    f"{chain.describe()} drops forwarded traffic by default and never names "
                    f"{self.tr.tun_device}: our accept does not outvote it, so it likely drops "
                    "the translated packets (OpenWrt: install the fw4 snippet, "
                    "docs/install-openwrt.md; elsewhere accept the TUN's traffic in that chain)",
                )

    def _policy(self, backend: str) -> None:
        """The mapping's own sources and allow list against the probe."""
        m, probe = self.m, self.probe
        if m.sources and not any(probe.client in net for net in m.sources):
            hint = "" if probe.client_given else " (give --from with the real client)"
            sources = ", ".join(map(str, m.sources))
            self.say(
                FAIL, "firewall", f"{probe.client} is not in {m.name}'s sources ({sources}){hint}"
            )
        elif not _allowed(m, probe.service):
            allowed = ", ".join(map(str, m.allow)) or "nothing"
            what = "icmp (ping)" if probe.service.proto == "icmp" else str(probe.service)
            self.say(FAIL, "firewall", f"{what} is not in {m.name}'s allow list ({allowed})")
        else:
            limit = f", within rate_limit {m.rate_limit}" if m.rate_limit else ""
            where = f" (the {backend} rules are in place)" if self.facts.firewall_applied else ""
            self.say(OK, "firewall", f"{m.name}'s allow list accepts it{limit}{where}")

    def translate(self) -> None:
        sim, snap, client = self.sim, self.snap, self.probe.client
        if sim is None:
            return
        if sim.forward:
            self.say(FAIL, "translate", sim.forward)
            return
        lease = _lease_of(snap, client)
        to = f"to {sim.destination4}, TTL {sim.ttl}"
        if lease:
            self.seen4 = lease
            self.say(OK, "translate", f"{client} -> {lease} (its pool4 lease), {to}")
        elif IPv4Address(sim.source4) in self.tr.pool4:
            self.seen4 = f"pool4 {self.tr.pool4}"
            in_use = f" ({snap.pool_in_use} of {snap.pool_size} in use)" if snap else ""
            self.say(OK, "translate", f"{client} gets a pool4 lease{in_use}, {to}")
            if snap is not None and snap.pool_size and snap.pool_in_use >= snap.pool_size:
                self.say(
                    WARN,
                    "translate",
                    "pool4 is full: a new client waits for an "
                    "unconfirmed lease to expire (translator.unconfirmed_lease_time)",
                )
        else:
            self.seen4 = sim.source4
            self.say(OK, "translate", f"{client} -> {sim.source4} (RFC 6052), {to}")

    def device(self) -> None:
        route, device, tun = self.facts.route4, self.probe.device, self.tr.tun_device
        lan = self.cfg.lan.interface
        if route.interface == tun:
            self.say(FAIL, "route4", f"{device} is routed back into {tun}: a loop")
            return
        if route.interface is None or route.kind != "unicast":
            self.say(FAIL, "route4", f"{device}: {route.describe()}")
        elif route.interface != lan:
            text = f"{device} is routed out of {route.interface}, not lan.interface {lan}"
            self.say(WARN, "route4", text)
        else:
            self.say(OK, "route4", f"{device} is on {lan}")
        if not route.interface:
            return
        state = self.facts.neighbour
        if state in ("REACHABLE", "PERMANENT", "NOARP"):
            self.say(OK, "neighbour", f"{device} answers ARP ({state})")
        elif state in ("STALE", "DELAY", "PROBE"):
            self.say(OK, "neighbour", f"{device} answered ARP recently ({state})")
        elif state in ("FAILED", "INCOMPLETE"):
            self.say(
                FAIL,
                "neighbour",
                f"{device} does not answer ARP on {route.interface} ({state}): "
                "is it on, and on this network?",
            )
        else:
            self.say(
                INFO,
                "neighbour",
                f"no ARP entry for {device} yet (nothing sent to it lately); "
                "`ping` it from the router to find out",
            )

    def way_back(self) -> None:
        sim, tun = self.sim, self.tr.tun_device
        if sim is None or sim.forward:
            return
        back = self.facts.route4_back
        where = f"{self.seen4} from {self.facts.route4.interface or self.cfg.lan.interface}"
        if back.interface == tun and back.kind == "unicast":
            self.say(OK, "return", f"{where} is routed into {tun}")
        else:
            self.say(FAIL, "return", f"{where}: {back.describe()}, not into {tun}")
        if sim.reply:
            self.say(FAIL, "return", f"the device's answer is not translated: {sim.reply}")
        else:
            text = (
                f"the device's answer goes back as {sim.reply_source6} -> {sim.reply_destination6}"
            )
            self.say(OK, "return", text)
        if not self.m.masquerade:
            self.say(
                INFO,
                "return",
                f"the device must send its answers (to {self.seen4}) to this "
                "router: its default gateway, or `masquerade: true` on the mapping",
            )

    def counters(self) -> None:
        snap, name = self.snap, self.m.name
        if snap is None:
            return
        sent = snap.packets.get((name, "6to4"), 0)
        back = snap.packets.get((name, "4to6"), 0)
        self.say(
            INFO, "counters", f"{name}: {sent} packet(s) translated to the device, {back} back"
        )
        if sent and not back:
            self.say(
                WARN,
                "counters",
                f"{name} has never answered through the translator: "
                "check that its default gateway is this router, or set masquerade: true",
            )
        dropped = _counts(sorted(snap.dropped.items()))
        if dropped:
            self.say(INFO, "counters", f"translator drops (all mappings): {dropped}")
        if snap.network_restored:
            self.say(
                INFO,
                "counters",
                f"the daemon has put back {snap.network_restored} route(s), proxy entries or "
                "sysctls that went missing since it started (link flaps?); see its log",
            )
        if snap.network_problem:
            self.say(FAIL, "counters", f"the daemon cannot put back: {snap.network_problem}")


@dataclass(frozen=True)
class Traffic:
    """One mapping's counters at one moment, as ``--watch`` compares them."""

    to_device: int = 0
    back: int = 0
    firewall_drops: int = 0
    translator_drops: tuple[tuple[str, int], ...] = ()
    pool_refused: int = 0

    @classmethod
    def of(cls, snap: Snapshot, mapping: str) -> Traffic:
        return cls(
            snap.packets.get((mapping, "6to4"), 0),
            snap.packets.get((mapping, "4to6"), 0),
            snap.firewall_drops.get(mapping, (0, 0))[0],
            tuple(sorted(snap.dropped.items())),
            sum(snap.pool_refused.values()),
        )

    def since(self, before: Traffic) -> Traffic:
        old = dict(before.translator_drops)
        return Traffic(
            self.to_device - before.to_device,
            self.back - before.back,
            self.firewall_drops - before.firewall_drops,
            tuple((k, v - old.get(k, 0)) for k, v in self.translator_drops if v > old.get(k, 0)),
            self.pool_refused - before.pool_refused,
        )

    def describe(self) -> str:
        text = f"{self.to_device} to the device, {self.back} back"
        if self.firewall_drops:
            text += f", {self.firewall_drops} dropped by the firewall"
        if self.translator_drops:
            text += f", translator dropped {_counts(self.translator_drops)}"
        return text


def watched(mapping: Mapping, delta: Traffic, seconds: float) -> list[Finding]:
    """What the counters of ``--watch`` say about the packets sent meanwhile; pure."""
    name = mapping.name
    out: list[Finding] = []
    if delta.pool_refused:
        out.append(Finding(WARN, "watch", f"pool4 refused {delta.pool_refused} new client(s)"))
    if delta.translator_drops:
        text = f"the translator dropped (all mappings): {_counts(delta.translator_drops)}"
        out.append(Finding(INFO, "watch", text))
    if delta.to_device and delta.back:
        level, text = OK, f"{name}: {delta.describe()}: traffic flows both ways"
    elif delta.to_device:
        level, text = (
            FAIL,
            (
                f"{delta.to_device} packet(s) went to {name} and nothing came back through "
                "the translator: the device must answer via this router (its default "
                "gateway, or `masquerade: true`), and be on and not firewalling them"
            ),
        )
    elif delta.firewall_drops:
        allowed = ", ".join(map(str, mapping.allow)) or "nothing"
        level, text = (
            FAIL,
            (
                f"the firewall dropped {delta.firewall_drops} packet(s) to {name} and let none "
                f"through: not in its allow list ({allowed}), outside its sources, or over "
                "its rate limit"
            ),
        )
    else:
        level, text = (
            WARN,
            (
                f"no packet to {name} reached the translator or the firewall in "
                f"{seconds:.0f} s: if you sent some, they never got this far (the DNS "
                "answer, your ISP's routing or proxy NDP, or a firewall rule before ours)"
            ),
        )
    out.append(Finding(level, "watch", text))
    return out


def _counts(items: Iterable[tuple[str, int]]) -> str:
    """``reason count, reason count`` for the non-zero counts."""
    return ", ".join(f"{k} {v}" for k, v in items if v)


def watch(
    cfg: Config,
    mapping: Mapping,
    seconds: float,
    interval: float = 1.0,
    stream: TextIO = sys.stdout,
) -> list[Finding]:
    """Read the daemon's counters for ``seconds``, print each change, then conclude."""
    from publisher.control import ControlError, request

    def sample() -> Traffic:
        snap = Snapshot.from_json(request(cfg.daemon.control_socket, "status"))
        return Traffic.of(snap, mapping.name)

    try:
        first = last = sample()
    except (ControlError, ValueError) as exc:
        return [Finding(FAIL, "watch", f"cannot read the daemon's counters: {exc}")]
    print(
        f"watching {mapping.name} for {seconds:.0f} s: send your packets now (Ctrl-C stops)",
        file=stream,
        flush=True,
    )
    start = time.monotonic()
    try:
        while time.monotonic() - start < seconds:
            time.sleep(min(interval, max(0.0, seconds - (time.monotonic() - start))))
            try:
                now = sample()
            except (ControlError, ValueError) as exc:
                return [Finding(FAIL, "watch", f"the daemon stopped answering: {exc}")]
            if now != last:
                print(
                    f"  +{time.monotonic() - start:4.1f}s  {now.since(first).describe()}",
                    file=stream,
                    flush=True,
                )
                last = now
    except KeyboardInterrupt:
        pass
    return watched(mapping, last.since(first), time.monotonic() - start)


def _sysctl_name(path: str) -> str:
    return path.removeprefix("/proc/sys/").replace("/", ".")


def _lease_of(snap: Snapshot | None, client: IPv6Address) -> str:
    if snap is None:
        return ""
    for v6, v4, _idle in snap.leases:
        if IPv6Address(v6) == client:
            return v4
    return ""


def render(probe: Probe, found: Sequence[Finding]) -> str:
    """One line per finding, then where the packet stops (or that nothing stops it)."""
    width = max((len(f.step) for f in found), default=0)
    lines = [f"revnat64 diagnose: {probe.describe()}"]
    if not probe.client_given:
        lines[0] += " (an example client; --from names a real one)"
    lines += [f"  {f.level:<4}  {f.step:<{width}}  {f.text}" for f in found]
    failed = [f for f in found if f.level == FAIL]
    warned = sum(f.level == WARN for f in found)
    if failed:
        lines.append(f"stops at {failed[0].step}: {failed[0].text}")
    elif warned:
        lines.append(f"nothing on this router certainly stops it; see the {warned} warning(s)")
    else:
        lines.append("nothing on this router stops it")
    return "\n".join(lines) + "\n"


# -- the I/O --------------------------------------------------------------------------------


def _route(ipr: Any, names: dict[int, str], **query: Any) -> RouteLookup:
    try:
        answer = ipr.route("get", **query)[0]
    except Exception as exc:  # noqa: BLE001 - pyroute2 raises NetlinkError and OSError
        # NetlinkError's args are (errno, text): the text is what to show.
        return RouteLookup(error=str(exc.args[-1] if exc.args else exc))
    kind = ROUTE_TYPES.get(answer["type"], str(answer["type"]))
    return RouteLookup(names.get(answer.get_attr("RTA_OIF"), None), kind)


def gather(cfg: Config, probe: Probe, sim: Simulation | None) -> Facts:
    """Ask the kernel, the firewall and the daemon; each failure becomes a fact, not an error."""
    from pyroute2 import IPRoute

    from publisher import firewall
    from publisher.control import ControlError, request
    from publisher.firewall_common import FirewallError
    from publisher.firewall_nft import foreign_forward_chains
    from publisher.netlink import (
        IPV4_FORWARD,
        IPV6_FORWARD,
        onlink_prefixes,
        proxy_ndp_sysctl,
        read_sysctl,
    )
    from publisher.nlbatch import dump_proxies

    facts = Facts()
    with IPRoute() as ipr:
        links = ipr.get_links()
        names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in links}
        index = {name: i for i, name in names.items()}
        facts.links = {link.get_attr("IFLA_IFNAME"): bool(link["flags"] & 1) for link in links}
        wan = index.get(cfg.wan.interface)
        query6: dict[str, Any] = {"dst": str(probe.target), "src": str(probe.client)}
        if wan is not None:
            query6["iif"] = wan
        facts.route6 = _route(ipr, names, **query6)
        facts.onlink = onlink_prefixes(ipr)
        if probe.device is not None:
            facts.route4 = _route(ipr, names, dst=str(probe.device))
            out_index = index.get(facts.route4.interface or "")
            for n in ipr.get_neighbours(family=2):
                if n.get_attr("NDA_DST") == str(probe.device) and n["ifindex"] == out_index:
                    facts.neighbour = NUD_STATES.get(n["state"], str(n["state"]))
            if sim is not None and sim.source4 and out_index is not None:
                facts.route4_back = _route(
                    ipr, names, dst=sim.source4, src=str(probe.device), iif=out_index
                )
    try:
        facts.proxies = {(a, names.get(i, "?")) for a, i in dump_proxies()}
    except OSError:
        pass
    paths = [IPV6_FORWARD, IPV4_FORWARD] + [
        proxy_ndp_sysctl(name) for name in facts.links if name != "lo"
    ]
    for path in paths:
        try:
            facts.sysctls[path] = read_sysctl(path)
        except OSError:
            facts.sysctls[path] = ""  # unreadable: findings say so
    if cfg.firewall.enabled:
        try:
            facts.firewall_applied = firewall.is_applied(cfg)
        except (FirewallError, OSError) as exc:
            facts.firewall_error = str(exc)
    try:
        facts.dns = check_name(cfg, probe)
    except OSError:
        pass  # no network for the resolver: check_name's own errors are findings
    try:
        facts.foreign_chains = foreign_forward_chains(cfg.translator.tun_device)
    except FirewallError:
        pass  # no nft here (iptables-legacy only): nothing of this kind to see
    try:
        facts.status = Snapshot.from_json(request(cfg.daemon.control_socket, "status"))
    except (ControlError, ValueError) as exc:
        facts.status_error = str(exc)
    return facts


def check_name(cfg: Config, probe: Probe) -> CheckResult | None:
    """Ask the clients' resolver for the target's AAAA record (None: the config names none).

    The same check as ``revnat64 dns --check``, for the one name, with a short
    lifetime: a dead resolver must not stall the whole report.
    """
    from publisher.dns_check import check_records, make_resolver, resolver_lookup
    from publisher.dns_records import RecordSet, build_records

    if not cfg.dns.zone or probe.mapping is None:
        return None
    records = build_records(cfg)
    name = probe.mapping.name
    mine = tuple(
        r
        for r in records.records
        if r.rtype == "AAAA" and r.mapping == name and IPv6Address(r.value) == probe.target
    )
    if not mine:
        return None
    resolver = make_resolver(cfg.dns.resolver)
    resolver.lifetime = DNS_LIFETIME
    subset = RecordSet(records.zone, records.ttl, mine)
    return check_records(subset, resolver_lookup(resolver))[0]


def build_translator(cfg: Config) -> Translator:
    """A translator with the config's tables and an empty pool, as a new worker has."""
    from publisher.worker import plane_from_config

    plane = plane_from_config(cfg)
    return Translator(plane.settings, plane.tables(), plane.new_pool())


def cmd_diagnose(args: argparse.Namespace) -> int:
    """0: nothing on the router stops the probe; 1: something does (the report says what)."""
    from publisher.config import load_config_or_report

    cfg = load_config_or_report(args.config, placeholder=True)
    if cfg is None:
        return 1
    try:
        if args.watch is not None and not 0 < args.watch <= 3600:
            raise ProbeError(f"--watch {args.watch:g}: give 1 to 3600 seconds")
        probe = parse_probe(cfg, args.target, args.service, args.source)
    except ProbeError as exc:
        print(f"revnat64 diagnose: {exc}", file=sys.stderr)
        return 2
    sim = simulate(build_translator(cfg), probe) if probe.mapping is not None else None
    facts = gather(cfg, probe, sim)
    found = findings(cfg, probe, facts, sim)
    if not args.json:
        sys.stdout.write(render(probe, found))
    if args.watch and probe.mapping is not None:
        seen = watch(cfg, probe.mapping, args.watch, stream=sys.stderr if args.json else sys.stdout)
        if not args.json:
            width = max(len(f.step) for f in found)
            for f in seen:
                print(f"  {f.level:<4}  {f.step:<{width}}  {f.text}")
        found += seen
    if args.json:
        print(to_json(probe, found))
    return 1 if any(f.level == FAIL for f in found) else 0


def to_json(probe: Probe, found: Sequence[Finding]) -> str:
    """The report for scripts: the probe, every finding, and the first failure (or null)."""
    failed = next((f for f in found if f.level == FAIL), None)
    doc = {
        "probe": {
            "client": str(probe.client),
            "target": str(probe.target),
            "service": str(probe.service),
            "mapping": probe.mapping.name if probe.mapping else None,
            "device": str(probe.device) if probe.device else None,
        },
        "findings": [{"level": f.level.lower(), "step": f.step, "text": f.text} for f in found],
        "stops_at": {"step": failed.step, "text": failed.text} if failed else None,
        "warnings": sum(f.level == WARN for f in found),
    }
    return json.dumps(doc, indent=2)
