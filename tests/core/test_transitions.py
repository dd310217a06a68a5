"""The state machine, table-driven from ``edgejobs.models.ALLOWED_TRANSITIONS``.

For every status a job can be in, a fresh job is brought into it through real operations
(submit, claim, run, cancel, …) and then every operation that can change a status is applied
to it: cancel, manual retry, claim, a completion or failure of its current attempt, a
shutdown requeue, a tick now, a tick after the clock moved on, and (for blocked jobs) the
parent completing or failing. Each outcome is checked against the table:

* a status change must be an allowed move, and the operation must have reported success;
* a refused operation must leave the row exactly as it was, and must have said so
  (``Conflict`` or ``None``);
* across all operations, every allowed move out of the status must have happened.

The ``job`` events (written in the transaction of every change) must replay as legal moves.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path

import pytest
from core_support import BASE_DELAY_S, CoreKit, illegal_moves, wait_until

from edgejobs import Conflict, Job, Status
from edgejobs.models import ALLOWED_TRANSITIONS, JobError, Outcome
from edgejobs.retry import RetryPolicy
from edgejobs.store.transitions import complete_attempt, fail_attempt, requeue_interrupted
from edgejobs.testing import FakeClock

POLICY = RetryPolicy(BASE_DELAY_S, 100.0, False)


class Subject:
    """A job brought into a status, and its parent when it has one."""

    def __init__(self, job: Job, parent: Job | None = None, gate: str | None = None) -> None:
        self.job = job
        self.parent = parent
        self.gate = gate


def _gate() -> str:
    return uuid.uuid4().hex


async def _claim_and_wait(kit: CoreKit, job: Job, status: Status) -> None:
    await kit.pool.claim_once()
    await wait_until(lambda: kit.status(job.id) is status, timeout=5)


# -- bringing a job into each status -------------------------------------------------------------


async def make_blocked(kit: CoreKit, *, delay: bool = False) -> Subject:
    gate = _gate()
    parent = await kit.submit(params={"mode": "gate", "gate": gate})
    child = await kit.submit(
        params={"mode": "gate", "gate": _gate()},
        depends_on=[parent.id],
        delay_s=600 if delay else None,
    )
    assert child.status is Status.BLOCKED
    return Subject(child, parent, gate)


async def make_scheduled(kit: CoreKit) -> Subject:
    return Subject(await kit.submit(params={"mode": "gate", "gate": _gate()}, delay_s=600))


async def make_queued(kit: CoreKit) -> Subject:
    # Gated, so a claim leaves it running instead of letting it finish.
    return Subject(await kit.submit(params={"mode": "gate", "gate": _gate()}))


async def make_running(kit: CoreKit, job_type: str = "t.work") -> Subject:
    gate = _gate()
    job = await kit.submit(job_type, params={"mode": "gate", "gate": gate})
    await kit.pool.claim_once()
    assert kit.status(job.id) is Status.RUNNING
    return Subject(job, gate=gate)


async def make_retrying(kit: CoreKit) -> Subject:
    job = await kit.submit(params={"mode": "fail"})
    await _claim_and_wait(kit, job, Status.RETRYING)
    return Subject(job)


async def make_completed(kit: CoreKit) -> Subject:
    job = await kit.submit()
    await _claim_and_wait(kit, job, Status.COMPLETED)
    return Subject(job)


async def make_failed(kit: CoreKit) -> Subject:
    job = await kit.submit(params={"mode": "permanent"})
    await _claim_and_wait(kit, job, Status.FAILED)
    return Subject(job)


async def make_timed_out(kit: CoreKit) -> Subject:
    job = await kit.submit("t.once", params={"mode": "hang"})
    await _claim_and_wait(kit, job, Status.TIMED_OUT)
    return Subject(job)


async def make_dead_letter(kit: CoreKit) -> Subject:
    job = await kit.submit(params={"mode": "fail"})
    await _claim_and_wait(kit, job, Status.RETRYING)
    kit.clock.advance(BASE_DELAY_S + 1)
    await _claim_and_wait(kit, job, Status.DEAD_LETTER)
    return Subject(job)


async def make_canceled(kit: CoreKit) -> Subject:
    job = await kit.submit()
    await kit.ej.cancel(job.id)
    return Subject(job)


async def make_canceled_child(kit: CoreKit) -> Subject:
    """A child canceled by a user while its parent is still pending."""
    subject = await make_blocked(kit)
    await kit.ej.cancel(subject.job.id)
    return subject


VARIANTS: dict[Status, list[Callable[[CoreKit], Awaitable[Subject]]]] = {
    Status.BLOCKED: [make_blocked, partial(make_blocked, delay=True)],
    Status.SCHEDULED: [make_scheduled],
    Status.QUEUED: [make_queued],
    # The second: the job's last attempt (no retry left), with a deadline far beyond the test
    # (t.once's real 0.2 s timeout could end it between an operation and the look after it).
    Status.RUNNING: [make_running, partial(make_running, job_type="t.last")],
    Status.RETRYING: [make_retrying],
    Status.COMPLETED: [make_completed],
    Status.FAILED: [make_failed],
    Status.TIMED_OUT: [make_timed_out],
    Status.DEAD_LETTER: [make_dead_letter],
    Status.CANCELED: [make_canceled, make_canceled_child],
}


# -- the operations ------------------------------------------------------------------------------
# Each returns True (it reported a change), False (it reported a refusal) or None (it reports
# nothing per job, like a tick).


async def op_cancel(kit: CoreKit, s: Subject) -> bool | None:
    try:
        job = await kit.ej.cancel(s.job.id)
    except Conflict:
        return False
    assert job.status is Status.CANCELED
    return True


async def op_retry(kit: CoreKit, s: Subject) -> bool | None:
    try:
        job = await kit.ej.retry(s.job.id)
    except Conflict:
        return False
    assert job.status in (Status.QUEUED, Status.BLOCKED)
    return True


async def op_claim(kit: CoreKit, s: Subject) -> bool | None:
    before = set(kit.pool.running_ids)
    await kit.pool.claim_once()
    return s.job.id in kit.pool.running_ids and s.job.id not in before


def _current_attempt(kit: CoreKit, s: Subject) -> tuple[int, int]:
    row = kit.row(s.job.id)
    return row["seq"], row["attempts"]


async def op_complete(kit: CoreKit, s: Subject) -> bool | None:
    seq, attempt = _current_attempt(kit, s)
    row = await kit.write(
        partial(
            complete_attempt, seq=seq, attempt=attempt, result_json="{}", now=kit.clock.now_ms()
        )
    )
    return row is not None


async def _fail(kit: CoreKit, s: Subject, outcome: Outcome, permanent: bool) -> bool | None:
    seq, attempt = _current_attempt(kit, s)
    row = await kit.write(
        partial(
            fail_attempt,
            seq=seq,
            attempt=attempt,
            outcome=outcome,
            error=JobError("RuntimeError", "boom"),
            permanent=permanent,
            now=kit.clock.now_ms(),
            policy=POLICY,
        )
    )
    return row is not None


async def op_fail(kit: CoreKit, s: Subject) -> bool | None:
    return await _fail(kit, s, Outcome.FAILED, False)


async def op_fail_permanent(kit: CoreKit, s: Subject) -> bool | None:
    return await _fail(kit, s, Outcome.FAILED, True)


async def op_time_out(kit: CoreKit, s: Subject) -> bool | None:
    return await _fail(kit, s, Outcome.TIMED_OUT, False)


async def op_requeue(kit: CoreKit, s: Subject) -> bool | None:
    seq, attempt = _current_attempt(kit, s)
    row = await kit.write(
        partial(requeue_interrupted, seq=seq, attempt=attempt, now=kit.clock.now_ms())
    )
    return row is not None


async def op_tick_now(kit: CoreKit, s: Subject) -> bool | None:
    await kit.harness.tick()
    return None


async def op_tick_later(kit: CoreKit, s: Subject) -> bool | None:
    """Later (past due times, retry delays and leases; within the event retention window):
    due jobs and retries are promoted, expired leases recovered."""
    kit.clock.advance(1000)
    await kit.harness.tick()
    return None


async def op_parent_completes(kit: CoreKit, s: Subject) -> bool | None:
    if s.parent is None:
        return None
    assert s.gate is not None
    await kit.pool.claim_once()
    kit.gates[s.gate].set()
    await wait_until(lambda: kit.status(s.parent.id) is Status.COMPLETED)  # type: ignore[union-attr]
    return None


async def op_parent_fails(kit: CoreKit, s: Subject) -> bool | None:
    if s.parent is None:
        return None
    await kit.ej.cancel(s.parent.id)
    return None


OPERATIONS: dict[str, Callable[[CoreKit, Subject], Awaitable[bool | None]]] = {
    "cancel": op_cancel,
    "retry": op_retry,
    "claim": op_claim,
    "complete": op_complete,
    "fail": op_fail,
    "fail_permanent": op_fail_permanent,
    "time_out": op_time_out,
    "requeue": op_requeue,
    "tick_now": op_tick_now,
    "tick_later": op_tick_later,
    "parent_completes": op_parent_completes,
    "parent_fails": op_parent_fails,
}


@pytest.mark.parametrize("source", list(Status), ids=lambda s: s.value)
async def test_every_move_out_of_a_status_follows_the_table(source: Status, tmp_path: Path) -> None:
    observed: set[Status] = set()
    failures: list[str] = []
    for v_index, make in enumerate(VARIANTS[source]):
        for name, operation in OPERATIONS.items():
            folder = tmp_path / f"{v_index}-{name}"
            folder.mkdir()
            kit = await CoreKit(folder / "jobs.db", FakeClock()).start()
            try:
                subject = await make(kit)
                assert kit.status(subject.job.id) is source
                before = kit.row(subject.job.id)
                reported = await operation(kit, subject)
                await kit.settle()
                after = kit.row(subject.job.id)
                moved_to = Status(after["status"])
                label = f"{source.value} --{name}[{v_index}]--> {moved_to.value}"
                if moved_to is source:
                    if reported is True:
                        failures.append(f"{label}: reported a change that did not happen")
                    if reported is False and after != before:
                        failures.append(f"{label}: refused but the row changed")
                else:
                    observed.add(moved_to)
                    if moved_to not in ALLOWED_TRANSITIONS[source]:
                        failures.append(f"{label}: not allowed by the table")
                    if reported is False:
                        failures.append(f"{label}: reported a refusal but the status changed")
                failures.extend(illegal_moves(kit.path))
            finally:
                await kit.close()
    missing = ALLOWED_TRANSITIONS[source] - observed
    assert not failures, "\n".join(failures)
    assert not missing, f"allowed moves from {source.value} never happened: {sorted(missing)}"
