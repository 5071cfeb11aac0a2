"""Property tests (hypothesis): round trips, checksums, robustness, pool safety."""

from __future__ import annotations

import ipaddress

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6, IPv6ExtHdrFragment
from scapy.packet import Raw
from tr_testlib import (
    CAM4,
    CAM6,
    CLIENT6,
    assert_checksums,
    lease,
    make_translator,
    nsp,
)

from translator import Action, DropReason, Pool4, Verdict
from translator.pool import Lease

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

clients = st.builds(
    lambda hi, lo: str(ipaddress.IPv6Address((0x20010DB8 << 96) | (hi << 64) | lo)),
    st.integers(0x10000, 0xFFFFFFFF),
    st.integers(2, 2**64 - 1),
)
targets = st.sampled_from(
    [
        (CAM6, CAM4),
        ("2001:db8:2::7", "10.0.0.7"),
        ("2001:db8:2::ff", "10.0.0.255"),
        (nsp("8.8.8.8"), "8.8.8.8"),
        (nsp("203.0.113.200"), "203.0.113.200"),
    ]
)
ports = st.integers(0, 65535)
payloads = st.binary(max_size=1100)


def _swap(raw4: bytes) -> bytes:
    """Reply as the IPv4 device would: swap addresses and ports (checksums unchanged)."""
    b = bytearray(raw4)
    b[12:16], b[16:20] = raw4[16:20], raw4[12:16]
    b[20:22], b[22:24] = raw4[22:24], raw4[20:22]
    return bytes(b)


@SETTINGS
@given(
    client=clients,
    target=targets,
    sport=ports,
    dport=ports,
    data=payloads,
    tcp=st.booleans(),
    tc=st.integers(0, 255),
)
def test_round_trip_6_4_6_keeps_payload_and_ports(client, target, sport, dport, data, tcp, tc):
    tr = make_translator(pool_limit_per_prefix=0)
    l4 = TCP(sport=sport, dport=dport, flags="PA") if tcp else UDP(sport=sport, dport=dport)
    v = tr.translate(bytes(IPv6(src=client, dst=target[0], tc=tc) / l4 / Raw(data)), 1.0)
    assert v.action == Action.FORWARD, v
    out4 = assert_checksums(v.packets[0])
    assert out4[IP].dst == target[1] and out4[IP].tos == tc
    back = tr.translate(_swap(v.packets[0]), 2.0)
    assert back.action == Action.FORWARD, back
    out6 = assert_checksums(back.packets[0])
    assert (out6[IPv6].src, out6[IPv6].dst, out6[IPv6].tc) == (target[0], client, tc)
    layer = out6[TCP] if tcp else out6[UDP]
    assert (layer.sport, layer.dport) == (dport, sport)
    assert bytes(layer.payload) == data


@SETTINGS
@given(client=clients, target=targets, ident=ports, seq=ports, data=payloads)
def test_round_trip_echo(client, target, ident, seq, data):
    tr = make_translator(pool_limit_per_prefix=0)
    v = tr.translate(
        bytes(IPv6(src=client, dst=target[0]) / ICMPv6EchoRequest(id=ident, seq=seq, data=data)),
        1.0,
    )
    out4 = assert_checksums(v.packets[0])
    assert (out4[ICMP].type, out4[ICMP].id, out4[ICMP].seq) == (8, ident, seq)
    reply = IP(src=target[1], dst=out4[IP].src) / ICMP(type=0, id=ident, seq=seq) / Raw(data)
    back = tr.translate(bytes(reply), 2.0)
    out6 = assert_checksums(back.packets[0])
    assert out6[IPv6].dst == client and out6.payload.type == 129 and out6.payload.data == data


def _reassembled_ok(packets: tuple[bytes, ...]) -> None:
    frags = sorted((IPv6(p) for p in packets), key=lambda f: f[IPv6ExtHdrFragment].offset)
    data = b"".join(bytes(f[IPv6ExtHdrFragment].payload) for f in frags)
    first = frags[0]
    whole = IPv6(
        src=first.src, dst=first.dst, nh=first[IPv6ExtHdrFragment].nh, hlim=first.hlim, tc=first.tc
    ) / Raw(data)
    assert_checksums(bytes(IPv6(bytes(whole))))


@SETTINGS
@given(
    size=st.integers(0, 3000),
    df=st.booleans(),
    tos=st.integers(0, 255),
    ttl=st.integers(0, 255),
    kind=st.sampled_from(["tcp", "udp", "udp0", "echo"]),
    lowest=st.sampled_from([1280, 1400, 1500]),
)
def test_4to6_outputs_always_have_valid_checksums(size, df, tos, ttl, kind, lowest):
    tr = make_translator(lowest_ipv6_mtu=lowest, mtu=1500)
    pool4 = lease(tr)
    l4 = {
        "tcp": TCP(sport=1, dport=2),
        "udp": UDP(sport=3, dport=4),
        "udp0": UDP(sport=3, dport=4, chksum=0),
        "echo": ICMP(type=8),
    }[kind]
    p = (
        IP(src=CAM4, dst=pool4, tos=tos, ttl=ttl, flags="DF" if df else 0)
        / l4
        / Raw(b"\xa5" * size)
    )
    v = tr.translate(bytes(p), 2.0)
    assert isinstance(v, Verdict)
    if v.action == Action.ICMP_ERROR:
        assert_checksums(v.packets[0], only=("IP", "ICMP", "IPerror"))
        assert v.reason in (DropReason.TTL_EXCEEDED, DropReason.FRAG_NEEDED)
    elif v.action == Action.FORWARD:
        assert all(len(x) <= 1500 for x in v.packets)
        if len(v.packets) == 1:
            assert_checksums(v.packets[0])
        else:
            assert not df and all(len(x) <= lowest for x in v.packets)
            _reassembled_ok(v.packets)
    else:
        assert v.reason == DropReason.FRAGMENTED_ICMP or (
            ttl <= 1 and v.reason == DropReason.TTL_EXCEEDED
        )


def _seeds() -> list[bytes]:
    tr = make_translator()
    pool4 = lease(tr)
    inner4 = IP(src=pool4, dst=CAM4) / UDP(sport=1, dport=2) / Raw(b"abc")
    inner6 = IPv6(src=CAM6, dst=CLIENT6) / TCP()
    return [
        bytes(IPv6(src=CLIENT6, dst=CAM6) / TCP() / Raw(b"x" * 20)),
        bytes(IPv6(src=CLIENT6, dst=CAM6) / UDP() / Raw(b"x" * 20)),
        bytes(IPv6(src=CLIENT6, dst=CAM6) / IPv6ExtHdrFragment(m=1) / UDP() / Raw(b"x" * 16)),
        bytes(IPv6(src=CLIENT6, dst=CAM6) / ICMPv6EchoRequest(data=b"p")),
        bytes(
            IPv6(src="2001:db8:ffff:1::1", dst=CAM6)
            / Raw(bytes([1, 4, 0, 0, 0, 0, 0, 0]) + bytes(inner6))
        ),
        bytes(IP(src=CAM4, dst=pool4) / TCP() / Raw(b"y" * 20)),
        bytes(IP(src=CAM4, dst=pool4, options=b"\x83\x07\x04\x0a\x00\x00\x01\x00") / UDP()),
        bytes(IP(src=CAM4, dst=pool4, flags="MF") / UDP() / Raw(b"y" * 16)),
        bytes(IP(src="10.0.0.1", dst=pool4) / ICMP(type=3, code=4, nexthopmtu=0) / inner4),
        bytes(
            IP(src="10.0.0.1", dst=pool4)
            / ICMP(type=11, code=0, length=32)
            / Raw(bytes(inner4) + bytes(128) + b"\x20\x00\x00\x00\x00\x08\x01\x01\x00\x00\x00\x00")
        ),
    ]


SEEDS = _seeds()


def _check_verdict(v: object) -> None:
    assert isinstance(v, Verdict)
    assert isinstance(v.action, Action) and isinstance(v.reason, DropReason)
    assert isinstance(v.packets, tuple) and all(isinstance(p, bytes) for p in v.packets)
    assert (v.action == Action.DROP) == (len(v.packets) == 0)
    assert (v.action == Action.FORWARD) == (v.reason == DropReason.NONE)
    assert isinstance(v.reason.label, str) and v.reason.label.islower()


@settings(max_examples=600, deadline=None)
@given(
    data=st.binary(max_size=300),
    head=st.sampled_from([b"", b"\x45", b"\x46", b"\x4f", b"\x60", b"\x6f"]),
)
def test_arbitrary_bytes_never_raise(data, head):
    tr = make_translator()
    lease(tr)
    _check_verdict(tr.translate(head + data, 3.0))


@settings(max_examples=800, deadline=None)
@given(
    seed=st.sampled_from(SEEDS),
    edits=st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), max_size=6),
    cut=st.integers(0, 400),
)
def test_mutated_packets_never_raise(seed, edits, cut):
    tr = make_translator(icmp_errors_per_second=0)
    lease(tr)
    b = bytearray(seed)
    for i, val in edits:
        if i < len(b):
            b[i] = val
    raw = bytes(b[: max(1, len(b) - cut % (len(b) + 1))]) if cut % 3 == 0 else bytes(b)
    v = tr.translate(raw, 3.0)
    _check_verdict(v)
    for p in v.packets:
        assert p[0] >> 4 in (4, 6)


@settings(max_examples=200, deadline=None)
@given(
    ops=st.lists(
        st.tuples(
            st.sampled_from(["alloc", "touch4", "expire", "wait"]),
            st.integers(0, 40),
            st.integers(0, 3),
        ),
        max_size=120,
    )
)
def test_pool_never_hands_out_an_address_twice(ops):
    p = Pool4("198.51.100.0/28", lease_time=50.0, limit_per_prefix=3, reserved=("198.51.100.1",))
    now = 0.0
    for op, n, pfx in ops:
        v6 = ipaddress.IPv6Address(f"2001:db8:{pfx}::{n:x}").packed
        if op == "alloc":
            r = p.allocate(v6, now)
            assert isinstance(r, (Lease, DropReason))
        elif op == "touch4":
            p.lookup4(bytes([198, 51, 100, n % 16]), now)
        elif op == "expire":
            p.expire(now)
        else:
            now += n
        rows = p.leases()
        v4s = [b for _, b, _ in rows]
        assert len(v4s) == len(set(v4s)) == p.in_use <= p.size == 13
        assert all(b not in ("198.51.100.0", "198.51.100.1", "198.51.100.15") for b in v4s)
        seen = [t for _, _, t in rows]
        assert seen == sorted(seen)  # LRU order
        for a, b, _ in rows:
            le = p.peek4(ipaddress.IPv4Address(b).packed)
            assert le is not None and str(ipaddress.IPv6Address(le.v6)) == a
        per: dict[bytes, int] = {}
        for a, _, _ in rows:
            k = ipaddress.IPv6Address(a).packed[:8]
            per[k] = per.get(k, 0) + 1
        assert max(per.values(), default=0) <= 3
