"""Fixtures for the translator tests (helpers live in tr_testlib.py)."""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import pytest
from tr_testlib import make_translator

from translator import Translator


@pytest.fixture
def tr() -> Translator:
    return make_translator()


@pytest.fixture(autouse=True)
def _scapy_bytes_warnings() -> Iterator[None]:
    """scapy's RFC 4884 extension probe compares bytes with int (scapy/layers/inet.py),
    which ``python -bb`` turns into an error that silently degrades dissection to Raw.
    Only warnings raised inside scapy are ignored; ours still fail loudly."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=BytesWarning, module=r"scapy(\..*)?$")
        yield
