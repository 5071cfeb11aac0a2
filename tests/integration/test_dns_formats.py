"""The dnsmasq and unbound outputs, loaded into the real servers and queried."""

from __future__ import annotations

from ipaddress import IPv6Address

import dns.message
import dns.query
import dns.rdatatype
import pytest

from publisher.config import parse_config_text
from publisher.dns_records import RecordSet, build_records, render
from tests.dnsservers import config_text, running_dnsmasq, running_unbound


@pytest.fixture
def records() -> RecordSet:
    return build_records(parse_config_text(config_text(), "c.yaml"), ptr=True)


def ask(port: int, name: str, rtype: str) -> set[str]:
    response = dns.query.udp(dns.message.make_query(name, rtype), "127.0.0.1", 5, port=port)
    out: set[str] = set()
    for rrset in response.answer:
        if rrset.rdtype == dns.rdatatype.from_text(rtype) and rrset.name.to_text() == name:
            out |= {rd.to_text() for rd in rrset}
    return out


def assert_serves(port: int, records: RecordSet) -> None:
    for rec in records.of_type("AAAA"):
        got = {IPv6Address(a) for a in ask(port, rec.name, "AAAA")}
        assert got == {IPv6Address(rec.value)}, rec.name
    for rec in records.of_type("PTR"):
        assert ask(port, rec.name, "PTR") == {rec.value}, rec.name


def test_dnsmasq_serves_the_host_records(records: RecordSet) -> None:
    lines = render(records, "dnsmasq").splitlines()
    with running_dnsmasq(lines) as port:
        assert_serves(port, records)  # PTRs too: dnsmasq derives them from host-record
        # TTL from the config reaches clients.
        response = dns.query.udp(
            dns.message.make_query(records.records[0].name, "AAAA"), "127.0.0.1", 5, port=port
        )
        assert response.answer[0].ttl == records.ttl


def test_unbound_serves_the_local_data(records: RecordSet) -> None:
    with running_unbound(render(records, "unbound"), records.records[0].name) as port:
        assert_serves(port, records)
