"""Keep the published names right in DNS with RFC 2136 dynamic updates.

The work is split the usual way: :func:`plan_update` is pure (the records the
config wants, the RRsets the server has, the names we own -> a list of
changes), :func:`prepare_update` reads the server and plans, and
:func:`apply_update` sends the plan; :func:`run_update` does both.

Ownership.  Deleting a removed mapping's AAAA needs to know which names
revnat64 created, but DNS cannot list a zone short of a zone transfer, which
most primaries refuse.  So each zone revnat64 writes to carries an ownership
TXT RRset at ``_revnat64.<zone>``, one string per managed RRset
(``"AAAA frontdoor.cam.example.org."``, ``"PTR 0.5.0...ip6.arpa."``; with
``dns.instance: router2`` the string ends in `` instance=router2``).  The
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
even if someone created it by hand), unless another revnat64 instance lists
it as its own: that name is left alone and reported.  A name no longer in the
config loses its AAAA RRset only if the ownership set lists it as ours.
Other record types at any name, and names we do not own, are never touched.
Nothing is sent when nothing differs, so a repeated run leaves the zone
serial alone.

Prerequisites (RFC 2136 section 2.4).  Each message is conditional on what
was read: every RRset it changes must still hold exactly the records read
(section 2.4.2), or still be absent (section 2.4.3), and every message to the
forward zone requires the whole ownership RRset to be unchanged, which is
the only way to require one string in it (section 2.4.2 compares RRsets, not
records).  So a hand edit, or another instance's claim, made between our read
and our write makes the server refuse the message (YXRRSET/NXRRSET) instead
of being overwritten.  A refusal is not retried: the error names what
changed, nothing in the refused message was applied, and the next run
re-reads the zone and plans again.

Order.  Everything that can be checked without writing is checked before the
first message: the forward zone and each reverse zone must be zones this
server answers for authoritatively.  The messages then go out as (1) new PTR
ownership strings, which publish nothing, (2) the PTR changes, one message per
reverse zone, (3) the AAAA changes with the rest of the ownership
bookkeeping.  A reverse zone that refuses the update therefore stops the run
before any AAAA record changes; a failure after a message was applied says
which messages were.

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
from dataclasses import dataclass, field, replace
from ipaddress import IPv6Address
from typing import TypeVar

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype
import dns.rrset
import dns.tsig
import dns.update

from publisher.config import Config, is_ip_host, split_hostport
from publisher.dns_records import RecordSet, build_records, ownership_name, ownership_string
from publisher.dns_tsig import TsigKey, key_file_warnings, load_tsig_key

__all__ = [
    "Change",
    "Conflict",
    "DnsConflictError",
    "DnsRefusedError",
    "DnsClockError",
    "DnsRetryLaterError",
    "DnsUnreachableError",
    "DnsUpdateError",
    "PreparedUpdate",
    "RRsetState",
    "RetryPolicy",
    "UpdatePlan",
    "UpdateResult",
    "UpdateStatus",
    "apply_update",
    "cancel_background_update",
    "dns_update_status",
    "parse_claims",
    "plan_update",
    "prepare_update",
    "run_update",
    "start_background_update",
]

T = TypeVar("T")

DEFAULT_ATTEMPTS = 4  # 1 try + 3 retries: 0.5 s, 1 s, 2 s apart
DEFAULT_BACKOFF = 0.5
DEFAULT_TIMEOUT = 5.0
# After an unreachable server the daemon runs the whole update again later, this
# long after each failure in turn; the last wait then repeats until it succeeds.
DEFAULT_LATER = (30.0, 60.0, 120.0, 300.0, 900.0)
# Answers worth asking again: the server is up but could not do it just now.
RETRYABLE_RCODES = frozenset({dns.rcode.SERVFAIL})
# RFC 2136 section 2.4: a prerequisite did not hold, so the zone changed since it was read.
PREREQ_RCODES = frozenset({dns.rcode.YXRRSET, dns.rcode.NXRRSET})
INSTANCE_PREFIX = "instance="
# What a TSIG failure means to the person reading the message (RFC 8945 section 5.2).
TSIG_ERRORS: dict[type[Exception], str] = {
    dns.tsig.PeerBadKey: "BADKEY: the server does not know this key name or algorithm",
    dns.tsig.PeerBadSignature: "BADSIG: the key's secret differs from the server's",
    dns.tsig.PeerBadTime: "BADTIME: this host's clock differs from the server's by > 5 minutes",
    dns.tsig.PeerBadTruncation: "BADTRUNC: the server rejected the truncated MAC",
    dns.tsig.BadTime: "BADTIME: the answer's time differs from this host's clock by > 5 minutes",
}
CLOCK_ERRORS = (dns.tsig.PeerBadTime, dns.tsig.BadTime)


class DnsUpdateError(Exception):
    """Publishing the records failed; the message says what, where and why."""

    # The update messages the server had already applied when this one failed.
    applied: tuple[str, ...] = ()


class DnsRefusedError(DnsUpdateError):
    """The server answered and said no (an rcode or TSIG error); retrying will not help."""

    def __init__(self, message: str, rcode: str) -> None:
        super().__init__(message)
        self.rcode = rcode


class DnsConflictError(DnsUpdateError):
    """A prerequisite failed: someone changed the zone between our read and our write.

    Nothing in the refused message was applied.  Sending it again would fail
    the same way, and sending it without prerequisites would overwrite that
    change, so the run stops; the next run re-reads the zone.
    """

    def __init__(self, message: str, rcode: str, changed: tuple[str, ...]) -> None:
        super().__init__(message)
        self.rcode = rcode
        self.changed = changed


class DnsRetryLaterError(DnsUpdateError):
    """Nothing was published, for a reason that time may cure: tried again later."""


class DnsUnreachableError(DnsRetryLaterError):
    """The server did not answer after every retry."""


class DnsClockError(DnsRetryLaterError):
    """TSIG refused for the time: this host's clock and the server's differ.

    A router without a battery-backed clock starts before NTP has set it, so
    this is retried later like an unreachable server, not given up on.
    """


@dataclass(frozen=True)
class RRsetState:
    """What the server holds for one (name, type): TTL and the set of values.

    ``rdata`` is the server's own text of each record, which prerequisites
    must repeat exactly; ``values`` are normalised for comparing with the config.
    """

    ttl: int
    values: frozenset[str]
    rdata: frozenset[str] = frozenset()


Key = tuple[str, str]  # (rtype, absolute name), as in the ownership TXT strings


@dataclass(frozen=True)
class Change:
    """Set one RRset to ``values`` (``replace``), or remove it (``delete``).

    ``expect`` is the RRset as read, which the server must still hold for the
    change to apply (RFC 2136 section 2.4.2); empty means it must still be
    absent (section 2.4.3).
    """

    action: str  # "replace" | "delete"
    rtype: str
    name: str
    ttl: int
    values: tuple[str, ...]
    old: tuple[str, ...]
    expect: tuple[str, ...] = ()

    def __str__(self) -> str:
        old = ", ".join(self.old) or "nothing"
        if self.action == "delete":
            return f"delete {self.name} {self.rtype} (was {old})"
        return f"set {self.name} {self.rtype} {', '.join(self.values)} (was {old})"


def _instance_label(instance: str) -> str:
    return f"instance {instance!r}" if instance else "the unnamed instance"


@dataclass(frozen=True)
class Conflict:
    """A name the config wants that another revnat64 instance manages; it is left alone."""

    rtype: str
    name: str
    owners: tuple[str, ...]  # the other instances' names; "" is the unnamed one

    def __str__(self) -> str:
        who = " and ".join(_instance_label(o) for o in self.owners)
        return (
            f"{self.name} {self.rtype} is managed by revnat64 {who}, not this one; left "
            "alone (give the mapping another hostname, or remove it from the other config)"
        )


@dataclass(frozen=True)
class UpdatePlan:
    """The changes that bring the server to the config, plus ownership bookkeeping."""

    changes: tuple[Change, ...]
    own_add: tuple[Key, ...]
    own_remove: tuple[Key, ...]
    conflicts: tuple[Conflict, ...] = ()

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
            text = f"{self.zone} on {self.server}: up to date, nothing sent"
        else:
            text = (
                f"{self.zone} on {self.server}: {len(self.plan.changes)} record change(s) "
                f"in {self.messages_sent} update message(s)"
            )
        if self.plan.conflicts:
            text += (
                f"; {len(self.plan.conflicts)} name(s) left alone because another "
                "revnat64 instance manages them"
            )
        return text


# --------------------------------------------------------------------------
# The pure part


def _normalise(rtype: str, value: str) -> str:
    if rtype == "AAAA":
        return str(IPv6Address(value))
    if rtype == "PTR":
        return value.lower()
    return value


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
    foreign: TMapping[Key, Iterable[str]] | None = None,
) -> UpdatePlan:
    """Diff the wanted RRsets against the server's, touching only what we may.

    ``current`` must hold every key of ``desired`` and ``owned`` (None where the
    server has no such RRset).  ``foreign`` maps the keys other instances own
    to their names: those RRsets are never changed, even when we want them.
    """
    owned_set = set(owned)
    theirs = {k: tuple(sorted(set(v))) for k, v in (foreign or {}).items() if v}
    changes = []
    conflicts = []
    for key in sorted(desired):
        if key in theirs:
            conflicts.append(Conflict(key[0], key[1], theirs[key]))
            continue
        want = desired[key]
        have = current.get(key)
        if have is None or have.values != want.values or have.ttl != want.ttl:
            old = tuple(sorted(have.values)) if have else ()
            expect = tuple(sorted(have.rdata or have.values)) if have else ()
            changes.append(
                Change("replace", key[0], key[1], want.ttl, tuple(sorted(want.values)), old, expect)
            )
    for key in sorted(owned_set - set(desired)):
        have = current.get(key)
        # Another instance lists it too: it is theirs now, so only our string goes.
        if have is not None and key not in theirs:
            expect = tuple(sorted(have.rdata or have.values))
            changes.append(
                Change("delete", key[0], key[1], have.ttl, (), tuple(sorted(have.values)), expect)
            )
    return UpdatePlan(
        tuple(changes),
        tuple(sorted(set(desired) - owned_set - set(theirs))),
        tuple(sorted(owned_set - set(desired))),
        tuple(conflicts),
    )


def parse_claims(strings: Iterable[str]) -> dict[Key, set[str]]:
    """Ownership TXT strings -> the instances that list each key ("" is the unnamed one).

    Strings in any other shape are not ours to read and are ignored.
    """
    out: dict[Key, set[str]] = {}
    for s in strings:
        parts = s.split(" ")
        if len(parts) not in (2, 3):
            continue
        rtype, name = parts[0], parts[1]
        if rtype not in ("AAAA", "PTR") or not name.endswith("."):
            continue
        instance = ""
        if len(parts) == 3:
            instance = parts[2].removeprefix(INSTANCE_PREFIX)
            if not parts[2].startswith(INSTANCE_PREFIX) or not instance:
                continue
        out.setdefault((rtype, name.lower()), set()).add(instance)
    return out


def parse_ownership(strings: Iterable[str], instance: str = "") -> set[Key]:
    """The keys that ``instance`` lists as its own."""
    return {k for k, owners in parse_claims(strings).items() if instance in owners}


def ownership_text(key: Key, instance: str = "") -> str:
    """The TXT rdata, in presentation form, that lists ``key`` as ``instance``'s."""
    return f'"{ownership_string(key[0], key[1], instance)}"'


# --------------------------------------------------------------------------
# Talking to the server


@dataclass(frozen=True)
class RetryPolicy:
    """How long to wait for an answer and how often to ask again (exponential backoff)."""

    timeout: float = DEFAULT_TIMEOUT
    attempts: int = DEFAULT_ATTEMPTS
    backoff: float = DEFAULT_BACKOFF
    sleep: Callable[[float], None] = time.sleep
    later: tuple[float, ...] = DEFAULT_LATER
    """Background updates only: the waits before running a whole update again after
    the server could not be reached (a router often boots before its DNS server or
    its uplink); the last one repeats.  Empty: give up after the first run."""


# A prerequisite as sent: (rtype, name, rdata the RRset must hold; empty: must not exist).
Prereq = tuple[str, str, frozenset[str]]


def _require(upd: dns.update.UpdateMessage, prereq: Prereq) -> None:
    rtype, name, rdata = prereq
    if rdata:
        upd.present(name, rtype, *sorted(rdata))  # RFC 2136 section 2.4.2, value dependent
    else:
        upd.absent(name, rtype)  # RFC 2136 section 2.4.3, RRset does not exist


def _describe_change(rtype: str, name: str, was: frozenset[str], now: frozenset[str]) -> str:
    if rtype == "TXT":
        gained = ", ".join(sorted(now - was)) or "nothing"
        lost = ", ".join(sorted(was - now)) or "nothing"
        return f"{name} TXT (the names revnat64 manages) gained {gained} and lost {lost}"
    return (
        f"{name} {rtype} was {', '.join(sorted(was)) or 'absent'} when read, "
        f"is now {', '.join(sorted(now)) or 'absent'}"
    )


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
                message = (
                    f"DNS server {self.label} refused {what} signed with TSIG key {key}: {meaning}"
                )
                if isinstance(exc, CLOCK_ERRORS):
                    raise DnsClockError(f"{message} (is NTP running?)") from None
                raise DnsRefusedError(message, meaning.split(":")[0]) from None
            except (dns.exception.Timeout, OSError, EOFError, dns.exception.FormError) as exc:
                last = exc
            else:
                if self.key is not None and not response.had_tsig:
                    # Whatever dnspython's version checks: an unsigned answer to a
                    # signed question did not come from the key's holder (RFC 8945
                    # §5.3: answers to signed requests are signed), so it is not
                    # believed, be it "updated" or the zone's contents.
                    raise DnsRefusedError(
                        f"DNS server {self.label} answered {what} without a TSIG "
                        "signature: not trusted (a forged answer, or not the server "
                        "that holds the key)",
                        "UNSIGNED",
                    )
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

    def read_answer(self, name: str, rtype: str) -> dns.rrset.RRset | None:
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
                return rrset
        return None

    def read_rrset(self, name: str, rtype: str) -> RRsetState | None:
        """The RRset for (name, rtype), normalised for comparison, or None."""
        rrset = self.read_answer(name, rtype)
        if rrset is None:
            return None
        return RRsetState(
            rrset.ttl,
            frozenset(_normalise(rtype, rd.to_text()) for rd in rrset),
            frozenset(rd.to_text() for rd in rrset),
        )

    def read_txt(self, name: str) -> dict[str, str]:
        """The TXT RRset at ``name``: each record's presentation form -> its text."""
        rrset = self.read_answer(name, "TXT")
        if rrset is None:
            return {}
        return {rd.to_text(): b"".join(rd.strings).decode("utf-8", "replace") for rd in rrset}

    def zone_of(self, name: str, hint: str) -> str:
        """The zone on this server that holds ``name``, from the SOA in its answer."""
        what = f"the SOA query for {name}"
        q = dns.message.make_query(name, "SOA")
        q.flags &= ~dns.flags.RD
        response = self.exchange(q, what)
        if response.rcode() in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN) and (
            response.flags & dns.flags.AA
        ):
            for rrset in (*response.answer, *response.authority):
                if rrset.rdtype == dns.rdatatype.SOA:
                    return str(rrset.name.to_text())
        answered = dns.rcode.to_text(response.rcode())
        if not response.flags & dns.flags.AA:
            answered += " without the AA flag"
        raise DnsRefusedError(
            f"DNS server {self.label} serves no zone that holds {name} "
            f"(answered {answered}); {hint}; nothing was sent",
            dns.rcode.to_text(response.rcode()),
        )

    def send_update(
        self,
        upd: dns.update.UpdateMessage,
        zone: str,
        count: int,
        prereqs: Iterable[Prereq] = (),
    ) -> None:
        """Send one update with its prerequisites; a failed prerequisite is a DnsConflictError."""
        required = list(prereqs)
        for p in required:
            _require(upd, p)
        what = f"the update of zone {zone} ({count} change(s))"
        response = self.exchange(upd, what)
        if response.rcode() in PREREQ_RCODES:
            raise self._conflict(response.rcode(), what, required)
        self.check_rcode(response, what, (dns.rcode.NOERROR,))

    def _conflict(
        self, rcode: dns.rcode.Rcode, what: str, required: list[Prereq]
    ) -> DnsConflictError:
        """Say which prerequisite failed: read those RRsets again (a read, not a retry)."""
        changed = []
        for rtype, name, was in required:
            try:
                answer = self.read_answer(name, rtype)
            except DnsUpdateError:
                continue
            now = frozenset(rd.to_text() for rd in answer) if answer else frozenset[str]()
            if {_normalise(rtype, v) for v in now} != {_normalise(rtype, v) for v in was}:
                changed.append(_describe_change(rtype, name, was, now))
        detail = "; ".join(changed) or "what it read was changed and changed back"
        return DnsConflictError(
            f"DNS server {self.label} answered {dns.rcode.to_text(rcode)} to {what}: "
            f"changed by someone else since read: {detail}; nothing in this update was "
            "applied and revnat64 did not retry; the next run (revnat64 dns --update, or a "
            "daemon reload) reads the zone again",
            dns.rcode.to_text(rcode),
            tuple(changed),
        )


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
    if not is_ip_host(cfg.dns.server):
        raise DnsUpdateError(
            f"{cfg.path}: dns.server: {cfg.dns.server} names no IP address; write the "
            "server's address (revnat64 resolves no names)"
        )
    host, port = split_hostport(cfg.dns.server)
    return _Server(host.strip("[]"), port, key.to_dnspython() if key else None, policy, log)


def _add_change(upd: dns.update.UpdateMessage, c: Change) -> None:
    if c.action == "replace":
        upd.replace(c.name, c.ttl, c.rtype, *c.values)
    else:
        upd.delete(c.name, c.rtype)


@dataclass(frozen=True)
class PreparedUpdate:
    """What :func:`prepare_update` read and planned, and all :func:`apply_update` needs.

    The prerequisites of every message come from here, so whatever happens to
    the zone after this was read and before it is applied is detected, not
    overwritten.
    """

    server: _Server
    zone: str
    instance: str
    ttl: int
    plan: UpdatePlan
    ownership: TMapping[str, str]  # the ownership TXT as read: presentation form -> text
    reverse_zones: TMapping[str, str]  # each PTR name planned -> the zone that holds it
    warnings: tuple[str, ...] = ()

    @property
    def owner(self) -> str:
        return ownership_name(self.zone)

    def result(self, sent: int) -> UpdateResult:
        return UpdateResult(self.server.label, self.zone, self.plan, sent, self.warnings)


PTR_HINT = (
    "publish PTR records on the server of your ip6.arpa zone, or set dns.ptr: false "
    "(a reverse zone delegated to your ISP cannot be updated this way)"
)


def _read(server: _Server, key: Key) -> RRsetState | None:
    try:
        return server.read_rrset(key[1], key[0])
    except DnsRefusedError as exc:
        if key[0] != "PTR":
            raise
        raise DnsRefusedError(f"{exc}; {PTR_HINT}; nothing was sent", exc.rcode) from None


def _ownership_rdata(ownership: TMapping[str, str], key: Key, instance: str) -> list[str]:
    """The records, exactly as the server holds them, that list ``key`` as ``instance``'s.

    Deleting by the server's own text also removes a string someone retyped in
    another case, which a delete of our spelling would silently miss.
    """
    return [rd for rd, text in ownership.items() if parse_claims([text]) == {key: {instance}}]


def prepare_update(
    cfg: Config,
    *,
    ptr: bool | None = None,
    log: logging.Logger | None = None,
    policy: RetryPolicy = RetryPolicy(),
) -> PreparedUpdate:
    """Read the server, check every zone the plan touches, and plan; send nothing.

    ``ptr`` overrides ``dns.ptr``.  Raises DnsUpdateError when a zone cannot be
    updated, before anything is written.
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
    instance = cfg.dns.instance

    ownership = server.read_txt(ownership_name(zone))
    claims = parse_claims(ownership.values())
    owned = {k for k, owners in claims.items() if instance in owners}
    foreign = {k: owners - {instance} for k, owners in claims.items() if owners - {instance}}
    desired = desired_rrsets(records)
    current = {k: _read(server, k) for k in sorted(set(desired) | owned)}
    plan = plan_update(desired, current, owned, foreign)
    warnings += [str(c) for c in plan.conflicts]

    # Checks that need no write, so that a zone we cannot update fails the run
    # before the first message rather than halfway through it.
    if not plan.is_empty:
        apex = server.zone_of(zone, "dns.zone must be a zone this server serves")
        if apex.lower() != zone.lower():
            raise DnsRefusedError(
                f"DNS server {server.label} holds {zone} inside its zone {apex}, not as a zone "
                "of its own; dns.zone must name the zone the server serves; nothing was sent",
                "NOTZONE",
            )
    reverse_zones: dict[str, str] = {}
    by_parent: dict[str, str] = {}
    ptr_names = {c.name for c in plan.changes if c.rtype == "PTR"}
    for name in sorted(ptr_names):
        parent = name.split(".", 1)[1]
        if parent not in by_parent:
            by_parent[parent] = server.zone_of(name, PTR_HINT)
        reverse_zones[name] = by_parent[parent]
    return PreparedUpdate(
        server, zone, instance, cfg.dns.ttl, plan, ownership, reverse_zones, tuple(warnings)
    )


def apply_update(prep: PreparedUpdate) -> UpdateResult:
    """Send the prepared plan, each message conditional on what was read.

    Raises DnsConflictError when the zone changed since it was read, and any
    DnsUpdateError after a message was applied carries ``applied`` (and says
    so in its text).
    """
    plan, server, zone, owner = prep.plan, prep.server, prep.zone, prep.owner
    if plan.is_empty:
        return prep.result(0)
    applied: list[str] = []

    def send(
        upd: dns.update.UpdateMessage, to: str, count: int, what: str, prereqs: list[Prereq]
    ) -> None:
        try:
            server.send_update(upd, to, count, prereqs)
        except DnsUpdateError as exc:
            if applied:
                exc.applied = tuple(applied)
                exc.args = (
                    f"{exc}; already applied before this failure: {'; '.join(applied)}; the "
                    "next run finishes the job",
                )
            raise
        applied.append(what)

    ownership = set(prep.ownership)
    mine = {k: ownership_text(k, prep.instance) for k in (*plan.own_add, *plan.own_remove)}

    # 1. List new PTR names as ours before they exist; this publishes nothing.
    ptr_adds = [k for k in plan.own_add if k[0] == "PTR"]
    if ptr_adds:
        upd = dns.update.UpdateMessage(zone)
        for k in ptr_adds:
            upd.add(owner, prep.ttl, "TXT", mine[k])
        send(
            upd,
            zone,
            0,
            f"{len(ptr_adds)} PTR name(s) added to {owner} TXT",
            [("TXT", owner, frozenset(ownership))],
        )
        ownership |= {mine[k] for k in ptr_adds}

    # 2. The PTR changes, one message per reverse zone.
    by_zone: dict[str, list[Change]] = {}
    for c in plan.changes:
        if c.rtype == "PTR":
            by_zone.setdefault(prep.reverse_zones[c.name], []).append(c)
    for rzone, changes in sorted(by_zone.items()):
        upd = dns.update.UpdateMessage(rzone)
        for c in changes:
            _add_change(upd, c)
        send(
            upd,
            rzone,
            len(changes),
            f"{len(changes)} PTR change(s) in {rzone}",
            [(c.rtype, c.name, frozenset(c.expect)) for c in changes],
        )

    # 3. The AAAA changes with the rest of the bookkeeping, atomically (RFC 2136
    # section 3); PTR names are forgotten only now that their records are gone.
    upd = dns.update.UpdateMessage(zone)
    aaaa_adds = [k for k in plan.own_add if k[0] == "AAAA"]
    aaaa = [c for c in plan.changes if c.rtype == "AAAA"]
    for k in aaaa_adds:
        upd.add(owner, prep.ttl, "TXT", mine[k])
    for c in aaaa:
        _add_change(upd, c)
    for k in plan.own_remove:
        for rd in _ownership_rdata(prep.ownership, k, prep.instance) or [mine[k]]:
            upd.delete(owner, "TXT", rd)
    if aaaa or aaaa_adds or plan.own_remove:
        prereqs: list[Prereq] = [("TXT", owner, frozenset(ownership))]
        prereqs += [(c.rtype, c.name, frozenset(c.expect)) for c in aaaa]
        send(upd, zone, len(aaaa), f"{len(aaaa)} AAAA change(s) in {zone}", prereqs)
    return prep.result(len(applied))


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
    prep = prepare_update(cfg, ptr=ptr, log=log, policy=policy)
    return prep.result(0) if dry_run else apply_update(prep)


# --------------------------------------------------------------------------
# The daemon's hook: update in the background, remember how it went.


@dataclass(frozen=True)
class UpdateStatus:
    """The last background update, for ``revnat64 status``."""

    state: str = "never"  # "never" | "running" | "ok" | "retrying" | "conflict" | "error"
    message: str = ""
    finished_at: float | None = None  # time.time()
    changes: int = 0
    unreachable: int = 0  # background runs that found the server unreachable, ever
    last_success: float | None = None  # time.time() of the last "ok"


@dataclass
class _Background:
    lock: threading.Lock = field(default_factory=threading.Lock)  # one update at a time
    status_lock: threading.Lock = field(default_factory=threading.Lock)
    generation: int = 0
    status: UpdateStatus = field(default_factory=UpdateStatus)
    # Notified when a newer update is requested, so a waiting retry gives way at once.
    newer: threading.Condition = field(init=False)

    def __post_init__(self) -> None:
        self.newer = threading.Condition(self.status_lock)


_BACKGROUND = _Background()


def dns_update_status() -> UpdateStatus:
    """How the most recent background update went (a frozen snapshot)."""
    with _BACKGROUND.status_lock:
        return _BACKGROUND.status


class _Superseded(BaseException):
    """A newer background update was requested: this one stops between two tries.

    A BaseException, so that no ``except Exception`` on the way treats it as a
    failure of the update itself."""


def start_background_update(
    cfg: Config, log: logging.Logger, policy: RetryPolicy = RetryPolicy()
) -> threading.Thread:
    """Run :func:`run_update` in a daemon thread and log the outcome; never blocks the caller.

    Updates run one at a time.  When several are requested while one runs
    (reloads in quick succession), only the newest config is sent: an older
    request that gets the lock after a newer one was made skips itself.

    A server that cannot be reached is tried again later (``policy.later``),
    with the state "retrying" meanwhile; a newer request ends the wait.  A
    refusal or a conflict is not retried: it needs a person (see docs/dns.md).
    """
    with _BACKGROUND.status_lock:
        _BACKGROUND.generation += 1
        generation = _BACKGROUND.generation
        _BACKGROUND.newer.notify_all()

    def superseded() -> bool:
        return generation != _BACKGROUND.generation

    def pause(seconds: float) -> None:
        """The backoff between tries of one message, ended by a newer request: an
        older config's update gave way only after all its retries (about 25 s)."""
        with _BACKGROUND.newer:
            if _BACKGROUND.newer.wait_for(superseded, timeout=seconds):
                raise _Superseded

    run_policy = replace(policy, sleep=pause)

    def attempt(retry: int) -> float | None:
        """One whole update (the ``retry``-th again); the wait before the next, or None."""
        with _BACKGROUND.status_lock:
            if superseded():
                return None
            before = _BACKGROUND.status
            _BACKGROUND.status = replace(before, state="running", message="")
        try:
            result = run_update(cfg, log=log, policy=run_policy)
        except _Superseded:
            log.info("DNS update: given up for a newer one")
            with _BACKGROUND.status_lock:
                # Not "running" for ever when nothing newer starts (a cancel): what
                # was known before this run is still all that is known.
                _BACKGROUND.status = before
            return None
        except DnsRetryLaterError as exc:
            message = str(exc) or type(exc).__name__
            unreachable = isinstance(exc, DnsUnreachableError)
            later = policy.later
            delay = later[min(retry, len(later) - 1)] if later else None
            if delay is None:
                log.error("DNS update failed: %s", message)
                _finish("error", message, 0, unreachable=unreachable)
                return None
            log.warning("DNS update failed: %s; trying again in %g s", message, delay)
            _finish("retrying", f"{message}; next try in {delay:g} s", 0, unreachable=unreachable)
            return delay
        except Exception as exc:  # any failure must land in the status
            message = (
                str(exc)
                if isinstance(exc, DnsUpdateError)
                else f"{type(exc).__name__}: {exc}".rstrip(": ")  # say what broke, and how
            )
            log.error("DNS update failed: %s", message)
            _finish("conflict" if isinstance(exc, DnsConflictError) else "error", message, 0)
            return None
        for warning in result.warnings:
            log.warning("DNS update: %s", warning)
        for change in result.plan.changes:
            log.info("DNS update: %s", change)
        log.info("DNS update: %s", result.summary())
        message = "; ".join([result.summary(), *map(str, result.plan.conflicts)])
        state = "conflict" if result.plan.conflicts else "ok"
        _finish(state, message, len(result.plan.changes))
        return None

    def work() -> None:
        retry = 0
        while True:
            with _BACKGROUND.lock:
                delay = attempt(retry)
            if delay is None:
                return
            retry += 1
            # Outside the lock, so a newer request runs at once and ends this wait.
            with _BACKGROUND.newer:
                if _BACKGROUND.newer.wait_for(superseded, timeout=delay):
                    return

    thread = threading.Thread(target=work, name=f"revnat64-dns-update-{generation}", daemon=True)
    thread.start()
    return thread


def cancel_background_update() -> None:
    """End a background update's wait for its next try (a reload turned updates off).

    A run in progress finishes; none starts after it."""
    with _BACKGROUND.status_lock:
        _BACKGROUND.generation += 1
        _BACKGROUND.newer.notify_all()


def _finish(state: str, message: str, changes: int, unreachable: bool = False) -> None:
    now = time.time()
    with _BACKGROUND.status_lock:
        old = _BACKGROUND.status
        _BACKGROUND.status = UpdateStatus(
            state,
            message,
            now,
            changes,
            unreachable=old.unreachable + unreachable,
            last_success=now if state == "ok" else old.last_success,
        )
