"""The claim reads the ``jobs_ready`` partial index in priority order: no table scan and no
temporary b-tree for its ORDER BY, however many finished jobs the table holds."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from core_support import connect

from edgejobs import EdgeJobs, JobSpec
from edgejobs.store.claim import _CANDIDATES, _CLAIM_SIMPLE, ClaimLimits, claim_ready
from edgejobs.store.db import WriteTx

PARAMS = {
    "now": 0,
    "lease": 0,
    "types": json.dumps(["a", "b"]),
    "full": json.dumps(["org1\x1fa"]),
    "priority": 1,
    "run_at": 0,
    "seq": 10,
    "limit": 8,
}


def plan(conn: sqlite3.Connection, sql: str) -> list[str]:
    return [row["detail"] for row in conn.execute("EXPLAIN QUERY PLAN " + sql, PARAMS)]


async def _populate(path: Path) -> None:
    async def noop(ctx: object, params: dict[str, object]) -> None:
        return None

    ej = EdgeJobs(database=path)
    ej.register("a", noop)
    ej.register("b", noop)
    for start in range(0, 3000, 500):
        await ej.submit_many(
            JobSpec("a" if n % 3 else "b", f"org{n % 7}", {"n": n}, priority=("low", "high")[n % 2])
            for n in range(start, start + 500)
        )
    await ej.close()
    # Most jobs are long finished, as on a real appliance.
    with connect(path) as conn:
        conn.execute(
            "UPDATE jobs SET status = 'completed', finished_at = created_at WHERE seq % 10 != 0"
        )


@pytest.mark.parametrize("analyzed", [False, True], ids=["fresh", "analyzed"])
@pytest.mark.parametrize("sql", [_CLAIM_SIMPLE, _CANDIDATES], ids=["claim", "candidates"])
async def test_claim_uses_the_ready_index(tmp_path: Path, sql: str, analyzed: bool) -> None:
    path = tmp_path / "jobs.db"
    await _populate(path)
    conn = connect(path)
    try:
        if analyzed:
            conn.execute("ANALYZE")  # what PRAGMA optimize may do on a long-running database
        details = plan(conn, sql)
    finally:
        conn.close()
    text = "\n".join(details)
    assert any("jobs_ready" in d for d in details), text
    for detail in details:
        # Reading jobs is a rowid lookup or a walk of the ready index, never the table.
        if detail.startswith(("SCAN jobs", "SEARCH jobs")):
            assert "jobs_ready" in detail or "PRIMARY KEY" in detail, text
    assert "TEMP B-TREE" not in text, text


async def test_the_writer_keeps_returning_rows_in_memory(tmp_path: Path) -> None:
    """Every claim, completion and promotion is an ``UPDATE … RETURNING``, whose rows SQLite
    gathers in an ephemeral table: on the writer's connection that table lives in memory
    (``temp_store = MEMORY``), not in a temporary file set up per statement. Readers keep the
    default, so a large sort there can still spill to disk."""
    ej = EdgeJobs(database=tmp_path / "jobs.db")
    async with ej:
        writer_mode = await ej.store.writer.submit(
            lambda conn, tx: conn.execute("PRAGMA temp_store").fetchone()[0]
        )
        reader_mode = await ej.store.read(
            lambda conn: conn.execute("PRAGMA temp_store").fetchone()[0]
        )
    assert writer_mode == 2  # MEMORY
    assert reader_mode == 0  # DEFAULT


@pytest.mark.parametrize("backlog", [300, 3000])
async def test_a_full_orgs_backlog_is_left_out_by_sqlite_not_paged_through(
    tmp_path: Path, backlog: int
) -> None:
    """One org at its ``org_concurrency`` with a long backlog ahead of another org's job: the
    claim reads one page whatever the backlog. It used to page through the whole backlog with
    a growing OFFSET, skipping each row in Python (quadratic; 7 s per claim with 50,000 queued,
    inside the write transaction)."""
    path = tmp_path / "jobs.db"

    async def noop(ctx: object, params: dict[str, object]) -> None:
        return None

    ej = EdgeJobs(database=path)
    ej.register("a", noop, dedup=False)
    for _ in range(backlog // 300):
        await ej.submit_many(JobSpec("a", "big", {}, priority="high") for _ in range(300))
    small = await ej.submit("a", org="small", priority="low")
    await ej.close()
    limits = ClaimLimits(
        types=frozenset({"a"}), org_limit={"a": 1}, running_per_org={("a", "big"): 1}
    )
    pages = 0

    def count(statement: str) -> None:
        nonlocal pages
        pages += statement.lstrip().startswith("SELECT seq, job_type, org")

    conn = connect(path)
    try:
        conn.set_trace_callback(count)
        conn.execute("BEGIN IMMEDIATE")
        rows = claim_ready(conn, WriteTx(), now=10**13, slots=4, lease_ms=1, limits=limits)
        conn.execute("ROLLBACK")
    finally:
        conn.close()
    assert [row["id"] for row in rows] == [small.id]
    assert pages <= 2, pages
