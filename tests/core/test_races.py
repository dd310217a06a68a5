"""Cancel racing claim and completion on the same job, many times over (SPEC §2 rules 1, 5).

Each round starts many races at once and staggers their sides by random numbers of event-loop
steps, so the writer sees the two sides in either order, in one group commit or in two.
After every round the database row, the value each side returned and the runner's own
bookkeeping must tell the same story: exactly one side won.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Awaitable
from typing import Any

from core_support import CoreKit, illegal_moves, wait_until

from edgejobs import Conflict, Job, JobSpec, Status

ROUNDS = 10
PER_ROUND = 50  # 10 x 50 = 500 races of each kind below (1,500 in all)


async def _after_steps(rng: random.Random, action: Awaitable[Any]) -> Any:
    for _ in range(rng.randrange(6)):
        await asyncio.sleep(0)
    return await action


async def _after_delay(rng: random.Random, action: Awaitable[Any]) -> Any:
    await asyncio.sleep(rng.choice((0, 0, rng.uniform(0, 0.004), rng.uniform(0, 0.02))))
    return await action


async def _cancel(kit: CoreKit, job_id: str) -> Job | None:
    """The cancel side: the job it returned, or None for a conflict."""
    try:
        return await kit.ej.cancel(job_id)
    except Conflict:
        return None


async def _submit_round(kit: CoreKit, params: list[dict[str, Any]]) -> list[Job]:
    specs = [JobSpec("t.work", "acme", p, dedup=False) for p in params]
    return await kit.ej.submit_many(specs)


def _attempts(kit: CoreKit, job_id: str) -> list[dict[str, Any]]:
    return kit.attempt_rows(job_id)


async def test_cancel_against_claim_of_queued_jobs(kit: CoreKit) -> None:
    """A queued job is canceled while claims run: either the cancel came first (never
    claimed, no attempt, handler never called) or the claim did (one attempt, ended
    ``canceled``, and the handler is not left running)."""
    rng = random.Random(20261129)
    before_claim = after_claim = 0
    for round_no in range(ROUNDS):
        gate = f"queued-{round_no}"
        jobs = await _submit_round(
            kit, [{"mode": "gate", "gate": gate, "n": i} for i in range(PER_ROUND)]
        )
        sides: list[Awaitable[Any]] = [_after_steps(rng, _cancel(kit, j.id)) for j in jobs]
        sides += [_after_steps(rng, kit.pool.claim_once()) for _ in range(4)]
        rng.shuffle(sides)
        results = await asyncio.gather(*sides)
        # Aborted attempts end within a few loop steps; a missed abort would wait forever.
        await wait_until(lambda: kit.pool.running_count == 0, timeout=2)
        canceled = [r for r in results if isinstance(r, Job)]
        assert len(canceled) == PER_ROUND, "canceling a queued or running job never conflicts"
        claimed = sum(r for r in results if isinstance(r, int))
        attempts_seen = 0
        for job in jobs:
            row = kit.row(job.id)
            attempts = _attempts(kit, job.id)
            assert row["status"] == "canceled" and row["result"] is None
            assert row["attempts"] == len(attempts) <= 1
            if attempts:
                after_claim += 1
                attempts_seen += 1
                assert attempts[0]["outcome"] == "canceled"
            else:
                before_claim += 1
                assert kit.calls[job.id] == 0
            # Whatever the order, no attempt of a canceled job may keep running here.
            assert job.id not in kit.pool.running_ids, f"canceled job {job.id} still running"
        assert attempts_seen == claimed
        assert kit.pool.running_count == 0
        kit.gates[gate].set()
    assert before_claim and after_claim, (before_claim, after_claim)
    assert not illegal_moves(kit.path)


async def test_cancel_against_completion_of_running_jobs(kit: CoreKit) -> None:
    """A running job's handler returns while it is canceled: either the cancel won (job
    ``canceled``, no result, attempt ``canceled``, the late completion ignored) or the
    completion did (job ``completed`` with its result, and the cancel got a conflict)."""
    rng = random.Random(7)
    cancel_won = completion_won = 0
    for round_no in range(ROUNDS):
        gates = [f"run-{round_no}-{i}" for i in range(PER_ROUND)]
        jobs = await _submit_round(kit, [{"mode": "gate", "gate": g} for g in gates])
        assert await kit.pool.claim_once() == PER_ROUND

        async def release(gate: str) -> None:
            kit.gates[gate].set()

        sides: list[Awaitable[Any]] = []
        for job, gate in zip(jobs, gates, strict=True):
            sides.append(_after_steps(rng, _cancel(kit, job.id)))
            sides.append(_after_steps(rng, release(gate)))
        order = list(range(len(sides)))
        rng.shuffle(order)
        shuffled = [sides[i] for i in order]
        outcome = await asyncio.gather(*shuffled)
        results: list[Any] = [None] * len(sides)
        for position, index in enumerate(order):
            results[index] = outcome[position]
        await kit.pool.wait_idle()
        for index, job in enumerate(jobs):
            returned: Job | None = results[2 * index]
            row = kit.row(job.id)
            attempts = _attempts(kit, job.id)
            assert len(attempts) == 1 and row["attempts"] == 1
            if returned is not None:
                cancel_won += 1
                assert returned.status is Status.CANCELED
                assert row["status"] == "canceled" and row["result"] is None
                assert attempts[0]["outcome"] == "canceled"
            else:
                completion_won += 1
                assert row["status"] == "completed"
                assert json.loads(row["result"]) == {"attempt": 1}
                assert attempts[0]["outcome"] == "completed"
        assert kit.pool.running_count == 0 and not kit.pool.running_ids
    assert cancel_won and completion_won, (cancel_won, completion_won)
    assert not illegal_moves(kit.path)


async def test_cancel_against_the_whole_claim_run_complete_path(kit: CoreKit) -> None:
    """Jobs that run at once race a cancel through claim, run and completion: the cancel
    returns a canceled job exactly when the database says canceled (with no result), and
    conflicts exactly when it says completed."""
    rng = random.Random(99)
    outcomes: dict[str, int] = {
        "canceled before the claim": 0,
        "canceled running": 0,
        "completed": 0,
    }
    for _ in range(ROUNDS):
        jobs = await _submit_round(kit, [{"mode": "ok", "n": i} for i in range(PER_ROUND)])
        # The cancel side waits up to a few writes' time, so that it lands before the claim,
        # between the claim and the completion, or after the completion.
        sides: list[Awaitable[Any]] = [_after_delay(rng, _cancel(kit, j.id)) for j in jobs]
        claims = [_after_steps(rng, kit.pool.claim_once()) for _ in range(3)]
        results = await asyncio.gather(*sides, *claims)
        await kit.pool.wait_idle()
        await kit.harness.drain()
        for job, returned in zip(jobs, results[:PER_ROUND], strict=True):
            row = kit.row(job.id)
            attempts = _attempts(kit, job.id)
            if returned is not None:
                assert row["status"] == "canceled" and row["result"] is None
                assert [a["outcome"] for a in attempts] in ([], ["canceled"])
                outcomes["canceled running" if attempts else "canceled before the claim"] += 1
            else:
                outcomes["completed"] += 1
                assert row["status"] == "completed"
                assert [a["outcome"] for a in attempts] == ["completed"]
    assert all(outcomes.values()), outcomes
    assert not illegal_moves(kit.path)


async def test_late_handler_of_a_canceled_job_changes_nothing(kit: CoreKit) -> None:
    """After a cancel won, releasing the handler must not complete the job."""
    job = await kit.submit(params={"mode": "gate", "gate": "late"})
    await kit.pool.claim_once()
    await kit.ej.cancel(job.id)
    kit.gates["late"].set()
    await wait_until(lambda: kit.pool.running_count == 0)
    await kit.pool.wait_idle()
    row = kit.row(job.id)
    assert row["status"] == "canceled" and row["result"] is None
