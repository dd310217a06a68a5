"""Edges of an attempt's life: a handler that cannot be started (no thread or process to be
had: a pid or descriptor limit) is a failed attempt, not a slot and a lease held forever; a
cancel undone with its savepoint does not stop the handler of a job that is still running; a
stop that meets a claim in flight gives the claimed jobs the grace and requeues them; a cancel
committed with the claim of a job's retry stops that retry."""

from __future__ import annotations

import asyncio
import multiprocessing
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from core_support import CoreKit, db_attempts, db_job, wait_until

from edgejobs import EdgeJobs, Job, Status
from edgejobs.config import Config, RetryConfig, RunnerConfig
from edgejobs.runner import executor
from edgejobs.store.transitions import cancel_job


def sync_quick(ctx: Any, params: dict[str, Any]) -> dict[str, bool]:
    return {"ok": True}


class _Refusing:
    """Stands in for the ``threading`` module inside the executor: the first thread whose
    name starts with ``prefix`` cannot be started, as when the process is out of threads."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.refused = 0

    def Thread(self, *args: Any, **kwargs: Any) -> threading.Thread:
        thread = threading.Thread(*args, **kwargs)
        if self.refused == 0 and thread.name.startswith(self.prefix):
            self.refused += 1

            def refuse() -> None:
                raise RuntimeError("can't start new thread")

            thread.start = refuse  # type: ignore[method-assign]
        return thread


@pytest.fixture
def refusing(monkeypatch: pytest.MonkeyPatch) -> Callable[[str], _Refusing]:
    def install(prefix: str) -> _Refusing:
        shim = _Refusing(prefix)
        monkeypatch.setattr(executor, "threading", shim)
        return shim

    return install


async def _one_refused_then_one_ran(path: Path, handler: Any, isolation: str) -> tuple[Job, Job]:
    """With one worker: the first job's handler cannot start; the second job must still run."""
    ej = EdgeJobs(database=path, workers=1)
    ej.register("refused", handler, timeout_s=30, max_retries=0, isolation=isolation)
    ej.register("after", sync_quick)
    async with ej:
        first = await ej.submit("refused", org="acme")
        after = await ej.submit("after", org="acme")
        return await ej.wait(first.id, timeout=30), await ej.wait(after.id, timeout=30)


def _failed_with(job: Job, error_type: str, message: str) -> bool:
    return (
        job.status is Status.FAILED
        and job.error is not None
        and job.error.type == error_type
        and message in job.error.message
    )


async def test_a_thread_that_cannot_start_fails_the_attempt_and_frees_the_slot(
    refusing: Callable[[str], _Refusing], tmp_path: Path
) -> None:
    shim = refusing("edgejobs-job-")
    first, after = await _one_refused_then_one_ran(tmp_path / "jobs.db", sync_quick, "thread")
    assert shim.refused == 1
    assert _failed_with(first, "RuntimeError", "can't start new thread"), first
    assert [a["outcome"] for a in db_attempts(tmp_path / "jobs.db", first.id)] == ["failed"]
    # The only slot was given back: the next job ran.
    assert after.status is Status.COMPLETED


async def test_a_process_whose_pipe_thread_cannot_start_is_killed_and_the_attempt_fails(
    refusing: Callable[[str], _Refusing], tmp_path: Path
) -> None:
    shim = refusing("edgejobs-pipe-")
    first, after = await _one_refused_then_one_ran(
        tmp_path / "jobs.db", "core_handlers:sync_sleep", "process"
    )
    assert shim.refused == 1
    assert _failed_with(first, "RuntimeError", "can't start new thread"), first
    assert after.status is Status.COMPLETED
    # The child started before its pipe thread failed; it was killed, not left sleeping.
    await wait_until(lambda: multiprocessing.active_children() == [], timeout=10)


async def test_a_process_that_cannot_be_spawned_fails_the_attempt(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def no_more_processes(self: Any) -> None:
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(multiprocessing.get_context("spawn").Process, "start", no_more_processes)
    first, after = await _one_refused_then_one_ran(
        tmp_path / "jobs.db", "core_handlers:sync_sleep", "process"
    )
    assert _failed_with(first, "OSError", "Too many open files"), first
    assert after.status is Status.COMPLETED


class _Undone(Exception):
    """What the operation below raises after its cancel, so its savepoint is rolled back."""


async def test_a_cancel_undone_with_its_savepoint_leaves_the_handler_running(kit: CoreKit) -> None:
    job = await kit.submit(params={"mode": "gate", "gate": "g"})
    assert await kit.pool.claim_once() == 1
    await wait_until(lambda: kit.calls[job.id] == 1, timeout=10)

    def cancel_then_fail(conn: Any, tx: Any) -> None:
        cancel_job(conn, tx, job_id=job.id, org="acme", now=kit.clock.now_ms())
        raise _Undone("something after the cancel failed")

    with pytest.raises(_Undone):
        await kit.write(cancel_then_fail)
    await kit.settle()
    # The cancel never happened: the job is running and its handler was not stopped.
    assert kit.status(job.id) is Status.RUNNING
    assert kit.pool.running_count == 1
    kit.gates["g"].set()
    await wait_until(lambda: kit.status(job.id) is Status.COMPLETED, timeout=10)
    assert [a["outcome"] for a in kit.attempt_rows(job.id)] == ["completed"]


async def test_a_stop_while_a_claim_is_in_flight_gives_its_jobs_the_grace(kit: CoreKit) -> None:
    job = await kit.submit(params={"mode": "gate", "gate": "never"})
    claim = asyncio.create_task(kit.pool.claim_once())
    await asyncio.sleep(0)  # the cycle is queued; its claim has not committed yet
    assert kit.pool.cycle_in_flight
    await asyncio.wait_for(kit.pool.stop(grace_s=0.2), 30)  # (a bound against hanging)
    assert claim.done() and claim.result() == 1
    # The claimed job was started, given the grace, then requeued without spending a retry.
    assert kit.status(job.id) is Status.QUEUED
    attempts = kit.attempt_rows(job.id)
    assert [(a["outcome"], a["error_type"]) for a in attempts] == [("canceled", "Shutdown")]
    assert kit.pool.running_count == 0


async def test_a_cancel_committed_with_the_claim_of_a_retry_stops_that_retry(
    tmp_path: Path,
) -> None:
    started: list[int] = []
    gate = asyncio.Event()

    async def fails_once_released(ctx: Any, params: dict[str, Any]) -> None:
        started.append(ctx.attempt)
        await gate.wait()
        raise RuntimeError(f"attempt {ctx.attempt} failed")

    # No retry delay: one cycle writes attempt 1's failure, promotes the job and claims it again.
    config = Config(
        retry=RetryConfig(base_delay_s=0, max_delay_s=0, jitter=False),
        runner=RunnerConfig(workers=1),
    )
    ej = EdgeJobs(tmp_path / "jobs.db", config=config)
    ej.register("flaky", fails_once_released, timeout_s=60, max_retries=3)
    async with ej:
        job = await ej.submit("flaky", org="acme")
        await wait_until(lambda: started == [1], timeout=10)
        assert ej.pool is not None
        pool = ej.pool

        # Hold the writer, so that the pool's cycle and the cancel share the next transaction.
        holding, hold = threading.Event(), threading.Event()

        def block(conn: Any, tx: Any) -> None:
            holding.set()
            hold.wait(10)

        blocker = asyncio.create_task(ej.store.write(block))
        await asyncio.get_running_loop().run_in_executor(None, holding.wait, 10)
        gate.set()  # attempt 1 fails; the pool queues its outcome and a claim behind the block
        await wait_until(lambda: pool.cycle_in_flight, timeout=10)
        cancel = asyncio.create_task(ej.cancel(job.id, org="acme"))
        for _ in range(5):
            await asyncio.sleep(0)  # the cancel is queued behind the cycle
        hold.set()
        await blocker
        canceled = await cancel
        assert canceled.status is Status.CANCELED
        await wait_until(lambda: pool.running_count == 0, timeout=10)

    # The retry the cycle claimed was stopped at its start: its handler never ran.
    assert started == [1]
    attempts = db_attempts(tmp_path / "jobs.db", job.id)
    assert [a["outcome"] for a in attempts] == ["failed", "canceled"]
    assert db_job(tmp_path / "jobs.db", job.id)["status"] == "canceled"
