"""The stored form of a ``job`` event: put together by SQLite from the job row (for speed, in
the statement that appends the event), so checked against the json module for every kind of
value a row can hold, on a real database file."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from edgejobs.store.db import WriteTx, connect
from edgejobs.store.rows import job_event_fields, render_job_event
from edgejobs.store.store import Store
from edgejobs.store.transitions import record_job_event, record_job_events

BASE: dict[str, Any] = {
    "id": "06H2B46H7VBH28HXPPMB8RP3M8",
    "org": "acme",
    "job_type": "report.build",
    "status": "running",
    "priority": 2,
    "params": '{"secret":"never in an event"}',
    "result": None,
    "error": None,
    "progress": 0.0,
    "progress_message": None,
    "attempts": 1,
    "max_retries": 3,
    "run_at": 1_764_390_000_000,
    "next_retry_at": None,
    "created_at": 1_764_390_000_000,
    "started_at": 1_764_390_000_123,
    "finished_at": None,
    "updated_at": 1_764_390_000_123,
    "cancel_reason": None,
}

VARIANTS: list[dict[str, Any]] = [
    {},
    {"status": "completed", "progress": 100, "finished_at": 1_764_390_001_000},
    {"progress": 33.333333333333336, "progress_message": 'step "2" of 3\n'},
    {"org": "ünïcode-org", "job_type": "日本.job", "progress_message": "emoji 🚀 \u2028"},
    {
        "status": "retrying",
        "error": json.dumps({"type": "ValueError", "message": 'bad "x"', "traceback": "Tb..."}),
        "next_retry_at": 1_764_390_009_000,
    },
    {"status": "canceled", "cancel_reason": "parent X ended failed\t\\", "priority": 0},
    {"status": "queued", "started_at": None, "attempts": 0, "priority": 3},
]


def _expected(row: dict[str, Any]) -> dict[str, Any]:
    """The job object the stored event stands for (the API form, integer times), with what the
    event's reader adds from the job's row (params, result, lists, traceback, ETA) left
    empty: it is not stored in the event (tests/sse/test_job_objects.py covers it)."""
    names = {0: "critical", 1: "high", 2: "normal", 3: "low"}
    error = json.loads(row["error"]) if row["error"] else None
    expected = {k: v for k, v in row.items() if k != "seq"}
    expected["priority"] = names[row["priority"]]
    expected["progress"] = float(row["progress"])
    expected["params"] = expected["result"] = expected["eta_s"] = None
    expected["depends_on"] = expected["dependents"] = []
    if error:
        expected["error"] = {"type": error["type"], "message": error["message"], "traceback": None}
    return expected


def _job_object(text: str, row: dict[str, Any]) -> dict[str, Any]:
    """The stored event rendered as the API renders it, with its ISO times back to integers."""
    rendered = json.loads(render_job_event(text, row["id"], row["org"]))
    for name, value in job_event_fields(text).items():
        if name.endswith("_at"):
            rendered[name] = value
    return rendered


@pytest.fixture
def conn(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    store = Store(tmp_path / "events.db")
    store.prepare()
    with closing(connect(store.path, store.pragmas)) as conn:
        yield conn


def _store_row(conn: sqlite3.Connection, row: dict[str, Any]) -> dict[str, Any]:
    columns = [name for name in row if name != "seq"]
    cur = conn.execute(
        "INSERT INTO jobs ("
        + ", ".join(columns)
        + ") VALUES ("
        + ", ".join("?" * len(columns))
        + ")",
        [row[name] for name in columns],
    )
    return {**row, "seq": cur.lastrowid}


def _event_data(conn: sqlite3.Connection) -> list[str]:
    return [r[0] for r in conn.execute("SELECT data FROM events ORDER BY id")]


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_stored_event_is_the_job_without_params_result_or_traceback(
    conn: sqlite3.Connection, variant: dict[str, Any]
) -> None:
    row = _store_row(conn, {**BASE, **variant})
    tx = WriteTx()
    record_job_event(conn, tx, row, was=None)
    (text,) = _event_data(conn)
    assert _job_object(text, row) == _expected(row)
    assert type(job_event_fields(text)["progress"]) is float
    assert "secret" not in text and "Tb..." not in text
    assert tx.events == 1 and tx.jobs_changed == {row["id"]: row["status"]}


def test_many_events_are_written_in_seq_order_by_one_call(conn: sqlite3.Connection) -> None:
    rows = [
        _store_row(conn, {**BASE, **variant, "id": f"06H2B46H7VBH28HXPPMB8RP3M{i}"})
        for i, variant in enumerate(VARIANTS)
    ]
    tx = WriteTx()
    record_job_events(conn, tx, list(reversed(rows)), was=None)
    assert [_job_object(text, r) for text, r in zip(_event_data(conn), rows, strict=True)] == [
        _expected(r) for r in rows
    ]
    assert tx.events == len(rows) and list(tx.jobs_changed) == [r["id"] for r in rows]


def test_a_read_event_has_iso_times(conn: sqlite3.Connection) -> None:
    record_job_event(conn, WriteTx(), _store_row(conn, dict(BASE)), was=None)
    rendered = json.loads(render_job_event(_event_data(conn)[0], BASE["id"], BASE["org"]))
    assert rendered["created_at"] == "2025-11-29T04:20:00.000Z"
    assert rendered["next_retry_at"] is None


def test_events_stored_as_objects_before_are_converted_by_the_migration(
    conn: sqlite3.Connection,
) -> None:
    """Databases of earlier versions hold ``job`` events as JSON objects (a key per field,
    priority by name); migration 0005 rewrites them, so a replay renders them like new ones."""
    from edgejobs.store.migrations import migrate

    rows = [
        _store_row(conn, {**BASE, **variant, "id": f"06H2B46H7VBH28HXPPMB8RP3M{i}"})
        for i, variant in enumerate(VARIANTS)
    ]
    for row in rows:
        old_form = json.dumps(_expected(row), separators=(",", ":"), ensure_ascii=False)
        conn.execute(
            "INSERT INTO events (org, job_id, kind, data, created_at) VALUES (?, ?, 'job', ?, ?)",
            (row["org"], row["id"], old_form, row["updated_at"]),
        )
    progress = '{"job_id":"x","org":"acme","progress":5.0,"progress_message":null,"eta_s":null}'
    conn.execute(
        "INSERT INTO events (org, job_id, kind, data, created_at) VALUES ('acme', 'x', 'progress', ?, 0)",
        (progress,),
    )
    conn.execute("DROP TABLE job_counts")  # what a version-4 file does not have yet
    conn.execute("DROP TABLE job_seq_floor")
    conn.execute("DROP TABLE rate_windows")
    conn.execute("DROP TABLE backup_copy")
    conn.execute("DROP INDEX jobs_unsuccessful")
    conn.execute("PRAGMA user_version = 4")
    assert migrate(conn) >= 5

    job_events = [
        r[0] for r in conn.execute("SELECT data FROM events WHERE kind = 'job' ORDER BY id")
    ]
    assert [_job_object(text, r) for text, r in zip(job_events, rows, strict=True)] == [
        _expected(r) for r in rows
    ]
    assert conn.execute("SELECT data FROM events WHERE kind = 'progress'").fetchone()[0] == progress


def test_one_rows_event_is_stored_exactly_as_a_batchs(conn: sqlite3.Connection) -> None:
    """A single row's event has its own statement (an ``INSERT … VALUES``: an ``INSERT …
    SELECT`` opens a statement journal, whose end inside the writer's savepoint cost a walk of
    everything journaled so far — 6,000 jobs recovered one by one took 4-5 s instead of 0.4).
    Both forms must store the same bytes."""
    rows = [
        _store_row(conn, {**BASE, **variant, "id": f"06H2B46H7VBH28HXPPMB8RP3M{i}"})
        for i, variant in enumerate(VARIANTS)
    ]
    for row in rows:
        record_job_event(conn, WriteTx(), row, was=None)
    one_by_one = conn.execute("SELECT org, job_id, kind, data, created_at FROM events ORDER BY id")
    singles = [tuple(r) for r in one_by_one]
    conn.execute("DELETE FROM events")
    record_job_events(conn, WriteTx(), rows, was=None)
    batched = conn.execute("SELECT org, job_id, kind, data, created_at FROM events ORDER BY id")
    assert singles == [tuple(r) for r in batched]
