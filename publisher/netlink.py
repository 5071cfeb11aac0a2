"""Routes, proxy NDP, forwarding sysctls and interface features, through netlink (pyroute2).

:func:`plan` is pure: config plus the on-link prefixes of the router's
interfaces in, the desired :class:`NetPlan` out.  :class:`NetlinkManager`
diffs a plan against what it applied before and changes only the difference,
so a reload that adds one mapping adds one route and one proxy entry while
every other mapping keeps working.  Routes and proxy entries go to the
kernel in batches (:mod:`publisher.nlbatch`), and every refusal comes back
matched to the route or entry it concerns.

Everything applied is also written to a small state file before it is
applied.  After a crash (SIGKILL, power loss of the process) the next start
reads that file and undoes it: proxy entries, routes and sysctl values do not
vanish with the process the way the TUN device does.
"""

from __future__ import annotations

import errno
import json
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Network, ip_network
from operator import attrgetter
from pathlib import Path
from typing import Any, TypeVar

from publisher.config import Config
from publisher.ethtool import GRO_FORWARDING_FEATURES, EthtoolError, read_features, set_feature
from publisher.nlbatch import MISSING, Request, RtnlBatch, build_proxy, build_route

log = logging.getLogger("revnat64.netlink")

RTPROT_REVNAT64 = 164  # our routes carry this protocol number, so leftovers are findable
PROXY_NDP_LIMIT = 1024  # per mapping; beyond that a routed prefix (or ndppd) is the answer
IPV4_FORWARD = "/proc/sys/net/ipv4/ip_forward"
IPV6_FORWARD = "/proc/sys/net/ipv6/conf/all/forwarding"
IFF_UP = 0x1  # linux/if.h
ERRORS_SHOWN = 5  # failed changes named in one error message
EXISTS_HINT = " (a route to it that revnat64 did not make is in the way; remove it or the mapping)"


def proxy_ndp_sysctl(ifname: str) -> str:
    return f"/proc/sys/net/ipv6/conf/{ifname}/proxy_ndp"


@dataclass(frozen=True, order=True)
class Route:
    dst: str  # "2001:db8:200::50/128"

    @property
    def family(self) -> int:
        return 10 if ":" in self.dst else 2


@dataclass(frozen=True, order=True)
class ProxyEntry:
    address: str
    interface: str


Restorable = TypeVar("Restorable", "Route", "ProxyEntry")

# Sort keys: the dataclasses' own ordering compares through generated methods,
# several times slower on 10,000 objects.
ROUTE_ORDER = attrgetter("dst")
PROXY_ORDER = attrgetter("address", "interface")


Sysctls = tuple[tuple[str, str], ...]  # (path, value), in order


@dataclass(frozen=True)
class NetPlan:
    routes: frozenset[Route]
    proxies: frozenset[ProxyEntry]
    sysctls: Sysctls
    warnings: tuple[str, ...] = ()
    features: tuple[tuple[str, str, str], ...] = ()  # (interface, ethtool feature, "on"/"off")


def plan(cfg: Config, onlink: Iterable[tuple[IPv6Network, str]]) -> NetPlan:
    """The routes, proxy entries and sysctls that ``cfg`` needs; pure.

    ``onlink`` lists the IPv6 prefixes that are on-link on the router's
    interfaces (other than the TUN).  A mapped address inside one of them is
    solicited by its neighbours, so the router must answer for it there.
    """
    tr = cfg.translator
    routes: set[Route] = {Route(str(m.ipv6)) for m in cfg.mappings}
    routes.add(Route(str(IPv6Network(tr.ipv6_address))))
    routes.add(Route(str(tr.pool4)))
    if tr.ipv4_address not in tr.pool4:
        routes.add(Route(str(IPv4Network(tr.ipv4_address))))
    if tr.prefix is not None:
        routes.add(Route(str(tr.prefix)))
    if tr.publish_prefix is not None:
        # Unmapped addresses in the published prefix reach the translator, which
        # answers "address unreachable" instead of bouncing them back upstream.
        routes.add(Route(str(tr.publish_prefix)))
    for net4 in tr.rfc6791_pool4:
        if not net4.subnet_of(tr.pool4):
            routes.add(Route(str(net4)))

    proxies: set[ProxyEntry] = set()
    warnings: list[str] = []
    onlink = [(net, ifname) for net, ifname in onlink if ifname != tr.tun_device]
    if cfg.wan.proxy_ndp:
        for m in cfg.mappings:
            for net, ifname in onlink:
                if not m.ipv6.subnet_of(net):
                    continue
                if m.ipv6.num_addresses > PROXY_NDP_LIMIT:
                    warnings.append(
                        f"mapping {m.name}: {m.ipv6} is on-link on {ifname} but has "
                        f"{m.ipv6.num_addresses} addresses; proxy NDP covers at most "
                        f"{PROXY_NDP_LIMIT}. Route the prefix to this router instead."
                    )
                    continue
                addresses = [m.ipv6.network_address] if m.ipv6.prefixlen == 128 else m.ipv6
                proxies.update(ProxyEntry(str(a), ifname) for a in addresses)
    sysctls: list[tuple[str, str]] = [(IPV6_FORWARD, "1"), (IPV4_FORWARD, "1")]
    for ifname in sorted({p.interface for p in proxies}):
        sysctls.append((proxy_ndp_sysctl(ifname), "1"))
    features: list[tuple[str, str, str]] = []
    if tr.udp_gro_forwarding:
        # GRO first: UDP GRO forwarding does nothing without it.
        for ifname in dict.fromkeys((cfg.wan.interface, cfg.lan.interface)):
            features.extend((ifname, name, "on") for name in GRO_FORWARDING_FEATURES)
    return NetPlan(
        frozenset(routes),
        frozenset(proxies),
        tuple(sysctls),
        tuple(warnings),
        tuple(features),
    )


@dataclass
class AppliedState:
    """What we changed, persisted so a crash can be undone on the next start."""

    tun_device: str = ""
    routes: set[Route] = field(default_factory=set)
    proxies: set[ProxyEntry] = field(default_factory=set)
    sysctl_originals: dict[str, str] = field(default_factory=dict)
    # "interface feature" -> the value it had before we changed it
    feature_originals: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(
            {
                "tun_device": self.tun_device,
                "routes": sorted(r.dst for r in self.routes),
                "proxies": sorted([p.address, p.interface] for p in self.proxies),
                "sysctl_originals": self.sysctl_originals,
                "feature_originals": self.feature_originals,
            },
            separators=(",", ":"),  # no indent: the C encoder, 10x faster on 10,000 routes
        )

    @classmethod
    def from_json(cls, text: str) -> AppliedState:
        data = json.loads(text)
        return cls(
            tun_device=str(data.get("tun_device", "")),
            routes={Route(str(d)) for d in data.get("routes", [])},
            proxies={ProxyEntry(str(a), str(i)) for a, i in data.get("proxies", [])},
            sysctl_originals={str(k): str(v) for k, v in data.get("sysctl_originals", {}).items()},
            feature_originals={
                str(k): str(v) for k, v in data.get("feature_originals", {}).items()
            },
        )


def atomic_write(path: Path, text: str, mode: int = 0o600, sync_directory: bool = True) -> None:
    """Write-then-rename, so a crash or power loss leaves the old file or the new one,
    never half of one; a full disk raises OSError and leaves the old file.

    (``os.write`` may write less than asked when the disk fills: every byte is
    written or the call fails, and the temporary file goes with the failure.)
    ``sync_directory`` makes the rename itself survive power loss, at the cost of
    a second flush: the worker, saving leases beside its packet loop, skips it
    (an older lease file after a power cut is harmless).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    data = memoryview(text.encode())
    try:
        tmp.unlink()  # a crashed process's, with the same pid
    except FileNotFoundError:
        pass
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        try:
            while data:
                data = data[os.write(fd, data) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            tmp.unlink()
        except OSError:
            pass
        if isinstance(exc, OSError) and exc.filename is None:
            # os.write/fsync name no file: "[Errno 28] No space left" alone does not
            # say which disk to look at.
            raise OSError(exc.errno, f"writing {path}: {exc.strerror}") from exc
        raise
    if sync_directory:
        fsync_directory(path.parent)


def fsync_directory(directory: Path) -> None:
    """Make a rename in ``directory`` survive power loss (router flash); best effort."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on a directory
    finally:
        os.close(fd)


def read_sysctl(path: str) -> str:
    return Path(path).read_text().strip()


def write_sysctl(path: str, value: str) -> None:
    Path(path).write_text(value + "\n")


def onlink_prefixes(ipr: Any) -> list[tuple[IPv6Network, str]]:
    """IPv6 prefixes assigned on-link to interfaces (from their global addresses)."""
    names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
    out: list[tuple[IPv6Network, str]] = []
    for addr in ipr.get_addr(family=10):
        if addr["scope"] != 0 or addr["prefixlen"] >= 128:
            continue
        net = ip_network(f"{addr.get_attr('IFA_ADDRESS')}/{addr['prefixlen']}", strict=False)
        assert isinstance(net, IPv6Network)
        out.append((net, names.get(addr["index"], "")))
    return out


class NetlinkError(RuntimeError):
    """A netlink change failed; the message says what and on which object."""


class NetlinkManager:
    """Applies NetPlans incrementally and undoes everything on teardown."""

    def __init__(self, tun_device: str, state_file: Path) -> None:
        from pyroute2 import IPRoute

        self.ipr = IPRoute()
        self.batch = RtnlBatch()
        self.tun_device = tun_device
        self.state_file = state_file
        self.state = AppliedState(tun_device=tun_device)
        self.pending_features: set[str] = set()  # "ifname feature" waiting for ifname

    # -- reading -------------------------------------------------------------

    def link_index(self, ifname: str) -> int | None:
        found = self.ipr.link_lookup(ifname=ifname)
        return found[0] if found else None

    def onlink_prefixes(self) -> list[tuple[IPv6Network, str]]:
        return onlink_prefixes(self.ipr)

    # -- crash recovery ------------------------------------------------------

    def recover_leftovers(self) -> list[str]:
        """Undo what a previous run left behind (state file, our route protocol, a stale TUN).

        Raises NetlinkError, having changed nothing, when an interface with the
        TUN's name exists that no run of ours made (a running Tayga's, say).
        """
        done: list[str] = []
        old: AppliedState | None = None
        unreadable = False
        if self.state_file.exists():
            try:
                old = AppliedState.from_json(self.state_file.read_text())
            except (OSError, ValueError, TypeError) as exc:
                log.warning("ignoring unreadable state file %s: %s", self.state_file, exc)
                old, unreadable = AppliedState(), True
        idx = self.link_index(self.tun_device)
        if idx is not None and (old is None or old.tun_device != self.tun_device):
            raise NetlinkError(self._foreign_device(idx))
        if unreadable:
            done.append(
                f"{self.state_file} was unreadable: routes of ours are found by their "
                "protocol and removed, but proxy NDP entries and sysctls the previous "
                "run changed cannot be known and stay as they are"
            )
        elif old is not None:
            self.state = old
            self._undo_all()
            done.append(f"undid the previous run's changes recorded in {self.state_file}")
        for family in (2, 10):
            for route in self.ipr.get_routes(family=family, proto=RTPROT_REVNAT64):
                try:
                    self.ipr.route("del", **self._route_key(route))
                    done.append("removed a stale route")
                except Exception as exc:  # already gone with its device
                    log.debug("stale route removal: %s", exc)
        idx = self.link_index(self.tun_device)
        if idx is not None:
            self.ipr.link("del", index=idx)
            done.append(f"removed stale device {self.tun_device}")
        self.state = AppliedState(tun_device=self.tun_device)
        self._save()
        return done

    def _foreign_device(self, idx: int) -> str:
        """Why an existing interface with the TUN's name is not ours to delete."""
        name = self.tun_device
        try:
            info = self.ipr.get_links(idx)[0].get_attr("IFLA_LINKINFO")
            kind = info.get_attr("IFLA_INFO_KIND") if info is not None else None
        except Exception:  # gone meanwhile, or no link info: say what we know
            kind = None
        if kind == "tun":
            what = "a TUN device that revnat64 did not make (is Tayga still running?)"
            cure = f"stop that program, or remove a left-over device with: ip link del {name}"
        else:
            what = f"an interface ({kind or 'of unknown kind'}) that is not revnat64's TUN"
            cure = "revnat64 will not touch it"
        return (
            f"translator.tun_device: {name} already exists as {what}; {cure}, "
            "or give translator.tun_device a name no interface has"
        )

    @staticmethod
    def _route_key(route: Any) -> dict[str, Any]:
        return {
            "dst": route.get_attr("RTA_DST"),
            "dst_len": route["dst_len"],
            "family": route["family"],
            "table": route.get_attr("RTA_TABLE", 254),
            "proto": RTPROT_REVNAT64,
        }

    # -- applying ------------------------------------------------------------

    def bring_up_tun(self, mtu: int) -> None:
        idx = self.link_index(self.tun_device)
        if idx is None:
            raise NetlinkError(f"TUN device {self.tun_device} does not exist after creating it")
        try:
            self.ipr.link("set", index=idx, mtu=mtu, state="up")
        except Exception as exc:
            raise NetlinkError(f"setting {self.tun_device} up with MTU {mtu}: {exc}") from exc

    def apply(self, desired: NetPlan) -> list[str]:
        """Make the system match ``desired``; return a line per change made."""
        changes: list[str] = []
        for path, value in desired.sysctls:
            if path not in self.state.sysctl_originals:
                try:
                    current = read_sysctl(path)
                except OSError as exc:
                    raise NetlinkError(f"reading sysctl {path}: {exc}") from exc
                if current != value:
                    self.state.sysctl_originals[path] = current
                    self._save()
                    try:
                        write_sysctl(path, value)
                    except OSError as exc:
                        raise NetlinkError(f"setting sysctl {path}={value}: {exc}") from exc
                    changes.append(f"sysctl {path}={value} (was {current})")
        changes.extend(self._apply_features(desired.features))
        idx = self.link_index(self.tun_device)
        if idx is None:
            raise NetlinkError(f"TUN device {self.tun_device} is missing")
        add_routes = sorted(desired.routes - self.state.routes, key=ROUTE_ORDER)
        del_routes = sorted(self.state.routes - desired.routes, key=ROUTE_ORDER)
        add_proxies = sorted(desired.proxies - self.state.proxies, key=PROXY_ORDER)
        del_proxies = sorted(self.state.proxies - desired.proxies, key=PROXY_ORDER)
        # Record intent before acting, so a crash in between is still undone.
        self.state.routes.update(add_routes)
        self.state.proxies.update(add_proxies)
        if add_routes or add_proxies:
            self._save()
        self._add(add_routes, add_proxies, idx)
        changes.extend(f"route {route.dst} dev {self.tun_device}" for route in add_routes)
        changes.extend(f"proxy ndp {e.address} dev {e.interface}" for e in add_proxies)
        self._remove(del_routes, del_proxies, idx)
        changes.extend(f"removed proxy ndp {e.address} dev {e.interface}" for e in del_proxies)
        changes.extend(f"removed route {route.dst}" for route in del_routes)
        # proxy_ndp sysctls no longer needed go back to what they were.
        wanted = {path for path, _ in desired.sysctls}
        for path in [p for p in self.state.sysctl_originals if p not in wanted]:
            self._restore_sysctl(path)
            changes.append(f"restored sysctl {path}")
        if changes:  # the daemon calls this on every link change: spare a router's flash
            self._save()
        return changes

    def repair(self, sysctls: Sequence[tuple[str, str]]) -> tuple[list[str], list[str]]:
        """Put back what the kernel dropped behind our back: (what was restored, what failed).

        :meth:`apply` compares with what it recorded, not with the kernel, so
        it never notices what others undo: a TUN set down (its routes go with
        it), a route of ours deleted, proxy NDP entries flushed by a link going
        down, ``proxy_ndp`` at 0 on an interface created again (``ppp0`` after a
        PPPoE reconnect).  This reads the kernel and restores what the last
        :meth:`apply` put there (its recorded state, so no plan needs keeping:
        10,000 routes are megabytes) and the plan's ``sysctls``.  An interface
        that is not there yet is left for the next call (its link coming up is
        the next event).
        """
        changes: list[str] = []
        problems: list[str] = []
        if self._repair_tun(changes, problems):
            self._repair_routes(changes, problems)
        for path, value in sysctls:
            try:
                current = read_sysctl(path)
                if current != value:
                    write_sysctl(path, value)
                    changes.append(f"sysctl {path}={value} (was {current})")
            except OSError:
                continue  # the interface is gone for now
        self._repair_proxies(changes, problems)
        return changes, problems

    def _repair_tun(self, changes: list[str], problems: list[str]) -> bool:
        """Set the TUN up again if someone set it down; False when it cannot carry routes.

        Down drops every route through it, and up does not bring them back:
        :meth:`_repair_routes` does that next.
        """
        idx = self.link_index(self.tun_device)
        if idx is None:
            return False  # the worker's fds hold it; gone means the daemon is going down
        links = self.ipr.get_links(idx)
        if not links:
            return False
        if links[0]["flags"] & IFF_UP:
            return True
        try:
            self.ipr.link("set", index=idx, state="up")
        except Exception as exc:
            problems.append(f"setting {self.tun_device} up again: {exc}")
            return False
        changes.append(f"{self.tun_device} was down: set up")
        return True

    def _repair_routes(self, changes: list[str], problems: list[str]) -> None:
        """Put back routes of ours that someone deleted (``ip route del``, a flush)."""
        from publisher.nlbatch import dump_routes

        ours = self.state.routes
        idx = self.link_index(self.tun_device)
        if not ours or idx is None:
            return
        try:
            present = set(dump_routes(RTPROT_REVNAT64))
        except OSError as exc:
            problems.append(f"reading the routes: {exc}")
            return
        missing = [r for r in ours if r.dst not in present]
        if missing:  # the kernel's spelling may differ from ipaddress's: compare as networks
            canonical = {str(ip_network(dst)) for dst in present}
            missing = sorted((r for r in missing if r.dst not in canonical), key=ROUTE_ORDER)
        back = self._put_back(missing, self._route_requests(missing, idx), problems)
        changes.extend(f"route {r.dst} dev {self.tun_device} (was gone)" for r in back)

    def _repair_proxies(self, changes: list[str], problems: list[str]) -> None:
        """Put back proxy NDP entries the kernel flushed (their link went down)."""
        from publisher.nlbatch import dump_proxies

        ours = self.state.proxies
        if not ours:
            return
        ifindex = self._interfaces(p.interface for p in ours)
        try:
            present = set(dump_proxies())
        except OSError as exc:
            problems.append(f"reading the proxy NDP entries: {exc}")
            return
        missing = sorted(
            (
                p
                for p in ours
                if p.interface in ifindex and (p.address, ifindex[p.interface]) not in present
            ),
            key=PROXY_ORDER,
        )
        requests = [build_proxy("replace", p.address, ifindex[p.interface]) for p in missing]
        back = self._put_back(missing, requests, problems)
        changes.extend(f"proxy ndp {p.address} dev {p.interface} (was gone)" for p in back)

    def _put_back(
        self, objects: Sequence[Restorable], requests: list[Request], problems: list[str]
    ) -> list[Restorable]:
        """Send ``requests`` (one per object) in one batch; the objects the kernel took.

        What it refused is noted in ``problems``."""
        if not objects:
            return []
        try:
            result = self.batch.run(requests)
        except OSError as exc:
            problems.append(f"restoring {len(objects)} routes or proxy entries: {exc}")
            return []
        refused = {f.index for f in result.failures}
        problems.extend(
            f"{self._describe('add', objects[f.index])}: {f.describe()}"
            + (EXISTS_HINT if f.error == errno.EEXIST else "")
            for f in result.failures[:ERRORS_SHOWN]
        )
        return [o for i, o in enumerate(objects) if i not in refused]

    def _route_requests(self, routes: Iterable[Route], idx: int) -> list[Request]:
        # "add", as at start: a route someone else put there since is theirs to keep.
        return [build_route("add", r.dst, idx, RTPROT_REVNAT64) for r in routes]

    def _apply_features(self, wanted: tuple[tuple[str, str, str], ...]) -> list[str]:
        """Switch interface features on, remembering what they were; undo unwanted ones."""
        changes: list[str] = []
        keys = {f"{ifname} {feature}" for ifname, feature, _ in wanted}
        for key in [k for k in self.state.feature_originals if k not in keys]:
            self._restore_feature(key)
            changes.append(f"restored {key}")
        current: dict[str, dict[str, tuple[str, bool]]] = {}
        was_pending, self.pending_features = self.pending_features, set()
        for ifname, feature, value in wanted:
            key = f"{ifname} {feature}"
            if key in self.state.feature_originals:
                continue
            if self.link_index(ifname) is None:
                # The WAN is not up yet (ppp0 before the PPPoE session): applied when
                # it appears (features_ready), instead of refusing to start. Said
                # once, and no change: the state file is not rewritten for it.
                self.pending_features.add(key)
                if key not in was_pending:
                    log.info("%s does not exist yet: %s %s waits for it", ifname, feature, value)
                continue
            try:
                if ifname not in current:
                    current[ifname] = read_features(ifname)
                now, fixed = current[ifname].get(feature, ("", True))
                if now == value:
                    continue
                if not now or fixed:
                    raise EthtoolError(
                        f"{ifname} cannot switch {feature} "
                        f"({'fixed ' + now if now else 'not offered by this driver/kernel'})"
                    )
                self.state.feature_originals[key] = now
                self._save()
                set_feature(ifname, feature, value)
            except EthtoolError as exc:
                raise NetlinkError(f"translator.udp_gro_forwarding: {exc}") from exc
            changes.append(f"ethtool -K {ifname} {feature} {value} (was {now})")
        return changes

    def features_ready(self) -> bool:
        """Whether an interface a pending feature waits for exists now."""
        return any(
            self.link_index(key.split(" ", 1)[0]) is not None for key in self.pending_features
        )

    def _restore_feature(self, key: str) -> None:
        original = self.state.feature_originals.pop(key)
        ifname, feature = key.split(" ", 1)
        try:
            set_feature(ifname, feature, original)
        except EthtoolError as exc:  # e.g. the interface is gone: nothing left to restore
            log.warning("restoring %s %s: %s", key, original, exc)

    def teardown(self, delete_tun: bool = True) -> None:
        """Remove everything we created; idempotent and best-effort per object."""
        self._undo_all()
        if delete_tun:
            idx = self.link_index(self.tun_device)
            if idx is not None:
                try:
                    self.ipr.link("del", index=idx)
                except Exception as exc:
                    log.warning("removing %s: %s", self.tun_device, exc)
        try:
            self.state_file.unlink()
        except FileNotFoundError:
            pass
        self.close()

    def close(self) -> None:
        """Close the netlink sockets, leaving the kernel as it is."""
        self.ipr.close()
        self.batch.close()

    def _undo_all(self) -> None:
        idx = self.link_index(self.state.tun_device or self.tun_device)
        # Without the device its routes are gone already.
        routes = sorted(self.state.routes, key=ROUTE_ORDER) if idx is not None else []
        self._remove(routes, sorted(self.state.proxies, key=PROXY_ORDER), idx)
        for path in list(self.state.sysctl_originals):
            self._restore_sysctl(path)
        # Newest first: GRO goes back after UDP GRO forwarding.
        for key in reversed(list(self.state.feature_originals)):
            self._restore_feature(key)
        self.state.routes.clear()
        self.state.proxies.clear()

    def _restore_sysctl(self, path: str) -> None:
        original = self.state.sysctl_originals.pop(path)
        try:
            write_sysctl(path, original)
        except OSError as exc:  # e.g. the interface is gone: nothing left to restore
            log.debug("restoring %s=%s: %s", path, original, exc)

    def _interfaces(self, names: Iterable[str]) -> dict[str, int]:
        """Interface name -> index, for the names that exist."""
        found = {name: self.link_index(name) for name in set(names)}
        return {name: idx for name, idx in found.items() if idx is not None}

    def _add(self, routes: list[Route], proxies: list[ProxyEntry], idx: int) -> None:
        """Add routes and proxy entries in batches; on failure, name it and keep the state exact.

        Routes are added exclusively: a route to the same destination that
        revnat64 did not make is reported, not taken over (and later deleted).
        The state already lists everything (the intent); afterwards it keeps
        only what the kernel accepted, so a later apply retries the rest and
        stop removes no one else's route.
        """
        ifindex = self._interfaces(p.interface for p in proxies)
        for entry in proxies:
            if entry.interface not in ifindex:
                self.state.proxies.difference_update(proxies)
                self.state.routes.difference_update(routes)
                self._save()
                raise NetlinkError(
                    f"proxy ndp {entry.address}: interface {entry.interface} not found"
                )
        objects: list[Route | ProxyEntry] = [*routes, *proxies]
        requests = [build_route("add", r.dst, idx, RTPROT_REVNAT64) for r in routes]
        requests += [build_proxy("replace", p.address, ifindex[p.interface]) for p in proxies]
        try:
            result = self.batch.run(requests, stop_on_error=True)
        except OSError as exc:
            # Which requests took effect is unknown: the state keeps all of them,
            # and removing what is not there is harmless.
            raise NetlinkError(
                f"adding {len(routes)} routes dev {self.tun_device} and "
                f"{len(proxies)} proxy ndp entries: {exc}"
            ) from exc
        refused = {f.index for f in result.failures}
        not_applied = [o for i, o in enumerate(objects) if i >= result.sent or i in refused]
        if not not_applied:
            return
        self.state.routes.difference_update(o for o in not_applied if isinstance(o, Route))
        self.state.proxies.difference_update(o for o in not_applied if isinstance(o, ProxyEntry))
        self._save()
        problems = [
            f"{self._describe('add', objects[f.index])}: {f.describe()}"
            + (
                EXISTS_HINT
                if f.error == errno.EEXIST and isinstance(objects[f.index], Route)
                else ""
            )
            for f in result.failures[:ERRORS_SHOWN]
        ]
        if len(result.failures) > ERRORS_SHOWN:
            problems.append(f"and {len(result.failures) - ERRORS_SHOWN} more failures")
        if result.sent < len(requests):
            problems.append(f"{len(requests) - result.sent} further changes not attempted")
        raise NetlinkError("; ".join(problems))

    def _remove(self, routes: list[Route], proxies: list[ProxyEntry], idx: int | None) -> None:
        """Delete in batches, best-effort; what the kernel refused to delete stays in the state."""
        ifindex = self._interfaces(p.interface for p in proxies)
        # A proxy entry goes with its interface.
        present = [p for p in proxies if p.interface in ifindex]
        objects: list[Route | ProxyEntry] = list(present)
        requests = [build_proxy("del", p.address, ifindex[p.interface]) for p in present]
        if idx is not None:
            objects += routes
            requests += [build_route("del", r.dst, idx, RTPROT_REVNAT64) for r in routes]
        try:
            result = self.batch.run(requests)
        except OSError as exc:  # the state keeps them all; stop or the next start retries
            log.warning(
                "removing %d routes and %d proxy ndp entries: %s", len(routes), len(proxies), exc
            )
            return
        kept: set[int] = set()
        for failure in result.failures:
            what = self._describe("del", objects[failure.index])
            if failure.error in MISSING:
                log.debug("%s: %s", what, failure.describe())
            else:
                log.warning("%s: %s", what, failure.describe())
                kept.add(failure.index)
        removed = [o for i, o in enumerate(objects) if i not in kept]
        if idx is None:
            removed += routes
        removed += [p for p in proxies if p.interface not in ifindex]
        self.state.routes.difference_update(o for o in removed if isinstance(o, Route))
        self.state.proxies.difference_update(o for o in removed if isinstance(o, ProxyEntry))

    def _describe(self, op: str, obj: Route | ProxyEntry) -> str:
        if isinstance(obj, Route):
            return f"{op} route {obj.dst} dev {self.tun_device}"
        return f"{op} proxy ndp {obj.address} dev {obj.interface}"

    def _save(self) -> None:
        atomic_write(self.state_file, self.state.to_json())
