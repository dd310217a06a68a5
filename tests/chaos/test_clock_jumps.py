"""Wall-clock jumps: leases and timeouts are judged by the monotonic clock, so a jump forward
of a year neither expires healthy leases en masse nor lets retention delete young jobs, and a
jump back of a day does not leave due retries waiting a day."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from edgejobs import EdgeJobs, JobContext, Status
from edgejobs.config import Config
from edgejobs.store.rows import job_event_fields
from edgejobs.testing import FakeClock, Harness

DAY_S = 86_400.0
YEAR_S = 365 * DAY_S


class JumpClock:
    """A fake clock whose wall time can jump without the monotonic clock (what NTP or an
    operator setting the date does to a real machine)."""

    def __init__(self) -> None:
        self._wall_ms = FakeClock().now_ms()
        self._monotonic = 1000.0

    def now_ms(self) -> int:
        """Wall-clock unix milliseconds."""
        return self._wall_ms

    def monotonic(self) -> float:
        """Monotonic seconds."""
        return self._monotonic

    def advance(self, seconds: float) -> None:
        """Real time passes: both clocks move."""
        self._wall_ms += round(seconds * 1000)
        self._monotonic += seconds

    def jump_wall(self, seconds: float) -> None:
        """Only the wall clock moves (either way)."""
        self._wall_ms += round(seconds * 1000)


def _config() -> Config:
    return Config.model_validate(
        {
            "runner": {"lease_s": 30, "tick_interval_s": 1},
            "retry": {"base_delay_s": 60, "max_delay_s": 60, "jitter": False},
            "retention": {"days": 30, "interval_s": 3600},
        }
    )


class Kit:
    """A stepped runner on a :class:`JumpClock` with a gated and a failing job type."""

    def __init__(self, tmp_path: Any) -> None:
        self.clock = JumpClock()
        self.harness = Harness(config=_config(), database=tmp_path / "jobs.db", clock=self.clock)
        self.ej: EdgeJobs = self.harness.ej
        self.gate = asyncio.Event()
        self.ej.register("t.gated", self._gated, timeout_s=600, max_retries=2)
        self.ej.register("t.fail", self._fail, timeout_s=600, max_retries=2)

    async def _gated(self, ctx: JobContext, params: dict[str, Any]) -> int:
        await self.gate.wait()
        return ctx.attempt

    async def _fail(self, ctx: JobContext, params: dict[str, Any]) -> None:
        raise RuntimeError("try again later")


@pytest.fixture
async def kit(tmp_path: Any) -> Any:
    kit = Kit(tmp_path)
    await kit.harness.start()
    try:
        yield kit
    finally:
        kit.gate.set()
        await kit.harness.close()


async def test_a_year_forward_neither_expires_healthy_leases_nor_prunes_young_jobs(
    kit: Kit, caplog: pytest.LogCaptureFixture
) -> None:
    young = await kit.ej.submit("t.fail", org="acme", params={"young": 1})
    await kit.harness.drain()
    await kit.ej.cancel(young.id)  # a terminal job finished just now
    running = [await kit.ej.submit("t.gated", org="acme", params={"n": n}) for n in range(5)]
    assert await kit.ej.pool.claim_once() == 5  # type: ignore[union-attr]
    await kit.harness.tick()  # first tick: baseline, retention ran (nothing old)
    kit.clock.advance(1)

    kit.clock.jump_wall(YEAR_S)
    await kit.harness.tick()
    await kit.harness.tick()  # a second tick after the jump: retention stays held
    for job in running:
        assert (await kit.ej.get(job.id)).status is Status.RUNNING
    assert (await kit.ej.get(young.id)).status is Status.CANCELED  # not deleted
    assert any("jumped forward" in r.getMessage() for r in caplog.records)

    kit.gate.set()
    await kit.harness.drain()
    for job in running:
        done = await kit.ej.get(job.id)
        assert done.status is Status.COMPLETED and done.attempts == 1
        assert [a.outcome for a in await kit.ej.attempts(job.id)] == ["completed"]

    # A stalled attempt (no renewal for a whole lease by the monotonic clock) is still
    # recovered: the fix only spares leases this process kept renewing.
    kit.gate.clear()
    stalled = await kit.ej.submit("t.gated", org="acme", params={"stalled": 1})
    assert await kit.ej.pool.claim_once() == 1  # type: ignore[union-attr]
    kit.clock.advance(31)
    await kit.harness.tick()
    attempts = await kit.ej.attempts(stalled.id)
    assert [a.outcome for a in attempts] == ["lost"]


async def test_a_day_back_does_not_freeze_due_retries(
    kit: Kit, caplog: pytest.LogCaptureFixture
) -> None:
    job = await kit.ej.submit("t.fail", org="acme")
    await kit.harness.drain()
    await kit.harness.tick()  # baseline
    before = await kit.ej.get(job.id)
    assert before.status is Status.RETRYING  # due in 60 s
    kit.clock.advance(10)
    kit.clock.jump_wall(-DAY_S)
    await kit.harness.tick()
    assert any("jumped back" in r.getMessage() for r in caplog.records)
    kit.clock.advance(51)  # 61 s of real time after the failure
    await kit.harness.tick()
    await kit.harness.drain()
    assert [a.outcome for a in await kit.ej.attempts(job.id)] == ["failed", "failed"]


async def test_small_drift_is_not_a_jump(kit: Kit, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    await kit.harness.tick()
    for _ in range(5):
        kit.clock.advance(1)
        kit.clock.jump_wall(0.3)  # NTP-sized corrections
        await kit.harness.tick()
    assert not any("jumped" in r.getMessage() for r in caplog.records)
    assert kit.ej.ticker is not None and kit.ej.ticker.retention_held_until is None


async def test_a_jobs_updated_at_never_goes_back_with_the_wall_clock(kit: Kit) -> None:
    """A client orders a job's states by ``updated_at`` (the dashboard drops an event older
    than what it shows): after the wall clock was set back, every change carried an earlier
    time, and a dashboard kept showing a completed job as running."""
    job = await kit.ej.submit("t.gated", org="acme")
    assert await kit.ej.pool.claim_once() == 1  # type: ignore[union-attr]
    running = await kit.ej.get(job.id)
    kit.clock.jump_wall(-120)  # an NTP step back of two minutes
    kit.gate.set()
    await kit.harness.drain()
    done = await kit.ej.get(job.id)
    assert done.status is Status.COMPLETED
    assert done.updated_at >= running.updated_at
    events = [
        event
        for event in await kit.ej.store.read(
            lambda conn: list(
                conn.execute(
                    "SELECT data FROM events WHERE job_id = ? AND kind = 'job' ORDER BY id",
                    (job.id,),
                )
            )
        )
    ]
    times = [job_event_fields(row[0])["updated_at"] for row in events]
    assert times == sorted(times) and len(times) >= 3  # submitted, running, completed
