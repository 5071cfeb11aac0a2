"""The DNS records a config publishes, and the text formats they are printed in.

This module is pure: a :class:`~publisher.config.Config` goes in, a
:class:`RecordSet` comes out, and each renderer turns a RecordSet into the
text one kind of DNS server reads.  Nothing here opens a socket or a file, so
the same records feed the printed formats, the RFC 2136 update
(:mod:`publisher.dns_update`) and the resolver check (:mod:`publisher.dns_check`).

Names.  A single-address mapping is published as ``<hostname>.<zone>``, with
``hostname`` defaulting to the mapping's ``name``.

Range mappings (RFC 7757: ``2001:db8:200:1::/121 <-> 192.0.2.128/25``) get one
name per address, ``<hostname>-<n>.<zone>``, where ``n`` is the last octet of
the device's IPv4 address.  A home user knows a lab device by the IPv4 address
its DHCP reservation gives it, so ``lab-135`` is the device at ``192.0.2.135``.
To keep the last octet unique and the zone a sensible size, ranges wider than
``MAX_RANGE_RECORDS`` addresses (an IPv4 /24) get no records and a warning.
Addresses that are the network or broadcast address of one of
``lan.ipv4_networks`` are not devices and get no name.

PTR records (``--ptr`` or ``dns.ptr``) map each published IPv6 address back to
its name in ``ip6.arpa`` (RFC 3596 section 2.5).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address

import dns.name
import dns.reversename

from publisher.config import Config, Mapping, Problem

__all__ = [
    "FORMATS",
    "MAX_RANGE_RECORDS",
    "OWNERSHIP_LABEL",
    "DnsRecord",
    "RecordSet",
    "build_records",
    "ownership_name",
    "render",
]

# Ranges wider than an IPv4 /24 would need names that the last octet cannot tell apart.
MAX_RANGE_RECORDS = 256
# The TXT RRset that lists what revnat64 manages in a zone (see publisher.dns_update).
OWNERSHIP_LABEL = "_revnat64"
MAX_LABEL = 63  # RFC 1035 section 2.3.4


@dataclass(frozen=True)
class DnsRecord:
    """One resource record: ``name ttl IN rtype value``, with absolute names."""

    name: str  # absolute, trailing dot
    rtype: str  # "AAAA" | "PTR"
    value: str  # an IPv6 address (AAAA) or an absolute name (PTR)
    ttl: int
    mapping: str  # the mapping it comes from, for messages


@dataclass(frozen=True)
class RecordSet:
    """Everything a config publishes in DNS, plus what it chose not to publish and why."""

    zone: str
    ttl: int
    records: tuple[DnsRecord, ...]
    warnings: tuple[str, ...] = ()
    instance: str = ""  # dns.instance: whose names these are in the ownership TXT

    def of_type(self, rtype: str) -> tuple[DnsRecord, ...]:
        return tuple(r for r in self.records if r.rtype == rtype)


def ownership_name(zone: str) -> str:
    """The name of the ownership TXT RRset in ``zone``: ``_revnat64.<zone>``."""
    return f"{OWNERSHIP_LABEL}.{zone.rstrip('.')}."


def ownership_string(rtype: str, name: str, instance: str = "") -> str:
    """One ownership TXT string: ``"AAAA nas.cam.example.org."``, plus
    ``" instance=router2"`` for a named instance.

    The unnamed instance keeps the original two-word form, so zones written
    before instances existed still read as its own.
    """
    return f"{rtype} {name}" + (f" instance={instance}" if instance else "")


def _host_addresses(cfg: Config, m: Mapping) -> list[tuple[str, IPv6Address, IPv4Address]]:
    """(hostname, IPv6 address, IPv4 address) for each device a mapping publishes."""
    host = m.hostname or m.name
    if not m.is_range:
        return [(host, m.ipv6.network_address, m.ipv4.network_address)]
    not_devices = set()
    for lan in cfg.lan.ipv4_networks:
        if lan.prefixlen < 31:
            not_devices |= {lan.network_address, lan.broadcast_address}
    first, _, rest = host.partition(".")
    out = []
    v6_base = int(m.ipv6.network_address)
    for offset, v4 in enumerate(m.ipv4):
        if v4 in not_devices:
            continue
        # RFC 7757 section 3: the suffix carries over unchanged between the two prefixes.
        label = f"{first}-{int(v4) & 0xFF}"
        out.append((f"{label}.{rest}" if rest else label, IPv6Address(v6_base + offset), v4))
    return out


def build_records(cfg: Config, *, ptr: bool = False) -> RecordSet:
    """Every AAAA record (and PTR record when ``ptr``) that ``cfg`` publishes.

    Mappings that cannot be named are left out with a warning rather than
    failing the whole set, so one odd range does not stop the others updating.
    """
    zone = cfg.dns.zone.rstrip(".")
    zone_abs = f"{zone}." if zone else "."
    ttl = cfg.dns.ttl
    records: list[DnsRecord] = []
    warnings: list[str] = []
    for i, m in enumerate(cfg.mappings):
        where = f"{cfg.path}: mappings[{i}] ({m.name})"
        if m.is_range and m.ipv4.num_addresses > MAX_RANGE_RECORDS:
            warnings.append(
                f"{where}: range {m.ipv4} has {m.ipv4.num_addresses} addresses; "
                f"DNS names are published only for ranges of up to {MAX_RANGE_RECORDS} "
                "(an IPv4 /24), so this mapping gets none"
            )
            continue
        for host, v6, v4 in _host_addresses(cfg, m):
            fqdn = f"{host}.{zone_abs}" if zone else f"{host}."
            if len(host.split(".")[0]) > MAX_LABEL:
                warnings.append(
                    f"{where}: name {fqdn} for {v4} has a label longer than "
                    f"{MAX_LABEL} characters; skipped (choose a shorter hostname)"
                )
                continue
            try:
                dns.name.from_text(fqdn)
            except dns.name.NameTooLong:
                warnings.append(
                    f"{where}: name {fqdn} is longer than 255 octets; skipped "
                    "(choose a shorter hostname or zone)"
                )
                continue
            records.append(DnsRecord(fqdn, "AAAA", str(v6), ttl, m.name))
            if ptr:
                rev = dns.reversename.from_address(str(v6)).to_text()
                records.append(DnsRecord(rev, "PTR", fqdn, ttl, m.name))
    return RecordSet(zone_abs, ttl, tuple(records), tuple(warnings), cfg.dns.instance)


def name_collisions(cfg: Config) -> list[Problem]:
    """Names two mappings would both publish (a range's ``lab-135`` against a
    mapping called ``lab-135``, say): the AAAA sets would merge into one name."""
    owners: dict[str, tuple[int, str]] = {}
    problems = []
    index = {m.name: i for i, m in enumerate(cfg.mappings)}
    for record in build_records(cfg).records:
        if record.rtype != "AAAA":
            continue
        i = index[record.mapping]
        first = owners.setdefault(record.name.lower(), (i, record.mapping))
        if first[0] != i:
            problems.append(
                Problem(
                    cfg.path,
                    f"mappings[{i}].hostname",
                    f"DNS name {record.name} of {record.mapping!r} is also published by "
                    f"mappings[{first[0]}] ({first[1]!r}); choose another hostname",
                )
            )
    return problems


# --------------------------------------------------------------------------
# Renderers: RecordSet -> text.  Each output ends with a newline.

HEADER = "generated by revnat64 dns --format {fmt}; edit the revnat64 config, not this"


def _render_zone(rs: RecordSet, server: str | None) -> str:
    lines = [f"; {HEADER.format(fmt='zone')}", f"; AAAA records for zone {rs.zone}"]
    lines += [f"{r.name}\t{r.ttl}\tIN\t{r.rtype}\t{r.value}" for r in rs.of_type("AAAA")]
    ptrs = rs.of_type("PTR")
    if ptrs:
        lines.append("; PTR records: these belong in the ip6.arpa zone that covers the addresses")
        lines += [f"{r.name}\t{r.ttl}\tIN\tPTR\t{r.value}" for r in ptrs]
    return "\n".join(lines) + "\n"


def _render_dnsmasq(rs: RecordSet, server: str | None) -> str:
    lines = [
        f"# {HEADER.format(fmt='dnsmasq')}",
        "# host-record also answers the PTR query for each address (dnsmasq does that itself)",
    ]
    lines += [f"host-record={r.name.rstrip('.')},{r.value},{r.ttl}" for r in rs.of_type("AAAA")]
    return "\n".join(lines) + "\n"


def _render_unbound(rs: RecordSet, server: str | None) -> str:
    lines = [f"# {HEADER.format(fmt='unbound')}", "server:"]
    lines += [f'    local-data: "{r.name} {r.ttl} IN AAAA {r.value}"' for r in rs.of_type("AAAA")]
    ptr_names = {r.value for r in rs.of_type("PTR")}
    # local-data-ptr is keyed by address, so derive it from the AAAA records.
    lines += [
        f'    local-data-ptr: "{r.value} {r.ttl} {r.name}"'
        for r in rs.of_type("AAAA")
        if r.name in ptr_names
    ]
    return "\n".join(lines) + "\n"


def _render_hosts(rs: RecordSet, server: str | None) -> str:
    lines = [f"# {HEADER.format(fmt='hosts')}"]
    zone_suffix = "." + rs.zone.rstrip(".") if rs.zone != "." else ""
    for r in rs.of_type("AAAA"):
        fqdn = r.name.rstrip(".")
        short = fqdn[: -len(zone_suffix)] if zone_suffix and fqdn.endswith(zone_suffix) else ""
        lines.append(f"{r.value}\t{fqdn}" + (f" {short}" if short else ""))
    return "\n".join(lines) + "\n"


def _nsupdate_server_line(server: str | None) -> list[str]:
    if not server:
        return []
    from publisher.config import split_hostport

    host, port = split_hostport(server)
    return [f"server {host} {port}"]


def _render_nsupdate(rs: RecordSet, server: str | None) -> str:
    """A script for ``nsupdate -k KEYFILE`` that does what ``dns --update`` does for these names.

    It replaces the AAAA (and PTR) RRsets of every published name and lists the
    names in the ownership TXT RRset, so a later ``dns --update`` may remove
    them when their mapping goes.  It cannot know which names an earlier config
    published, so it never deletes a name; ``dns --update`` does that.
    """
    owner = ownership_name(rs.zone)
    lines = [f"; {HEADER.format(fmt='nsupdate')}", "; run: nsupdate -k /etc/revnat64/tsig.key FILE"]
    ptrs = rs.of_type("PTR")
    if ptrs:
        # These come first, with no zone statement (nsupdate cannot clear one):
        # nsupdate asks the server for the SOA of each name and so finds
        # whichever ip6.arpa zone holds it.
        lines.append("; PTR records: one message each, sent to the reverse zone that holds it")
        for r in ptrs:
            lines += _nsupdate_server_line(server)
            lines.append(f"update delete {r.name} PTR")
            lines.append(f"update add {r.name} {r.ttl} PTR {r.value}")
            lines.append("send")
    lines.append(f"; AAAA records in {rs.zone}, and the names revnat64 manages there")
    lines += _nsupdate_server_line(server)
    lines.append(f"zone {rs.zone}")
    for r in (*rs.of_type("AAAA"), *ptrs):
        text = ownership_string(r.rtype, r.name, rs.instance)
        lines.append(f'update add {owner} {rs.ttl} TXT "{text}"')
    for r in rs.of_type("AAAA"):
        lines.append(f"update delete {r.name} AAAA")
        lines.append(f"update add {r.name} {r.ttl} AAAA {r.value}")
    lines.append("send")
    return "\n".join(lines) + "\n"


def _render_json(rs: RecordSet, server: str | None) -> str:
    doc = {
        "zone": rs.zone,
        "ttl": rs.ttl,
        "records": [
            {"name": r.name, "type": r.rtype, "value": r.value, "ttl": r.ttl, "mapping": r.mapping}
            for r in rs.records
        ],
        "warnings": list(rs.warnings),
    }
    return json.dumps(doc, indent=2) + "\n"


FORMATS: dict[str, Callable[[RecordSet, str | None], str]] = {
    "zone": _render_zone,
    "dnsmasq": _render_dnsmasq,
    "unbound": _render_unbound,
    "hosts": _render_hosts,
    "nsupdate": _render_nsupdate,
    "json": _render_json,
}


def render(rs: RecordSet, fmt: str, server: str | None = None) -> str:
    """The records in one of :data:`FORMATS`; ``server`` goes into the nsupdate script."""
    try:
        renderer = FORMATS[fmt]
    except KeyError:
        raise ValueError(
            f"unknown DNS output format {fmt!r}; use one of {', '.join(FORMATS)}"
        ) from None
    return renderer(rs, server)
