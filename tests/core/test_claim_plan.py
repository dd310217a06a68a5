"""The claim reads the ``jobs_ready`` partial index in priority order: no table scan and no
temporary b-tree for its ORDER BY, however many finished jobs the table holds."""

from __future__ import annotations

import json
import random
import sqlite3
from contextlib import closing
from functools import partial
from pathlib import Path

import pytest
from core_support import connect
from ej_testkit import vm_steps

from edgejobs import EdgeJobs, JobSpec
from edgejobs.store.claim import (
    _CANDIDATES,
    _CLAIM_SIMPLE,
    ClaimLimits,
    _choose_by_pairs,
    _choose_by_walk,
    _Room,
    claim_ready,
    ensure_pair_index,
)
from edgejobs.store.db import WriteTx
from edgejobs.store.store import Store

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
    with closing(connect(path)) as conn:
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
    assert 1 <= pages <= 2, pages  # (0: the statement counted was reworded)


async def _backlog_ahead(path: Path, backlog: int) -> list[str]:
    """``backlog`` high-priority jobs of org "big" (at its limit), then low-priority jobs of
    three small orgs; returns the small orgs' job ids."""

    async def noop(ctx: object, params: dict[str, object]) -> None:
        return None

    ej = EdgeJobs(database=path)
    ej.register("a", noop, dedup=False)
    ej.register("b", noop, dedup=False)
    for start in range(0, backlog, 1000):
        count = min(1000, backlog - start)
        await ej.submit_many(JobSpec("a", "big", {}, priority="high") for _ in range(count))
    small = await ej.submit_many(
        JobSpec("a" if n % 2 else "b", f"small{n % 3}", {"n": n}, priority="low") for n in range(6)
    )
    await ej.close()
    return [job.id for job in small]


async def test_a_full_orgs_backlog_costs_the_claim_nothing_however_long(tmp_path: Path) -> None:
    """One org at its ``org_concurrency`` with a long backlog ahead in priority: the claim
    used to walk the whole backlog on the ready index (in SQLite, but ~90 ms per claim with
    100,000 such jobs, in every write transaction: the whole runner at half speed). It now
    reads the first jobs of each pair with room: the same work for 1,000 or 20,000."""
    limits = ClaimLimits(
        types=frozenset({"a", "b"}), org_limit={"a": 1}, running_per_org={("a", "big"): 1}
    )
    steps: dict[int, int] = {}
    for backlog in (1_000, 20_000):
        path = tmp_path / f"backlog-{backlog}.db"
        small = await _backlog_ahead(path, backlog)
        conn = connect(path)
        try:
            conn.execute("BEGIN IMMEDIATE")
            ensure_pair_index(conn)  # what the first limited claim does, once
            claimed: list[sqlite3.Row] = []
            claim = partial(_claim_into, claimed, conn, limits)
            steps[backlog] = vm_steps(conn, claim)
            conn.execute("ROLLBACK")
        finally:
            conn.close()
        # Oldest first among the small orgs' low-priority jobs, one per (a, org) pair.
        assert [row["id"] for row in claimed] == small[:4]
    assert steps[20_000] <= steps[1_000] + 2, steps


def _claim_into(claimed: list[sqlite3.Row], conn: sqlite3.Connection, limits: ClaimLimits) -> None:
    claimed += claim_ready(conn, WriteTx(), now=10**13, slots=4, lease_ms=1, limits=limits)


@pytest.mark.parametrize("seed", range(40))
def test_reading_pair_by_pair_chooses_what_the_walk_chooses(tmp_path: Path, seed: int) -> None:
    """The two ways of finding the limited claim's candidates, on random queues, limits and
    running jobs: the same jobs, in the same order."""
    rng = random.Random(seed)
    path = tmp_path / "jobs.db"
    Store(path).prepare()
    conn = connect(path)
    try:
        ensure_pair_index(conn)
        types, orgs = ["a", "b", "c"], [f"o{n}" for n in range(rng.randint(1, 6))]
        rows = [
            (
                seq,
                f"job-{seq}",
                rng.choice(orgs),
                rng.choice(types),
                rng.randint(0, 3),
                rng.randint(0, 5),
            )
            for seq in range(1, rng.randint(0, 120) + 1)
        ]
        conn.executemany(
            "INSERT INTO jobs (seq, id, org, job_type, status, priority, params, max_retries,"
            " run_at, created_at, updated_at) VALUES (?, ?, ?, ?, 'queued', ?, '{}', 0, ?, 0, 0)",
            rows,
        )
        org_limit = {t: rng.randint(1, 3) for t in types if rng.random() < 0.6}
        limits = ClaimLimits(
            types=frozenset(t for t in types if rng.random() < 0.9),
            type_free={t: rng.randint(0, 6) for t in types if rng.random() < 0.4},
            org_limit=org_limit,
            running_per_org={
                (t, o): rng.randint(0, 3) for t in types for o in orgs if rng.random() < 0.5
            },
        )
        for slots in (1, 3, 16):
            walked = _choose_by_walk(conn, _Room.of(limits), slots)
            paired = _choose_by_pairs(conn, _Room.of(limits), slots)
            assert paired == walked, (slots, limits)
    finally:
        conn.close()


def _pair_index_exists(path: Path) -> bool:
    conn = connect(path)
    try:
        found = conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'jobs_ready_pair'")
        return found.fetchone() is not None
    finally:
        conn.close()


async def test_the_pair_index_exists_only_while_a_type_has_a_limit(tmp_path: Path) -> None:
    """Every submit and claim keeps jobs_ready_pair up to date: a runner whose types have no
    limit does not carry it; a runner with a limit builds it as it starts, not in the middle
    of its first limited claim (a scan of the table inside the transaction every write waits
    for)."""
    path = tmp_path / "jobs.db"

    async def noop(ctx: object, params: dict[str, object]) -> None:
        return None

    limited = EdgeJobs(database=path)
    limited.register("a", noop, dedup=False, org_concurrency=1)
    async with limited:
        assert _pair_index_exists(path)  # before any claim
        job = await limited.submit("a", org="acme")
        assert (await limited.wait(job.id, timeout=30)).status.value == "completed"
    assert _pair_index_exists(path)
    plain = EdgeJobs(database=path)
    plain.register("a", noop, dedup=False)
    async with plain:
        job = await plain.submit("a", org="acme")
        assert (await plain.wait(job.id, timeout=30)).status.value == "completed"
    assert not _pair_index_exists(path)
