"""TSIG keys read from a BIND key file (RFC 8945).

``tsig-keygen`` and ``ddns-confgen`` write keys in BIND's configuration
syntax::

    key "revnat64" {
        algorithm hmac-sha256;
        secret "base64...";
    };

dnspython reads keyrings from dicts, not from this syntax, so this module
holds a small, strict parser for it: one ``key`` statement with exactly an
``algorithm`` and a ``secret``, comments in the three styles BIND allows
(``#``, ``//``, ``/* */``), and an error naming the file, line and reason for
anything else.  A permissive parser would turn a typo into a key that the
server rejects with BADKEY, which is much harder to diagnose.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

import dns.name
import dns.tsig

__all__ = ["TsigKeyFileError", "TsigKey", "key_file_warnings", "load_tsig_key", "parse_tsig_key"]

# RFC 8945 section 6 and RFC 4635: the algorithms dnspython signs with.
ALGORITHMS = {
    "hmac-md5": dns.tsig.HMAC_MD5,
    "hmac-md5.sig-alg.reg.int": dns.tsig.HMAC_MD5,
    "hmac-sha1": dns.tsig.HMAC_SHA1,
    "hmac-sha224": dns.tsig.HMAC_SHA224,
    "hmac-sha256": dns.tsig.HMAC_SHA256,
    "hmac-sha384": dns.tsig.HMAC_SHA384,
    "hmac-sha512": dns.tsig.HMAC_SHA512,
}

_TOKEN_RE = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<comment>\#[^\n]*|//[^\n]*|/\*.*?\*/)
  | "(?P<string>[^"\n]*)"
  | (?P<punct>[{};])
  | (?P<word>[^\s{};"\#/]+)
    """,
    re.VERBOSE | re.DOTALL,
)


class TsigKeyFileError(Exception):
    """The TSIG key file cannot be read or is not one well-formed BIND ``key`` statement."""


@dataclass(frozen=True)
class TsigKey:
    """A TSIG key: its name (as the server knows it), algorithm and secret."""

    name: str
    algorithm: str
    secret: bytes

    def to_dnspython(self) -> dns.tsig.Key:
        return dns.tsig.Key(
            dns.name.from_text(self.name), self.secret, ALGORITHMS[self.algorithm.lower()]
        )


def _tokens(text: str, file: str) -> list[tuple[str, str, int]]:
    """(kind, text, line) for each token, skipping whitespace and comments."""
    out = []
    pos = 0
    while pos < len(text):
        m = _TOKEN_RE.match(text, pos)
        line = text.count("\n", 0, pos) + 1
        if m is None:
            raise TsigKeyFileError(f"{file}: line {line}: unexpected {text[pos]!r}")
        kind = m.lastgroup or ""
        if kind not in ("ws", "comment"):
            out.append((kind, m.group(kind), line))
        pos = m.end()
    return out


def parse_tsig_key(text: str, file: str = "<key file>") -> TsigKey:
    """Parse the text of a BIND key file holding exactly one key."""
    toks = _tokens(text, file)
    pos = 0

    def expect(what: str, kinds: tuple[str, ...], value: str | None = None) -> str:
        nonlocal pos
        if pos >= len(toks):
            raise TsigKeyFileError(f"{file}: ended where {what} was expected")
        kind, tok, line = toks[pos]
        if kind not in kinds or (value is not None and tok.lower() != value):
            raise TsigKeyFileError(f"{file}: line {line}: expected {what}, found {tok!r}")
        pos += 1
        return tok

    if not toks:
        raise TsigKeyFileError(f'{file}: is empty; expected key "name" {{ ... }};')
    expect("'key'", ("word",), "key")
    name = expect("the key name", ("string", "word"))
    expect("'{'", ("punct",), "{")
    fields: dict[str, str] = {}
    while pos < len(toks) and toks[pos][1] != "}":
        line = toks[pos][2]
        field = expect("'algorithm' or 'secret'", ("word",)).lower()
        if field not in ("algorithm", "secret"):
            raise TsigKeyFileError(
                f"{file}: line {line}: unknown field {field!r} in key {name!r} "
                "(only algorithm and secret are allowed)"
            )
        if field in fields:
            raise TsigKeyFileError(f"{file}: line {line}: {field} given twice in key {name!r}")
        fields[field] = expect(f"the {field} value", ("string", "word"))
        expect("';'", ("punct",), ";")
    expect("'}'", ("punct",), "}")
    expect("';' after the key's closing brace", ("punct",), ";")
    if pos < len(toks):
        kind, tok, line = toks[pos]
        if tok.lower() == "key":
            raise TsigKeyFileError(
                f"{file}: line {line}: holds more than one key; revnat64 needs exactly one"
            )
        raise TsigKeyFileError(f"{file}: line {line}: unexpected {tok!r} after the key")
    for required in ("algorithm", "secret"):
        if required not in fields:
            raise TsigKeyFileError(f"{file}: key {name!r} has no {required}")
    algorithm = fields["algorithm"].lower()
    if algorithm not in ALGORITHMS:
        raise TsigKeyFileError(
            f"{file}: key {name!r}: unsupported algorithm {fields['algorithm']!r} "
            f"(use one of {', '.join(sorted(set(ALGORITHMS) - {'hmac-md5.sig-alg.reg.int'}))})"
        )
    try:
        secret = base64.b64decode(fields["secret"], validate=True)
    except (binascii.Error, ValueError):
        raise TsigKeyFileError(f"{file}: key {name!r}: secret is not valid base64") from None
    if not secret:
        raise TsigKeyFileError(f"{file}: key {name!r}: secret is empty")
    try:
        dns.name.from_text(name)
    except dns.exception.DNSException as exc:
        raise TsigKeyFileError(f"{file}: key name {name!r} is not a DNS name: {exc}") from None
    return TsigKey(name, algorithm, secret)


def load_tsig_key(path: str | os.PathLike[str]) -> TsigKey:
    """Read and parse a BIND key file."""
    file = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TsigKeyFileError(f"{file}: cannot read TSIG key file: {exc}") from None
    return parse_tsig_key(text, file)


def key_file_warnings(path: str | os.PathLike[str]) -> list[str]:
    """Warn when anyone but the owner may read the key: the secret signs zone changes."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return []  # load_tsig_key reports the real problem
    if mode & (stat.S_IRGRP | stat.S_IROTH):
        return [
            f"{path}: TSIG key file is readable by group or others "
            f"(mode {stat.S_IMODE(mode):04o}); anyone who reads it can change the zone. "
            f"Fix: chmod 600 {path}"
        ]
    return []
