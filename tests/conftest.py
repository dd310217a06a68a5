"""Fixtures every test area shares: a fake clock and a database path in ``tmp_path``.

Areas keep their own ``conftest.py`` for what only they need. Helpers every area uses live in
``shared/ej_testkit.py``; its folder is put on ``sys.path`` here (tests are imported with
``--import-mode=importlib``), before any area's conftest imports its support module."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from edgejobs.testing import FakeClock

SHARED = Path(__file__).resolve().parent / "shared"
if str(SHARED) not in sys.path:
    sys.path.insert(0, str(SHARED))


@pytest.fixture
def clock() -> FakeClock:
    """A fake clock at a fixed instant."""
    return FakeClock()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    """A database file that does not exist yet."""
    return tmp_path / "jobs.db"
