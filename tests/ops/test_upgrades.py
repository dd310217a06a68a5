"""Upgrading a database an earlier edgejobs made, and opening one from several processes.

Each old database is built here from the shipped migrations themselves (0001 up to the version
an earlier edgejobs stopped at) and filled with rows in the form that version wrote, straight
in SQL: the current code never writes those forms. The first ``0001`` differed from today's
(no ``jobs.has_dependents``, one more index), and the earliest versions stored a ``job``
event's times as ISO 8601 text; both are rebuilt as such.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import closing, contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from ej_testkit import count_drift
from ops_support import connect, make_app

from edgejobs.errors import RunnerAlreadyActive, SchemaTooNew
from edgejobs.runner.lock import lock_path
from edgejobs.store import events, migrations, retention, stats, transitions
from edgejobs.store import jobs as jobs_store
from edgejobs.store import store as store_module
from edgejobs.store.rows import render_job_event
from edgejobs.store.store import Store
from edgejobs.testing import FakeClock

NOW_MS = 1_796_000_000_000
"""2026-11-30T00:53:20Z, the time the old rows were written."""


def _iso(ms: int) -> str:
    """A time as the earliest versions stored it in an event."""
    from edgejobs.models import iso_ms

    text = iso_ms(ms)
    assert text is not None
    return text


def build_old_database(path: Path, version: int, *, first_jobs_table: bool = False) -> None:
    """A file at schema ``version``, made by applying the shipped migrations 1..``version``.

    ``first_jobs_table``: the ``jobs`` table as the first ``0001`` created it (before it
    gained ``has_dependents`` and lost the ``(org, status, seq)`` index).
    """
    with closing(connect(path)) as conn:
        conn.execute("PRAGMA journal_mode = WAL")
        for number, _name, sql in migrations.available()[:version]:
            conn.execute("BEGIN")
            for statement in migrations._statements(sql):
                conn.execute(statement)
            if number == 1 and first_jobs_table:
                conn.execute("ALTER TABLE jobs DROP COLUMN has_dependents")
                conn.execute("CREATE INDEX jobs_org_status ON jobs (org, status, seq)")
            conn.execute(f"PRAGMA user_version = {number}")
            conn.execute("COMMIT")


def insert_job(
    conn: sqlite3.Connection,
    seq: int,
    status: str,
    *,
    pending_parents: int = 0,
    attempts: int = 0,
    lease_expires_at: int | None = None,
    priority: int = 2,
) -> str:
    """One ``quick`` job of org ``acme`` in the columns every version has; returns its id."""
    job_id = f"06H2OLD{seq:019d}"
    conn.execute(
        "INSERT INTO jobs (seq, id, org, job_type, status, priority, params, attempts,"
        " max_retries, run_at, lease_expires_at, pending_parents, created_at, started_at,"
        " updated_at) VALUES (?, ?, 'acme', 'quick', ?, ?, ?, ?, 3, ?, ?, ?, ?, ?, ?)",
        (
            seq,
            job_id,
            status,
            priority,
            json.dumps({"n": seq}),
            attempts,
            NOW_MS,
            lease_expires_at,
            pending_parents,
            NOW_MS,
            NOW_MS if status == "running" else None,
            NOW_MS,
        ),
    )
    if status == "running":
        conn.execute(
            "INSERT INTO attempts (job_seq, number, started_at) VALUES (?, ?, ?)",
            (seq, attempts, NOW_MS),
        )
    return job_id


async def test_a_database_with_the_first_jobs_table_runs_dependencies_again(
    tmp_path: Path, clock: FakeClock
) -> None:
    """Before, every completion, every submission with a parent and every event read of such
    a file failed with ``no such column: has_dependents``: children never ran."""
    path = tmp_path / "first.db"
    build_old_database(path, 3, first_jobs_table=True)
    with closing(connect(path)) as conn:
        parent = insert_job(conn, 1, "queued")
        child = insert_job(conn, 2, "blocked", pending_parents=1)
        conn.execute("INSERT INTO job_deps (child_seq, parent_seq) VALUES (2, 1)")
        # What a runner killed mid-job left behind.
        orphan = insert_job(conn, 3, "running", attempts=1, lease_expires_at=NOW_MS + 30_000)

    ej = make_app(path, clock)
    await ej.start(run_workers=False)
    try:
        late_child = await ej.submit("quick", org="acme", depends_on=[parent])
        await ej.drain()
        # The orphan's lost attempt counts as a failed one: it waits for its retry.
        assert (await ej.get(orphan)).status.value == "retrying"
        clock.advance(3600)
        await ej.drain()
        for job_id in (parent, child, late_child.id, orphan):
            assert (await ej.get(job_id)).status.value == "completed", job_id
        assert (await ej.get(orphan)).attempts == 2
        assert (await ej.get(parent)).dependents == (child, late_child.id)
    finally:
        await ej.close()
    with closing(connect(path)) as conn:
        assert count_drift(conn) == {}
        indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
        assert "jobs_org_status" not in indexes
        flags = dict(conn.execute("SELECT seq, has_dependents FROM jobs WHERE seq <= 3"))
        assert flags == {1: 1, 2: 0, 3: 0}


def _old_job_event(job_id: str, status: str, at: int) -> str:
    """A ``job`` event as the earliest versions stored it: an object, times as ISO text."""
    return json.dumps(
        {
            "attempts": 1,
            "cancel_reason": None,
            "created_at": _iso(NOW_MS),
            "error": None,
            "finished_at": _iso(at) if status == "completed" else None,
            "id": job_id,
            "job_type": "quick",
            "max_retries": 3,
            "next_retry_at": None,
            "org": "acme",
            "priority": "high",
            "progress": 0.0,
            "progress_message": None,
            "run_at": _iso(NOW_MS),
            "started_at": _iso(NOW_MS + 1),
            "status": status,
            "updated_at": _iso(at),
        },
        separators=(",", ":"),
        sort_keys=True,
    )


@pytest.mark.parametrize(
    "upgraded_to",
    [3, 7],
    ids=["objects-from-the-first-versions", "arrays-an-earlier-upgrade-made"],
)
async def test_job_events_with_iso_times_replay_in_the_current_form(
    tmp_path: Path, clock: FakeClock, upgraded_to: int
) -> None:
    """Migration 0005 turned those events into arrays but kept the ISO text, which the
    stream then failed to render (``int()`` of the text): a ``Last-Event-ID`` replay over
    them broke the stream. 7: the file an earlier edgejobs already upgraded that way."""
    path = tmp_path / "events.db"
    build_old_database(path, 3, first_jobs_table=True)
    with closing(connect(path)) as conn:
        job_id = insert_job(conn, 1, "completed", attempts=1, priority=1)
        for status, at in (("running", NOW_MS + 1), ("completed", NOW_MS + 999)):
            conn.execute(
                "INSERT INTO events (org, job_id, kind, data, created_at)"
                " VALUES ('acme', ?, 'job', ?, ?)",
                (job_id, _old_job_event(job_id, status, at), at),
            )
        conn.execute("BEGIN")
        for _number, _name, sql in migrations.available()[3:upgraded_to]:
            for statement in migrations._statements(sql):
                conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {upgraded_to}")
        conn.execute("COMMIT")

    ej = make_app(path, clock)
    await ej.open()
    try:
        rows = await ej.store.read(
            partial(events.replay, after=0, upto=10, org="acme", job_id=None, limit=10)
        )
    finally:
        await ej.close()
    assert rows is not None  # every event after 0 is still in the log
    rendered = [json.loads(render_job_event(r.data, r.job_id, r.org, r.extras)) for r in rows]
    assert [(e["status"], e["priority"], e["updated_at"]) for e in rendered] == [
        ("running", "high", "2026-11-30T00:53:20.001Z"),
        ("completed", "high", "2026-11-30T00:53:20.999Z"),
    ]
    assert {e["created_at"] for e in rendered} == {"2026-11-30T00:53:20.000Z"}
    assert rendered[1]["finished_at"] == "2026-11-30T00:53:20.999Z"
    assert rendered[0]["next_retry_at"] is None


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _cli(config: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "edgejobs", "--config", str(config), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "EDGEJOBS_CONFIG": ""},
    )


def _config(tmp_path: Path, db: Path) -> Path:
    config = tmp_path / "edgejobs.toml"
    config.write_text(f'[database]\npath = "{db.name}"\n', encoding="utf-8")
    return config


async def test_a_database_of_a_newer_edgejobs_is_refused_and_left_untouched(
    tmp_path: Path, clock: FakeClock
) -> None:
    path = tmp_path / "newer.db"
    build_old_database(path, len(migrations.available()))
    with closing(connect(path)) as conn:
        insert_job(conn, 1, "queued")
        conn.execute(f"PRAGMA user_version = {len(migrations.available()) + 1}")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    before = _digest(path)

    ej = make_app(path, clock)
    with pytest.raises(SchemaTooNew, match="newer than this edgejobs"):
        await ej.start()
    await ej.close()
    proc = _cli(_config(tmp_path, path), "jobs", "list")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert "newer than this edgejobs" in err and "Traceback" not in err
    assert _digest(path) == before


def test_two_processes_opening_an_old_database_at_once_migrate_it_once(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    build_old_database(path, 4)
    with closing(connect(path)) as conn:
        conn.execute("BEGIN")
        for seq in range(1, 2001):
            insert_job(conn, seq, "queued")
        # Enough old events that migration 0005 takes a while.
        event = _old_job_event("x", "running", NOW_MS + 1)
        conn.executemany(
            "INSERT INTO events (org, job_id, kind, data, created_at) VALUES ('acme', 'x', 'job', ?, ?)",
            [(event, NOW_MS)] * 20_000,
        )
        conn.execute("COMMIT")
    config = _config(tmp_path, path)
    procs = [_cli(config, "stats", "--json"), _cli(config, "jobs", "list", "--json")]
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert err == ""
    with closing(connect(path)) as conn:
        assert migrations.current_version(conn) == len(migrations.available())
        assert count_drift(conn) == {}


_KILLED_MIGRATION = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from edgejobs.store import migrations
    from edgejobs.store.db import Pragmas, connect

    shipped = migrations.available()
    number, name, sql = shipped[5]  # 0006: counts every job of the file
    killed = [*shipped[:5], (number, name, sql + "\\nSELECT die();"), *shipped[6:]]
    migrations.available = lambda: killed
    conn = connect(Path(sys.argv[1]), Pragmas())
    conn.create_function("die", 0, lambda: os.kill(os.getpid(), signal.SIGKILL))
    migrations.migrate(conn)
    """
)


def test_a_migration_killed_midway_leaves_the_previous_version_and_the_next_open_completes_it(
    tmp_path: Path,
) -> None:
    path = tmp_path / "old.db"
    build_old_database(path, 4)
    with closing(connect(path)) as conn:
        for seq in range(1, 101):
            insert_job(conn, seq, "queued")
    proc = subprocess.run(
        [sys.executable, "-c", _KILLED_MIGRATION, str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    with closing(connect(path)) as conn:
        # 0005 was committed; 0006's table and counts were not, not even in part.
        assert migrations.current_version(conn) == 5
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert "job_counts" not in tables
        assert migrations.migrate(conn) == len(migrations.available())
        assert count_drift(conn) == {}
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


async def test_a_database_of_version_10_lists_unsuccessful_jobs_through_their_index(
    tmp_path: Path, clock: FakeClock
) -> None:
    """Migration 0011 indexes the unsuccessful terminal jobs of a file that has them already:
    the dead-letter view of an upgraded file reads them there, not the whole history."""
    path = tmp_path / "v10.db"
    build_old_database(path, 10)
    statuses = ["completed", "dead_letter", "completed", "failed", "canceled", "timed_out"] * 5
    with closing(connect(path)) as conn:
        ids = {seq: insert_job(conn, seq, status) for seq, status in enumerate(statuses, 1)}
        conn.execute(
            "INSERT INTO job_counts (org, job_type, status, n)"
            " SELECT org, job_type, status, count(*) FROM jobs GROUP BY org, job_type, status"
        )

    ej = make_app(path, clock)
    await ej.open()
    try:
        dead, _ = await ej.list_jobs(org="acme", statuses=["dead_letter"], limit=3)
        unsuccessful, _ = await ej.list_jobs(
            org="acme", statuses=["failed", "timed_out", "dead_letter", "canceled"]
        )
    finally:
        await ej.close()
    newest_first = sorted(ids.items(), reverse=True)
    assert [job.id for job in dead] == [
        job_id for seq, job_id in newest_first if statuses[seq - 1] == "dead_letter"
    ][:3]
    assert [job.id for job in unsuccessful] == [
        job_id for seq, job_id in newest_first if statuses[seq - 1] != "completed"
    ]
    with closing(connect(path)) as conn:
        assert migrations.current_version(conn) == len(migrations.available())
        plan = " ".join(
            row[3]
            for row in conn.execute(
                "EXPLAIN QUERY PLAN SELECT seq FROM jobs WHERE status = 'dead_letter'"
                " ORDER BY seq DESC"
            )
        )
        assert "jobs_unsuccessful" in plan


def _plan(conn: sqlite3.Connection, sql: str, params: object) -> str:
    return " ".join(row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql, params))


async def test_a_database_of_version_11_gets_its_terminal_indexes_without_in_lists(
    tmp_path: Path, clock: FakeClock
) -> None:
    """Migration 0012 rebuilds ``jobs_finished`` and ``jobs_dedup`` with their condition as
    comparisons (SQLite built an IN list's lookup table at every insert and status change of
    every job). The queries that must read them repeat the new condition word for word: each
    still reads its index, and one pending job per hash is still all the index lets in."""
    path = tmp_path / "v11.db"
    build_old_database(path, 11)
    with closing(connect(path)) as conn:
        for seq, status in enumerate(["completed", "failed", "queued"], 1):
            insert_job(conn, seq, status)
        conn.execute("UPDATE jobs SET dedup_hash = 'h', finished_at = seq")
    ej = make_app(path, clock)
    await ej.open()
    await ej.close()
    with closing(connect(path)) as conn:
        assert migrations.current_version(conn) == len(migrations.available())
        for name in ("jobs_finished", "jobs_dedup"):
            sql = conn.execute("SELECT sql FROM sqlite_master WHERE name = ?", (name,)).fetchone()
            assert " IN " not in sql[0].upper() and "status = 'dead_letter'" in sql[0]
        assert "USING INDEX jobs_dedup" in _plan(conn, jobs_store.PENDING_WITH_HASH, ("h",))
        assert "USING INDEX jobs_dedup" in _plan(conn, transitions.PENDING_TWIN, ("h", 1))
        assert "USING INDEX jobs_finished" in _plan(
            conn, retention._DELETE_JOBS, {"cutoff": 10, "batch": 5}
        )
        assert "USING INDEX jobs_finished" in _plan(
            conn, stats.FINISHED_PER_MINUTE, {"since": 0, "org": None}
        )
        pending = conn.execute(jobs_store.PENDING_WITH_HASH, ("h",)).fetchall()
        assert [row[1] for row in pending] == ["06H2OLD0000000000000000003"]
        with pytest.raises(sqlite3.IntegrityError):  # a second pending job with that hash
            insert_job(conn, 4, "queued")
            conn.execute("UPDATE jobs SET dedup_hash = 'h' WHERE seq = 4")
        conn.execute("DELETE FROM jobs WHERE seq = 4")
        insert_job(conn, 5, "dead_letter")  # an ended one more is fine
        conn.execute("UPDATE jobs SET dedup_hash = 'h' WHERE seq = 5")


_OLD_RUNNER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from edgejobs.runner.lock import RunnerLock

    lock = RunnerLock(Path(sys.argv[1]))  # what a running (older) runner holds
    lock.acquire()
    print("holding", flush=True)
    time.sleep(60)
    """
)


@contextmanager
def _runner_process(script: str, *args: str) -> Iterator[subprocess.Popen[str]]:
    """Another process running ``script`` (it prints "holding" once it holds the runner
    lock), killed at the end."""
    runner = subprocess.Popen(
        [sys.executable, "-c", script, *args], stdout=subprocess.PIPE, text=True
    )
    try:
        assert runner.stdout is not None and runner.stdout.readline().strip() == "holding"
        yield runner
    finally:
        runner.kill()
        runner.wait(timeout=10)


def test_an_old_database_is_not_upgraded_under_a_runner_of_another_process(
    tmp_path: Path,
) -> None:
    """A package upgraded while its service still ran: the first command of the new version
    (a ``stats``, say) migrated the file under the old runner, which went on writing its old
    formats into it — events no stream could read, job counts left behind. The new version
    now refuses, naming the runner, and leaves the file as it was; once the runner stopped it
    upgrades the file as before."""
    path = tmp_path / "old.db"
    build_old_database(path, 4)
    with closing(connect(path)) as conn:
        insert_job(conn, 1, "queued")
    config = _config(tmp_path, path)
    with _runner_process(_OLD_RUNNER, str(path)) as runner:
        proc = _cli(config, "stats", "--json")
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 3, (out, err)
        assert f"pid {runner.pid}" in err and "stop that runner first" in err, err
        assert "Traceback" not in err
        with closing(connect(path)) as conn:
            assert migrations.current_version(conn) == 4
    proc = _cli(config, "stats", "--json")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    with closing(connect(path)) as conn:
        assert migrations.current_version(conn) == migrations.latest_version()


_RUNNER_OF_THIS_VERSION = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from edgejobs.runner.lock import RunnerLock
    from edgejobs.store import migrations
    from edgejobs.store.store import Store

    path = Path(sys.argv[1])
    lock = RunnerLock(path)  # what a runner of this version holds as it starts
    lock.acquire(migrations.latest_version())
    print("holding", flush=True)
    time.sleep(float(sys.argv[2]))  # migrating takes a while
    Store(path).prepare()  # its start-up migration
    print("migrated", flush=True)
    time.sleep(60)
    """
)


def test_a_command_run_while_a_runner_of_the_same_version_migrates_waits_for_it(
    tmp_path: Path,
) -> None:
    """A runner migrates the file at its start (also a fresh one, a migration at a time). A
    command of the same version run just then (``submit`` right after starting a worker) saw a
    schema version in between, took the runner for an older one and refused: "stop that
    runner first" (exit 3). The runner's lock now records the schema version it runs; a
    command of that version waits for the migration and goes on."""
    path = tmp_path / "old.db"
    build_old_database(path, 4)
    with closing(connect(path)) as conn:
        insert_job(conn, 1, "queued")
    config = _config(tmp_path, path)
    with _runner_process(_RUNNER_OF_THIS_VERSION, str(path), "1.0") as runner:
        proc = _cli(config, "stats", "--json")
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, (out, err)
        assert json.loads(out)["by_status"]["queued"] == 1
        assert runner.stdout is not None
        assert runner.stdout.readline().strip() == "migrated"  # the runner did it, not us


def test_a_runner_of_the_same_version_that_never_ends_its_migration_is_said(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "old.db"
    build_old_database(path, 4)
    monkeypatch.setattr(store_module, "UPGRADE_WAIT_S", 0.3)
    with _runner_process(_RUNNER_OF_THIS_VERSION, str(path), "60") as runner:
        with pytest.raises(RunnerAlreadyActive) as refused:
            Store(path).prepare()
        assert f"by its runner (pid {runner.pid}), still after 0.3 s" in refused.value.message
        with closing(connect(path)) as conn:
            assert migrations.current_version(conn) == 4  # not migrated under it either


def test_an_old_database_is_not_upgraded_by_a_user_who_cannot_tell_whether_a_runner_is_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A database shared with a group: the runner's lock file is ``0600``, its user's. A group
    member's look for a runner could not open it and answered "no runner", so the first
    command of a new version, run by that member, migrated the file under the old runner.
    Not being able to tell now refuses, and says why."""
    path = tmp_path / "old.db"
    build_old_database(path, 4)
    lock = lock_path(path)
    lock.touch()  # left by the runner, another user's
    real_open = os.open

    def open_as_another_user(file: Any, flags: int, *args: Any) -> int:
        if Path(file) == lock:  # root reads any file: the other user is played here
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, flags, *args)

    monkeypatch.setattr(os, "open", open_as_another_user)
    with pytest.raises(RunnerAlreadyActive) as refused:
        Store(path).prepare()
    assert f"may not read {lock}" in refused.value.message
    assert "as the user the runner runs as" in refused.value.message
    with closing(connect(path)) as conn:
        assert migrations.current_version(conn) == 4
    monkeypatch.undo()  # the runner's user, say: it can tell, and no runner is there
    Store(path).prepare()
    with closing(connect(path)) as conn:
        assert migrations.current_version(conn) == migrations.latest_version()


def test_a_backup_of_a_database_an_older_runner_serves_is_marked_like_any_other(
    tmp_path: Path,
) -> None:
    """``edgejobs backup`` by a new version of a file at a schema before the backup mark (an
    older runner still serving it) wrote an unmarked copy: its restore left no id gap, and
    SSE clients resuming with the original's ids silently missed the restored system's first
    events. The copy is now migrated and marked; the original is left as it is."""
    path = tmp_path / "old.db"
    build_old_database(path, 9)
    with closing(connect(path)) as conn:
        insert_job(conn, 1, "queued")
    config = _config(tmp_path, path)
    copy = tmp_path / "copy.db"
    proc = _cli(config, "backup", str(copy))
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "schema version 9" in err and "restore it with this version" in err, err
    assert not list(tmp_path.glob("copy.db-*"))  # one file, no journal beside it
    with closing(connect(path)) as conn:
        assert migrations.current_version(conn) == 9  # the original: untouched
    with closing(connect(copy)) as conn:
        assert migrations.current_version(conn) == migrations.latest_version()
        assert conn.execute("SELECT count(*) FROM backup_copy").fetchone()[0] == 1
        assert conn.execute("SELECT count(*) FROM jobs").fetchone()[0] == 1
