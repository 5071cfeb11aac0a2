"""The one-copy output path: TCP/UDP payloads spliced with their new checksum."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.packet import Raw
from tr_testlib import CAM4, CAM6, CLIENT6, assert_checksums, make_translator, one

from translator import DropReason, Translator
from translator.headers import SPLICE_VIEW_MIN, splice_u16


@given(
    header=st.binary(max_size=48),
    body=st.binary(min_size=2, max_size=3 * SPLICE_VIEW_MIN),
    data=st.data(),
    value=st.integers(0, 0xFFFF),
)
def test_splice_equals_the_obvious_concatenation(
    header: bytes, body: bytes, data: st.DataObject, value: int
) -> None:
    end = data.draw(st.integers(2, len(body)))
    at = data.draw(st.integers(0, end - 2))
    start = data.draw(st.integers(0, at))
    want = header + body[start:at] + struct.pack("!H", value) + body[at + 2 : end]
    got = splice_u16(header, body, start, at, value, end)
    assert type(got) is bytes and got == want


@pytest.mark.parametrize("size", [0, 1000, SPLICE_VIEW_MIN, 60000])
@pytest.mark.parametrize("l4", ["tcp", "udp"])
def test_super_packet_sizes_translate_with_valid_checksums(size: int, l4: str) -> None:
    # The GSO twin's limits (MTU lifted), so a 60 kB packet is one translation.
    base = make_translator()
    tr = Translator.for_super_packets(base.settings, base.tables, base.pool)
    seg = TCP(sport=40000, dport=80, flags="A") if l4 == "tcp" else UDP(sport=40000, dport=53)
    payload = bytes(range(256)) * (size // 256) + b"z" * (size % 256)
    out = one(tr.translate(bytes(IPv6(src=CLIENT6, dst=CAM6) / seg / Raw(payload)), 1.0))
    assert out[IP].dst == CAM4 and bytes(out[IP].payload.payload) == payload
    assert_checksums(bytes(out))
    back = IP(src=CAM4, dst=out[IP].src, flags="DF") / seg.__class__(
        sport=seg.dport, dport=seg.sport
    )
    answer = one(tr.translate(bytes(back / Raw(payload)), 1.0))
    assert answer[IPv6].dst == CLIENT6 and bytes(answer[IPv6].payload.payload) == payload
    assert_checksums(bytes(answer))


@pytest.mark.parametrize("l4, short", [("tcp", 17), ("udp", 7)])
def test_truncated_l4_header_is_malformed_even_with_bytes_after_the_ip_length(
    l4: str, short: int
) -> None:
    # The checksum field lies past the IP length; the trailing bytes (link
    # padding, say) must not be read as the rest of the header.
    tr = make_translator()
    six = bytes(IPv6(src=CLIENT6, dst=CAM6, nh=6 if l4 == "tcp" else 17, plen=short))
    v = tr.translate(six + bytes(short) + b"\xee" * 32, 1.0)
    assert v.reason == DropReason.MALFORMED
    lease4 = one(tr.translate(bytes(IPv6(src=CLIENT6, dst=CAM6) / UDP()), 1.0))[IP].src
    four = bytes(IP(src=CAM4, dst=lease4, proto=6 if l4 == "tcp" else 17, len=20 + short))
    v = tr.translate(four + bytes(short) + b"\xee" * 32, 1.0)
    assert v.reason == DropReason.MALFORMED
