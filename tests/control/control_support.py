"""Helpers of the runtime-control tests (importable by test modules and subprocesses)."""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from ej_testkit import poll_until

from edgejobs import EdgeJobs
from edgejobs.config import Config, RunnerConfig, ScheduleConfig
from edgejobs.testing import FakeClock

Factory = Callable[..., Awaitable[EdgeJobs]]
"""The ``runner`` fixture: ``await runner(schedules=..., types=...)`` -> a started runner."""

DEFAULT_TYPES: tuple[tuple[str, dict[str, Any]], ...] = (("report", {"dedup": False}),)


async def noop(ctx: Any, params: dict[str, Any]) -> None:
    """A handler that does nothing."""


def build(
    db_path: Path,
    clock: FakeClock,
    *,
    schedules: Sequence[ScheduleConfig | dict[str, Any]] = (),
    workers: int = 4,
    types: Sequence[tuple[str, dict[str, Any]]] = DEFAULT_TYPES,
    **config: Any,
) -> EdgeJobs:
    """An EdgeJobs (not started) on ``db_path`` with ``types`` registered (default handler:
    :func:`noop`)."""
    cfg = Config(
        runner=RunnerConfig(workers=workers),
        schedules=[
            s if isinstance(s, ScheduleConfig) else ScheduleConfig.model_validate(s)
            for s in schedules
        ],
        **config,
    )
    ej = EdgeJobs(db_path, config=cfg, clock=clock)
    for name, policy in types:
        options = dict(policy)
        ej.register(name, options.pop("handler", noop), **options)
    return ej


def query(db_path: Path, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    """Rows of a query on a fresh connection (what a new process would see)."""
    conn = sqlite3.connect(db_path)
    try:
        return [tuple(row) for row in conn.execute(sql, params)]
    finally:
        conn.close()


async def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll ``predicate`` (for a change another connection makes) until true, or fail."""
    await poll_until(
        predicate, timeout=timeout, interval=0.01, message=f"not true within {timeout} s"
    )
