"""The firing state of periodic schedules (definitions live in ``[[schedules]]``).

A firing is one write operation: a compare-and-set UPDATE of the schedule's ``last_fire_at``
and ``next_fire_at`` and the insert of its job, in the same transaction. A crash before the
COMMIT leaves neither (the next tick fires that due time again); after it, both (the due time
is never fired twice).
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from collections.abc import Sequence

from edgejobs.store.db import WriteTx
from edgejobs.store.jobs import NewJob, insert_jobs


@dataclasses.dataclass(frozen=True, slots=True)
class ScheduleState:
    """One stored schedule: the definition its due times were computed from, and its state."""

    name: str
    cron: str
    timezone: str
    org: str
    last_fire_at: int | None
    last_job_id: str | None
    next_fire_at: int
    updated_at: int


@dataclasses.dataclass(frozen=True, slots=True)
class ScheduleSeed:
    """A configured schedule and its first due time if it is new (or its cron changed)."""

    name: str
    cron: str
    timezone: str
    org: str
    next_fire_at: int


@dataclasses.dataclass(frozen=True, slots=True)
class Firing:
    """One step of a schedule, decided from the state it was read in.

    ``expected_last`` and ``expected_next`` are that state (the compare-and-set condition);
    ``fire_at`` is the due time to fire now (None: skip without firing); ``job`` the job to
    submit for it.
    """

    name: str
    expected_last: int | None
    expected_next: int
    fire_at: int | None
    next_fire_at: int
    job: NewJob | None


@dataclasses.dataclass(frozen=True, slots=True)
class Fired:
    """What :func:`fire` did: ``applied`` is False when the state had moved on meanwhile."""

    applied: bool
    job_id: str | None = None
    deduplicated: bool = False


def _state(row: sqlite3.Row) -> ScheduleState:
    return ScheduleState(
        name=row["name"],
        cron=row["cron"],
        timezone=row["timezone"],
        org=row["org"],
        last_fire_at=row["last_fire_at"],
        last_job_id=row["last_job_id"],
        next_fire_at=row["next_fire_at"],
        updated_at=row["updated_at"],
    )


def sync_schedules(
    conn: sqlite3.Connection, tx: WriteTx, *, seeds: Sequence[ScheduleSeed], now: int
) -> None:
    """Make the table match the configured schedules.

    A new schedule starts at its seed's ``next_fire_at``; a schedule whose cron or time zone
    changed starts over from it too (its old due times are not caught up). An unchanged one
    keeps its state, so due times missed while the runner was down are still seen. Rows of
    schedules no longer configured are deleted.
    """
    conn.executemany(
        "INSERT INTO schedules (name, cron, timezone, org, next_fire_at, updated_at)"
        " VALUES (?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (name) DO UPDATE SET"
        "  next_fire_at = CASE WHEN schedules.cron IS excluded.cron"
        "   AND schedules.timezone IS excluded.timezone"
        "   THEN schedules.next_fire_at ELSE excluded.next_fire_at END,"
        "  cron = excluded.cron, timezone = excluded.timezone, org = excluded.org,"
        "  updated_at = excluded.updated_at",
        [(s.name, s.cron, s.timezone, s.org, s.next_fire_at, now) for s in seeds],
    )
    conn.execute(
        "DELETE FROM schedules WHERE name NOT IN (SELECT value FROM json_each(?))",
        (json.dumps([s.name for s in seeds]),),
    )


def load_schedules(conn: sqlite3.Connection, *, org: str | None = None) -> dict[str, ScheduleState]:
    """Stored schedules by name (of ``org`` only, when given)."""
    if org is None:
        rows = conn.execute("SELECT * FROM schedules ORDER BY name").fetchall()
    else:
        rows = conn.execute(
            "SELECT * FROM schedules WHERE org = ? ORDER BY name", (org,)
        ).fetchall()
    return {row["name"]: _state(row) for row in rows}


def due_schedules(conn: sqlite3.Connection, *, now: int) -> list[ScheduleState]:
    """Schedules whose next due time has come."""
    rows = conn.execute(
        "SELECT * FROM schedules WHERE next_fire_at <= ? ORDER BY next_fire_at, name", (now,)
    ).fetchall()
    return [_state(row) for row in rows]


def next_fire_after(conn: sqlite3.Connection, *, now: int, names: Sequence[str]) -> int | None:
    """The earliest due time after ``now`` among the schedules ``names``, if any."""
    row = conn.execute(
        "SELECT min(next_fire_at) FROM schedules WHERE next_fire_at > ?"
        " AND name IN (SELECT value FROM json_each(?))",
        (now, json.dumps(list(names))),
    ).fetchone()
    return int(row[0]) if row and row[0] is not None else None


def fire(conn: sqlite3.Connection, tx: WriteTx, *, firing: Firing, now: int) -> Fired:
    """Apply one firing: compare-and-set the schedule's state, then submit its job.

    Both happen in the caller's transaction (the writer gives each operation a savepoint, so
    a failing insert undoes the state change too). When the state is no longer the one the
    firing was decided from, nothing happens.
    """
    won = conn.execute(
        "UPDATE schedules SET last_fire_at = coalesce(?, last_fire_at), next_fire_at = ?,"
        " updated_at = ? WHERE name = ? AND last_fire_at IS ? AND next_fire_at = ?",
        (
            firing.fire_at,
            firing.next_fire_at,
            now,
            firing.name,
            firing.expected_last,
            firing.expected_next,
        ),
    ).rowcount
    if not won:
        return Fired(applied=False)
    if firing.fire_at is None or firing.job is None:
        return Fired(applied=True)
    inserted = insert_jobs(conn, tx, jobs=[firing.job], now=now)[0]
    job_id = str(inserted.row["id"])
    conn.execute("UPDATE schedules SET last_job_id = ? WHERE name = ?", (job_id, firing.name))
    return Fired(applied=True, job_id=job_id, deduplicated=inserted.deduplicated)
