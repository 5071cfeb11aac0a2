"""Keep the published names right in DNS with RFC 2136 dynamic updates.

The work is split the usual way: :func:`plan_update` is pure (the records the
config wants, the RRsets the server has, the names we own -> a list of
changes), and :func:`run_update` reads the server, plans, and sends.

Ownership.  Deleting a removed mapping's AAAA needs to know which names
revnat64 created, but DNS cannot list a zone short of a zone transfer, which
most primaries refuse.  So each zone revnat64 writes to carries an ownership
TXT RRset at ``_revnat64.<zone>``, one string per managed RRset
(``"AAAA frontdoor.cam.example.org."``, ``"PTR 0.5.0...ip6.arpa."``).  The
list lives next to the data it describes, so it is right whichever host runs
the update, survives a lost ``state_dir``, and is visible with
``dig TXT _revnat64.cam.example.org``.  A local state file would go stale the
moment a second machine, a restored backup or a hand edit touched the zone.
The forward zone's ownership set changes in the same message as its AAAA
records, so the two cannot disagree; entries for PTR records, which live in a
different zone, are added before and removed after the PTR changes, so the
list is always a superset of what we own and a failed run is repaired by the
next.

What is touched.  For a name in the config, its AAAA RRset is set to exactly
the configured addresses (a name the config lists is the user's to publish,
even if someone created it by hand).  A name no longer in the config loses
its AAAA RRset only if the ownership set lists it.  Other record types at any
name, and names we do not own, are never touched.  Nothing is sent when
nothing differs, so a repeated run leaves the zone serial alone.

Failures.  Timeouts and network errors are retried with exponential backoff,
a bounded number of times.  A server that answers with a refusal (REFUSED,
NOTAUTH, NOTZONE, a TSIG error) is not asked again: the answer will not
change, and the error names the server, the zone and the rcode.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from collections.abc import Mapping as TMapping
from dataclasses import dataclass, field
from ipaddress import IPv6Address
from typing import TypeVar

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype
import dns.tsig
import dns.update

from publisher.config import Config, split_hostport
from publisher.dns_records import RecordSet, build_records, ownership_name
from publisher.dns_tsig import TsigKey, key_file_warnings, load_tsig_key

__all__ = [
    "Change",
    "DnsRefusedError",
    "DnsUnreachableError",
    "DnsUpdateError",
    "RRsetState",
    "RetryPolicy",
    "UpdatePlan",
    "UpdateResult",
    "UpdateStatus",
    "dns_update_status",
    "plan_update",
    "run_update",
    "start_background_update",
]

T = TypeVar("T")

DEFAULT_ATTEMPTS = 4  # 1 try + 3 retries: 0.5 s, 1 s, 2 s apart
DEFAULT_BACKOFF = 0.5
DEFAULT_TIMEOUT = 5.0
# Answers worth asking again: the server is up but could not do it just now.
RETRYABLE_RCODES = frozenset({dns.rcode.SERVFAIL})
# What a TSIG failure means to the person reading the message (RFC 8945 section 5.2).
TSIG_ERRORS: dict[type[Exception], str] = {
    dns.tsig.PeerBadKey: "BADKEY: the server does not know this key name or algorithm",
    dns.tsig.PeerBadSignature: "BADSIG: the key's secret differs from the server's",
    dns.tsig.PeerBadTime: "BADTIME: this host's clock differs from the server's by > 5 minutes",
    dns.tsig.PeerBadTruncation: "BADTRUNC: the server rejected the truncated MAC",
}


class DnsUpdateError(Exception):
    """Publishing the records failed; the message says what, where and why."""


class DnsRefusedError(DnsUpdateError):
    """The server answered and said no (an rcode or TSIG error); retrying will not help."""

    def __init__(self, message: str, rcode: str) -> None:
        super().__init__(message)
        self.rcode = rcode


class DnsUnreachableError(DnsUpdateError):
    """The server did not answer after every retry."""


@dataclass(frozen=True)
class RRsetState:
    """What the server holds for one (name, type): TTL and the set of values."""

    ttl: int
    values: frozenset[str]


Key = tuple[str, str]  # (rtype, absolute name), as in the ownership TXT strings


@dataclass(frozen=True)
class Change:
    """Set one RRset to ``values`` (``replace``), or remove it (``delete``)."""

    action: str  # "replace" | "delete"
    rtype: str
    name: str
    ttl: int
    values: tuple[str, ...]
    old: tuple[str, ...]

    def __str__(self) -> str:
        old = ", ".join(self.old) or "nothing"
        if self.action == "delete":
            return f"delete {self.name} {self.rtype} (was {old})"
        return f"set {self.name} {self.rtype} {', '.join(self.values)} (was {old})"


@dataclass(frozen=True)
class UpdatePlan:
    """The changes that bring the server to the config, plus ownership bookkeeping."""

    changes: tuple[Change, ...]
    own_add: tuple[Key, ...]
    own_remove: tuple[Key, ...]

    @property
    def is_empty(self) -> bool:
        return not (self.changes or self.own_add or self.own_remove)


@dataclass(frozen=True)
class UpdateResult:
    """What :func:`run_update` did: the plan it carried out and how many messages it sent."""

    server: str
    zone: str
    plan: UpdatePlan
    messages_sent: int
    warnings: tuple[str, ...] = ()

    def summary(self) -> str:
        if self.plan.is_empty:
            return f"{self.zone} on {self.server}: up to date, nothing sent"
        return (
            f"{self.zone} on {self.server}: {len(self.plan.changes)} record change(s) "
            f"in {self.messages_sent} update message(s)"
        )


# --------------------------------------------------------------------------
# The pure part


def _normalise(rtype: str, value: str) -> str:
    if rtype == "AAAA":
        return str(IPv6Address(value))
    return value.lower()


def desired_rrsets(records: RecordSet) -> dict[Key, RRsetState]:
    """Group records into RRsets keyed by (type, name)."""
    out: dict[Key, set[str]] = {}
    ttls: dict[Key, int] = {}
    for r in records.records:
        key = (r.rtype, r.name.lower())
        out.setdefault(key, set()).add(_normalise(r.rtype, r.value))
        ttls[key] = r.ttl
    return {k: RRsetState(ttls[k], frozenset(v)) for k, v in out.items()}


def plan_update(
    desired: TMapping[Key, RRsetState],
    current: TMapping[Key, RRsetState | None],
    owned: Iterable[Key],
) -> UpdatePlan:
    """Diff the wanted RRsets against the server's, touching only what we may.

    ``current`` must hold every key of ``desired`` and ``owned`` (None where the
    server has no such RRset).
    """
    owned_set = set(owned)
    changes = []
    for key in sorted(desired):
        want = desired[key]
        have = current.get(key)
        if have is None or have.values != want.values or have.ttl != want.ttl:
            old = tuple(sorted(have.values)) if have else ()
            changes.append(
                Change("replace", key[0], key[1], want.ttl, tuple(sorted(want.values)), old)
            )
    for key in sorted(owned_set - set(desired)):
        have = current.get(key)
        if have is not None:
            changes.append(
                Change("delete", key[0], key[1], have.ttl, (), tuple(sorted(have.values)))
            )
    return UpdatePlan(
        tuple(changes),
        tuple(sorted(set(desired) - owned_set)),
        tuple(sorted(owned_set - set(desired))),
    )


def parse_ownership(strings: Iterable[str]) -> set[Key]:
    """Ownership TXT strings -> keys; strings in any other shape are not ours to read."""
    out = set()
    for s in strings:
        rtype, _, name = s.partition(" ")
        if rtype in ("AAAA", "PTR") and name.endswith("."):
            out.add((rtype, name.lower()))
    return out


def ownership_text(key: Key) -> str:
    return f'"{key[0]} {key[1]}"'


# --------------------------------------------------------------------------
# Talking to the server


@dataclass(frozen=True)
class RetryPolicy:
    """How long to wait for an answer and how often to ask again (exponential backoff)."""

    timeout: float = DEFAULT_TIMEOUT
    attempts: int = DEFAULT_ATTEMPTS
    backoff: float = DEFAULT_BACKOFF
    sleep: Callable[[float], None] = time.sleep


@dataclass
class _Server:
    """One primary server, the key that signs for it, and the retry policy."""

    host: str
    port: int
    key: dns.tsig.Key | None
    policy: RetryPolicy
    log: logging.Logger | None = None

    @property
    def label(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def exchange(self, msg: dns.message.Message, what: str) -> dns.message.Message:
        """Send over TCP (an update or its answer may not fit UDP) with bounded retries."""
        if self.key is not None:
            msg.use_tsig(self.key)
        policy = self.policy
        delay = policy.backoff
        last: Exception | None = None
        for attempt in range(1, policy.attempts + 1):
            try:
                response = dns.query.tcp(msg, self.host, port=self.port, timeout=policy.timeout)
            except tuple(TSIG_ERRORS) as exc:
                meaning = TSIG_ERRORS[type(exc)]
                key = self.key.name.to_text() if self.key else "(none)"
                raise DnsRefusedError(
                    f"DNS server {self.label} refused {what} signed with TSIG key {key}: {meaning}",
                    meaning.split(":")[0],
                ) from None
            except (dns.exception.Timeout, OSError, EOFError, dns.exception.FormError) as exc:
                last = exc
            else:
                rcode = response.rcode()
                if rcode not in RETRYABLE_RCODES:
                    return response
                last = DnsUpdateError(f"rcode {dns.rcode.to_text(rcode)}")
            if attempt < policy.attempts:
                if self.log:
                    self.log.warning(
                        "DNS server %s: %s failed (%s); retry %d of %d in %.1f s",
                        self.label, what, _describe(last), attempt, policy.attempts - 1, delay,
                    )  # fmt: skip
                policy.sleep(delay)
                delay *= 2
        raise DnsUnreachableError(
            f"DNS server {self.label}: {what} failed after {policy.attempts} attempts: "
            f"{_describe(last)}"
        )

    def check_rcode(self, response: dns.message.Message, what: str, ok: Iterable[int]) -> None:
        rcode = response.rcode()
        if rcode in ok:
            return
        name = dns.rcode.to_text(rcode)
        hint = {
            dns.rcode.REFUSED: "the server does not allow this (check allow-update / "
            "update-policy and that it is the zone's primary)",
            dns.rcode.NOTAUTH: "the server is not authoritative for the zone, or the TSIG "
            "key was not accepted",
            dns.rcode.NOTZONE: "a name lies outside the zone",
        }.get(rcode, "")
        raise DnsRefusedError(
            f"DNS server {self.label} answered {name} to {what}" + (f": {hint}" if hint else ""),
            name,
        )

    def read_rrset(self, name: str, rtype: str) -> RRsetState | None:
        """The RRset the server holds (authoritatively) for (name, rtype), or None."""
        what = f"the query for {name} {rtype}"
        q = dns.message.make_query(name, rtype)
        q.flags &= ~dns.flags.RD
        response = self.exchange(q, what)
        self.check_rcode(response, what, (dns.rcode.NOERROR, dns.rcode.NXDOMAIN))
        if not response.flags & dns.flags.AA:
            raise DnsRefusedError(
                f"DNS server {self.label} is not authoritative for {name} (no AA flag in its "
                "answer); dns.server must be the zone's primary server",
                "NOTAUTH",
            )
        qname = dns.name.from_text(name)
        for rrset in response.answer:
            if rrset.name != qname:
                continue
            if rrset.rdtype == dns.rdatatype.CNAME:
                raise DnsRefusedError(
                    f"{name} is a CNAME on {self.label}; a name with a CNAME cannot also have "
                    f"{rtype} records (RFC 1034 section 3.6.2); remove the CNAME or rename "
                    "the mapping",
                    "CNAME",
                )
            if rrset.rdtype == dns.rdatatype.from_text(rtype):
                return RRsetState(
                    rrset.ttl, frozenset(_normalise(rtype, rd.to_text()) for rd in rrset)
                )
        return None

    def read_txt(self, name: str) -> list[str]:
        what = f"the query for {name} TXT"
        response = self.exchange(dns.message.make_query(name, "TXT"), what)
        self.check_rcode(response, what, (dns.rcode.NOERROR, dns.rcode.NXDOMAIN))
        out = []
        for rrset in response.answer:
            if rrset.rdtype == dns.rdatatype.TXT and rrset.name == dns.name.from_text(name):
                for rd in rrset:
                    out.append(b"".join(rd.strings).decode("utf-8", "replace"))
        return out

    def zone_of(self, name: str) -> str:
        """The zone on this server that holds ``name``, from the SOA in its answer."""
        what = f"the SOA query for {name}"
        response = self.exchange(dns.message.make_query(name, "SOA"), what)
        if response.rcode() in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
            for rrset in (*response.answer, *response.authority):
                if rrset.rdtype == dns.rdatatype.SOA:
                    return rrset.name.to_text()
        raise DnsRefusedError(
            f"DNS server {self.label} serves no zone that holds {name} "
            f"(answered {dns.rcode.to_text(response.rcode())}); publish PTR records on the "
            "server of your ip6.arpa zone, or set dns.ptr: false",
            dns.rcode.to_text(response.rcode()),
        )

    def send_update(self, upd: dns.update.UpdateMessage, zone: str, count: int) -> None:
        what = f"the update of zone {zone} ({count} change(s))"
        response = self.exchange(upd, what)
        self.check_rcode(response, what, (dns.rcode.NOERROR,))


def _describe(exc: BaseException | None) -> str:
    if exc is None:
        return "no answer"
    if isinstance(exc, dns.exception.Timeout):
        return "timed out"
    return str(exc) or type(exc).__name__


def _make_server(
    cfg: Config, key: TsigKey | None, log: logging.Logger | None, policy: RetryPolicy
) -> _Server:
    if not cfg.dns.server:
        raise DnsUpdateError(f"{cfg.path}: dns.server is not set; it names the primary to update")
    host, port = split_hostport(cfg.dns.server)
    return _Server(host.strip("[]"), port, key.to_dnspython() if key else None, policy, log)


def _add_change(upd: dns.update.UpdateMessage, c: Change) -> None:
    if c.action == "replace":
        upd.replace(c.name, c.ttl, c.rtype, *c.values)
    else:
        upd.delete(c.name, c.rtype)


def run_update(
    cfg: Config,
    *,
    ptr: bool | None = None,
    log: logging.Logger | None = None,
    dry_run: bool = False,
    policy: RetryPolicy = RetryPolicy(),
) -> UpdateResult:
    """Bring ``dns.server`` in line with the config; raise DnsUpdateError on failure.

    ``ptr`` overrides ``dns.ptr``.  ``policy`` sets timeouts and retries.
    With ``dry_run`` the plan is computed from the server's data but not sent.
    """
    warnings: list[str] = []
    key = None
    if cfg.dns.tsig_key_file:
        warnings += key_file_warnings(cfg.dns.tsig_key_file)
        key = load_tsig_key(cfg.dns.tsig_key_file)  # TsigKeyFileError is the caller's to show
    server = _make_server(cfg, key, log, policy)
    records = build_records(cfg, ptr=cfg.dns.ptr if ptr is None else ptr)
    warnings += records.warnings
    zone = records.zone
    owner = ownership_name(zone)

    owned = parse_ownership(server.read_txt(owner))
    desired = desired_rrsets(records)
    current = {k: server.read_rrset(k[1], k[0]) for k in sorted(set(desired) | owned)}
    plan = plan_update(desired, current, owned)
    result = UpdateResult(server.label, zone, plan, 0, tuple(warnings))
    if plan.is_empty or dry_run:
        return result

    sent = 0
    # Message 1, the forward zone: its AAAA changes and every ownership addition
    # (PTR entries too, before the PTRs exist), atomically (RFC 2136 section 3).
    fwd = dns.update.UpdateMessage(zone)
    n = 0
    for k in plan.own_add:
        fwd.add(owner, cfg.dns.ttl, "TXT", ownership_text(k))
    for c in plan.changes:
        if c.rtype == "AAAA":
            _add_change(fwd, c)
            n += 1
    for k in plan.own_remove:
        if k[0] == "AAAA":
            fwd.delete(owner, "TXT", ownership_text(k))
    if n or plan.own_add or any(k[0] == "AAAA" for k in plan.own_remove):
        server.send_update(fwd, zone, n)
        sent += 1

    # Messages 2..: PTR changes, one message per reverse zone.
    by_zone: dict[str, list[Change]] = {}
    zone_cache: dict[str, str] = {}
    for c in plan.changes:
        if c.rtype != "PTR":
            continue
        parent = c.name.split(".", 1)[1]
        if parent not in zone_cache:
            zone_cache[parent] = server.zone_of(c.name)
        by_zone.setdefault(zone_cache[parent], []).append(c)
    for rzone, changes in sorted(by_zone.items()):
        upd = dns.update.UpdateMessage(rzone)
        for c in changes:
            _add_change(upd, c)
        server.send_update(upd, rzone, len(changes))
        sent += 1

    # Last: forget PTR names only once they are gone.
    gone_ptrs = [k for k in plan.own_remove if k[0] == "PTR"]
    if gone_ptrs:
        fwd = dns.update.UpdateMessage(zone)
        for k in gone_ptrs:
            fwd.delete(owner, "TXT", ownership_text(k))
        server.send_update(fwd, zone, 0)
        sent += 1
    return UpdateResult(server.label, zone, plan, sent, tuple(warnings))


# --------------------------------------------------------------------------
# The daemon's hook: update in the background, remember how it went.


@dataclass(frozen=True)
class UpdateStatus:
    """The last background update, for ``revnat64 status``."""

    state: str = "never"  # "never" | "running" | "ok" | "error"
    message: str = ""
    finished_at: float | None = None  # time.time()
    changes: int = 0


@dataclass
class _Background:
    lock: threading.Lock = field(default_factory=threading.Lock)  # one update at a time
    status_lock: threading.Lock = field(default_factory=threading.Lock)
    generation: int = 0
    status: UpdateStatus = field(default_factory=UpdateStatus)


_BACKGROUND = _Background()


def dns_update_status() -> UpdateStatus:
    """How the most recent background update went (a frozen snapshot)."""
    with _BACKGROUND.status_lock:
        return _BACKGROUND.status


def _set_status(status: UpdateStatus) -> None:
    with _BACKGROUND.status_lock:
        _BACKGROUND.status = status


def start_background_update(
    cfg: Config, log: logging.Logger, policy: RetryPolicy = RetryPolicy()
) -> threading.Thread:
    """Run :func:`run_update` in a daemon thread and log the outcome; never blocks the caller.

    Updates run one at a time.  When several are requested while one runs
    (reloads in quick succession), only the newest config is sent: an older
    request that gets the lock after a newer one was made skips itself.
    """
    with _BACKGROUND.status_lock:
        _BACKGROUND.generation += 1
        generation = _BACKGROUND.generation

    def work() -> None:
        with _BACKGROUND.lock:
            with _BACKGROUND.status_lock:
                if generation != _BACKGROUND.generation:
                    return
                previous = _BACKGROUND.status
                _BACKGROUND.status = UpdateStatus(
                    "running", "", previous.finished_at, previous.changes
                )
            try:
                result = run_update(cfg, log=log, policy=policy)
            except Exception as exc:  # any failure must land in the status
                message = str(exc) or type(exc).__name__
                log.error("DNS update failed: %s", message)
                _set_status(UpdateStatus("error", message, time.time(), 0))
                return
            for warning in result.warnings:
                log.warning("DNS update: %s", warning)
            for change in result.plan.changes:
                log.info("DNS update: %s", change)
            log.info("DNS update: %s", result.summary())
            _set_status(UpdateStatus("ok", result.summary(), time.time(), len(result.plan.changes)))

    thread = threading.Thread(target=work, name=f"revnat64-dns-update-{generation}", daemon=True)
    thread.start()
    return thread
