"""Fixtures of the core-engine tests: real SQLite files in ``tmp_path``, a fake clock, and the
folder of helper modules (``core_handlers``, ``core_support``) on ``sys.path`` so that test
modules, spawned handler processes and runner subprocesses can all import them."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from core_support import CoreKit, running_kit  # noqa: E402

from edgejobs.testing import FakeClock  # noqa: E402


@pytest.fixture
async def kit(db_path: Path, clock: FakeClock) -> AsyncIterator[CoreKit]:
    """The standard job types on a stepped runner (see :class:`core_support.CoreKit`); fails
    the test if, at its end, the kept job counts are not those of the jobs table."""
    async with running_kit(db_path, clock) as kit:
        yield kit
