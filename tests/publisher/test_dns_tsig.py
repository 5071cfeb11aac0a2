"""The BIND key-file parser: real tsig-keygen output, comments, and strict errors."""

from __future__ import annotations

import base64
from pathlib import Path

import dns.name
import pytest

from publisher.dns_tsig import TsigKeyFileError, key_file_warnings, load_tsig_key, parse_tsig_key
from tests.dnsservers import tsig_keygen

SECRET = base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()


@pytest.mark.parametrize("algorithm", ["hmac-sha256", "hmac-sha512", "hmac-sha1"])
def test_reads_what_tsig_keygen_writes(tmp_path: Path, algorithm: str) -> None:
    path = tsig_keygen("revnat64.example.", tmp_path / "k.key", algorithm)
    key = load_tsig_key(path)
    assert key.name == "revnat64.example." and key.algorithm == algorithm
    dk = key.to_dnspython()
    assert dk.algorithm == dns.name.from_text(algorithm)
    assert dk.secret == key.secret and len(key.secret) > 0
    assert key_file_warnings(path) == []


def test_comments_and_unquoted_name_are_accepted() -> None:
    text = f"""
    # made by hand
    // for the primary
    /* two
       lines */
    key k1 {{ algorithm HMAC-SHA256; secret "{SECRET}"; }};
    """
    key = parse_tsig_key(text, "k.key")
    assert (key.name, key.algorithm) == ("k1", "hmac-sha256")
    assert key.secret == b"0123456789abcdef0123456789abcdef"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "is empty"),
        (f'key "k" {{ secret "{SECRET}"; }};', "has no algorithm"),
        ('key "k" { algorithm hmac-sha256; };', "has no secret"),
        ('key "k" { algorithm hmac-sha256; secret "not base64!"; };', "not valid base64"),
        (f'key "k" {{ algorithm hmac-sha999; secret "{SECRET}"; }};', "unsupported algorithm"),
        (f'key "k" {{ algorithm hmac-sha256; secret "{SECRET}"; }}', "ended where ';'"),
        (f'key "k" {{ algorithm hmac-sha256 secret "{SECRET}"; }};', "line 1: expected ';'"),
        (
            f'key "a" {{ algorithm hmac-sha256; secret "{SECRET}"; }};\n'
            f'key "b" {{ algorithm hmac-sha256; secret "{SECRET}"; }};',
            "line 2: holds more than one key",
        ),
        (
            f'key "k" {{ algorithm hmac-sha256; algorithm hmac-sha1; secret "{SECRET}"; }};',
            "algorithm given twice",
        ),
        (f'key "k" {{ algorithm hmac-sha256; secret "{SECRET}"; port 53; }};', "unknown field"),
        (f'options {{ algorithm hmac-sha256; secret "{SECRET}"; }};', "expected 'key'"),
    ],
)
def test_malformed_key_files_name_file_and_reason(text: str, reason: str) -> None:
    with pytest.raises(TsigKeyFileError, match="^k.key: ") as info:
        parse_tsig_key(text, "k.key")
    assert reason in str(info.value)


def test_missing_file_is_a_key_file_error(tmp_path: Path) -> None:
    with pytest.raises(TsigKeyFileError, match="cannot read TSIG key file"):
        load_tsig_key(tmp_path / "absent.key")


def test_group_or_world_readable_key_file_warns(tmp_path: Path) -> None:
    path = tsig_keygen("k", tmp_path / "k.key")
    path.chmod(0o640)
    (warning,) = key_file_warnings(path)
    assert "readable by group or others" in warning and "0640" in warning
    assert f"chmod 600 {path}" in warning
