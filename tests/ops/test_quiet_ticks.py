"""A quiet runner does not wake every tick interval (the tick loop, the watchdog and the lease
renewal wait for work), and any write, its own or another process's, ends the quiet."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from ej_testkit import poll_until
from ops_support import connect, insert_jobs, make_app

from edgejobs import EdgeJobs
from edgejobs.errors import StorageFull
from edgejobs.runner.maintenance import runner_health
from edgejobs.runner.ticks import QUIET_MAX_S, Ticker, TickSettings
from edgejobs.runner.watchdog import LoopWatchdog
from edgejobs.testing import FakeClock, Harness

INTERVAL_S = 1.0


async def until(predicate: Callable[[], bool]) -> None:
    await poll_until(predicate, timeout=10, interval=0.01, message="condition not met in 10 s")


async def settled_quiet(ticker: Ticker, interval: float) -> int:
    """Wait until the tick loop sleeps quietly and stays asleep for ten intervals; return its
    tick count. (Start-up ends with a checkpoint on a connection of its own, which the writer
    sees as another process's commit: it ends the first quiet sleep once.)"""
    for _ in range(10):
        await until(lambda: ticker.quiet_until is not None)
        ticks = ticker.ticks
        await asyncio.sleep(10 * interval)  # a ticking loop would tick ten times meanwhile
        if ticker.ticks == ticks and ticker.quiet_until is not None:
            return ticks
    raise AssertionError("the tick loop never stayed quiet")


@contextlib.asynccontextmanager
async def quiet_runner(db_path: Path) -> AsyncIterator[tuple[EdgeJobs, Ticker, int]]:
    """A started runner on the real clock (ticks every 50 ms when not quiet) once its tick
    loop sleeps quietly: the runner, its ticker and the tick count then."""
    interval = 0.05
    ej = make_app(db_path, runner={"tick_interval_s": interval})
    async with ej:
        ticker = ej.ticker
        assert ticker is not None
        yield ej, ticker, await settled_quiet(ticker, interval)


def quiet_ticker(h: Harness, busy: list[bool]) -> Ticker:
    """A ticker on the harness's store that may sleep quietly (the harness's own ticker, on a
    fake clock, always ticks every interval)."""
    ej = h.ej
    return Ticker(
        ej.store,
        ej.registry,
        h.clock,
        TickSettings(interval_s=INTERVAL_S),
        trim_events=ej.maintenance.trim_events,
        changes=lambda: ej.store.writer.rows_changed,
        busy=lambda: busy[0],
    )


async def test_the_quiet_sleep_lasts_until_the_next_due_time_and_only_while_nothing_moves() -> None:
    async with Harness() as h:

        @h.ej.job_type("later", dedup=False, max_retries=0)
        async def later(ctx: Any, params: dict[str, Any]) -> None:
            return None

        busy = [False]
        ticker = quiet_ticker(h, busy)

        await ticker.tick()
        assert ticker.quiet_sleep_s() is None  # the first tick: start-up has just written
        retention_ran_ms = h.clock.now_ms()  # the first tick runs retention
        await ticker.tick()
        assert ticker.quiet_sleep_s() == QUIET_MAX_S  # nothing written, nothing due

        await h.submit("later", org="acme", delay_s=10)
        await ticker.tick()
        assert ticker.quiet_sleep_s() is None  # a write since the last tick
        h.advance(4)
        await ticker.tick()
        assert ticker.quiet_sleep_s() == pytest.approx(6.0)  # until the scheduled job is due

        h.advance(5.5)
        await ticker.tick()
        assert ticker.quiet_sleep_s() is None  # due within one interval: tick as usual
        h.advance(1)
        await ticker.tick()  # promotes the job: work found
        assert ticker.quiet_sleep_s() is None
        assert (await h.ej.list_jobs(org="acme"))[0][0].status.value == "queued"

        await ticker.tick()
        assert ticker.quiet_sleep_s() == QUIET_MAX_S  # a queued job needs the pool, not ticks
        busy[0] = True
        await ticker.tick()
        assert ticker.quiet_sleep_s() is None  # attempts running: leases to watch
        busy[0] = False
        await ticker.tick()
        assert ticker.quiet_sleep_s() == QUIET_MAX_S

        # Retention falls due: the sleep ends then; while a clock jump holds it, it does not.
        retention_due_ms = retention_ran_ms + int(TickSettings().retention_interval_s * 1000)
        h.advance((retention_due_ms - 10_000 - h.clock.now_ms()) / 1000)
        await ticker.tick()
        assert ticker.quiet_sleep_s() == pytest.approx(10.0, abs=0.1)
        ticker.retention_held_until = h.clock.monotonic() + 3600
        h.advance(20)
        await ticker.tick()
        assert ticker.quiet_sleep_s() == QUIET_MAX_S

        ticker.wake_by.append(lambda: h.clock.now_ms() + 5_000)
        await ticker.tick()
        assert ticker.quiet_sleep_s() == pytest.approx(5.0)  # a tick task's own due time
        ticker.wake_by.append(lambda: 0)
        await ticker.tick()
        assert ticker.quiet_sleep_s() is None  # one that is due: tick as usual


async def test_a_tick_that_failed_is_followed_by_a_tick_not_a_quiet_sleep() -> None:
    # A locked or full database fails the tick's own write (an EdgeJobsError, which the loop
    # logs and survives): what it should have promoted or recovered is still there, so the
    # loop must tick again after one interval, not sleep on the last good tick's verdict.
    async with Harness() as h:
        ticker = quiet_ticker(h, [False])
        await ticker.tick()
        ticker.quiet_sleep_s()  # the first tick
        await ticker.tick()
        assert ticker.quiet_sleep_s() == QUIET_MAX_S

        def disk_full(stage: str, commit: int) -> None:
            if stage == "before_commit":
                raise StorageFull("the disk is full: nothing was written")

        h.ej.store.writer.fault_hook = disk_full
        with pytest.raises(StorageFull):
            await ticker.tick()
        h.ej.store.writer.fault_hook = None
        assert ticker.quiet_sleep_s() is None
        await ticker.tick()
        assert ticker.quiet_sleep_s() == QUIET_MAX_S  # a good tick again: quiet again


async def test_an_expiring_lease_bounds_the_quiet_sleep() -> None:
    async with Harness() as h:
        busy = [False]
        ticker = quiet_ticker(h, busy)
        now = h.clock.now_ms()
        # A job another runner left running, its lease ending in 12 s.
        insert_jobs(h.path, 1, prefix="left", status="running", created_at=now, finished_at=None)
        with closing(connect(h.path)) as conn:
            conn.execute("UPDATE jobs SET lease_expires_at = ?", (now + 12_000,))
        await ticker.tick()
        assert ticker.quiet_sleep_s() is None  # the first tick
        await ticker.tick()
        assert ticker.quiet_sleep_s() == pytest.approx(12.0)


async def test_an_idle_runner_stops_ticking_and_stays_healthy_until_a_write_wakes_it(
    db_path: Path,
) -> None:
    async with quiet_runner(db_path) as (ej, ticker, quiet_ticks):
        health = runner_health(ej)
        assert health.ok, health.reasons
        assert health.details["last_tick_age_s"] == 0.0

        job = await ej.submit("quick", org="acme", params={"n": 1})
        await until(lambda: ticker.ticks > quiet_ticks)
        assert (await ej.wait(job.id, timeout=10)).result == {"n": 1}


async def test_another_process_commit_ends_the_quiet(db_path: Path) -> None:
    async with quiet_runner(db_path) as (_, ticker, quiet_ticks):
        # Another connection's commit (a CLI in another process would do the same).
        insert_jobs(db_path, 1, prefix="elsewhere", status="queued", created_at=0, finished_at=None)
        await until(lambda: ticker.ticks > quiet_ticks)


async def test_a_runner_on_an_injected_clock_ticks_every_interval(db_path: Path) -> None:
    # Tests move a fake clock by hand; a sleep until a due time would not see it.
    ej: EdgeJobs = make_app(db_path, FakeClock(), runner={"tick_interval_s": 0.05})
    async with ej:
        ticker = ej.ticker
        assert ticker is not None
        await until(lambda: ticker.ticks >= 5)
        assert ticker.quiet_until is None


async def test_the_watchdog_waits_for_an_attempt_instead_of_waking() -> None:
    looks = 0
    running: list[str] = []
    busy = asyncio.Event()
    waiting = False

    def jobs() -> list[str]:
        nonlocal looks
        looks += 1
        return list(running)

    async def wait_busy() -> None:
        nonlocal waiting
        waiting = True
        await busy.wait()

    watchdog = LoopWatchdog(jobs, interval_s=0.01, threshold_s=10, wait_busy=wait_busy)
    task = asyncio.create_task(watchdog.run())
    try:
        await until(lambda: waiting)  # nothing running: it waits for an attempt...
        for _ in range(3):
            await asyncio.sleep(0)  # (event-loop turns, not time)
        assert looks == 1  # ...having looked once, and no timer of its own brings it back
        running.append("job-1")
        busy.set()
        await until(lambda: looks > 5)  # an attempt runs: it watches
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
