"""`revnat64 diagnose`: the probe packets, the simulation and every finding, with made-up facts.

The real kernel, firewall and daemon are in tests/integration/test_diagnose_e2e.py;
here each fault is one changed fact, so each finding is pinned to its cause.
"""

from __future__ import annotations

import copy
import dataclasses
import socket
import struct
from ipaddress import IPv6Address, IPv6Network
from typing import Any

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6

from publisher.config import Config, parse_config
from publisher.diagnose import (
    DEFAULT_CLIENT,
    FAIL,
    OK,
    WARN,
    Facts,
    ProbeError,
    RouteLookup,
    Traffic,
    build_translator,
    findings,
    packet4_reply,
    packet6,
    parse_probe,
    render,
    simulate,
    watched,
)
from publisher.dns_check import CheckResult
from publisher.firewall_nft import ForeignChain
from publisher.netlink import IPV4_FORWARD, IPV6_FORWARD, proxy_ndp_sysctl
from publisher.nlbatch import (
    NDMSG,
    NLMSG_DONE,
    NLMSG_ERROR,
    NLMSGHDR,
    RTM_NEWNEIGH,
    _attr,
    parse_neighbours,
)
from publisher.snapshot import MappingInfo, Snapshot

CLIENT = "2001:db8:1::2"
DOC: dict[str, Any] = {
    "translator": {
        "tun_device": "nat64",
        "ipv4_address": "198.51.100.1",
        "ipv6_address": "2001:db8:200::1",
        "pool4": "198.51.100.0/24",
    },
    "wan": {"interface": "wan0"},
    "lan": {"interface": "lan0"},
    "dns": {"zone": "home.example"},
    "mappings": [
        {
            "name": "cam",
            "ipv6": "2001:db8:200::50",
            "ipv4": "192.0.2.50",
            "allow": ["tcp/80", "icmp"],
            "hostname": "frontdoor",
        },
        {
            "name": "nas",
            "ipv6": "2001:db8:200::60",
            "ipv4": "192.0.2.60",
            "allow": ["tcp/443"],
            "sources": ["2001:db8:1::/64"],
            "rate_limit": "10/second",
        },
        {"name": "lab", "ipv6": "2001:db8:200::100/126", "ipv4": "192.0.2.100/30"},
    ],
}


def config(**changes: Any) -> Config:
    doc = copy.deepcopy(DOC)
    for section, values in changes.items():
        doc[section] = {**doc.get(section, {}), **values} if isinstance(values, dict) else values
    return parse_config(doc, "test.yaml")


def healthy(cfg: Config) -> Facts:
    """What a working router reports."""
    snap = Snapshot(
        mappings=[MappingInfo(m.name, str(m.ipv6), str(m.ipv4)) for m in cfg.mappings],
        packets={("cam", "6to4"): 10, ("cam", "4to6"): 10},
        pool_in_use=1,
        pool_size=253,
        leases=[(CLIENT, "198.51.100.7", 1.0)],
    )
    return Facts(
        sysctls={IPV6_FORWARD: "1", IPV4_FORWARD: "1", proxy_ndp_sysctl("wan0"): "1"},
        links={"wan0": True, "lan0": True, "nat64": True, "lo": True},
        route6=RouteLookup("nat64"),
        route4=RouteLookup("lan0"),
        neighbour="REACHABLE",
        route4_back=RouteLookup("nat64"),
        firewall_applied=True,
        status=snap,
    )


def run(
    cfg: Config, facts: Facts, target: str = "cam", service: str = "icmp", client: str = CLIENT
) -> list[tuple[str, str, str]]:
    probe = parse_probe(cfg, target, service, client)
    sim = simulate(build_translator(cfg), probe) if probe.mapping else None
    return [(f.level, f.step, f.text) for f in findings(cfg, probe, facts, sim)]


def failures(found: list[tuple[str, str, str]]) -> list[tuple[str, str]]:
    return [(step, text) for level, step, text in found if level == FAIL]


# -- the command line --------------------------------------------------------------------


def test_target_by_address_name_hostname_or_fqdn() -> None:
    cfg = config()
    for target in ("2001:db8:200::50", "cam", "frontdoor", "frontdoor.home.example"):
        probe = parse_probe(cfg, target, "tcp/80", None)
        assert probe.target == IPv6Address("2001:db8:200::50")
        assert probe.mapping is not None and probe.mapping.name == "cam"
        assert str(probe.device) == "192.0.2.50"
        assert probe.client == DEFAULT_CLIENT and not probe.client_given


def test_range_target_maps_to_the_matching_device() -> None:
    probe = parse_probe(config(), "2001:db8:200::102", "icmp", CLIENT)
    assert probe.mapping is not None and probe.mapping.name == "lab"
    assert str(probe.device) == "192.0.2.102"


@pytest.mark.parametrize(
    ("target", "service", "client", "message"),
    [
        ("camera", "icmp", None, "neither an IPv6 address nor a mapping name"),
        ("cam", "tcp", None, "write tcp/PORT, udp/PORT or icmp"),
        ("cam", "tcp/0", None, "write tcp/PORT"),
        ("cam", "sctp/80", None, "write tcp/PORT"),
        ("cam", "icmp", "192.0.2.9", "--from '192.0.2.9'"),
    ],
)
def test_bad_command_lines_say_what_is_wrong(
    target: str, service: str, client: str | None, message: str
) -> None:
    with pytest.raises(ProbeError, match=message):
        parse_probe(config(), target, service, client)


# -- the synthetic packets are real packets ------------------------------------------------


@pytest.mark.parametrize("service", ["tcp/80", "udp/53", "icmp"])
def test_probe_packets_carry_valid_checksums(service: str) -> None:
    probe = parse_probe(config(), "cam", service, CLIENT)
    raw = packet6(probe.client, probe.target, probe.service)
    pkt = IPv6(raw)
    layer = pkt.payload
    name = "cksum" if service == "icmp" else "chksum"  # scapy's ICMPv6 spells it so
    sent = getattr(layer, name)
    delattr(layer, name)
    assert getattr(IPv6(bytes(pkt)).payload, name) == sent
    assert pkt.src == CLIENT and pkt.dst == "2001:db8:200::50" and pkt.hlim == 64
    if service == "icmp":
        assert isinstance(layer, ICMPv6EchoRequest)
    else:
        assert layer.dport == int(service.split("/")[1])


@pytest.mark.parametrize(("service", "layer"), [("tcp/80", TCP), ("udp/53", UDP), ("icmp", ICMP)])
def test_device_answers_are_valid_ipv4(service: str, layer: type) -> None:
    request = bytes(
        IP(src="198.51.100.7", dst="192.0.2.50", ttl=63)
        / {
            "tcp/80": TCP(sport=40000, dport=80, flags="S"),
            "udp/53": UDP(sport=40000, dport=53),
            "icmp": ICMP(type=8, id=7, seq=1),
        }[service]
    )
    raw = packet4_reply(request)
    pkt = IP(raw)
    assert (pkt.src, pkt.dst) == ("192.0.2.50", "198.51.100.7")
    answer = pkt[layer]
    ip_sum, l4_sum = pkt.chksum, answer.chksum
    del pkt.chksum
    del pkt[layer].chksum
    again = IP(bytes(pkt))
    assert again.chksum == ip_sum and again[layer].chksum == l4_sum
    if layer is TCP:
        assert answer.flags == "SA" and (answer.sport, answer.dport) == (80, 40000)
    elif layer is UDP:
        assert (answer.sport, answer.dport) == (53, 40000)
    else:
        assert answer.type == 0


# -- the simulation runs the real translator ---------------------------------------------


def test_simulation_translates_both_ways() -> None:
    cfg = config()
    sim = simulate(build_translator(cfg), parse_probe(cfg, "cam", "tcp/80", CLIENT))
    assert sim.forward == "" and sim.reply == ""
    assert sim.source4.startswith("198.51.100.") and sim.destination4 == "192.0.2.50"
    assert sim.ttl == 63
    assert (sim.reply_source6, sim.reply_destination6) == ("2001:db8:200::50", CLIENT)


def test_simulation_says_why_the_translator_refuses() -> None:
    cfg = config()
    # A client that is itself a mapped address: the translator never takes that source.
    sim = simulate(build_translator(cfg), parse_probe(cfg, "cam", "icmp", "2001:db8:200::60"))
    assert sim.forward and "dropped" in sim.forward
    found = run(cfg, healthy(cfg), client="2001:db8:200::60")
    assert failures(found)[0][0] == "translate"


# -- findings ------------------------------------------------------------------------------


def test_a_healthy_router_has_no_failure() -> None:
    cfg = config()
    found = run(cfg, healthy(cfg), service="tcp/80")
    assert failures(found) == []
    steps = [step for level, step, _ in found if level == OK]
    assert steps[:4] == ["mapping", "daemon", "forwarding", "route6"]
    assert {"firewall", "translate", "route4", "neighbour", "return"} <= set(steps)
    assert any("198.51.100.7 (its pool4 lease)" in text for _, _, text in found)


def change(facts: Facts, **kw: Any) -> Facts:
    return dataclasses.replace(facts, **kw)


@pytest.mark.parametrize(
    ("fault", "step", "words"),
    [
        (lambda f: change(f, status=None, status_error="no socket"), "daemon", "not reachable"),
        (
            lambda f: change(f, sysctls={**f.sysctls, IPV6_FORWARD: "0"}),
            "forwarding",
            "net.ipv6.conf.all.forwarding is 0",
        ),
        (lambda f: change(f, links={**f.links, "lan0": False}), "interfaces", "lan0 is down"),
        (
            lambda f: change(f, route6=RouteLookup(error="Network is unreachable")),
            "route6",
            "no route (Network is unreachable)",
        ),
        (lambda f: change(f, route6=RouteLookup("wan0")), "route6", "routed out of wan0"),
        (lambda f: change(f, firewall_applied=False), "firewall", "not in the kernel"),
        (lambda f: change(f, route4=RouteLookup("nat64")), "route4", "a loop"),
        (
            lambda f: change(f, route4=RouteLookup(None, "unreachable")),
            "route4",
            "of type unreachable",
        ),
        (lambda f: change(f, neighbour="FAILED"), "neighbour", "does not answer ARP"),
        (lambda f: change(f, route4_back=RouteLookup("lan0")), "return", "routed out of lan0"),
    ],
)
def test_each_fault_is_named_at_its_step(fault: Any, step: str, words: str) -> None:
    cfg = config()
    found = run(cfg, fault(healthy(cfg)))
    failed = failures(found)
    assert failed and failed[0][0] == step, found
    assert words in failed[0][1]


def test_the_daemon_must_serve_the_mapping() -> None:
    cfg = config()
    facts = healthy(cfg)
    assert facts.status is not None
    facts.status.mappings = facts.status.mappings[1:]
    failed = failures(run(cfg, facts))
    assert failed[0][0] == "daemon" and "reload" in failed[0][1]


def test_firewall_policy_from_the_allow_list_and_sources() -> None:
    cfg = config()
    facts = healthy(cfg)
    failed = failures(run(cfg, facts, service="tcp/22"))
    assert failed == [("firewall", "tcp/22 is not in cam's allow list (tcp/80, icmp)")]
    failed = failures(run(cfg, facts, target="nas", service="tcp/443", client="2001:db8:9::1"))
    assert failed[0][0] == "firewall" and "not in nas's sources (2001:db8:1::/64)" in failed[0][1]
    found = run(cfg, facts, target="nas", service="tcp/443")
    assert failures(found) == []
    assert any("within rate_limit 10/second" in text for _, _, text in found)
    # A mapping without an allow list exposes ping only.
    assert failures(run(cfg, facts, target="lab", service="icmp")) == []
    assert failures(run(cfg, facts, target="lab", service="udp/53"))[0][0] == "firewall"


def test_a_disabled_firewall_is_a_warning() -> None:
    cfg = config(firewall={"enabled": False})
    found = run(cfg, change(healthy(cfg), firewall_applied=None), service="tcp/22")
    assert failures(found) == []
    assert (WARN, "firewall") in {(level, step) for level, step, _ in found}


def test_proxy_ndp_needed_when_the_address_is_on_link() -> None:
    cfg = config()
    onlink = [(IPv6Network("2001:db8:200::/64"), "wan0")]
    facts = change(healthy(cfg), onlink=onlink, proxies={("2001:db8:200::50", "wan0")})
    assert failures(run(cfg, facts)) == []
    failed = failures(run(cfg, change(facts, proxies=set())))
    assert failed[0][0] == "proxy-ndp" and "the proxy entry is missing" in failed[0][1]
    no_sysctl = change(facts, sysctls={**facts.sysctls, proxy_ndp_sysctl("wan0"): "0"})
    failed = failures(run(cfg, no_sysctl))
    assert failed[0][0] == "proxy-ndp" and "proxy_ndp=1 on wan0" in failed[0][1]


def test_one_way_traffic_points_at_the_device_gateway() -> None:
    cfg = config()
    facts = healthy(cfg)
    assert facts.status is not None
    facts.status.packets = {("cam", "6to4"): 5}
    found = run(cfg, facts)
    warned = [text for level, step, text in found if level == WARN and step == "counters"]
    assert warned and "default gateway" in warned[0]


def test_unpublished_targets() -> None:
    cfg = config(translator={"publish_prefix": "2001:db8:200::/64"})
    found = run(cfg, healthy(cfg), target="2001:db8:200::99")
    assert found[0][0] == FAIL and "address unreachable" in found[0][2]
    assert len(found) == 1
    found = run(config(), healthy(cfg), target="2001:db8:77::1")
    assert found[0][0] == FAIL and "not a published address" in found[0][2]


def test_render_says_where_it_stops() -> None:
    cfg = config()
    probe = parse_probe(cfg, "cam", "tcp/22", None)
    sim = simulate(build_translator(cfg), probe)
    text = render(probe, findings(cfg, probe, healthy(cfg), sim))
    assert text.startswith("revnat64 diagnose: tcp/22 from 2001:db8:ffff::1 to 2001:db8:200::50")
    assert "--from names a real one" in text.splitlines()[0]
    assert (
        text.splitlines()[-1]
        == "stops at firewall: tcp/22 is not in cam's allow list (tcp/80, icmp)"
    )
    ok = render(probe, findings(cfg, parse_probe(cfg, "cam", "tcp/80", CLIENT), healthy(cfg), sim))
    assert ok.splitlines()[-1] == "nothing on this router stops it"


# -- the proxy-entry dump parser ------------------------------------------------------------


def _neigh(address: str, ifindex: int, seq: int = 1) -> bytes:
    body = NDMSG.pack(socket.AF_INET6, ifindex, 0x80, 0x08, 0) + _attr(
        1, socket.inet_pton(socket.AF_INET6, address)
    )
    return NLMSGHDR.pack(NLMSGHDR.size + len(body), RTM_NEWNEIGH, 2, seq, 0) + body


def test_parse_neighbours_reads_entries_until_done() -> None:
    data = _neigh("2001:db8:1::50", 2) + _neigh("2001:db8:1::51", 3)
    assert parse_neighbours(data) == ([("2001:db8:1::50", 2), ("2001:db8:1::51", 3)], False)
    done = NLMSGHDR.pack(NLMSGHDR.size + 4, NLMSG_DONE, 2, 1, 0) + struct.pack("=i", 0)
    assert parse_neighbours(_neigh("2001:db8:1::52", 4) + done) == (
        [("2001:db8:1::52", 4)],
        True,
    )
    # Truncated or garbage input ends the parse, never raises anything but OSError.
    assert parse_neighbours(data[:-3]) == ([("2001:db8:1::50", 2)], False)
    assert parse_neighbours(b"\xff" * 7) == ([], False)


def test_parse_neighbours_raises_the_kernel_refusal() -> None:
    error = NLMSGHDR.pack(NLMSGHDR.size + 4, NLMSG_ERROR, 0, 1, 0) + struct.pack("=i", -1)
    with pytest.raises(OSError) as info:
        parse_neighbours(error)
    assert info.value.errno == 1


# -- --watch: what the counters say about the packets sent meanwhile --------------------


def snapshot(to_device: int, back: int, fw: int, **dropped: int) -> Snapshot:
    return Snapshot(
        packets={("cam", "6to4"): to_device, ("cam", "4to6"): back, ("nas", "6to4"): 99},
        firewall_drops={"cam": (fw, fw * 80)},
        dropped=dropped,
    )


@pytest.mark.parametrize(
    ("after", "level", "words"),
    [
        (snapshot(13, 12, 2), OK, "cam: 3 to the device, 2 back, 1 dropped by the firewall"),
        (snapshot(13, 10, 0), FAIL, "3 packet(s) went to cam and nothing came back"),
        (snapshot(10, 10, 4), FAIL, "the firewall dropped 3 packet(s) to cam and let none"),
        (snapshot(10, 10, 1), WARN, "no packet to cam reached the translator or the firewall"),
    ],
)
def test_watch_concludes_from_the_counter_deltas(after: Snapshot, level: str, words: str) -> None:
    cam = config().mappings[0]
    delta = Traffic.of(after, "cam").since(Traffic.of(snapshot(10, 10, 1), "cam"))
    found = watched(cam, delta, 5.0)
    assert found[-1].level == level and words in found[-1].text, found


def test_watch_lists_new_translator_drops_only() -> None:
    cam = config().mappings[0]
    before = Traffic.of(snapshot(0, 0, 0, multicast=4, no_mapping=1), "cam")
    after = Traffic.of(snapshot(0, 0, 0, multicast=4, no_mapping=3, hop_limit_exceeded=1), "cam")
    found = watched(cam, after.since(before), 5.0)
    assert (
        found[0].text == "the translator dropped (all mappings): hop_limit_exceeded 1, no_mapping 2"
    )


def test_other_tables_dropping_forwarded_traffic_are_warned_about() -> None:
    cfg = config()
    chains = [
        ForeignChain("inet", "fw4", "forward", "drop", names_tun=False),
        ForeignChain("ip", "filter", "FORWARD", "drop", names_tun=True),
        ForeignChain("ip6", "mangle", "FORWARD", "accept", names_tun=False),
    ]
    probe = parse_probe(cfg, "cam", "icmp", CLIENT)
    sim = simulate(build_translator(cfg), probe)
    found = findings(cfg, probe, change(healthy(cfg), foreign_chains=chains), sim)
    warned = [f.text for f in found if f.level == WARN]
    assert len(warned) == 1 and warned[0].startswith("table inet fw4 chain forward drops")
    assert "never names nat64" in warned[0]
    last = render(probe, found).splitlines()[-1]
    assert last == "nothing on this router certainly stops it; see the 1 warning(s)"


def test_dns_step_says_whether_the_name_leads_to_the_target() -> None:
    cfg = config()
    name = "frontdoor.home.example."
    target = ("2001:db8:200::50",)
    for result, level, words in [
        (
            CheckResult("cam", name, "AAAA", "ok", target, target),
            OK,
            "clients that use the name find it",
        ),
        (
            CheckResult("cam", name, "AAAA", "stale", target, ("2001:db8:aa::50",)),
            WARN,
            "AAAA is 2001:db8:aa::50; expected 2001:db8:200::50: clients that use the name do not",
        ),
        (CheckResult("cam", name, "AAAA", "missing", target, ()), WARN, "has no AAAA record"),
        (CheckResult("cam", name, "AAAA", "error", target, (), "timed out"), "info", "timed out"),
    ]:
        found = run(cfg, change(healthy(cfg), dns=result))
        step = [(lvl, text) for lvl, st, text in found if st == "dns"]
        assert len(step) == 1 and step[0][0] == level and words in step[0][1], step
    assert not [f for f in run(cfg, healthy(cfg)) if f[1] == "dns"]  # no name: no step


def test_network_repairs_and_problems_are_reported() -> None:
    cfg = config()
    facts = healthy(cfg)
    assert facts.status is not None
    facts.status.network_restored = 2
    found = run(cfg, facts)
    assert any("put back 2 route(s), proxy entries or sysctls" in text for _, _, text in found)
    assert failures(found) == []
    facts.status.network_problem = "add proxy ndp 2001:db8:1::50 dev ppp0: No such device"
    assert failures(run(cfg, facts)) == [
        (
            "counters",
            "the daemon cannot put back: add proxy ndp 2001:db8:1::50 dev ppp0: No such device",
        )
    ]


def test_options_may_come_between_the_positionals() -> None:
    from publisher.cli import build_parser

    args = build_parser().parse_args(["diagnose", "cam", "--from", CLIENT, "tcp/80", "--json"])
    assert (args.target, args.service, args.source, args.json) == ("cam", "tcp/80", CLIENT, True)
