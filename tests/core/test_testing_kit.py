"""``edgejobs.testing``: the fake clock, the temporary database and the stepped harness."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from edgejobs import EdgeJobs, EdgeJobsError, Status
from edgejobs.clock import Clock
from edgejobs.config import Config, RetryConfig, ScheduleConfig
from edgejobs.testing import DEFAULT_START, FakeClock, Harness, temporary_database


def test_fake_clock_moves_only_when_told() -> None:
    clock = FakeClock()
    assert isinstance(clock, Clock)
    assert clock.now() == DEFAULT_START
    start_ms, start_mono = clock.now_ms(), clock.monotonic()
    assert clock.now_ms() == start_ms and clock.monotonic() == start_mono
    clock.advance(1.5)
    assert clock.now_ms() == start_ms + 1500
    assert clock.monotonic() == pytest.approx(start_mono + 1.5)
    later = datetime(2030, 5, 1, 12, 0, tzinfo=UTC)
    clock.set(later)
    assert clock.now() == later
    assert clock.monotonic() == pytest.approx(
        start_mono + 1.5 + (later - DEFAULT_START).total_seconds() - 1.5
    )
    mono = clock.monotonic()
    clock.set(start_ms)  # back in wall-clock time: monotonic time stays
    assert clock.now_ms() == start_ms and clock.monotonic() == mono
    assert FakeClock(12345).now_ms() == 12345
    with pytest.raises(ValueError):
        clock.advance(-1)
    with pytest.raises(ValueError):
        clock.set(datetime(2030, 1, 1))  # naive


def test_temporary_database_is_removed_afterwards() -> None:
    with temporary_database() as path:
        assert not path.exists() and path.parent.is_dir()
        path.write_bytes(b"")
    assert not path.parent.exists()


async def _build(ctx: Any, params: dict[str, Any]) -> dict[str, int]:
    if params.get("month") == "bad" and ctx.attempt == 1:
        raise RuntimeError("no data yet")
    return {"rows": 42, "attempt": ctx.attempt}


def _app() -> EdgeJobs:
    """What a user's application module holds."""
    app = EdgeJobs(database="never-opened.db")
    app.job_type("reports.build", max_retries=2, base_delay_s=30)(_build)
    return app


async def test_harness_runs_the_apps_job_types_on_a_temporary_database() -> None:
    app = _app()
    async with Harness(app) as h:
        folder = h.path.parent
        assert h.path != Path("never-opened.db") and h.ej is not app
        job = await h.submit("reports.build", org="acme", params={"month": "bad"})
        for _ in range(5):
            await asyncio.sleep(0)  # let anything started in the background have its turn
        # Nothing runs by itself: no background task, no claim, no tick.
        background = [t.get_name() for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        assert not [name for name in background if name.startswith("edgejobs-")]
        assert h.ej.pool is not None and h.ej.ticker is not None
        assert h.ej.pool.running_count == 0 and h.ej.pool.running_ids == []
        assert h.ej.ticker.ticks == 0 and not h.ej.ticker.looping
        assert h.ej.ticker.last_tick_monotonic is None
        assert (await h.get(job.id)).status is Status.QUEUED
        assert await h.attempts(job.id) == []
        assert await h.run_once() == 1
        job = await h.get(job.id)
        assert job.status is Status.RETRYING
        assert isinstance(h.clock, FakeClock) and h.fake_clock is h.clock
        # The default config jitters the 30 s delay by up to 10 %.
        assert job.next_retry_at is not None
        assert 27_000 <= job.next_retry_at - h.clock.now_ms() <= 33_000
    assert not folder.exists()


async def test_harness_steps_retries_with_advance_and_tick() -> None:
    h = Harness(config=Config(retry=RetryConfig(jitter=False)))
    h.ej.job_type("reports.build", max_retries=2, base_delay_s=30)(_build)
    async with h:
        job = await h.submit("reports.build", org="acme", params={"month": "bad"})
        await h.drain()
        assert (await h.get(job.id)).status is Status.RETRYING
        h.advance(29)
        await h.drain()
        assert (await h.get(job.id)).status is Status.RETRYING
        h.advance(1)
        await h.tick()
        assert (await h.get(job.id)).status is Status.QUEUED
        await h.drain()
        done = await h.get(job.id)
        assert done.status is Status.COMPLETED and done.result == {"rows": 42, "attempt": 2}
        assert [a.outcome.value for a in await h.attempts(job.id) if a.outcome] == [
            "failed",
            "completed",
        ]


async def test_after_advance_a_due_retry_runs_at_drain_but_a_schedule_fires_at_tick() -> None:
    """What :meth:`Harness.advance` documents: drain picks up due retries and delayed jobs,
    while a due cron schedule fires only from tick()."""
    schedule = ScheduleConfig(name="every", cron="* * * * *", job_type="reports.build", org="o")
    h = Harness(config=Config(retry=RetryConfig(jitter=False), schedules=[schedule]))
    h.ej.job_type("reports.build", max_retries=2, base_delay_s=30)(_build)
    async with h:
        job = await h.submit("reports.build", org="acme", params={"month": "bad"})
        await h.drain()
        assert (await h.get(job.id)).status is Status.RETRYING
        h.advance(120)  # the retry and the next minute's schedule are both due
        await h.drain()
        assert (await h.get(job.id)).status is Status.COMPLETED  # no tick needed
        before, _ = await h.ej.list_jobs(org="o")
        await h.drain()
        assert (await h.ej.list_jobs(org="o"))[0] == before  # drain fires no schedule
        await h.tick()
        after, _ = await h.ej.list_jobs(org="o")
        assert len(after) == len(before) + 1


async def test_harness_registration_and_errors(tmp_path: Path) -> None:
    h = Harness(database=tmp_path / "mine.db", workers=2)
    seen: list[int] = []

    @h.ej.job_type("echo")
    async def echo(ctx: Any, params: dict[str, Any]) -> dict[str, Any]:
        seen.append(params["n"])
        return params

    with pytest.raises(EdgeJobsError):
        await h.run_once()  # not started
    async with h:
        for n in range(5):
            await h.submit("echo", org="acme", params={"n": n})
        assert await h.run_once() == 2  # two slots
        assert sorted(seen) == [0, 1]
        await h.drain()
        assert sorted(seen) == [0, 1, 2, 3, 4]
        scheduled = await h.submit(
            "echo", org="acme", params={"n": 9}, run_at=h.clock.now_ms() / 1000 + 60
        )
        await h.drain()
        assert (await h.get(scheduled.id)).status is Status.SCHEDULED
        h.advance(60)
        await h.drain()
        assert (await h.get(scheduled.id)).status is Status.COMPLETED
    assert (tmp_path / "mine.db").exists()  # a given database is kept


async def test_harness_with_a_real_clock_refuses_advance_and_fake_clock() -> None:
    from edgejobs.clock import SystemClock

    async with Harness(clock=SystemClock()) as h:
        with pytest.raises(EdgeJobsError):
            h.advance(1)
        with pytest.raises(EdgeJobsError, match="given a SystemClock, not a FakeClock"):
            h.fake_clock.advance(1)
        assert (
            abs(h.clock.now_ms() - datetime.now(UTC).timestamp() * 1000)
            < timedelta(minutes=1).total_seconds() * 1000
        )
