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
from edgejobs.models import Outcome
from edgejobs.runner.context import JobContext
from edgejobs.runner.executor import AsyncRun, Deadlines


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


async def test_runs_sharing_the_deadline_timer_each_time_out_at_their_own_deadline() -> None:
    """Async runs watch their deadlines on one timer (``Deadlines``): each still ends at its own
    deadline whatever the runs before it did, handlers that return are not timed out, a long
    run at the front does not keep the ended runs behind it, and with no run left the timer
    is gone (an idle loop is not woken)."""
    loop = asyncio.get_running_loop()
    deadlines = Deadlines()
    ends: dict[int, tuple[float, Outcome]] = {}
    starts: dict[int, float] = {}
    timeouts: dict[int, float] = {}

    async def never(ctx: Any, params: dict[str, Any]) -> None:
        await asyncio.Event().wait()

    async def quick(ctx: Any, params: dict[str, Any]) -> None:
        await asyncio.sleep(0.02)

    def start(i: int, handler: Any, timeout_s: float) -> AsyncRun:
        starts[i], timeouts[i] = loop.time(), timeout_s
        ctx = JobContext(
            job_id=f"job-{i}",
            org="acme",
            job_type="t",
            attempt=1,
            parent_results={},
            sink=lambda percent, message: None,
        )
        return AsyncRun(
            handler,
            ctx,
            {},
            timeout_s=timeout_s,
            max_result_bytes=1000,
            on_end=lambda execution: ends.__setitem__(i, (loop.time(), execution.outcome)),
            deadlines=deadlines,
        )

    # A long run at the front, then interleaved runs of two timeouts, some of which return.
    long_run = start(0, never, 60.0)
    for i in range(1, 31):
        start(i, quick if i % 3 == 0 else never, (0.3, 0.6)[i % 2])
        await asyncio.sleep(0.01)
    for i in range(31, 331):  # many short runs behind the long one: the deque stays short
        start(i, quick, 60.0)
        if i % 10 == 0:
            await asyncio.sleep(0.03)
    await poll_until(
        lambda: len(ends) == 330, timeout=10, interval=0.01, message="not every run ended"
    )
    assert len(deadlines._queues[60.0]) <= 2 * 331 // 10 + 64

    for i in range(1, 331):
        ended_at, outcome = ends[i]
        if i % 3 == 0 or i > 30:
            assert outcome is Outcome.COMPLETED, i
            assert ended_at < starts[i] + timeouts[i]
        else:
            assert outcome is Outcome.TIMED_OUT, i
            assert starts[i] + timeouts[i] <= ended_at < starts[i] + timeouts[i] + 0.5, i
    assert 0 not in ends and deadlines._timer is not None  # the long run is still watched
    long_run.abort()
    assert ends[0][1] is Outcome.CANCELED
    assert deadlines._timer is None and not deadlines._queues
