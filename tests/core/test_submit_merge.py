"""Concurrent submissions that reach the writer together are written together: one savepoint
and one events statement for all of them. A refused one (an unknown parent) never takes the
others with it: they are then written one by one, each in its own savepoint. Real writer
thread, real database file."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from edgejobs.errors import UnknownParent
from edgejobs.models import Job
from edgejobs.store.db import WriteTx, connect
from edgejobs.store.jobs import NewJob, SubmitOp
from edgejobs.store.store import Store

EVENTS_INSERT = "INSERT INTO events"
NEXT_SEQ = (  # once per executemany of plain jobs, once per submission written alone
    "SELECT max(coalesce((SELECT max(seq) FROM jobs), 0),"
    " coalesce((SELECT seq FROM job_seq_floor), 0)) + 1"
)


def _job(
    n: int, *, parent: str | None = None, org: str = "acme", dedup: str | None = None
) -> NewJob:
    return NewJob(
        org=org,
        job_type="merge.test",
        params_json=f'{{"n":{n}}}',
        priority_rank=2,
        run_at=None,
        max_retries=3,
        dedup_hash=dedup,
        depends_on=(parent,) if parent else (),
    )


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    store = Store(tmp_path / "merge.db")
    await store.open()
    yield store
    await store.close()


async def _held_batch(store: Store, ops: list[Any]) -> tuple[list[Any], list[str]]:
    """Queue ``ops`` while the writer is held inside an earlier operation, so they all reach
    it as one batch; return each op's outcome (result or exception) and the statements run."""
    statements: list[str] = []
    entered, release = threading.Event(), threading.Event()

    def hold(conn: sqlite3.Connection, tx: WriteTx) -> None:
        conn.set_trace_callback(statements.append)
        entered.set()
        release.wait(10)

    held = store.writer.submit_nowait(hold)
    assert await asyncio.to_thread(entered.wait, 10)
    futures = [store.writer.submit_nowait(op) for op in ops]
    release.set()
    await held
    outcomes = await asyncio.gather(*futures, return_exceptions=True)
    captured = list(statements)  # before the write below adds its own statements
    await store.write(lambda conn, tx: conn.set_trace_callback(None))
    return outcomes, captured


def _rows(store: Store, sql: str, *args: Any) -> list[sqlite3.Row]:
    conn = connect(store.path, store.pragmas)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


async def test_submissions_of_one_batch_share_one_savepoint_and_one_events_statement(
    store: Store,
) -> None:
    ops = [SubmitOp([_job(n)], 1_000 + n) for n in range(5)] + [
        SubmitOp([_job(10), _job(11)], 2_000)
    ]
    outcomes, statements = await _held_batch(store, ops)

    assert all(isinstance(out, list) for out in outcomes), outcomes
    jobs: list[Job] = [job for out in outcomes for job in out]
    assert [job.params for job in jobs] == [{"n": n} for n in (0, 1, 2, 3, 4, 10, 11)]
    # Each submission keeps its own submission time.
    assert [job.created_at for job in jobs[:5]] == [1_000 + n for n in range(5)]
    assert statements.count("SAVEPOINT op") == 1, statements
    assert len([s for s in statements if s.startswith(EVENTS_INSERT)]) == 1, statements
    # All six are plain (no parent, no deduplication): one executemany inserts them all.
    assert statements.count(NEXT_SEQ) == 1, statements
    stored = _rows(store, "SELECT id, status FROM jobs ORDER BY seq")
    assert [(r["id"], r["status"]) for r in stored] == [(job.id, "queued") for job in jobs]
    events = _rows(store, "SELECT job_id, json_extract(data, '$[0]') AS s FROM events ORDER BY id")
    assert [(e["job_id"], e["s"]) for e in events] == [(job.id, "queued") for job in jobs]


async def test_plain_runs_and_other_submissions_are_written_in_submission_order(
    store: Store,
) -> None:
    [parent] = await store.write(SubmitOp([_job(99)], 500))
    ops = [
        SubmitOp([_job(0)], 1_000),
        SubmitOp([_job(1)], 1_001),
        SubmitOp([_job(2, parent=parent.id)], 1_002),  # looks its parent up: written alone
        SubmitOp([_job(3, dedup="d3")], 1_003),  # looks for a twin: written alone
        SubmitOp([_job(4)], 1_004),
        SubmitOp([_job(5)], 1_005),
    ]
    outcomes, statements = await _held_batch(store, ops)

    jobs: list[Job] = [out[0] for out in outcomes]
    assert [job.params for job in jobs] == [{"n": n} for n in range(6)]
    assert [job.created_at for job in jobs] == [1_000 + n for n in range(6)]
    assert jobs[2].depends_on == (parent.id,)
    # Two runs of plain submissions, one executemany each, in one savepoint: the next seq is
    # read once per run, and once for each of the two submissions written alone.
    assert statements.count(NEXT_SEQ) == 2 + 2, statements
    assert statements.count("SAVEPOINT op") == 1, statements
    stored = _rows(store, "SELECT id FROM jobs WHERE seq > ? ORDER BY seq", 1)
    assert [r["id"] for r in stored] == [job.id for job in jobs]


async def test_a_refused_submission_does_not_undo_the_others_of_its_batch(store: Store) -> None:
    ops = [
        SubmitOp([_job(0)], 1_000),
        SubmitOp([_job(1), _job(2, parent="06H2B46H7VBH28HXPPMB8RP3M8")], 1_001),
        SubmitOp([_job(3)], 1_002),
    ]
    outcomes, statements = await _held_batch(store, ops)

    assert isinstance(outcomes[1], UnknownParent)
    assert [job.params for job in outcomes[0]] == [{"n": 0}]
    assert [job.params for job in outcomes[2]] == [{"n": 3}]
    # The merged attempt was rolled back, then each was written in its own savepoint.
    assert statements.count("SAVEPOINT op") == 4, statements
    assert statements.count("ROLLBACK TO op") == 2, statements
    stored = _rows(store, "SELECT id FROM jobs ORDER BY seq")
    assert [r["id"] for r in stored] == [outcomes[0][0].id, outcomes[2][0].id]
    # The refused batch is all or nothing: its valid first job is not there either, and no
    # event names a job that does not exist.
    events = _rows(store, "SELECT job_id FROM events ORDER BY id")
    assert [e["job_id"] for e in events] == [outcomes[0][0].id, outcomes[2][0].id]


async def test_other_operations_keep_their_place_around_merged_submissions(store: Store) -> None:
    order: list[tuple[str, int]] = []  # each marker and the jobs it saw written before it

    def mark(name: str) -> Any:
        def op(conn: sqlite3.Connection, tx: WriteTx) -> str:
            order.append((name, conn.execute("SELECT count(*) FROM jobs").fetchone()[0]))
            return name

        return op

    ops: list[Any] = [
        mark("first"),
        SubmitOp([_job(0)], 1_000),
        mark("middle"),
        SubmitOp([_job(1)], 1_001),
        mark("last"),
    ]
    outcomes, _ = await _held_batch(store, ops)

    # Both submissions are written together at the place of the first one: after "first",
    # before "middle"; the other operations run in their order.
    assert order == [("first", 0), ("middle", 2), ("last", 2)]
    assert outcomes[0] == "first" and outcomes[2] == "middle" and outcomes[4] == "last"
    assert outcomes[1][0].params == {"n": 0} and outcomes[3][0].params == {"n": 1}
    assert len(_rows(store, "SELECT seq FROM jobs ORDER BY seq")) == 2


async def test_a_submission_alone_is_written_in_its_own_savepoint(store: Store) -> None:
    outcomes, statements = await _held_batch(store, [SubmitOp([_job(0), _job(1)], 1_000)])
    assert [job.params for job in outcomes[0]] == [{"n": 0}, {"n": 1}]
    assert statements.count("SAVEPOINT op") == 1
    assert len([s for s in statements if s.startswith(EVENTS_INSERT)]) == 1
