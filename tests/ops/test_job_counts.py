"""The job counts behind ``/stats`` and the metrics are kept, not counted on every read.

Counted with ``GROUP BY`` over the jobs table, a system-wide ``/stats`` took over a second
with 1,000,000 finished jobs (and the dashboard asks up to once a second). Every write now
stages its changes of the (org, job type, status) counts and writes them once per transaction
into ``job_counts``; reading them costs the same however long the history. That they stay
exact is checked after every commit of the dependency tests, at the end of every core-engine
test and of every chaos run (``ej_testkit.count_drift``); here: the cost of reading, the
migration that counts an existing file, and a run through the common transitions.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from functools import partial
from pathlib import Path

from ej_testkit import count_drift, vm_steps
from ops_support import DAY_MS, connect, insert_jobs, make_app

from edgejobs.store.db import WriteTx
from edgejobs.store.jobs import NewJob, count_by_org, count_by_status, recount_jobs
from edgejobs.store.jobs import insert_jobs as insert_jobs_op
from edgejobs.store.migrations import migrate
from edgejobs.store.store import Store
from edgejobs.testing import FakeClock


def _history(path: Path, clock: FakeClock, finished: int) -> None:
    Store(path).prepare()
    old = clock.now_ms() - DAY_MS
    insert_jobs(path, finished, prefix="done", status="completed", created_at=old, finished_at=old)
    insert_jobs(path, 3, prefix="q", status="queued", created_at=old, finished_at=None)


def _reads(conn: sqlite3.Connection) -> dict[str, int]:
    return {
        "every org": vm_steps(conn, partial(count_by_status, conn, None)),
        "one org": vm_steps(conn, partial(count_by_status, conn, "org1")),
        "by org": vm_steps(conn, partial(count_by_org, conn)),
    }


def test_reading_the_counts_costs_the_same_however_many_jobs_have_finished(
    tmp_path: Path, clock: FakeClock
) -> None:
    steps: dict[int, dict[str, int]] = {}
    for finished in (1_000, 100_000):
        path = tmp_path / f"history-{finished}.db"
        _history(path, clock, finished)
        with closing(connect(path)) as conn:
            assert count_drift(conn) == {}
            steps[finished] = _reads(conn)
            by_org = count_by_org(conn)
            assert sum(counts.get("completed", 0) for counts in by_org.values()) == finished
            assert sum(counts.get("queued", 0) for counts in by_org.values()) == 3
            # The GROUP BY it replaces, for scale: it reads every row.
            full = vm_steps(
                conn,
                lambda conn=conn: conn.execute(
                    "SELECT org, status, count(*) FROM jobs GROUP BY org, status"
                ).fetchall(),
            )
            if finished == 100_000:
                assert full > 100, full
    for read, cost in steps[100_000].items():
        assert cost <= steps[1_000][read] + 1, steps


def test_one_orgs_counts_are_read_by_key_however_many_orgs_there_are(tmp_path: Path) -> None:
    steps: dict[int, int] = {}
    for orgs in (10, 20_000):
        path = tmp_path / f"orgs-{orgs}.db"
        Store(path).prepare()
        with closing(connect(path)) as conn:
            conn.executemany(
                "INSERT INTO job_counts (org, job_type, status, n) VALUES (?, ?, ?, 1)",
                [
                    (f"org{i}", job_type, status)
                    for i in range(orgs)
                    for job_type in ("a", "b")
                    for status in ("queued", "completed")
                ],
            )
            assert count_by_status(conn, "org7") == {
                "a": {"queued": 1, "completed": 1},
                "b": {"queued": 1, "completed": 1},
            }
            steps[orgs] = vm_steps(conn, partial(count_by_status, conn, "org7"))
    assert steps[20_000] <= steps[10] + 1, steps


def test_the_migration_counts_the_jobs_a_file_already_holds(
    tmp_path: Path, clock: FakeClock
) -> None:
    path = tmp_path / "older.db"
    _history(path, clock, 500)
    insert_jobs(path, 7, prefix="r", status="retrying", created_at=clock.now_ms(), finished_at=None)
    with closing(connect(path)) as conn:
        # The file as the version before kept it: no counts yet.
        conn.execute("DROP TABLE job_counts")
        conn.execute("DROP TABLE job_seq_floor")
        conn.execute("DROP TABLE rate_windows")
        conn.execute("DROP TABLE backup_copy")
        conn.execute("DROP INDEX jobs_unsuccessful")
        conn.execute("PRAGMA user_version = 5")
        assert migrate(conn) >= 6
        assert count_drift(conn) == {}
        assert count_by_status(conn, None) == {
            "quick": {"completed": 500, "queued": 3, "retrying": 7}
        }


async def test_stats_follow_jobs_through_their_transitions(db_path: Path, clock: FakeClock) -> None:
    """Inserted, scheduled, canceled, claimed, completed, retried by hand, promoted when due:
    after each step ``/stats`` says what counting the table says (a stepped runner)."""
    ej = make_app(db_path, clock, runner={"workers": 2})
    seen: list[dict[str, int]] = []

    async def snapshot() -> None:
        stats = await ej.stats()
        with closing(connect(db_path)) as conn:
            assert count_drift(conn) == {}
            truth = {
                row[0]: row[1]
                for row in conn.execute("SELECT status, count(*) FROM jobs GROUP BY status")
            }
        assert {k: v for k, v in stats["by_status"].items() if v} == truth
        seen.append(truth)

    await ej.start(run_workers=False)
    try:
        jobs = [await ej.submit("quick", org=f"org{i % 2}", params={"n": i}) for i in range(5)]
        await ej.submit("quick", org="org0", params={"n": 9}, delay_s=60)
        await snapshot()
        await ej.cancel(jobs[0].id)
        await ej.drain()
        await snapshot()
        await ej.retry(jobs[0].id)
        await snapshot()
        clock.advance(61)
        await ej.drain()
        await snapshot()
    finally:
        await ej.stop(grace_s=0)
        await ej.close()
    assert seen == [
        {"queued": 5, "scheduled": 1},
        {"canceled": 1, "completed": 4, "scheduled": 1},
        {"queued": 1, "completed": 4, "scheduled": 1},
        {"completed": 6},
    ]


async def test_recount_repairs_counts_a_hand_edit_set_apart(
    db_path: Path, clock: FakeClock
) -> None:
    ej = make_app(db_path, clock)
    await ej.start(run_workers=False)  # stepped: nothing writes between the steps below
    try:
        for n in range(4):
            await ej.submit("quick", org="acme", params={"n": n})
        await ej.drain()
        await ej.submit("quick", org="beta", params={"n": 9}, delay_s=60)
        assert await ej.recount() == 0  # nothing to repair
        with closing(connect(db_path)) as conn:
            # What edgejobs does not do: rows deleted and counts changed by hand.
            conn.execute(
                "DELETE FROM jobs WHERE id = (SELECT min(id) FROM jobs WHERE org = 'acme')"
            )
            conn.execute("UPDATE job_counts SET n = n + 5 WHERE org = 'beta'")
            conn.execute("INSERT INTO job_counts VALUES ('ghost', 'quick', 'queued', 2)")
            assert count_drift(conn) != {}
        assert await ej.recount() == 3
        stats = await ej.stats()
    finally:
        await ej.stop(grace_s=0)
        await ej.close()
    with closing(connect(db_path)) as conn:
        assert count_drift(conn) == {}
    assert stats["by_org"] == {"acme": {"completed": 3}, "beta": {"scheduled": 1}}


async def test_a_recount_in_a_transaction_with_other_changes_counts_each_once(
    db_path: Path, clock: FakeClock
) -> None:
    """The writer runs whatever is queued in one transaction: changes staged before the recount
    (already in the table it counts) and after it (not yet) must both end up counted once."""
    ej = make_app(db_path, clock)
    jobs = [NewJob("acme", "quick", "{}", 2, None, 0, None) for _ in range(3)]
    now = clock.now_ms()

    def insert_then_recount(conn: sqlite3.Connection, tx: WriteTx) -> int:
        insert_jobs_op(conn, tx, jobs=jobs, now=now)
        return recount_jobs(conn, tx)

    def recount_then_insert(conn: sqlite3.Connection, tx: WriteTx) -> int:
        wrong = recount_jobs(conn, tx)
        insert_jobs_op(conn, tx, jobs=jobs, now=now)
        return wrong

    await ej.open()
    try:
        assert await ej.store.write(insert_then_recount) == 0
        assert await ej.store.write(recount_then_insert) == 0
        assert (await ej.stats())["by_status"]["queued"] == 6
    finally:
        await ej.close()
    with closing(connect(db_path)) as conn:
        assert count_drift(conn) == {}
