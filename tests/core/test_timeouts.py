"""Timeouts without signals, for every kind of handler (SPEC §2 rule 7): the job's status
changes within one second of its deadline and the only worker slot runs the next job."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from core_support import db_attempts, db_job

from edgejobs import EdgeJobs, Status


async def never_returns(ctx: Any, params: dict[str, Any]) -> None:
    await asyncio.Event().wait()


async def swallows_cancellation(ctx: Any, params: dict[str, Any]) -> None:
    try:
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        await asyncio.sleep(1.5)  # refuses to stop for a while; must not hold the slot


def sleeps_in_a_thread(ctx: Any, params: dict[str, Any]) -> None:
    time.sleep(3)  # ignores ctx.cancelled: only abandoning the thread frees the slot


async def quick(ctx: Any, params: dict[str, Any]) -> dict[str, bool]:
    return {"ok": True}


CASES: dict[str, tuple[Any, str, float]] = {
    "async-never-returns": (never_returns, "thread", 0.5),
    "async-swallows-cancel": (swallows_cancellation, "thread", 0.5),
    "sync-time-sleep": (sleeps_in_a_thread, "thread", 0.5),
    # Spawning the child takes a few hundred milliseconds on a busy machine; a longer timeout
    # keeps the check about the kill, not about process start-up.
    "process-sleep": ("core_handlers:sync_sleep", "process", 1.0),
}


@pytest.mark.parametrize("case", list(CASES))
async def test_timeout_frees_the_only_slot(case: str, tmp_path: Path) -> None:
    handler, isolation, timeout_s = CASES[case]
    path = tmp_path / "jobs.db"
    ej = EdgeJobs(database=path, workers=1)
    ej.register("slow", handler, timeout_s=timeout_s, max_retries=0, isolation=isolation)
    ej.register("quick", quick)
    async with ej:
        slow = await ej.submit("slow", org="acme", params={"seconds": 30})
        after = await ej.submit("quick", org="acme")
        slow = await ej.wait(slow.id, timeout=timeout_s + 10)
        after = await ej.wait(after.id, timeout=10)

    assert slow.status is Status.TIMED_OUT
    assert slow.error is not None and slow.error.type == "TimeoutError"
    assert slow.started_at is not None and slow.finished_at is not None
    deadline = slow.started_at + timeout_s * 1000
    assert deadline <= slow.finished_at <= deadline + 1000, slow.finished_at - deadline
    assert [a["outcome"] for a in db_attempts(path, slow.id)] == ["timed_out"]

    # The one slot was freed: the next job ran after the timeout, not after the handler.
    assert after.status is Status.COMPLETED
    assert after.started_at is not None and after.started_at >= slow.finished_at
    assert after.started_at <= slow.finished_at + 1000
    assert db_job(path, after.id)["status"] == "completed"
