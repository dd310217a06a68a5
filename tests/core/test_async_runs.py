"""An async handler's attempt runs as one task whose end is decided once (``AsyncRun``): by the
handler, the deadline or an abort. These tests pin the edges of that design: a shutdown that
does not wait for a handler ignoring its cancellation, a CancelledError the handler raises
itself, and an outcome that ended before a shutdown but was not written yet."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from core_support import db_attempts, db_job
from ej_testkit import poll_until

from edgejobs import EdgeJobs, Status


async def test_a_stop_past_its_grace_requeues_a_handler_that_ignores_cancellation(
    tmp_path: Path,
) -> None:
    path = tmp_path / "jobs.db"
    started, released = asyncio.Event(), asyncio.Event()
    handler_tasks: list[asyncio.Task[Any] | None] = []

    async def stubborn(ctx: Any, params: dict[str, Any]) -> None:
        handler_tasks.append(asyncio.current_task())
        started.set()
        while not released.is_set():  # refuses to stop until the test is over
            with contextlib.suppress(asyncio.CancelledError):
                await released.wait()

    ej = EdgeJobs(database=path, workers=1)
    ej.register("stubborn", stubborn, timeout_s=600)
    await ej.start()
    try:
        job = await ej.submit("stubborn", org="acme")
        await asyncio.wait_for(started.wait(), 10)
        await asyncio.wait_for(ej.stop(grace_s=0.2), 30)  # (a bound against hanging only)
        [handler_task] = handler_tasks
        handler_still_running = handler_task is not None and not handler_task.done()
    finally:
        await ej.close()
        released.set()

    # The stop did not wait for the handler (it would never end), and the job is not lost.
    assert handler_still_running
    assert db_job(path, job.id)["status"] == "queued"
    attempts = db_attempts(path, job.id)
    assert [(a["outcome"], a["error_type"]) for a in attempts] == [("canceled", "Shutdown")]


async def test_a_cancelled_error_the_handler_raises_itself_fails_the_attempt(
    tmp_path: Path,
) -> None:
    async def awaits_a_cancelled_future(ctx: Any, params: dict[str, Any]) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        future.cancel()
        await future  # raises CancelledError; nobody cancelled the attempt

    ej = EdgeJobs(database=tmp_path / "jobs.db", workers=1)
    ej.register("odd", awaits_a_cancelled_future, max_retries=0)
    async with ej:
        job = await ej.submit("odd", org="acme")
        job = await ej.wait(job.id, timeout=10)
    assert job.status is Status.FAILED
    assert job.error is not None and job.error.type == "CancelledError"


async def test_an_outcome_not_yet_written_at_shutdown_is_written_as_it_ended(
    tmp_path: Path,
) -> None:
    """The handler returned, but its write failed (the database was locked) and waits for the
    retry when the stop's grace is over: the completion is written, not turned into a requeue."""
    path = tmp_path / "jobs.db"
    ej = EdgeJobs(database=path, workers=1)
    locked = threading.Event()

    def lock_every_commit(stage: str, _n: int) -> None:
        # Until the stop has begun. The pool retries a failed write 0.5 s later, so the retry
        # that succeeds comes after the stop looked at its attempts.
        if stage == "before_commit" and not ej.stopping:
            locked.set()
            raise sqlite3.OperationalError("database is locked")

    async def quick(ctx: Any, params: dict[str, Any]) -> dict[str, bool]:
        ej.store.writer.fault_hook = lock_every_commit  # the next writes fail: this outcome's
        return {"ok": True}

    ej.register("quick", quick)
    await ej.start()
    try:
        job = await ej.submit("quick", org="acme")
        await poll_until(
            locked.is_set, timeout=10, interval=0.005, message="the outcome's write never failed"
        )
        await asyncio.wait_for(ej.stop(grace_s=0), 30)
    finally:
        ej.store.writer.fault_hook = None
        await ej.close()

    row = db_job(path, job.id)
    assert row["status"] == "completed", row["status"]
    assert row["result"] == '{"ok":true}'
    assert [a["outcome"] for a in db_attempts(path, job.id)] == ["completed"]


async def test_a_thread_handler_that_returned_as_the_grace_ran_out_is_written_as_it_ended(
    tmp_path: Path,
) -> None:
    """A sync handler's result was on its way to the event loop when the stop's grace ran out
    (the loop was busy): the attempt is written as completed, not requeued to run again."""
    path = tmp_path / "jobs.db"
    release = threading.Event()
    calls: list[int] = []

    def slow(ctx: Any, params: dict[str, Any]) -> dict[str, bool]:
        calls.append(ctx.attempt)
        release.wait(10)
        return {"ok": True}

    ej = EdgeJobs(database=path, workers=1)
    ej.register("slow", slow, timeout_s=60)
    await ej.start()
    try:
        job = await ej.submit("slow", org="acme")
        await poll_until(lambda: calls == [1], timeout=10, interval=0.005, message="not started")
        loop = asyncio.get_running_loop()

        def busy_loop_while_the_handler_returns() -> None:
            release.set()
            time.sleep(0.3)  # the result is queued on the loop; the grace runs out meanwhile

        loop.call_later(0.1, busy_loop_while_the_handler_returns)
        await asyncio.wait_for(ej.stop(grace_s=0.2), 30)
    finally:
        release.set()
        await ej.close()

    row = db_job(path, job.id)
    assert row["status"] == "completed", row["status"]
    assert [a["outcome"] for a in db_attempts(path, job.id)] == ["completed"]
    assert calls == [1]
