"""The path of a job submitted to an idle runner: its claim shares the submit's transaction,
and ``get`` / ``wait`` read on the event-loop thread (through the read pool when SQLite is
busy there). Real runner, real writer thread, real database file."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from ej_testkit import poll_until

from edgejobs import EdgeJobs, Status
from edgejobs.config import Config, RunnerConfig
from edgejobs.errors import NotFound
from edgejobs.runner.pool import Pool
from edgejobs.store.db import WriteTx
from edgejobs.store.jobs import get_job
from edgejobs.testing import Harness


async def echo(ctx: Any, params: dict[str, Any]) -> dict[str, Any]:
    return params


@contextlib.asynccontextmanager
async def started_runner(
    db_path: Path, name: str, handler: Callable[..., Awaitable[Any]]
) -> AsyncIterator[tuple[EdgeJobs, Pool]]:
    """A runner with its background pool and one job type, once a first job went through
    (the pool's loop has started: a stepped pool never claims behind a submit)."""
    ej = EdgeJobs(database=db_path, config=Config(runner=RunnerConfig(workers=4)))
    ej.register(name, handler, dedup=False, max_retries=0)
    async with ej:
        pool = ej.pool
        assert pool is not None
        await ej.wait((await ej.submit(name, org="acme")).id, timeout=10)
        yield ej, pool


async def until_idle(pool: Pool) -> None:
    """Until no attempt runs and no cycle is queued or finishing."""
    await poll_until(
        lambda: pool.running_count == 0 and not pool.cycle_in_flight,
        timeout=10,
        interval=0.001,
        message="the runner never went idle",
    )


async def test_a_job_submitted_to_an_idle_runner_is_claimed_in_the_submits_transaction(
    db_path: Path,
) -> None:
    first_status: dict[str, str] = {}  # a job's status in the first commit that names it

    def record(tx: WriteTx) -> None:
        for job_id, status in tx.jobs_changed.items():
            first_status.setdefault(job_id, status)

    async with started_runner(db_path, "echo", echo) as (ej, pool):
        ej.add_commit_listener(record)
        # Without the claim queued behind the insert, the pool's own claim still often joins
        # the insert's transaction (it depends on which thread runs first); fifty times in a
        # row it does not.
        for n in range(50):
            await until_idle(pool)
            job = await ej.submit("echo", org="acme", params={"n": n})
            done = await ej.wait(job.id, timeout=10)
            assert done.status is Status.COMPLETED and done.result == {"n": n}
            # Inserted and claimed by one commit: the first commit naming it left it running.
            assert first_status[job.id] == "running", (n, first_status[job.id])


async def test_the_handler_starts_before_the_submitter_hears_submitted(db_path: Path) -> None:
    # The claim's result is handed out one event-loop turn before the insert's, so the
    # handler's first step runs before the submitting coroutine goes on.
    returned: set[str] = set()
    started_first: list[bool] = []

    async def note(ctx: Any, params: dict[str, Any]) -> None:
        started_first.append(ctx.job_id not in returned)

    async with started_runner(db_path, "note", note) as (ej, pool):
        started_first.clear()
        for _ in range(10):
            await until_idle(pool)
            job = await ej.submit("note", org="acme")
            returned.add(job.id)
            await ej.wait(job.id, timeout=10)
    assert started_first == [True] * 10


async def test_a_claim_that_cannot_be_queued_behind_a_submit_never_fails_the_submit(
    db_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async with started_runner(db_path, "echo", echo) as (ej, pool):
        await until_idle(pool)
        real_limits = pool._limits
        calls = 0

        def broken_once() -> Any:
            nonlocal calls
            calls += 1
            if calls == 1:  # the claim queued behind the submit
                raise RuntimeError("a bug in the claim's preparation")
            return real_limits()

        monkeypatch.setattr(pool, "_limits", broken_once)
        job = await ej.submit("echo", org="acme", params={"n": 1})  # does not raise
        done = await ej.wait(job.id, timeout=10)  # the pool, woken instead, claims it
        assert done.status is Status.COMPLETED and done.result == {"n": 1}
    assert calls >= 2
    assert "could not queue a claim behind a submit" in caplog.text


async def test_a_stepped_runner_does_not_claim_behind_a_submit(db_path: Path) -> None:
    async with Harness(database=db_path) as h:

        @h.ej.job_type("noop", dedup=False)
        async def noop(ctx: Any, params: dict[str, Any]) -> None:
            return None

        job = await h.submit("noop", org="acme")
        assert (await h.get(job.id)).status is Status.QUEUED  # tests step the pool by hand
        assert await h.run_once() == 1
        assert (await h.get(job.id)).status is Status.COMPLETED


async def test_get_reads_on_the_loop_and_goes_through_the_pool_when_busy_there(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ej = EdgeJobs(database=db_path)
    ej.register("echo", echo, dedup=False)
    await ej.open()  # not a runner: the job stays queued
    try:
        job_id = (await ej.submit("echo", org="acme")).id
        point = ej.store.point_reader

        # SQLite refusing the point read as busy (its first read raises it): not done, and
        # the snapshot is closed, so the connection is ready for the next read.
        def locked(conn: sqlite3.Connection) -> None:
            conn.execute("SELECT count(*) FROM jobs").fetchone()
            raise sqlite3.OperationalError("database is locked")

        assert point.try_run(locked) == (False, None)
        now = ej.clock.now_ms()
        done, job = point.try_run(lambda conn: get_job(conn, job_id, None, now))
        assert done and job is not None and job.id == job_id

        # Then ``get`` asks a reader thread instead, and answers the same.
        on_loop = threading.get_ident()
        threads: list[int] = []

        def busy_here(fn: Any) -> tuple[bool, None]:
            return False, None

        def read_on_pool(conn: sqlite3.Connection) -> None:
            threads.append(threading.get_ident())

        monkeypatch.setattr(point, "try_run", busy_here)
        await ej.store.read_point(read_on_pool)
        assert threads and threads[0] != on_loop
        assert (await ej.get(job_id, org="acme")).status is Status.QUEUED
        with pytest.raises(NotFound):
            await ej.get(job_id, org="other")
        monkeypatch.undo()

        # On the loop thread: the same answers, another org's job a NotFound.
        threads.clear()
        await ej.store.read_point(read_on_pool)
        assert threads == [on_loop]
        assert (await ej.get(job_id, org="acme")).status is Status.QUEUED
        with pytest.raises(NotFound):
            await ej.get(job_id, org="other")
    finally:
        await ej.close()
