"""Retries under a fake clock: the backoff schedule, jitter, PermanentError, no-retry types,
exhaustion, lost attempts and the fresh budget of a manual retry (SPEC §2 rules 2, 4, 6)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from core_support import BASE_DELAY_S, MAX_DELAY_S, CoreKit, illegal_moves, rows

from edgejobs import Status
from edgejobs.config import Config, RetryConfig, RunnerConfig
from edgejobs.retry import RetryPolicy, backoff_delay_s
from edgejobs.store.rows import job_event_fields
from edgejobs.testing import FakeClock


def expected_delay_s(n: int, base: float = BASE_DELAY_S, maximum: float = MAX_DELAY_S) -> float:
    return float(min(maximum, base * 2 ** (n - 1)))


@pytest.mark.parametrize(
    ("base", "maximum"), [(60.0, 3600.0), (1.0, 5.0), (0.5, 0.5), (0.0, 0.0), (7.0, 10_000.0)]
)
def test_backoff_formula_without_jitter(base: float, maximum: float) -> None:
    policy = RetryPolicy(base, maximum, jitter=False)
    for n in range(1, 80):
        assert backoff_delay_s(n, policy) == expected_delay_s(n, base, maximum)


def test_backoff_jitter_stays_within_ten_percent_and_varies() -> None:
    policy = RetryPolicy(60.0, 3600.0, jitter=True)
    rng = random.Random(5)
    for n in range(1, 10):
        exact = expected_delay_s(n, 60.0, 3600.0)
        delays = [backoff_delay_s(n, policy, rng) for _ in range(300)]
        assert all(0.9 * exact <= d <= 1.1 * exact for d in delays)
        assert max(delays) - min(delays) > 0.1 * exact  # it does spread them
    with pytest.raises(ValueError):
        backoff_delay_s(0, policy)


async def test_schedule_of_retries_is_exact_without_jitter(kit: CoreKit) -> None:
    """t.many has 6 retries: delays 10, 20, 40, 80, 100, 100 s, then dead_letter."""
    job = await kit.submit("t.many", params={"mode": "fail"})
    for n in range(1, 7):
        assert await kit.harness.run_once() == 1
        row = kit.row(job.id)
        assert row["status"] == "retrying", n
        failed_at = row["updated_at"]
        assert failed_at == kit.clock.now_ms()
        assert row["next_retry_at"] - failed_at == expected_delay_s(n) * 1000
        # Not due one millisecond early: neither a tick nor a claim starts it.
        kit.clock.advance(expected_delay_s(n) - 0.001)
        await kit.harness.tick()
        assert await kit.harness.run_once() == 0
        assert kit.status(job.id) is Status.RETRYING
        kit.clock.advance(0.001)
        await kit.harness.tick()
        assert kit.status(job.id) is Status.QUEUED
        assert kit.row(job.id)["next_retry_at"] is None  # no retry pending any more
    assert await kit.harness.run_once() == 1
    row = kit.row(job.id)
    assert row["status"] == "dead_letter" and row["attempts"] == 7
    assert row["next_retry_at"] is None and row["finished_at"] == kit.clock.now_ms()
    outcomes = [a["outcome"] for a in kit.attempt_rows(job.id)]
    assert outcomes == ["failed"] * 7
    assert "boom on attempt 7" in row["error"]
    assert not illegal_moves(kit.path)


async def test_jittered_retries_stay_within_ten_percent(db_path: Path, clock: FakeClock) -> None:
    config = Config(
        retry=RetryConfig(base_delay_s=100, max_delay_s=1000, jitter=True),
        runner=RunnerConfig(workers=64),
    )
    kit = await CoreKit(db_path, clock, config=config).start()
    try:
        jobs = [await kit.submit("t.many", params={"mode": "fail"}) for _ in range(40)]
        for n in (1, 2, 3):
            await kit.harness.drain()
            delays = []
            for job in jobs:
                row = kit.row(job.id)
                assert row["status"] == "retrying"
                delays.append((row["next_retry_at"] - row["updated_at"]) / 1000)
            exact = min(1000, 100 * 2 ** (n - 1))
            assert all(0.9 * exact <= d <= 1.1 * exact for d in delays), (n, delays)
            assert len(set(delays)) > 1, "jitter spreads retries that failed together"
            clock.advance(1.1 * exact + 1)
            await kit.harness.tick()
    finally:
        await kit.close()


async def test_permanent_error_fails_at_once_despite_retries_left(kit: CoreKit) -> None:
    job = await kit.submit("t.many", params={"mode": "permanent"})
    await kit.harness.drain()
    row = kit.row(job.id)
    assert row["status"] == "failed" and row["attempts"] == 1 and row["next_retry_at"] is None
    error = (await kit.ej.get(job.id)).error
    assert error is not None and error.type == "PermanentError"
    assert error.message == "this cannot work" and "Traceback" in (error.traceback or "")


async def test_no_retry_type_ends_failed_or_timed_out(kit: CoreKit) -> None:
    failed = await kit.submit("t.once", params={"mode": "fail"})
    hung = await kit.submit("t.once", params={"mode": "hang"})
    await kit.harness.drain()
    assert kit.status(failed.id) is Status.FAILED
    assert kit.status(hung.id) is Status.TIMED_OUT
    assert [a["outcome"] for a in kit.attempt_rows(failed.id)] == ["failed"]
    assert [a["outcome"] for a in kit.attempt_rows(hung.id)] == ["timed_out"]
    error = (await kit.ej.get(hung.id)).error
    assert error is not None and error.type == "TimeoutError"


async def test_retries_exhausted_end_dead_letter(kit: CoreKit) -> None:
    """The last allowed attempt failing or timing out ends the job ``dead_letter``."""
    kit.ej.register("t.short", kit._handler, timeout_s=0.1, max_retries=1)
    failing = await kit.submit(params={"mode": "fail"})
    hanging = await kit.submit("t.short", params={"mode": "hang"})
    await kit.harness.drain()
    assert kit.status(failing.id) is Status.RETRYING
    assert kit.status(hanging.id) is Status.RETRYING
    kit.clock.advance(BASE_DELAY_S)
    await kit.harness.drain()
    for job, outcome in ((failing, "failed"), (hanging, "timed_out")):
        row = kit.row(job.id)
        assert row["status"] == "dead_letter" and row["attempts"] == 2
        assert [a["outcome"] for a in kit.attempt_rows(job.id)] == [outcome, outcome]


async def test_lost_attempts_retry_then_end_dead_letter(kit: CoreKit) -> None:
    """An expired lease is a lost attempt: retried under the policy, dead when none is left."""
    job = await kit.submit(params={"mode": "gate", "gate": "stuck"})
    once = await kit.submit("t.once", params={"mode": "gate", "gate": "stuck"})
    await kit.pool.claim_once()
    kit.clock.advance(kit.ej.config.runner.lease_s + 1)
    await kit.harness.tick()
    await kit.settle()
    row = kit.row(job.id)
    assert row["status"] == "retrying"
    assert row["next_retry_at"] == kit.clock.now_ms() + BASE_DELAY_S * 1000
    assert kit.status(once.id) is Status.DEAD_LETTER  # max_retries = 0 and lost
    for j in (job, once):
        attempts = kit.attempt_rows(j.id)
        assert [a["outcome"] for a in attempts] == ["lost"]
        assert attempts[0]["error_type"] == "Lost"
    # The recovered attempts were stopped in this process too.
    assert kit.pool.running_count == 0


async def test_manual_retry_gives_a_fresh_budget_and_keeps_history(kit: CoreKit) -> None:
    job = await kit.submit(params={"mode": "fail"})  # t.work: one retry
    await kit.harness.drain()
    kit.clock.advance(BASE_DELAY_S)
    await kit.harness.drain()
    assert kit.status(job.id) is Status.DEAD_LETTER
    retried = await kit.ej.retry(job.id)
    assert retried.status is Status.QUEUED and retried.attempts == 2
    assert retried.finished_at is None and retried.next_retry_at is None
    # Fresh budget: the next failure retries again instead of ending dead_letter.
    await kit.harness.drain()
    row = kit.row(job.id)
    assert row["status"] == "retrying" and row["attempts"] == 3
    assert row["next_retry_at"] - row["updated_at"] == BASE_DELAY_S * 1000  # retry #1 again
    kit.clock.advance(BASE_DELAY_S)
    await kit.harness.drain()
    assert kit.status(job.id) is Status.DEAD_LETTER
    attempts = kit.attempt_rows(job.id)
    assert [a["number"] for a in attempts] == [1, 2, 3, 4]
    assert all(a["outcome"] == "failed" for a in attempts)
    assert [a["error_message"] for a in attempts] == [f"boom on attempt {n}" for n in range(1, 5)]
    assert not illegal_moves(kit.path)


async def test_manual_retry_of_a_completed_or_pending_job_is_a_conflict(kit: CoreKit) -> None:
    from edgejobs import Conflict

    done = await kit.submit()
    pending = await kit.submit(delay_s=60)
    await kit.harness.drain()
    for job in (done, pending):
        before = kit.row(job.id)
        with pytest.raises(Conflict):
            await kit.ej.retry(job.id)
        assert kit.row(job.id) == before


async def test_a_promoted_retry_shows_no_next_retry(kit: CoreKit) -> None:
    """``next_retry_at`` is the pending retry's time: gone once the retry is promoted, so the
    queued job and its ``job`` event do not show a retry that already happened (SPEC §6)."""
    job = await kit.submit(params={"mode": "fail"})
    assert await kit.harness.run_once() == 1
    assert (await kit.ej.get(job.id)).next_retry_at is not None
    kit.clock.advance(BASE_DELAY_S * 1.1)
    await kit.harness.tick()
    queued = await kit.ej.get(job.id)
    assert queued.status is Status.QUEUED and queued.next_retry_at is None
    newest = "SELECT data FROM events WHERE job_id = ? ORDER BY id DESC LIMIT 1"
    (event,) = rows(kit.path, newest, (job.id,))
    fields = job_event_fields(event["data"])
    assert fields["status"] == "queued" and fields["next_retry_at"] is None


@pytest.mark.parametrize("seconds", [2.01, 2.03, 4.06, 8.03])
async def test_delays_are_whole_milliseconds_rounded_not_cut(
    db_path: Path, clock: FakeClock, seconds: float
) -> None:
    """2.01 s is 2,010 ms (a float product cut with int() gave 2,009): a retry's backoff
    without jitter, a submit's ``delay_s`` and a unix-seconds ``run_at`` alike."""
    config = Config(
        retry=RetryConfig(base_delay_s=seconds, max_delay_s=3600, jitter=False),
        runner=RunnerConfig(workers=4),
    )
    kit = await CoreKit(db_path, clock, config=config).start()
    try:
        expected_ms = round(seconds * 1000)
        delayed = await kit.submit(params={"mode": "ok"}, delay_s=seconds)
        assert kit.row(delayed.id)["run_at"] - kit.row(delayed.id)["created_at"] == expected_ms
        at = await kit.submit(params={"n": 1}, run_at=clock.now_ms() / 1000 + seconds)
        assert kit.row(at.id)["run_at"] - clock.now_ms() == expected_ms
        failing = await kit.submit(params={"mode": "fail"})
        await kit.harness.run_once()
        row = kit.row(failing.id)
        assert row["status"] == "retrying"
        assert row["next_retry_at"] - row["updated_at"] == expected_ms
    finally:
        await kit.close()
