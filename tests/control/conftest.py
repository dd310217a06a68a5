"""Fixtures of the runtime-control tests: a real SQLite file in ``tmp_path``, a fake clock,
and a factory of stepped runners (``start(run_workers=False)``); the helper module
``control_support`` is put on ``sys.path`` for test modules and subprocesses."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from control_support import Factory, build  # noqa: E402

from edgejobs import EdgeJobs  # noqa: E402
from edgejobs.testing import FakeClock  # noqa: E402


@pytest.fixture
async def runner(db_path: Path, clock: FakeClock) -> AsyncIterator[Factory]:
    """``await runner(schedules=..., types=...)``: a started runner on ``db_path`` without
    background tasks (the test steps it); everything started is closed at the end."""
    started: list[EdgeJobs] = []

    async def make(**kwargs: Any) -> EdgeJobs:
        ej = build(db_path, clock, **kwargs)
        await ej.start(run_workers=False)
        started.append(ej)
        return ej

    try:
        yield make
    finally:
        for ej in reversed(started):
            await ej.stop(grace_s=0)
            await ej.close()
