"""Fencing (SPEC §2 rule 4): every write that finishes an attempt, reports its progress or
renews its lease names that attempt; a late result of an abandoned attempt is ignored."""

from __future__ import annotations

import asyncio
import json
import threading
from functools import partial
from typing import Any

import pytest
from core_support import BASE_DELAY_S, CoreKit, illegal_moves, rows, wait_until

from edgejobs import EdgeJobs, Status
from edgejobs.models import JobError, Outcome
from edgejobs.retry import RetryPolicy
from edgejobs.store.claim import ClaimLimits, claim_ready, renew_leases
from edgejobs.store.rows import job_event_fields
from edgejobs.store.transitions import (
    complete_attempt,
    fail_attempt,
    recover_running,
    requeue_interrupted,
    set_progress,
)


def _job_events(kit: CoreKit, job_id: str) -> list[str]:
    return [
        job_event_fields(r["data"])["status"]
        for r in rows(
            kit.path,
            "SELECT data FROM events WHERE job_id = ? AND kind = 'job' ORDER BY id",
            (job_id,),
        )
    ]


async def test_recovered_attempt_returning_late_changes_nothing(kit: CoreKit) -> None:
    """The lease expires, the tick records the attempt ``lost`` and schedules a retry; when
    the stalled handler finally returns, its result is dropped."""
    job = await kit.submit(params={"mode": "gate", "gate": "stall"})
    await kit.pool.claim_once()
    kit.clock.advance(kit.ej.config.runner.lease_s + 1)
    await kit.harness.tick()
    recovered = kit.row(job.id)
    assert recovered["status"] == "retrying"
    kit.gates["stall"].set()  # the old attempt's handler returns now
    await kit.settle()
    await kit.pool.wait_idle()
    assert kit.row(job.id) == recovered
    assert [a["outcome"] for a in kit.attempt_rows(job.id)] == ["lost"]
    # The retry is a new attempt with its own result.
    kit.clock.advance(BASE_DELAY_S)
    await kit.harness.drain()
    row = kit.row(job.id)
    assert row["status"] == "completed" and json.loads(row["result"]) == {"attempt": 2}
    assert [a["outcome"] for a in kit.attempt_rows(job.id)] == ["lost", "completed"]
    assert not illegal_moves(kit.path)


async def _take_over(kit: CoreKit) -> None:
    """What another runner does after this one stalled: recover the expired lease and claim
    the retry, in one transaction, so this process never sees the job leave ``running``."""
    now = kit.clock.now_ms()

    def op(conn: Any, tx: Any) -> None:
        recover_running(
            conn,
            tx,
            now=now,
            expired_only=True,
            policy_for=lambda _: RetryPolicy(0, 0, False),
            reason="the attempt's lease expired",
        )
        claim_ready(
            conn,
            tx,
            now=now,
            slots=10,
            lease_ms=30_000,
            limits=ClaimLimits(types=frozenset({"t.work"})),
        )

    await kit.write(op)


async def test_late_completion_after_a_takeover_is_fenced(kit: CoreKit) -> None:
    done = await kit.submit(params={"mode": "gate", "gate": "a"})
    failed = await kit.submit(params={"mode": "gate", "gate": "a", "then": "fail"})
    await kit.pool.claim_once()
    kit.clock.advance(kit.ej.config.runner.lease_s + 1)
    await _take_over(kit)
    before = {j.id: kit.row(j.id) for j in (done, failed)}
    for row in before.values():
        assert row["status"] == "running" and row["attempts"] == 2
    assert sorted(kit.pool.running_ids) == sorted([done.id, failed.id])  # stale attempts

    kit.gates["a"].set()  # attempt 1 of each now completes / fails, too late
    await wait_until(lambda: kit.pool.running_count == 0)
    await kit.pool.wait_idle()
    for job in (done, failed):
        assert kit.row(job.id) == before[job.id], "a stale attempt's outcome was applied"
        attempts = kit.attempt_rows(job.id)
        assert [(a["number"], a["outcome"]) for a in attempts] == [(1, "lost"), (2, None)]
        assert _job_events(kit, job.id) == ["queued", "running", "retrying", "queued", "running"]
    assert not illegal_moves(kit.path)


async def test_every_attempt_write_is_fenced_in_the_store(kit: CoreKit) -> None:
    job = await kit.submit(params={"mode": "gate", "gate": "b"})
    await kit.pool.claim_once()
    kit.clock.advance(kit.ej.config.runner.lease_s + 1)
    await _take_over(kit)
    row = kit.row(job.id)
    seq, stale, now = row["seq"], row["attempts"] - 1, kit.clock.now_ms()
    error = JobError("RuntimeError", "late")
    policy = RetryPolicy(0, 0, False)
    writes = {
        "complete": partial(complete_attempt, seq=seq, attempt=stale, result_json="{}", now=now),
        "fail": partial(
            fail_attempt,
            seq=seq,
            attempt=stale,
            outcome=Outcome.FAILED,
            error=error,
            permanent=False,
            now=now,
            policy=policy,
        ),
        "time_out": partial(
            fail_attempt,
            seq=seq,
            attempt=stale,
            outcome=Outcome.TIMED_OUT,
            error=error,
            permanent=True,
            now=now,
            policy=policy,
        ),
        "progress": partial(
            set_progress,
            seq=seq,
            attempt=stale,
            progress=50.0,
            message="late",
            now=now,
            eta_for=lambda _: None,
        ),
        "requeue": partial(requeue_interrupted, seq=seq, attempt=stale, now=now),
        "renew": partial(renew_leases, running={seq: stale}, until=now + 10**9),
    }
    for name, write in writes.items():
        result = await kit.write(write)
        assert result in (None, False, 0), name
        assert kit.row(job.id) == row, name
    # The current attempt's writes do apply.
    assert await kit.write(partial(renew_leases, running={seq: stale + 1}, until=now + 5)) == 1
    assert await kit.write(
        partial(complete_attempt, seq=seq, attempt=stale + 1, result_json='{"ok":1}', now=now)
    )
    assert kit.status(job.id) is Status.COMPLETED


async def test_abandoned_sync_handler_returning_late_changes_nothing(kit: CoreKit) -> None:
    release = threading.Event()

    def stuck(ctx: Any, params: dict[str, Any]) -> dict[str, str]:
        release.wait(10)
        return {"late": "yes"}

    kit.ej.register("t.sync", stuck, max_retries=1)
    job = await kit.submit("t.sync")
    await kit.pool.claim_once()
    kit.clock.advance(kit.ej.config.runner.lease_s + 1)
    await kit.harness.tick()
    await wait_until(lambda: kit.pool.running_count == 0)  # the slot is free at once
    recovered = kit.row(job.id)
    assert recovered["status"] == "retrying"
    (handler_thread,) = [t for t in threading.enumerate() if t.name == f"edgejobs-job-{job.id}"]
    release.set()
    # Wait until the abandoned handler really returned, so its late result had its chance.
    await asyncio.to_thread(handler_thread.join, 5)
    assert not handler_thread.is_alive()
    await kit.settle()
    assert kit.row(job.id) == recovered


async def _foreign_cancel_then_retry(path: Any, job_id: str) -> None:
    """What `edgejobs jobs cancel` then `jobs retry` do from another process: writes on a
    connection of their own, which this runner hears of only after they committed."""
    other = EdgeJobs(database=path)
    try:
        await other.cancel(job_id)
        await other.retry(job_id)
    finally:
        await other.close()


@pytest.mark.parametrize("heard_first", [False, True], ids=["claimed-first", "heard-first"])
async def test_an_attempt_ended_and_claimed_again_by_another_process_is_stopped(
    kit: CoreKit, heard_first: bool
) -> None:
    """A cancel then a retry from another process, and this runner claims the job again
    before (or after) it reads what happened: the first attempt was left running beside the
    second, unreachable, holding its slot (SPEC rule 5: a canceled job's handler is stopped)."""
    job = await kit.submit(params={"mode": "gate", "gate": "first"})
    await kit.pool.claim_once()
    first = kit.pool._attempts[job.id]
    assert first.number == 1 and first.task is not None
    await _foreign_cancel_then_retry(kit.path, job.id)
    if heard_first:
        await kit.pool.on_foreign_change()
    await kit.pool.claim_once()  # attempt 2 (its handler waits on the same gate)
    await wait_until(
        lambda: first.task is None or first.task.done(), timeout=2
    )  # < its 5 s timeout
    assert first.aborted_by == "lost"
    assert kit.pool._attempts[job.id].number == 2
    assert kit.row(job.id)["status"] == "running" and kit.row(job.id)["attempts"] == 2
    assert [a["outcome"] for a in kit.attempt_rows(job.id)] == ["canceled", None]
    kit.gates["first"].set()
    await kit.settle()
    await kit.pool.wait_idle()
    assert kit.status(job.id) is Status.COMPLETED
    assert kit.pool.running_count == 0
