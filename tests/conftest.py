"""Fixtures every test area shares: a fake clock and a database path in ``tmp_path``.

Areas keep their own ``conftest.py`` for what only they need."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgejobs.testing import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    """A fake clock at a fixed instant."""
    return FakeClock()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    """A database file that does not exist yet."""
    return tmp_path / "jobs.db"
