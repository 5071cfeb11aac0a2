"""Fixtures for the integration tests: a home-router lab with the real daemon."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.daemon_lab import DaemonLab
from tests.netlab import Lab


@pytest.fixture
def dlab(lab: Lab, tmp_path: Path) -> Iterator[DaemonLab]:
    """The standard lab with a daemon ready to start (``dlab.start()``); always torn down."""
    d = DaemonLab(lab, tmp_path)
    try:
        yield d
    finally:
        d.close()
