"""Check that DNS answers what the config publishes, through a real resolver.

``revnat64 dns --check`` asks the resolver a client would ask (``dns.resolver``
from the config, or the system's from /etc/resolv.conf), not the primary
server, because the question is whether clients find the device.  Each
expected RRset is one of:

- ``ok``: the answer holds exactly the expected values;
- ``missing``: no such name, or no record of that type;
- ``stale``: different values (what DNS has and what was expected are shown);
- ``error``: the resolver failed (timeout, SERVFAIL), so nothing is known.

:func:`classify` is pure; :func:`check_records` does the lookups.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from ipaddress import IPv6Address

import dns.exception
import dns.resolver

from publisher.config import is_ip_host, split_hostport
from publisher.dns_records import DnsRecord, RecordSet

__all__ = ["CheckResult", "check_records", "classify", "format_report", "make_resolver"]

LOOKUP_LIFETIME = 10.0


@dataclass(frozen=True)
class CheckResult:
    """The verdict for one expected RRset (one name and type)."""

    mapping: str
    name: str
    rtype: str
    state: str  # "ok" | "missing" | "stale" | "error"
    expected: tuple[str, ...]
    found: tuple[str, ...]
    detail: str = ""

    def __str__(self) -> str:
        want = ", ".join(self.expected)
        if self.state == "ok":
            return f"{self.name} {self.rtype} {want}"
        if self.state == "missing":
            return f"{self.name} has no {self.rtype} record; expected {want}"
        if self.state == "stale":
            return f"{self.name} {self.rtype} is {', '.join(self.found)}; expected {want}"
        return f"{self.name} {self.rtype}: lookup failed: {self.detail}"


def _normalise(rtype: str, value: str) -> str:
    return str(IPv6Address(value)) if rtype == "AAAA" else value.lower()


def classify(
    mapping: str, name: str, rtype: str, expected: Iterable[str], found: Iterable[str] | None
) -> CheckResult:
    """Compare what DNS answered (None: no such RRset) with what the config expects."""
    want = tuple(sorted({_normalise(rtype, v) for v in expected}))
    if found is None:
        return CheckResult(mapping, name, rtype, "missing", want, ())
    have = tuple(sorted({_normalise(rtype, v) for v in found}))
    if not have:
        return CheckResult(mapping, name, rtype, "missing", want, ())
    state = "ok" if have == want else "stale"
    return CheckResult(mapping, name, rtype, state, want, have)


def make_resolver(resolver: str | None) -> dns.resolver.Resolver:
    """The configured ``host:port`` resolver, or the system's."""
    if resolver is None:
        res = dns.resolver.Resolver()
    else:
        if not is_ip_host(resolver):
            raise OSError(f"dns.resolver: {resolver} names no IP address (no names here)")
        host, port = split_hostport(resolver)
        res = dns.resolver.Resolver(configure=False)
        res.nameservers = [host.strip("[]")]
        res.port = port
    res.lifetime = LOOKUP_LIFETIME
    return res


Lookup = Callable[[str, str], "list[str] | None"]


def resolver_lookup(res: dns.resolver.Resolver) -> Lookup:
    """A lookup function: values for (name, rtype), None when the name or type is absent."""

    def lookup(name: str, rtype: str) -> list[str] | None:
        try:
            answer = res.resolve(name, rtype, raise_on_no_answer=False, search=False)
        except dns.resolver.NXDOMAIN:
            return None
        if answer.rrset is None:
            return None
        return [rd.to_text() for rd in answer.rrset]

    return lookup


def check_records(records: RecordSet, lookup: Lookup) -> list[CheckResult]:
    """Look up every expected RRset in ``records`` and classify the answer."""
    groups: dict[tuple[str, str], list[DnsRecord]] = {}
    for r in records.records:
        groups.setdefault((r.rtype, r.name), []).append(r)
    out = []
    for (rtype, name), recs in groups.items():
        expected = [r.value for r in recs]
        try:
            found = lookup(name, rtype)
        except dns.exception.DNSException as exc:
            detail = str(exc) or type(exc).__name__
            want = tuple(sorted(_normalise(rtype, v) for v in expected))
            out.append(CheckResult(recs[0].mapping, name, rtype, "error", want, (), detail))
            continue
        out.append(classify(recs[0].mapping, name, rtype, expected, found))
    return out


def format_report(results: list[CheckResult]) -> list[str]:
    """One line per mapping when all is well, one line per problem otherwise."""
    by_mapping: dict[str, list[CheckResult]] = {}
    for res in results:
        by_mapping.setdefault(res.mapping, []).append(res)
    lines = []
    for mapping, items in by_mapping.items():
        bad = [r for r in items if r.state != "ok"]
        if not bad:
            what = str(items[0]) if len(items) == 1 else f"{len(items)} records"
            lines.append(f"{mapping}: ok: {what}")
        for r in bad:
            lines.append(f"{mapping}: {r.state}: {r}")
    return lines
