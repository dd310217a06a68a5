"""Handlers of the chaos suite (imported by runner subprocesses as ``chaos_handlers``).

Every handler writes its effects to a side SQLite file named by ``CHAOS_EFFECTS``: one row
``(job_id, attempt, event, detail)`` per event, each in its own short connection, so a SIGKILL
of the runner loses nothing already written (SQLite commits survive a process kill). ``start``
rows record the statuses of the job's parents as the handler saw them (read from the queue's
own database, ``CHAOS_DB``); ``completed`` rows carry the nonce that the handler also returns,
so the suite can match a job's stored result to the attempt that produced it.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import time
import uuid
from contextlib import closing
from typing import Any

from edgejobs import JobContext
from edgejobs.runner.context import SyncJobContext

EFFECTS_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS effects (job_id TEXT NOT NULL, attempt INTEGER NOT NULL,"
    " event TEXT NOT NULL, detail TEXT, pid INTEGER NOT NULL, at_ms INTEGER NOT NULL)"
)


def record(job_id: str, attempt: int, event: str, detail: Any = None) -> None:
    """Append one effect row (open, insert, close: nothing is buffered in the process)."""
    path = os.environ.get("CHAOS_EFFECTS")
    if not path:
        return
    with closing(sqlite3.connect(path, timeout=30, isolation_level=None)) as conn:
        conn.execute(
            "INSERT INTO effects VALUES (?, ?, ?, ?, ?, ?)",
            (job_id, attempt, event, json.dumps(detail), os.getpid(), int(time.time() * 1000)),
        )


def parent_statuses(parent_ids: list[str]) -> dict[str, str]:
    """The parents' statuses as committed in the queue's database right now."""
    path = os.environ.get("CHAOS_DB")
    if not path or not parent_ids:
        return {}
    with closing(sqlite3.connect(path, timeout=30)) as conn:
        rows = conn.execute(
            "SELECT id, status FROM jobs WHERE id IN (SELECT value FROM json_each(?))",
            (json.dumps(parent_ids),),
        ).fetchall()
    return {job_id: status for job_id, status in rows}


def _start(ctx: JobContext | SyncJobContext) -> None:
    record(ctx.job_id, ctx.attempt, "start", parent_statuses(sorted(ctx.parent_results)))


def _done(ctx: JobContext | SyncJobContext) -> dict[str, Any]:
    nonce = uuid.uuid4().hex
    record(ctx.job_id, ctx.attempt, "completed", nonce)
    return {"nonce": nonce, "attempt": ctx.attempt}


async def work(ctx: JobContext, params: dict[str, Any]) -> dict[str, Any]:
    """The mixed workload: ``mode`` = fast | slow | flaky | fail; ``seconds`` for slow."""
    _start(ctx)
    mode = params.get("mode", "fast")
    if mode == "slow":
        steps = 4
        for step in range(steps):
            await asyncio.sleep(float(params.get("seconds", 0.5)) / steps)
            await ctx.progress(100 * (step + 1) / steps, f"step {step + 1}")
    elif mode == "flaky" and ctx.attempt <= int(params.get("fail_attempts", 1)):
        record(ctx.job_id, ctx.attempt, "failed")
        raise RuntimeError(f"flaky failure on attempt {ctx.attempt}")
    elif mode == "fail":
        record(ctx.job_id, ctx.attempt, "failed")
        raise RuntimeError("this job always fails")
    return _done(ctx)


def sync_work(ctx: SyncJobContext, params: dict[str, Any]) -> dict[str, Any]:
    """A sync handler in a worker thread, reporting progress with the sync twin."""
    _start(ctx)
    for step in range(3):
        time.sleep(float(params.get("seconds", 0.2)) / 3)
        ctx.progress(100 * (step + 1) / 3)
    return _done(ctx)


# -- hostile handlers -----------------------------------------------------------------------


async def swallow_cancel(ctx: JobContext, params: dict[str, Any]) -> None:
    """Ignores cancellation forever: the timeout must still end the attempt."""
    _start(ctx)
    while True:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            record(ctx.job_id, ctx.attempt, "swallowed")


async def block_loop(ctx: JobContext, params: dict[str, Any]) -> dict[str, Any]:
    """Blocks the whole event loop with a synchronous sleep inside an async handler."""
    _start(ctx)
    time.sleep(float(params.get("seconds", 5)))
    return _done(ctx)


async def hang(ctx: JobContext, params: dict[str, Any]) -> None:
    """Never returns (a well-behaved hang: cancellation works)."""
    _start(ctx)
    await asyncio.sleep(3600)


async def system_exit(ctx: JobContext, params: dict[str, Any]) -> None:
    """Raises SystemExit from an async handler."""
    _start(ctx)
    raise SystemExit(3)


def keyboard_interrupt(ctx: SyncJobContext, params: dict[str, Any]) -> None:
    """Raises KeyboardInterrupt from a sync handler's thread."""
    _start(ctx)
    raise KeyboardInterrupt


async def not_json(ctx: JobContext, params: dict[str, Any]) -> object:
    """Returns a value JSON cannot encode."""
    _start(ctx)
    return {"when": object()}


async def too_large(ctx: JobContext, params: dict[str, Any]) -> dict[str, str]:
    """Returns more JSON than ``[limits] max_result_bytes`` allows."""
    _start(ctx)
    return {"blob": "x" * int(params.get("bytes", 10_000))}


def kill_own_process(ctx: SyncJobContext, params: dict[str, Any]) -> None:
    """Under process isolation: SIGKILLs the child process it runs in, every time."""
    record(ctx.job_id, ctx.attempt, "start")
    os.kill(os.getpid(), signal.SIGKILL)


def exit_runner(ctx: SyncJobContext, params: dict[str, Any]) -> None:
    """In a thread of the runner: ``os._exit`` ends the runner process itself."""
    record(ctx.job_id, ctx.attempt, "start")
    os._exit(1)


async def big_result(ctx: JobContext, params: dict[str, Any]) -> dict[str, Any]:
    """Waits for a file to exist (the test's gate), then returns a result of ``bytes`` bytes."""
    _start(ctx)
    gate = params.get("gate")
    while gate and not os.path.exists(gate):
        await asyncio.sleep(0.02)
    result = _done(ctx)
    result["blob"] = "y" * int(params.get("bytes", 0))
    return result
