"""Struct-packed rtnetlink requests equal pyroute2's; answers parse to (seq, errno, text)."""

from __future__ import annotations

import errno
import socket
import struct
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pyroute2 import IPBatch

from publisher.nlbatch import (
    NDMSG,
    NLM_F_ACK_TLVS,
    NLM_F_CAPPED,
    NLMSG_ERROR,
    NLMSGHDR,
    RTM_NEWNEIGH,
    RTMSG,
    Failure,
    _attr,
    build_message,
    build_proxy,
    build_route,
    parse_acks,
)


@pytest.fixture(scope="module")
def ipb() -> Iterator[IPBatch]:
    batch = IPBatch()
    yield batch
    batch.close()


def pyroute2_bytes(ipb: IPBatch, method: str, *args: object, **kw: object) -> bytes:
    ipb.reset()
    getattr(ipb, method)(*args, **kw)
    data = bytes(ipb.asyncore.batch)
    # Sequence number and port id are the batch's own business.
    return data[:8] + b"\0" * 8 + data[16:]


@pytest.mark.parametrize("op", ["add", "replace", "del"])
@pytest.mark.parametrize(
    ("dst", "address", "length", "family"),
    [
        ("2001:db8:f00::5/128", "2001:db8:f00::5", 128, 10),
        ("2001:db8:200::/64", "2001:db8:200::", 64, 10),
        ("198.51.100.0/24", "198.51.100.0", 24, 2),
        ("198.51.100.1/32", "198.51.100.1", 32, 2),
    ],
)
def test_route_requests_match_pyroute2(
    ipb: IPBatch, op: str, dst: str, address: str, length: int, family: int
) -> None:
    ours = build_message(build_route(op, dst, 7, 164), 0)
    theirs = pyroute2_bytes(
        ipb, "route", op, dst=address, dst_len=length, family=family, oif=7, proto=164
    )
    assert ours == theirs


@pytest.mark.parametrize("op", ["replace", "del"])
def test_proxy_requests_match_pyroute2(ipb: IPBatch, op: str) -> None:
    ours = build_message(build_proxy(op, "2001:db8:1::50", 3), 0)
    theirs = pyroute2_bytes(ipb, "neigh", op, dst="2001:db8:1::50", ifindex=3, flags=8, family=10)
    assert ours == theirs


def error_answer(seq: int, code: int, text: str = "", capped: bool = True) -> bytes:
    request = build_message(build_route("add", "2001:db8::1/128", 7, 164), seq)
    echoed = request[: NLMSGHDR.size] if capped else request
    attrs = b""
    flags = NLM_F_CAPPED if capped else 0
    if text:
        payload = text.encode() + b"\0"
        attrs = struct.pack("=HH", 4 + len(payload), 1) + payload
        attrs += b"\0" * (-len(attrs) % 4)
        flags |= NLM_F_ACK_TLVS
    body = struct.pack("=i", -code) + echoed + attrs
    return NLMSGHDR.pack(NLMSGHDR.size + len(body), NLMSG_ERROR, flags, seq, 0) + body


def test_parse_acks_matches_sequence_numbers_errors_and_kernel_text() -> None:
    data = (
        error_answer(41, 0)
        + error_answer(42, errno.EEXIST, "Route exists")
        + error_answer(43, errno.EINVAL, "Invalid prefix", capped=False)
    )
    answers = parse_acks(data)
    assert [(a.seq, a.error, a.message) for a in answers] == [
        (41, 0, ""),
        (42, errno.EEXIST, "Route exists"),
        (43, errno.EINVAL, "Invalid prefix"),
    ]


def test_parse_acks_skips_other_messages_and_stops_at_truncation() -> None:
    done = NLMSGHDR.pack(NLMSGHDR.size + 4, 3, 0, 9, 0) + b"\0" * 4  # NLMSG_DONE
    answer = error_answer(10, errno.ENOENT)
    assert [a.seq for a in parse_acks(done + answer + answer[:20])] == [10]
    assert parse_acks(b"") == [] and parse_acks(b"\xff" * 15) == []


def test_failure_describes_errno_and_kernel_text() -> None:
    assert Failure(0, errno.EEXIST, "").describe() == "File exists"
    assert Failure(0, errno.EEXIST, "Route exists").describe() == "File exists (Route exists)"


# Netlink messages with real headers around random bodies, some lengths wrong on purpose.
messages = st.lists(
    st.tuples(
        st.sampled_from([2, 3, 16, 17, 20, 21, 24, 28, 29, 0xFFFF]),  # error, done, link, ...
        st.binary(max_size=64),
        st.integers(min_value=-8, max_value=8),  # how far the length field lies
    ),
    max_size=6,
)


def frame(items: list[tuple[int, bytes, int]]) -> bytes:
    out = b""
    for msg_type, body, lie in items:
        length = max(0, NLMSGHDR.size + len(body) + lie)
        out += NLMSGHDR.pack(length, msg_type, 0, 1, 0) + body + b"\0" * (-len(body) % 4)
    return out


# Neighbour messages as a dump carries them, with a random family and address attribute.
neighbours = st.lists(
    st.builds(
        lambda family, attr: (
            RTM_NEWNEIGH,
            NDMSG.pack(family, 2, 0x80, 0x08, 0) + _attr(1, attr),
            0,
        ),
        st.sampled_from([0, 2, 10, 255]),
        st.binary(max_size=20),
    ),
    min_size=1,
    max_size=4,
)


@given(st.one_of(st.binary(max_size=512), messages.map(frame), neighbours.map(frame)))
@settings(max_examples=1000)
def test_netlink_parsers_take_any_bytes(data: bytes) -> None:
    """Whatever a socket hands over, the parsers return or (for a dump error) raise OSError."""
    from publisher.nlbatch import parse_neighbours
    from publisher.nlevents import classify, table_deleted

    parse_acks(data)
    classify(data)
    table_deleted(data, 1, b"revnat64")
    try:
        parse_neighbours(data)
    except OSError:
        pass


def _route_message(msg_type: int, dst: str, length: int, proto: int, table: int = 254) -> bytes:
    family = socket.AF_INET6 if ":" in dst else socket.AF_INET
    body = RTMSG.pack(family, length, 0, 0, table, proto, 0, 1, 0) + _attr(
        1, socket.inet_pton(family, dst)
    )
    return NLMSGHDR.pack(NLMSGHDR.size + len(body), msg_type, 0, 0, 0) + body


def test_classify_reports_only_our_deleted_main_table_routes() -> None:
    from publisher.nlevents import classify

    data = (
        _route_message(25, "2001:db8:200::50", 128, 164)  # ours: reported
        + _route_message(25, "198.51.100.0", 24, 164)  # ours, IPv4: reported
        + _route_message(25, "2001:db8:300::1", 128, 3)  # someone's (proto boot)
        + _route_message(25, "2001:db8:200::51", 128, 164, table=100)  # another table
        + _route_message(24, "2001:db8:200::52", 128, 164)  # an addition: no change
    )
    changes = classify(data, 164)
    assert changes.routes_deleted == {"2001:db8:200::50/128", "198.51.100.0/24"}
    assert not changes.links and not changes.addresses and not changes.lost
    assert not classify(_route_message(24, "2001:db8:200::52", 128, 164), 164)


def test_classify_reports_a_changed_forwarding_or_proxy_ndp_setting() -> None:
    from publisher.nlevents import classify

    body = struct.pack("=B3x", socket.AF_INET6) + _attr(2, struct.pack("=i", 0))  # forwarding 0
    netconf = NLMSGHDR.pack(NLMSGHDR.size + len(body), 80, 0, 0, 0) + body  # RTM_NEWNETCONF
    changes = classify(netconf, 164)
    assert changes.settings and changes
    assert not changes.links and not changes.addresses and not changes.routes_deleted


def _nft_message(op: int, family: int, table: bytes) -> bytes:
    body = struct.pack("=BBH", family, 0, 0) + _attr(1, table + b"\0")
    return NLMSGHDR.pack(NLMSGHDR.size + len(body), 10 << 8 | op, 0, 0, 0) + body


def test_table_deleted_names_only_our_table_in_our_family() -> None:
    from publisher.nlevents import table_deleted

    ours = _nft_message(2, 1, b"revnat64")  # NFT_MSG_DELTABLE, inet
    assert table_deleted(ours, 1, b"revnat64")
    assert not table_deleted(_nft_message(2, 2, b"revnat64"), 1, b"revnat64")  # ip family
    assert not table_deleted(_nft_message(2, 1, b"fw4"), 1, b"revnat64")
    assert not table_deleted(_nft_message(2, 1, b"revnat64x"), 1, b"revnat64")
    assert not table_deleted(_nft_message(0, 1, b"revnat64"), 1, b"revnat64")  # NEWTABLE
    assert table_deleted(_nft_message(8, 1, b"revnat64") + ours, 1, b"revnat64")
