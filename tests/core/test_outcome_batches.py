"""A cycle's completions are written by one UPDATE; when that statement fails, each outcome is
written alone, so one outcome the database refuses cannot undo the others of its cycle."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from typing import Any

import pytest
from core_support import CoreKit

from edgejobs.models import Status
from edgejobs.store.db import WriteTx
from edgejobs.store.transitions import complete_attempts

BATCH_MARK = "FROM (SELECT json_extract(value, '$[0]')"


async def _trace_writer(kit: CoreKit) -> list[str]:
    """Every statement the writer's connection runs from now on (SQLite's trace callback)."""
    statements: list[str] = []

    def install(conn: sqlite3.Connection, tx: WriteTx) -> None:
        conn.set_trace_callback(statements.append)

    await kit.write(install)
    return statements


async def _run_gated(kit: CoreKit, count: int) -> list[Any]:
    """Submit ``count`` gated jobs, start them all, then let them finish together."""
    jobs = [await kit.submit(params={"mode": "gate", "gate": "go", "n": n}) for n in range(count)]
    assert await kit.pool.claim_once() == count
    kit.gates["go"].set()
    await kit.settle()
    return jobs


async def test_completions_of_one_cycle_share_one_statement(kit: CoreKit) -> None:
    statements = await _trace_writer(kit)
    jobs = await _run_gated(kit, 6)
    # One statement in one savepoint completed all six (a single completion would run the
    # same statement alone, in a savepoint of its own).
    assert len([s for s in statements if BATCH_MARK in s]) == 1, statements
    assert statements.count("SAVEPOINT outcome") == 1, statements
    for job in jobs:
        assert kit.status(job.id) is Status.COMPLETED
        assert kit.row(job.id)["result"] == '{"attempt":1}'
        [attempt] = kit.attempt_rows(job.id)
        assert attempt["outcome"] == "completed" and attempt["finished_at"] is not None


async def test_a_refused_completion_does_not_undo_the_others_of_its_cycle(
    kit: CoreKit, caplog: pytest.LogCaptureFixture
) -> None:
    statements = await _trace_writer(kit)
    jobs = [await kit.submit(params={"mode": "gate", "gate": "go", "n": n}) for n in range(5)]
    refused = jobs[2]
    # The database itself refuses one completion (as a constraint would): the statement that
    # completes all five fails, and then only that job's own write.
    with closing(sqlite3.connect(kit.path)) as conn:
        # A trigger body cannot take bound parameters; the id is one the engine generated.
        conn.execute(
            "CREATE TRIGGER refuse_one BEFORE UPDATE OF status ON jobs"
            f" WHEN NEW.status = 'completed' AND NEW.id = '{refused.id}'"
            " BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
        )
        conn.commit()
    assert await kit.pool.claim_once() == 5
    kit.gates["go"].set()
    await kit.settle()
    # A savepoint for the statement for all five, then one for each job written alone, and
    # one for the refused job's outcome written as a failure.
    assert statements.count("SAVEPOINT outcome") == 1 + len(jobs) + 1, statements
    assert statements.count("ROLLBACK TO outcome") == 2, statements  # all five, then the one
    for job in jobs:
        expected = Status.RETRYING if job is refused else Status.COMPLETED
        assert kit.status(job.id) is expected, job.id
    assert "writing completions together failed" in caplog.text
    assert "crashed the runner's bookkeeping" not in caplog.text
    # The refused job's attempt is not left open for its lease to expire (recorded "lost",
    # its cause nowhere): it failed, saying why, and is retried as its policy says.
    [attempt] = kit.attempt_rows(refused.id)
    assert attempt["outcome"] == "failed"
    assert attempt["error_type"] == "OutcomeNotStorable"
    assert "refused by the test" in attempt["error_message"]


async def test_results_are_stored_exactly_as_encoded(kit: CoreKit) -> None:
    """Results travel inside a JSON array to the batch statement: every character must come
    out as it went in (quotes, backslashes, control characters, non-BMP characters)."""
    jobs = [await kit.submit(params={"mode": "gate", "gate": "never", "n": n}) for n in range(4)]
    assert await kit.pool.claim_once() == 4
    results = [
        '{"text":"🚀 ünïcode 日本"}',
        '{"quote":"say \\"hi\\"","slash":"a\\\\b","nl":"x\\ny","sep":"\u2028"}',
        "null",
        "[1,2.5,true]",
    ]
    items = [(kit.row(job.id)["seq"], 1, result) for job, result in zip(jobs, results, strict=True)]

    def complete(conn: sqlite3.Connection, tx: WriteTx) -> dict[int, Any]:
        return complete_attempts(conn, tx, items=items, now=kit.clock.now_ms())

    assert len(await kit.write(complete)) == 4
    for job, result in zip(jobs, results, strict=True):
        assert kit.status(job.id) is Status.COMPLETED
        assert kit.row(job.id)["result"] == result
