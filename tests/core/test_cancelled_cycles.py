"""A claim cycle whose caller stops waiting (a ``drain(timeout=...)`` that runs out, a step
cancelled by a test's timeout) still commits in the writer: what it claimed must run and what
it wrote must be forgotten, never left ``running`` with nothing running it (each such job sat
until its lease expired, spent a retry, and with none left was dead-lettered unrun)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from core_support import CoreKit, running_kit

from edgejobs import JobSpec, Status
from edgejobs.testing import FakeClock


@pytest.fixture
async def small_kit(db_path: Path, clock: FakeClock) -> AsyncIterator[CoreKit]:
    """The standard job types on a stepped runner with 8 slots (claims come in batches)."""
    async with running_kit(db_path, clock, workers=8) as kit:
        yield kit


async def test_a_drain_that_times_out_during_its_claim_still_runs_what_it_claimed(
    small_kit: CoreKit,
) -> None:
    kit = small_kit
    job = await kit.submit("t.last")  # no retry: a stranded job would end dead_letter, unrun
    with pytest.raises(TimeoutError):
        await kit.ej.drain(timeout=0)  # times out while its claim's write is queued
    await kit.harness.drain(timeout=10)
    assert kit.calls[job.id] == 1
    assert kit.status(job.id) is Status.COMPLETED
    assert [(a["number"], a["outcome"]) for a in kit.attempt_rows(job.id)] == [(1, "completed")]
    assert kit.pool.running_count == 0


@pytest.mark.parametrize("turns", range(6))
async def test_a_claim_cancelled_at_any_point_runs_every_job_once(
    small_kit: CoreKit, turns: int
) -> None:
    # The caller is cancelled 0..5 event-loop turns after queuing the cycle: before the
    # commit, as it is resolved, or after; each time, then in the next round with outcomes
    # of the last one in the same write.
    kit = small_kit
    jobs = []
    hits = 0
    for round_ in range(3):
        jobs += await kit.ej.submit_many(
            [JobSpec("t.last", "acme", {"r": round_, "i": i}) for i in range(5)]
        )
        step = asyncio.get_running_loop().create_task(kit.pool.claim_once())
        for _ in range(turns):
            await asyncio.sleep(0)
        step.cancel()  # a step already over (its commit was quick) is not cancelled
        with contextlib.suppress(asyncio.CancelledError):
            await step
        hits += step.cancelled()
    if 1 <= turns <= 2:
        assert hits == 3  # cancelled while its write was in flight, as this test is about
    await kit.harness.drain(timeout=10)
    assert {job.id: kit.calls[job.id] for job in jobs} == {job.id: 1 for job in jobs}
    assert {kit.status(job.id) for job in jobs} == {Status.COMPLETED}
    assert kit.pool.running_count == 0


async def test_drains_that_keep_timing_out_strand_nothing(small_kit: CoreKit) -> None:
    kit = small_kit
    jobs = await kit.ej.submit_many([JobSpec("t.last", "acme", {"i": i}) for i in range(400)])
    timeouts = 0
    for _ in range(1000):
        try:
            await kit.ej.drain(timeout=0.002)
            break
        except TimeoutError:
            timeouts += 1
    await kit.harness.drain(timeout=30)
    assert timeouts > 0  # the interleaving this test is about happened
    assert {kit.status(job.id) for job in jobs} == {Status.COMPLETED}
    assert sum(kit.calls[job.id] for job in jobs) == len(jobs)
    assert kit.pool.running_count == 0
