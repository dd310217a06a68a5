"""``/healthz`` (a real query and a ticking runner) and the storage figures in ``/metrics``."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from ej_testkit import asgi_client, poll_until
from ops_support import DAY_MS, connect, insert_jobs, make_app

import edgejobs.runner.executor as executor
import edgejobs.runner.maintenance as maintenance_module
import edgejobs.runner.ticks as ticks_module
from edgejobs import EdgeJobs
from edgejobs.clock import SystemClock
from edgejobs.errors import DatabaseBusy, StorageFull
from edgejobs.runner.maintenance import runner_health
from edgejobs.store.maintenance import file_sizes, open_checkpointer
from edgejobs.testing import FakeClock

INTERVAL_S = 1.0


@pytest.fixture
async def ej(db_path: Path, clock: FakeClock) -> AsyncIterator[EdgeJobs]:
    """A runner with its background tasks, on a fake clock (ticks come every real second)."""
    app = make_app(db_path, clock, runner={"tick_interval_s": INTERVAL_S})
    await app.start()
    try:
        yield app
    finally:
        await app.close()


@pytest.fixture
async def client(ej: EdgeJobs) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client on the app (its metrics started as the lifespan would)."""
    async with http_client(ej) as http:
        yield http


@contextlib.asynccontextmanager
async def http_client(ej: EdgeJobs) -> AsyncIterator[httpx.AsyncClient]:
    app = ej.asgi_app()
    await app.state.metrics.start(ej)
    try:
        async with asgi_client(app) as http:
            yield http
    finally:
        await app.state.metrics.stop()


def after_each_tick(ej: EdgeJobs) -> asyncio.Event:
    """An event set at the end of every tick (the last tick task; the tick ends right after)."""
    ticked = asyncio.Event()

    async def mark(now_ms: int) -> None:
        ticked.set()

    assert ej.ticker is not None
    ej.ticker.extra_tasks.append(mark)
    return ticked


async def test_a_stuck_tick_loop_turns_healthz_503_with_the_reason(
    db_path: Path, clock: FakeClock
) -> None:
    ej = make_app(db_path, clock, runner={"tick_interval_s": INTERVAL_S})
    await ej.start()
    assert ej.ticker is not None
    # The first tick hangs in a tick task: the loop stops ticking while time goes on.
    hanging, release = asyncio.Event(), asyncio.Event()

    async def hang(now_ms: int) -> None:
        hanging.set()
        await release.wait()

    ej.ticker.extra_tasks.append(hang)
    ticked = after_each_tick(ej)
    try:
        async with http_client(ej) as client:
            response = await client.get("/healthz")
            assert response.status_code == 200, response.text
            body = response.json()
            assert body["status"] == "ok" and body["reasons"] == []
            details = body["details"]
            assert details["database_bytes"] == file_sizes(ej.store.path).database_bytes > 0
            assert {"wal_bytes", "last_tick_age_s", "running", "running_here"} <= details.keys()

            await hanging.wait()
            clock.advance(2.5 * INTERVAL_S)
            assert (await client.get("/healthz")).status_code == 200  # within 3 intervals
            clock.advance(1.0 * INTERVAL_S)
            response = await client.get("/healthz")
            assert response.status_code == 503
            body = response.json()
            assert body["status"] == "unavailable" and body["runner"] == "stalled"
            assert body["database"] == "ok"  # the database answers; the runner does not tick
            assert any("tick loop has not run for 3.5 s" in r for r in body["reasons"])
            assert body["details"]["last_tick_age_s"] == pytest.approx(3.5)

            release.set()
            await ticked.wait()
            assert (await client.get("/healthz")).status_code == 200
    finally:
        await ej.close()


class ShiftedClock(SystemClock):
    """The real clock (a runner sleeps quietly only on it) whose monotonic time the test can
    move forward: what health reads, without waiting for it."""

    def __init__(self) -> None:
        self.shift_s = 0.0

    def monotonic(self) -> float:
        """Real monotonic seconds plus the shift."""
        return super().monotonic() + self.shift_s


async def test_a_tick_woken_from_a_quiet_sleep_gets_the_same_grace_as_any_tick(
    db_path: Path,
) -> None:
    """An idle runner sleeps up to 30 s between ticks. The tick a submission wakes it for may
    wait for the write lock (a backup, a CLI write): that is 3 intervals of grace from the
    wake, not a stall counted from the tick before the sleep (a liveness probe would kill a
    healthy runner)."""
    clock = ShiftedClock()
    ej = make_app(db_path, clock, runner={"tick_interval_s": INTERVAL_S})
    await ej.start()
    ticker = ej.ticker
    assert ticker is not None
    hanging, release = asyncio.Event(), asyncio.Event()

    async def hang(now_ms: int) -> None:
        hanging.set()
        await release.wait()

    try:
        await poll_until(
            lambda: ticker.quiet_until is not None,
            timeout=30,
            interval=0.01,
            message="the tick loop never slept quietly",
        )
        ticker.extra_tasks.append(hang)
        clock.shift_s += 25  # most of the quiet sleep has passed, on the clock health reads
        await ej.submit("quick", org="acme", params={"n": 1})  # ... and a submission ends it
        async with asyncio.timeout(30):
            await hanging.wait()
        async with http_client(ej) as client:
            assert (await client.get("/healthz")).status_code == 200
            clock.shift_s += 3.5 * INTERVAL_S
            response = await client.get("/healthz")
            assert response.status_code == 503  # a tick that really hangs is still caught
            assert response.json()["details"]["last_tick_age_s"] >= 3.5
    finally:
        release.set()
        await ej.close()


async def test_healthz_answers_while_slow_reads_hold_every_reader(
    ej: EdgeJobs, client: httpx.AsyncClient
) -> None:
    """Its query does not queue behind the reader pool: listings that scan a big org's
    history (hundreds of ms each) filling the pool made /healthz time out and answer 503."""
    readers = ej.store.reader.size
    started = threading.Barrier(readers + 1)
    release = threading.Event()

    def slow_listing(conn: Any) -> None:
        started.wait(timeout=30)
        release.wait(timeout=30)

    slow = [asyncio.create_task(ej.store.read(slow_listing)) for _ in range(readers)]
    try:
        await asyncio.to_thread(started.wait, 30)  # every reader thread is now busy
        response = await asyncio.wait_for(client.get("/healthz"), timeout=30)
        assert response.status_code == 200, response.text
        assert response.json()["database"] == "ok"
    finally:
        release.set()
        await asyncio.gather(*slow)


async def test_healthz_is_503_while_writes_fail_and_names_the_cause(
    db_path: Path, clock: FakeClock
) -> None:
    """Another process holding the write lock (or a full disk) stops every job while reads,
    the probe's own query included, still answer: the probe must say so."""
    ej = make_app(db_path, clock, runner={"tick_interval_s": 0.1}, database={"busy_timeout_ms": 20})
    await ej.start()
    try:
        async with http_client(ej) as client:
            assert (await client.get("/healthz")).status_code == 200
            other = connect(db_path)
            other.execute("BEGIN EXCLUSIVE")  # a wedged writer in another process
            try:
                with pytest.raises(DatabaseBusy):
                    await ej.submit("quick", org="acme", params={})
                response = await client.get("/healthz")
            finally:
                other.execute("ROLLBACK")
                other.close()
            assert response.status_code == 503
            body = response.json()
            assert body["status"] == "unavailable"
            assert body["database"].startswith("database_busy: ")
            assert any("database_busy" in reason for reason in body["reasons"])
            await ej.submit("quick", org="acme", params={})  # writes go through again
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 5
            while (response := await client.get("/healthz")).status_code != 200:
                assert loop.time() < deadline, response.text
                await asyncio.sleep(0.05)
            assert response.json()["database"] == "ok"
    finally:
        await ej.close()


async def healthz_until(client: httpx.AsyncClient, status: int) -> httpx.Response:
    """Ask ``/healthz`` until it answers ``status`` (AssertionError after 10 s)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while (response := await client.get("/healthz")).status_code != status:
        assert loop.time() < deadline, response.text
        await asyncio.sleep(0.05)
    return response


async def test_healthz_of_a_runner_that_writes_nothing_sees_the_lock_held_elsewhere(
    db_path: Path, clock: FakeClock
) -> None:
    """An idle runner writes nothing (a quiet tick loop sleeps up to 30 s; this stepped one
    never ticks), so another process holding the write lock went unnoticed: 200 while every
    submission waited the busy timeout and failed. Health's own empty write notices."""
    ej = make_app(db_path, clock, database={"busy_timeout_ms": 50})
    await ej.start(run_workers=False)
    try:
        async with http_client(ej) as client:
            assert (await client.get("/healthz")).status_code == 200
            other = connect(db_path)
            other.execute("BEGIN IMMEDIATE")  # a sqlite3 shell left in a transaction
            try:
                body = (await healthz_until(client, 503)).json()
                with pytest.raises(DatabaseBusy):  # what the 503 is about
                    await ej.submit("quick", org="acme", params={})
            finally:
                other.execute("ROLLBACK")
                other.close()
            assert body["database"].startswith("database_busy: ")
            assert any("database_busy" in reason for reason in body["reasons"])
            assert (await healthz_until(client, 200)).json()["database"] == "ok"
            await ej.submit("quick", org="acme", params={})
    finally:
        await ej.close()


async def test_healthz_is_503_while_shutting_down(ej: EdgeJobs, client: httpx.AsyncClient) -> None:
    await ej.stop(grace_s=0)
    response = await client.get("/healthz")
    assert response.status_code == 503
    assert "the runner is shutting down" in response.json()["reasons"]


async def test_a_long_retention_run_counts_as_progress_not_as_a_stall(
    clock: FakeClock, db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ej = make_app(db_path, clock, runner={"tick_interval_s": INTERVAL_S})
    await ej.open()
    old = clock.now_ms() - 40 * DAY_MS
    insert_jobs(db_path, 3000, prefix="old", status="completed", created_at=old, finished_at=old)
    real_delete = ticks_module.delete_old_jobs

    def slow_delete(conn: Any, tx: Any, **kwargs: Any) -> Any:
        clock.advance(INTERVAL_S)  # every batch "takes" a whole tick interval
        return real_delete(conn, tx, **kwargs)

    monkeypatch.setattr(ticks_module, "delete_old_jobs", slow_delete)
    seen: list[tuple[str, ...]] = []
    ej.add_commit_listener(lambda tx: seen.append(runner_health(ej).reasons))
    await ej.start()  # retention is due at the first tick: 7 batches, 7 "seconds"
    try:
        await after_each_tick(ej).wait()
        assert ej.ticker is not None and ej.ticker.last_progress_monotonic is not None
        assert len(seen) >= 7 and all(reasons == () for reasons in seen), seen
        clock.advance(3.5 * INTERVAL_S)  # the check is still live: it can fail
        assert runner_health(ej).reasons
    finally:
        await ej.close()


async def test_a_tick_copying_a_large_wal_back_is_busy_not_stalled(
    clock: FakeClock, db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Copying a WAL of gigabytes back (a long reader had let it grow) takes the tick seconds:
    /healthz answered 503 "the tick loop has not run" meanwhile, each one a restart from a
    liveness probe. A checkpoint in progress counts as life, up to a bound."""
    ej = make_app(db_path, clock, runner={"tick_interval_s": INTERVAL_S})
    real = ej.maintenance._checkpoint_sync
    seen: list[tuple[str, ...]] = []

    held = asyncio.Event()
    release = asyncio.Event()

    def slow(truncate: bool | None) -> Any:
        clock.advance(3.5 * INTERVAL_S)  # past the tick limit of 3 intervals
        seen.append(runner_health(ej).reasons)
        return real(truncate)

    async def held_tick() -> None:
        held.set()
        await release.wait()

    await ej.start()
    try:
        await ej.submit("quick", org="acme")
        # The tick loop held inside a tick (as one copying the WAL back is): a tick of its own
        # ending between the clock's advance and the look at health would hide the stall.
        assert ej.ticker is not None
        monkeypatch.setattr(ej.ticker, "tick", held_tick)
        await asyncio.wait_for(held.wait(), timeout=30)
        monkeypatch.setattr(ej.maintenance, "_checkpoint_sync", slow)
        await ej.maintenance.checkpoint()
        assert seen and seen[-1] == (), seen
        assert ej.maintenance.checkpointing_since is None  # over: judged by the ticks again
        monkeypatch.setattr(maintenance_module, "CHECKPOINT_HEALTH_GRACE_S", 0.0)
        await ej.maintenance.checkpoint()  # a hung one is still said
        assert any("the tick loop has not run" in reason for reason in seen[-1]), seen
    finally:
        release.set()
        await ej.close()


async def test_a_runner_stepped_by_tests_is_not_judged_by_its_ticks(
    db_path: Path, clock: FakeClock
) -> None:
    ej = make_app(db_path, clock)
    await ej.start(run_workers=False)
    try:
        clock.advance(3600)
        health = runner_health(ej)
        assert health.ok and health.details["last_tick_age_s"] is None
    finally:
        await ej.close()


async def test_metrics_show_database_and_wal_sizes(ej: EdgeJobs, client: httpx.AsyncClient) -> None:
    job = await ej.submit("quick", org="acme", params={"n": 1})
    # The job done first: a completion committed while the tick's PASSIVE checkpoint runs
    # leaves it partial, and this test counts complete ones.
    await ej.wait(job.id, timeout=10)
    assert ej.ticker is not None
    await ej.ticker.tick()
    # The fixture's runner ticks every second, and a tick may checkpoint the WAL between the
    # scrape and the test's own look at the files: compare only a scrape the files did not
    # change around.
    for _ in range(50):
        before = file_sizes(ej.store.path)
        text = (await client.get("/metrics")).text
        sizes = file_sizes(ej.store.path)
        if sizes == before:
            break
    values = {
        line.split(" ")[0]: float(line.split(" ")[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }
    assert values["edgejobs_database_size_bytes"] == sizes.database_bytes > 0
    assert values["edgejobs_wal_size_bytes"] == sizes.wal_bytes
    assert "edgejobs_tick_age_seconds" in values
    assert values['edgejobs_wal_checkpoints_total{mode="passive",outcome="complete"}'] >= 1
    assert "edgejobs_database_free_bytes" in values


async def test_async_handlers_that_outlive_their_attempt_are_counted_and_said(
    db_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An async handler that catches the cancellation sent at its deadline runs on, abandoned;
    sync handlers' threads were counted and logged, these tasks were not. One that honours
    the cancellation (even after awaiting its clean-up) is not counted."""
    monkeypatch.setattr(executor, "ABANDON_CHECK_S", 0.05)
    checked: list[str] = []
    check = executor._check_abandoned

    def check_and_note(task: asyncio.Task[Any], ctx: Any, outcome: Any) -> None:
        check(task, ctx, outcome)
        checked.append(ctx.job_id)

    monkeypatch.setattr(executor, "_check_abandoned", check_and_note)
    release = asyncio.Event()
    ej = make_app(db_path, SystemClock())

    async def ignores_its_timeout(ctx: Any, params: dict[str, Any]) -> None:
        while not release.is_set():
            try:
                await release.wait()
            except asyncio.CancelledError:
                continue  # swallowed: the handler goes on waiting

    async def cleans_up(ctx: Any, params: dict[str, Any]) -> None:
        try:
            await asyncio.sleep(60)
        finally:
            await asyncio.sleep(0.01)  # its clean-up awaits, then the cancellation ends it

    ej.register("stuck", ignores_its_timeout, timeout_s=0.1, max_retries=0, dedup=False)
    ej.register("tidy", cleans_up, timeout_s=0.1, max_retries=0, dedup=False)
    await ej.start()
    try:
        tidy = await ej.submit("tidy", org="acme")
        assert (await ej.wait(tidy.id, timeout=10)).status.value == "timed_out"
        await poll_until(
            lambda: tidy.id in checked, timeout=10, interval=0.01, message="tidy unchecked"
        )
        assert runner_health(ej).details["abandoned_tasks"] == 0
        stuck = await ej.submit("stuck", org="acme")
        assert (await ej.wait(stuck.id, timeout=10)).status.value == "timed_out"
        await poll_until(
            lambda: stuck.id in checked, timeout=10, interval=0.01, message="stuck unchecked"
        )
        assert runner_health(ej).details["abandoned_tasks"] == 1
        warnings = [r for r in caplog.records if "abandoned until it returns" in r.getMessage()]
        assert [r.levelname for r in warnings] == ["WARNING"]
        assert stuck.id in warnings[0].getMessage() and "timed out" in warnings[0].getMessage()
        async with http_client(ej) as http:
            assert (await http.get("/healthz")).json()["details"]["abandoned_tasks"] == 1
            assert "edgejobs_abandoned_tasks 1.0" in (await http.get("/metrics")).text
        release.set()
        await poll_until(
            lambda: runner_health(ej).details["abandoned_tasks"] == 0,
            timeout=10,
            interval=0.02,
            message="the returned task is still counted",
        )
    finally:
        release.set()
        await ej.close()


async def test_healthz_and_metrics_count_handler_threads_that_outlive_their_attempt(
    db_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sync handler that ignores its timeout is abandoned: its slot freed, its job retried
    or ended, and its thread runs on, counted and said. One that checks ``ctx.cancelled`` and
    returns, as SPEC asks, is neither counted nor warned about (it was, at once, before it
    had time to look)."""
    monkeypatch.setattr(executor, "ABANDON_CHECK_S", 0.2)
    checked: list[str] = []
    check = executor._check_abandoned_thread

    def check_and_note(thread: threading.Thread, ctx: Any, interrupted: bool) -> None:
        check(thread, ctx, interrupted)
        checked.append(ctx.job_id)

    monkeypatch.setattr(executor, "_check_abandoned_thread", check_and_note)
    release = threading.Event()
    ej = make_app(db_path, SystemClock())

    def ignores_its_timeout(ctx: Any, params: dict[str, Any]) -> None:
        release.wait(60)  # never looks at ctx.cancelled

    def cooperates(ctx: Any, params: dict[str, Any]) -> None:
        while not ctx.cancelled and not release.is_set():
            time.sleep(0.01)

    ej.register("stuck", ignores_its_timeout, timeout_s=0.1, max_retries=0, dedup=False)
    ej.register("polite", cooperates, timeout_s=0.1, max_retries=0, dedup=False)
    await ej.start()
    try:
        polite = await ej.submit("polite", org="acme")
        assert (await ej.wait(polite.id, timeout=10)).status.value == "timed_out"
        await poll_until(
            lambda: polite.id in checked, timeout=10, interval=0.01, message="polite unchecked"
        )
        assert runner_health(ej).details["abandoned_threads"] == 0
        job = await ej.submit("stuck", org="acme")
        assert (await ej.wait(job.id, timeout=10)).status.value == "timed_out"
        await poll_until(
            lambda: job.id in checked, timeout=10, interval=0.01, message="stuck unchecked"
        )
        warnings = [r for r in caplog.records if "abandoned until the handler" in r.getMessage()]
        assert [r.levelname for r in warnings] == ["WARNING"]
        assert job.id in warnings[0].getMessage() and "timed out" in warnings[0].getMessage()
        async with http_client(ej) as http:
            body = (await http.get("/healthz")).json()
            assert body["status"] == "ok"
            assert body["details"]["abandoned_threads"] == 1
            assert "edgejobs_abandoned_threads 1.0" in (await http.get("/metrics")).text
            release.set()
            await poll_until(
                lambda: runner_health(ej).details["abandoned_threads"] == 0,
                timeout=10,
                interval=0.02,
                message="the released thread is still counted",
            )
    finally:
        release.set()
        await ej.close()


async def set_page_limit(ej: EdgeJobs, pages: int) -> None:
    """Set ``max_page_count`` on the writer's connection (SQLite keeps at least the current
    size): the project's way to make the database "full" without filling a disk."""

    def op(conn: sqlite3.Connection, tx: Any) -> None:
        conn.execute(f"PRAGMA max_page_count = {int(pages)}")

    await ej.store.write(op)


async def test_healthz_of_an_idle_runner_sees_a_full_database_before_any_write_fails(
    db_path: Path, clock: FakeClock
) -> None:
    """An empty COMMIT succeeds on a full disk: the probe asks whether a page could be had,
    and says so without writing anything; back to 200 as soon as there is room."""
    ej = make_app(db_path, clock)
    await ej.start(run_workers=False)
    try:
        async with http_client(ej) as client:
            assert (await client.get("/healthz")).status_code == 200
            await set_page_limit(ej, 1)
            changed, wal = ej.store.writer.rows_changed, file_sizes(db_path).wal_bytes
            body = (await healthz_until(client, 503)).json()
            assert body["database"].startswith("storage_full: the database file is full"), body
            assert any("storage_full" in reason for reason in body["reasons"])
            assert ej.store.writer.last_failure is None  # no write of the runner failed
            assert ej.store.writer.rows_changed == changed  # the probe wrote nothing
            assert file_sizes(db_path).wal_bytes == wal
            with pytest.raises(StorageFull):  # what the 503 is about
                await ej.submit("quick", org="acme", params={"pad": "p" * 20_000})
            await set_page_limit(ej, 1_073_741_823)
            await ej.submit("quick", org="acme", params={"pad": "p" * 20_000})
            assert (await healthz_until(client, 200)).json()["database"] == "ok"
    finally:
        await ej.close()


async def test_healthz_says_503_when_the_file_system_has_no_space_left(
    db_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full file system (no page fits) is seen from its free space: a real full disk cannot
    be made here without root, so the system's answer is replaced by one with no block free."""
    ej = make_app(db_path, clock)
    await ej.start(run_workers=False)
    try:
        async with http_client(ej) as client:
            assert (await client.get("/healthz")).status_code == 200
            real = os.statvfs(db_path.parent)
            full = os.statvfs_result((*real[:3], 0, 0, *real[5:]))
            monkeypatch.setattr(os, "statvfs", lambda path: full)
            body = (await healthz_until(client, 503)).json()
            assert body["database"].startswith("storage_full: the disk is full: 0 bytes"), body
            monkeypatch.setattr(os, "statvfs", lambda path: real)
            assert (await healthz_until(client, 200)).json()["database"] == "ok"
    finally:
        await ej.close()


async def test_a_database_moved_away_under_a_runner_is_not_created_again_empty(
    db_path: Path, clock: FakeClock
) -> None:
    """Moved (or deleted) while the runner runs: the writer keeps the file it has open, but a
    connection opened afterwards — a reader's first read, a checkpoint — created an empty
    database at the old path, which the next start would have taken for a new one (every job
    left behind in the moved file). Only the store's start creates the file: the others fail,
    and ``/healthz`` says so."""
    ej = make_app(db_path, clock)
    await ej.start(run_workers=False)
    try:
        async with http_client(ej) as client:
            assert (await client.get("/healthz")).status_code == 200
            moved = db_path.with_name("moved.db")
            db_path.rename(moved)
            ej.store.point_reader.close()  # the next read opens a new connection
            response = await client.get("/healthz")
            assert response.status_code == 503, response.text
            assert response.json()["database"] != "ok"
            with pytest.raises(sqlite3.OperationalError):
                open_checkpointer(db_path, ej.store.pragmas, busy_timeout_ms=50)
            assert not db_path.exists()
            assert moved.exists()
    finally:
        await ej.close()
    assert not db_path.exists()
