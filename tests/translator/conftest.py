"""Fixtures for the translator tests (helpers live in tr_testlib.py)."""

from __future__ import annotations

import pytest
from tr_testlib import make_translator

from translator import Translator


@pytest.fixture
def tr() -> Translator:
    return make_translator()
