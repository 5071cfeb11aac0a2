"""Shared fixtures: namespace labs that are always torn down."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.netlab import Lab


@pytest.fixture
def lab(request: pytest.FixtureRequest) -> Iterator[Lab]:
    """A fresh namespace lab, removed on every exit path (a failed test included)."""
    tag = "".join(c for c in request.node.name if c.isalnum())[:6] or "t"
    with Lab(tag) as new_lab:
        yield new_lab
