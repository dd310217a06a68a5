"""A cycle's completions are written by one UPDATE; when that statement fails, each outcome is
written alone, so one outcome the database refuses cannot undo the others of its cycle."""

from __future__ import annotations

import sqlite3
from contextlib import closing

import pytest
from core_support import CoreKit

from edgejobs.models import Status


async def test_completions_of_one_cycle_share_one_statement(kit: CoreKit) -> None:
    jobs = [await kit.submit(params={"n": n}) for n in range(6)]
    assert await kit.harness.run_once() == 6
    await kit.settle()
    await kit.harness.run_once()  # the cycle that writes the six outcomes
    await kit.settle()
    for job in jobs:
        assert kit.status(job.id) is Status.COMPLETED
        assert kit.row(job.id)["result"] == '{"attempt":1}'
        [attempt] = kit.attempt_rows(job.id)
        assert attempt["outcome"] == "completed" and attempt["finished_at"] is not None


async def test_a_refused_completion_does_not_undo_the_others_of_its_cycle(
    kit: CoreKit, caplog: pytest.LogCaptureFixture
) -> None:
    jobs = [await kit.submit(params={"n": n}) for n in range(5)]
    refused = jobs[2]
    # The database itself refuses one completion (as a constraint or a full page would):
    # the statement that completes all five fails, and so must the fallback for that job only.
    with closing(sqlite3.connect(kit.path)) as conn:
        # A trigger body cannot take bound parameters; the id is one the engine generated.
        conn.execute(
            "CREATE TRIGGER refuse_one BEFORE UPDATE OF status ON jobs"
            f" WHEN NEW.status = 'completed' AND NEW.id = '{refused.id}'"
            " BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
        )
        conn.commit()
    assert await kit.harness.run_once() == 5
    await kit.settle()
    await kit.harness.run_once()
    await kit.settle()
    for job in jobs:
        expected = Status.RUNNING if job is refused else Status.COMPLETED
        assert kit.status(job.id) is expected, job.id
    assert "writing completions together failed" in caplog.text
    assert f"could not record the outcome of job {refused.id}" in caplog.text
    assert "crashed the runner's bookkeeping" not in caplog.text
    # The refused job's attempt stays open: its lease will expire and recovery retries it.
    [attempt] = kit.attempt_rows(refused.id)
    assert attempt["outcome"] is None
