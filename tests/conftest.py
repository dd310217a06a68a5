"""Fixtures every test area shares: a fake clock and a database path in ``tmp_path``.

Areas keep their own ``conftest.py`` for what only they need. Helpers every area uses live in
``shared/ej_testkit.py``; its folder is put on ``sys.path`` here (tests are imported with
``--import-mode=importlib``), before any area's conftest imports its support module.

``EDGEJOBS_TEST_LOOP=uvloop`` runs the tests on uvloop (which must then be installed) instead
of asyncio's own event loop; unset, nothing changes."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from edgejobs.testing import FakeClock

SHARED = Path(__file__).resolve().parent / "shared"
if str(SHARED) not in sys.path:
    sys.path.insert(0, str(SHARED))

if os.environ.get("EDGEJOBS_TEST_LOOP") == "uvloop":
    # Opt-in: run every event loop the tests make (pytest-asyncio's, asyncio.run's, the CLI's)
    # on uvloop, the loop of a usual FastAPI/uvicorn host app. uvloop is not a dependency.
    import uvloop

    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


@pytest.fixture
def clock() -> FakeClock:
    """A fake clock at a fixed instant."""
    return FakeClock()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    """A database file that does not exist yet."""
    return tmp_path / "jobs.db"
