"""The metrics contract: drop reason values and labels are stable."""

from __future__ import annotations

import re

from translator import Action, DropReason, Verdict

EXPECTED = {
    0: "none",
    1: "malformed",
    2: "no_mapping",
    3: "spoofed_source",
    4: "pool_exhausted",
    5: "lease_limit",
    6: "hop_limit_exceeded",
    7: "ttl_exceeded",
    8: "fragmented_udp_zero_checksum",
    9: "udp_zero_checksum",
    10: "routing_header",
    11: "source_route",
    12: "frag_needed",
    13: "unsupported_icmp",
    14: "hairpin",
    15: "fragmented_icmp",
    16: "unsupported_protocol",
    17: "bad_checksum",
    18: "icmp_inner_untranslatable",
    19: "multicast",
}


def test_labels_are_stable_prometheus_values():
    assert {int(r): r.label for r in DropReason} == EXPECTED
    assert all(re.fullmatch(r"[a-z][a-z0-9_]*", r.label) for r in DropReason)


def test_actions_and_defaults():
    assert [a.name for a in Action] == ["FORWARD", "ICMP_ERROR", "DROP"]
    v = Verdict(Action.FORWARD, (b"x",))
    assert (v.reason, v.mapping) == (DropReason.NONE, -1)
