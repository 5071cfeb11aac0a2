"""Shared helpers and scapy-based checksum checks for the translator tests."""

from __future__ import annotations

import ipaddress
from typing import Any

from scapy.layers.inet import IP
from scapy.layers.inet6 import IPv6
from scapy.packet import Packet

from translator import Action, Pool4, Tables, Translator, TranslatorSettings, Verdict

OWN4 = "198.51.100.1"
OWN6 = "2001:db8:200::1"
RFC6791 = "203.0.113.8"
POOL = "198.51.100.0/24"
PREFIX = "64:ff9b:1::/96"  # RFC 8215 local-use NSP
CAM6 = "2001:db8:200::50"  # published webcam
CAM4 = "192.0.2.50"
RANGE6 = "2001:db8:2::"  # 2001:db8:2::/120 <-> 10.0.0.0/24
RANGE4 = "10.0.0."
CLIENT6 = "2001:db8:ffff::1234"
EAM: list[tuple[str, str]] = [(f"{CAM6}/128", f"{CAM4}/32"), ("2001:db8:2::/120", "10.0.0.0/24")]


def nsp(v4: str) -> str:
    """The IPv6 form of ``v4`` under PREFIX."""
    return str(
        ipaddress.IPv6Address(
            int(ipaddress.IPv6Address("64:ff9b:1::")) | int(ipaddress.IPv4Address(v4))
        )
    )


def make_translator(**overrides: Any) -> Translator:
    pool_kw = {k[5:]: overrides.pop(k) for k in list(overrides) if k.startswith("pool_")}
    eam = overrides.pop("eam", EAM)
    prefix = overrides.pop("prefix", PREFIX)
    settings = dict(
        ipv4_address=OWN4,
        ipv6_address=OWN6,
        rfc6791_pool4=(f"{RFC6791}/32",),
        icmp_errors_per_second=0,
    )
    settings.update(overrides)
    pool_args: dict[str, Any] = dict(
        network=POOL, lease_time=7200.0, limit_per_prefix=16, reserved=(OWN4,)
    )
    pool_args.update(pool_kw)
    return Translator(
        TranslatorSettings(**settings),
        Tables.build(eam=eam, prefix=prefix),
        Pool4(**pool_args),
    )


def _checksum_layers(pkt: Packet) -> list[Packet]:
    out = []
    layer: Packet | None = pkt
    while layer is not None and layer.__class__.__name__ not in ("Raw", "Padding", "NoPayload"):
        out.append(layer)
        layer = layer.payload if layer.payload else None
    return out


def parse(raw: bytes) -> Packet:
    return IP(raw) if raw[0] >> 4 == 4 else IPv6(raw)


def assert_checksums(raw: bytes, l4: bool = True, only: tuple[str, ...] = ()) -> Packet:
    """Recompute every checksum of ``raw`` from scratch with scapy and compare.

    ``l4=False`` checks only the IPv4 header checksum (fragments: the L4 checksum
    covers data that is not in this packet); ``only`` restricts the check to the
    named scapy layer classes (quoted packets truncated on purpose)."""
    pkt = parse(raw)
    clone = pkt.copy()
    for layer in _checksum_layers(clone):
        cls = layer.__class__.__name__
        if only and cls not in only:
            continue
        for name in ("chksum", "cksum"):
            if name in layer.fields and (l4 or cls == "IP"):
                if layer.fields[name] == 0 and layer.__class__.__name__.startswith("UDP"):
                    continue
                setattr(layer, name, None)
    rebuilt = bytes(clone)
    assert rebuilt == raw, (
        f"checksum mismatch:\n{pkt.show2(dump=True)}\nexpected\n{parse(rebuilt).show2(dump=True)}"
    )
    return pkt


def forwarded(v: Verdict, n: int = 1) -> list[Packet]:
    assert v.action == Action.FORWARD, v
    assert len(v.packets) == n
    return [parse(p) for p in v.packets]


def one(v: Verdict, l4: bool = True) -> Packet:
    assert v.action == Action.FORWARD, v
    assert len(v.packets) == 1, v
    return assert_checksums(v.packets[0], l4)


def icmp_error(v: Verdict, only: tuple[str, ...] = ()) -> Packet:
    assert v.action == Action.ICMP_ERROR, v
    assert len(v.packets) == 1
    return assert_checksums(v.packets[0], only=only)


def lease(tr: Translator, client: str = CLIENT6, now: float = 1.0) -> str:
    """Give ``client`` a pool4 lease by sending one packet; return the IPv4 address."""
    from scapy.layers.inet import UDP

    v = tr.translate(bytes(IPv6(src=client, dst=CAM6) / UDP(sport=1, dport=2)), now)
    assert v.action == Action.FORWARD, v
    return str(IP(v.packets[0]).src)


def ones_complement_ok(data: bytes, pseudo: bytes = b"") -> bool:
    """Independent RFC 1071 loop: does ``pseudo + data`` sum to 0xFFFF?"""
    buf = pseudo + data
    if len(buf) % 2:
        buf += b"\x00"
    s = 0
    for i in range(0, len(buf), 2):
        s += buf[i] << 8 | buf[i + 1]
        s = (s & 0xFFFF) + (s >> 16)
    return s == 0xFFFF
