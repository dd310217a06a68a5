"""Aggregate reads for the HTTP layer: the dashboard's per-minute series, the health probe,
and the activity feed the Prometheus metrics are computed from.

Every function takes ``org`` where a tenant is asking (None: every org, system callers only).
"""

from __future__ import annotations

import dataclasses
import sqlite3
from typing import Any

from edgejobs.store.rows import TERMINAL_STATUS_SQL, job_event_fields, job_event_path

MINUTE_MS = 60_000

DEPTH_STATUSES: frozenset[str] = frozenset({"queued", "retrying", "scheduled"})
"""What the dashboard calls queue depth: jobs waiting to run (not blocked, not running)."""

_FAILED = ("failed", "timed_out", "dead_letter")


@dataclasses.dataclass(frozen=True, slots=True)
class Minute:
    """One minute of the dashboard's series (``t`` is the minute's start, unix ms)."""

    t: int
    completed: int
    failed: int
    queue_depth: int


# One count per waiting status, each on that status's partial index: the queue is small, the
# table may hold millions of finished jobs. ``+org`` keeps SQLite from walking the org's
# (org, seq) index instead — every job the org ever had (~76 ms per call with 1,000,000 rows,
# and the dashboard asks up to once a second).
_DEPTH = (
    "SELECT (SELECT count(*) FROM jobs WHERE status = 'queued' AND (:org IS NULL OR +org = :org))"
    " + (SELECT count(*) FROM jobs WHERE status = 'retrying'"
    "  AND (:org IS NULL OR +org = :org))"
    " + (SELECT count(*) FROM jobs WHERE status = 'scheduled'"
    "  AND (:org IS NULL OR +org = :org))"
)


def _current_depth(conn: sqlite3.Connection, org: str | None) -> int:
    return int(conn.execute(_DEPTH, {"org": org}).fetchone()[0])


# The status term is the partial index's WHERE word for word (TERMINAL_STATUS_SQL), so SQLite
# can prove the index applies and range-scans jobs_finished by finished_at.
FINISHED_PER_MINUTE = (
    "SELECT finished_at / 60000 AS minute,"  # noqa: S608 - constant fragments only
    " sum(status = 'completed'), sum(status IN ('failed', 'timed_out', 'dead_letter'))"
    " FROM jobs WHERE " + TERMINAL_STATUS_SQL + " AND finished_at >= :since"
    " AND (:org IS NULL OR org = :org)"
    " GROUP BY minute"
)


def _finished_per_minute(
    conn: sqlite3.Connection, org: str | None, since: int
) -> dict[int, tuple[int, int]]:
    rows = conn.execute(FINISHED_PER_MINUTE, {"since": since, "org": org}).fetchall()
    return {int(row[0]): (int(row[1]), int(row[2])) for row in rows}


def _depth_deltas(conn: sqlite3.Connection, org: str | None, since: int) -> list[tuple[int, int]]:
    """(time, change of queue depth when undoing this event), newest first.

    A ``job`` event records a job's status *after* a change; the status before it is the one
    of the job's previous event. Walking back in time across an event undoes it: the depth
    changes by in_depth(previous) - in_depth(this). A job whose first event in the window is
    not its creation had an unknown status before the window; it is counted as not waiting.
    """
    rows = conn.execute(
        "SELECT job_id, created_at, json_extract(data, :status) FROM events"
        " WHERE kind = 'job' AND created_at >= :since AND (:org IS NULL OR org = :org)"
        " ORDER BY id",
        {"since": since, "org": org, "status": job_event_path("status")},
    ).fetchall()
    previous: dict[str, str] = {}
    deltas: list[tuple[int, int]] = []
    for job_id, created_at, status in rows:
        before = previous.get(job_id)
        undo = int(before in DEPTH_STATUSES) - int(status in DEPTH_STATUSES)
        if undo:
            deltas.append((int(created_at), undo))
        previous[job_id] = status
    deltas.reverse()
    return deltas


def minute_series(
    conn: sqlite3.Connection, org: str | None, now: int, minutes: int = 60
) -> list[Minute]:
    """The last ``minutes`` minutes, oldest first; the last entry is the current minute.

    ``completed`` / ``failed`` (failed, timed_out, dead_letter) count jobs by the minute of
    their ``finished_at``. ``queue_depth`` (queued + retrying + scheduled) is exact for the
    current minute (counted now); for each earlier minute it is reconstructed at the minute's
    end by undoing the event log from now backwards (see :func:`_depth_deltas`), so it is as
    complete as the event log, which retention trims to its replay window.
    """
    current = now // MINUTE_MS
    first = current - minutes + 1
    since = first * MINUTE_MS
    finished = _finished_per_minute(conn, org, since)
    depth_now = _current_depth(conn, org)
    deltas = _depth_deltas(conn, org, since)
    series: list[Minute] = []
    depth = depth_now
    index = 0
    for minute in range(current, first - 1, -1):
        if minute != current:
            # Depth at the end of `minute`: undo every event after it.
            end = (minute + 1) * MINUTE_MS
            while index < len(deltas) and deltas[index][0] >= end:
                depth += deltas[index][1]
                index += 1
        done, failed = finished.get(minute, (0, 0))
        series.append(Minute(minute * MINUTE_MS, done, failed, max(0, depth)))
    series.reverse()
    return series


def database_check(conn: sqlite3.Connection) -> dict[str, Any]:
    """A real query against the schema (fails if the file or the tables are unusable)."""
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    running = int(conn.execute("SELECT count(*) FROM jobs WHERE status = 'running'").fetchone()[0])
    return {"schema_version": version, "running": running}


# -- activity for metrics ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Activity:
    """One ``job`` event with what metrics need: the attempt it started or ended, if any."""

    event_id: int
    job_id: str
    job_type: str
    status: str
    at: int
    created: bool
    attempt_outcome: str | None
    attempt_started_at: int | None
    attempt_finished_at: int | None


ACTIVITY_BATCH = 2000
"""How many events :func:`activity_since` returns at most (a shorter page is the last one)."""


def activity_since(
    conn: sqlite3.Connection, after_id: int, limit: int = ACTIVITY_BATCH
) -> list[Activity]:
    """``job`` events newer than ``after_id`` (oldest first) joined to the attempt each names.

    The attempt row is the job's attempt numbered as in the event; its outcome and times are
    how that attempt ended (the job row may have moved on since, the attempt row does not).
    """
    rows = conn.execute(
        "SELECT e.id, e.job_id, e.created_at, e.data, a.outcome, a.started_at, a.finished_at"
        " FROM events e"
        " LEFT JOIN jobs j ON j.id = e.job_id"
        " LEFT JOIN attempts a ON a.job_seq = j.seq"
        "  AND a.number = json_extract(e.data, :attempts)"
        " WHERE e.id > :after AND e.kind = 'job' ORDER BY e.id LIMIT :limit",
        {"after": after_id, "limit": limit, "attempts": job_event_path("attempts")},
    ).fetchall()
    found: list[Activity] = []
    for row in rows:
        try:
            data = job_event_fields(row["data"])
        except (ValueError, TypeError):
            continue  # a row this version cannot read (see broker.Event.encode): not counted
        found.append(
            Activity(
                event_id=int(row["id"]),
                job_id=row["job_id"],
                job_type=str(data["job_type"]),
                status=str(data["status"]),
                at=int(row["created_at"]),
                # The insert's event is the only one with updated_at == created_at and no
                # attempt yet (a later change in the same millisecond is the rare exception).
                created=data["attempts"] == 0 and data["created_at"] == data["updated_at"],
                attempt_outcome=row["outcome"],
                attempt_started_at=row["started_at"],
                attempt_finished_at=row["finished_at"],
            )
        )
    return found
