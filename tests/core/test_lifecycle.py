"""An EdgeJobs' life: start, stop, start again; close for good."""

from __future__ import annotations

import asyncio
import sqlite3
import stat
import threading
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from ej_testkit import count_drift

import edgejobs.runner.pool as pool_module
from edgejobs import EdgeJobs, Status
from edgejobs.config import Config
from edgejobs.errors import EdgeJobsError, NotFound, ShuttingDown


async def _double(ctx: Any, params: dict[str, Any]) -> int:
    return int(params["n"]) * 2


def _app(path: Path) -> EdgeJobs:
    ej = EdgeJobs(path)
    ej.register("double", _double)
    return ej


async def test_a_runner_stopped_and_started_again_takes_and_runs_jobs(tmp_path: Path) -> None:
    """``stop`` leaves the database open; a later ``start`` makes the instance the runner
    again. Submissions were refused for good after the first stop (ShuttingDown)."""
    ej = _app(tmp_path / "jobs.db")
    await ej.start()
    try:
        first = await ej.submit("double", org="acme", params={"n": 1})
        assert (await ej.wait(first.id, timeout=10)).result == 2
        await ej.stop()
        assert ej.stopping and not ej.is_runner
        with pytest.raises(ShuttingDown, match="this runner was stopped: start"):
            await ej.submit("double", org="acme", params={"n": 2})
        assert (await ej.get(first.id)).result == 2  # reads still work
        await ej.start()
        assert not ej.stopping and ej.is_runner
        again = await ej.submit("double", org="acme", params={"n": 3})
        done = await ej.wait(again.id, timeout=10)
        assert done.status is Status.COMPLETED and done.result == 6
    finally:
        await ej.close()


@pytest.mark.parametrize("runner", [True, False])
async def test_a_closed_instance_says_so_instead_of_failing_deep_inside(
    tmp_path: Path, runner: bool
) -> None:
    """Closing shuts the writer and reader threads down for good; opening again failed with
    "cannot schedule new futures after shutdown" (a runner) or worked on half-closed parts."""
    ej = _app(tmp_path / "jobs.db")
    if runner:
        await ej.start()
    job = await ej.submit("double", org="acme", params={"n": 1})
    await ej.close()
    attempts = {
        "start": ej.start,
        "open": ej.open,
        "submit": lambda: ej.submit("double", org="acme", params={"n": 2}),
        "get": lambda: ej.get(job.id),
    }
    for name, call in attempts.items():
        with pytest.raises(EdgeJobsError, match="closed") as caught:
            await call()
        assert not isinstance(caught.value, ShuttingDown), name
    await ej.close()  # closing twice is fine
    # The database is intact: a new instance opens it and finds the job.
    async with _app(tmp_path / "jobs.db") as fresh:
        assert (await fresh.wait(job.id, timeout=10)).result == 2


async def test_the_store_refuses_reads_and_writes_before_open_and_creates_no_file(
    tmp_path: Path,
) -> None:
    """A read connection is opened at the first read: before ``open`` that read created an
    empty database file (and failed with "not in WAL mode"); after ``close`` it failed with
    "cannot schedule new futures after shutdown"."""
    path = tmp_path / "jobs.db"
    ej = _app(path)
    calls = {
        "read": lambda: ej.store.read(lambda conn: conn.execute("SELECT 1").fetchone()),
        "read_point": lambda: ej.store.read_point(lambda conn: 1),
        "write": lambda: ej.store.write(lambda conn, tx: 1),
    }
    for name, call in calls.items():
        with pytest.raises(EdgeJobsError, match=r"is not open: call `await ej.open\(\)`"):
            await call()
        assert list(tmp_path.iterdir()) == [], name
    # The instance's own entry points open the database first, as a proper one.
    with pytest.raises(NotFound):
        await ej.get("ej_missing")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert await calls["read"]() is not None
    await ej.close()
    for call in calls.values():
        with pytest.raises(EdgeJobsError, match="the store is closed"):
            await call()
    with pytest.raises(EdgeJobsError, match="the store is closed"):
        await ej.store.open()


def _job_count(path: Path) -> int:
    with closing(sqlite3.connect(path)) as conn:
        assert count_drift(conn) == {}
        count: int = conn.execute("SELECT count(*) FROM jobs").fetchone()[0]
        return count


def test_a_client_serves_one_event_loop_after_another(tmp_path: Path) -> None:
    """A module-level client used from successive ``asyncio.run`` calls (or tests, each in its
    own loop): the second submit committed its job, then raised ``RuntimeError: ... attached
    to a different loop``. The client moves to each new loop: writes, reads and waits work."""
    path = tmp_path / "jobs.db"
    client = _app(path)

    async def submit(n: int) -> str:
        return (await client.submit("double", org="acme", params={"n": n})).id

    first = asyncio.run(submit(1))
    assert asyncio.run(submit(2)) != first

    async def gather() -> list[str]:
        # Concurrent first calls in a new loop: the store moves once.
        return await asyncio.gather(*(submit(n) for n in range(3, 8)))

    assert len(set(asyncio.run(gather()))) == 5
    paused = asyncio.new_event_loop()  # stopped between uses, not closed: moved back to
    try:
        paused.run_until_complete(submit(8))
        asyncio.run(submit(9))
        paused.run_until_complete(submit(10))
    finally:
        paused.close()

    async def wait_for_a_runner() -> int:
        # The wait wakes on another writer's commit: the client's WAL watch (or its polling)
        # moved to this loop with it.
        waiter = asyncio.create_task(client.wait(first, timeout=20))
        await asyncio.sleep(0)
        assert not waiter.done()
        async with _app(path):
            done = await waiter
        assert (await client.get(first)).status is Status.COMPLETED
        return int(done.result)

    assert asyncio.run(wait_for_a_runner()) == 2
    asyncio.run(client.close())
    assert _job_count(path) == 10


def test_a_runner_refuses_another_event_loop_before_writing(tmp_path: Path) -> None:
    """A started runner stays in its loop: from another one every call is refused with an
    ``EdgeJobsError`` before anything is queued (a submit used to commit and then fail)."""
    path = tmp_path / "jobs.db"
    ej = _app(path)
    home = asyncio.new_event_loop()
    try:
        home.run_until_complete(ej.start(run_workers=False))
        written: list[int] = []

        async def elsewhere() -> None:
            calls = {
                "submit": lambda: ej.submit("double", org="acme", params={"n": 1}),
                "open": ej.open,
                "start": ej.start,
                "drain": ej.drain,
                "write": lambda: ej.store.write(lambda conn, tx: written.append(1)),
            }
            for name, call in calls.items():
                with pytest.raises(EdgeJobsError, match="another event loop") as caught:
                    await call()
                assert type(caught.value) is EdgeJobsError, name

        asyncio.run(elsewhere())
        assert written == []
        job = home.run_until_complete(ej.submit("double", org="acme", params={"n": 2}))
        home.run_until_complete(ej.drain(timeout=10))
        assert home.run_until_complete(ej.get(job.id)).result == 4
    finally:
        home.run_until_complete(ej.close())
        home.close()
    assert _job_count(path) == 1


def test_a_client_in_use_by_a_running_loop_refuses_another(tmp_path: Path) -> None:
    """A client whose loop still runs (in another thread) is not taken away from it: another
    loop's calls are refused before anything is queued, and the home loop carries on."""
    path = tmp_path / "jobs.db"
    client = _app(path)
    home = asyncio.new_event_loop()
    thread = threading.Thread(target=home.run_forever, daemon=True)
    thread.start()
    try:
        asyncio.run_coroutine_threadsafe(client.open(), home).result(10)
        with pytest.raises(EdgeJobsError, match="still runs"):
            asyncio.run(client.submit("double", org="acme", params={"n": 1}))
        submitted = client.submit("double", org="acme", params={"n": 2})
        asyncio.run_coroutine_threadsafe(submitted, home).result(10)
        asyncio.run_coroutine_threadsafe(client.close(), home).result(10)
    finally:
        home.call_soon_threadsafe(home.stop)
        thread.join(10)
        home.close()
    assert _job_count(path) == 1


async def test_a_stop_that_cannot_write_its_requeues_says_which_jobs_stay_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """With another process holding the write lock past the stop's bounded wait, the stop
    ended with jobs left `running`, said nothing of them, and logged "Task exception was never
    retrieved ... the store is closed" from the write still retrying."""
    monkeypatch.setattr(pool_module, "OUTCOME_WRITE_WAIT_S", 0.5)
    config = Config.model_validate({"database": {"busy_timeout_ms": 100}})
    ej = EdgeJobs(database=tmp_path / "jobs.db", config=config)
    started = asyncio.Event()

    async def hangs(ctx: Any, params: dict[str, Any]) -> None:
        started.set()
        await asyncio.sleep(3600)

    ej.register("hangs", hangs, max_retries=0, dedup=False)
    await ej.start()
    job = await ej.submit("hangs", org="acme")
    await asyncio.wait_for(started.wait(), 10)
    holder = sqlite3.connect(tmp_path / "jobs.db", isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")  # another process's long write transaction
        pool = ej.pool
        assert pool is not None
        await ej.stop(grace_s=0)
        await ej.close()
        flush = pool._flush_task  # still retrying the requeue, had it outlived the store
        if flush is not None:
            await asyncio.wait_for(flush, 10)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    said = [r.getMessage() for r in caplog.records if "stay running" in r.getMessage()]
    assert len(said) == 1 and job.id in said[0]
    assert not [r for r in caplog.records if "never retrieved" in r.getMessage()]
    with closing(sqlite3.connect(tmp_path / "jobs.db")) as conn:
        status = conn.execute("SELECT status FROM jobs WHERE id = ?", (job.id,)).fetchone()[0]
    assert status == "running"  # for the next start to recover, as the warning says
