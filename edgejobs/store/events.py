"""Reading the event log: tailing new rows and replaying a window for ``Last-Event-ID``.

Event rows are written by :mod:`edgejobs.store.transitions` in the transaction of every status
change and progress write; this module only reads them. Every row comes back together with the
org of its job *as stored in the jobs table* (``job_org``, NULL once the job was deleted), so
the broker can check that an event belongs to the org it claims before any stream sees it.
"""

from __future__ import annotations

import dataclasses
import sqlite3

from edgejobs.store.rows import JobEventExtras, job_event_path

# What a ``job`` event's stored array leaves out (to keep the hottest commits small) is read
# from its job's row when the event is read, in the same snapshot: params and the parent and
# child lists never change, a result is final once the job completed, and the traceback is
# the one of the attempt that raised the event's error (the stored last error for an error
# no attempt row holds). The type's mean run duration feeds the event's ETA.
_JOB_COLUMNS = (
    "e.id, e.org, e.job_id, e.kind, e.data, e.created_at, j.org AS job_org,"
    " CASE WHEN e.kind = 'job' THEN j.params END AS params,"
    " CASE WHEN e.kind = 'job' AND json_extract(e.data, :status_path) = 'completed'"
    " THEN j.result END AS result,"
    " CASE WHEN e.kind = 'job' AND j.seq IS NOT NULL THEN"
    " (SELECT json_group_array(id) FROM (SELECT p.id FROM job_deps d"
    " JOIN jobs p ON p.seq = d.parent_seq WHERE d.child_seq = j.seq ORDER BY p.seq))"
    " END AS depends_on,"
    " CASE WHEN e.kind = 'job' AND j.has_dependents THEN"
    " (SELECT json_group_array(id) FROM (SELECT c.id FROM job_deps d"
    " JOIN jobs c ON c.seq = d.child_seq WHERE d.parent_seq = j.seq ORDER BY c.seq))"
    " WHEN e.kind = 'job' AND j.seq IS NOT NULL THEN '[]'"
    " END AS dependents,"
    " CASE WHEN e.kind = 'job' AND json_extract(e.data, :error_type_path) IS NOT NULL THEN"
    " coalesce((SELECT a.traceback FROM attempts a WHERE a.job_seq = j.seq"
    " AND a.number <= json_extract(e.data, :attempts_path)"
    " AND a.error_type = json_extract(e.data, :error_type_path)"
    " AND a.error_message IS json_extract(e.data, :error_message_path)"
    " ORDER BY a.number DESC LIMIT 1),"
    " CASE WHEN json_extract(j.error, '$.type') = json_extract(e.data, :error_type_path)"
    " AND json_extract(j.error, '$.message') IS json_extract(e.data, :error_message_path)"
    " THEN json_extract(j.error, '$.traceback') END)"
    " END AS traceback,"
    " CASE WHEN e.kind = 'job' THEN"
    " (SELECT s.mean_ms FROM job_type_stats s WHERE s.job_type = j.job_type)"
    " END AS mean_ms"
    " FROM events e LEFT JOIN jobs j ON j.id = e.job_id"
)
_PATHS = {
    "status_path": job_event_path("status"),
    "error_type_path": job_event_path("error_type"),
    "error_message_path": job_event_path("error_message"),
    "attempts_path": job_event_path("attempts"),
}

_TAIL = "SELECT " + _JOB_COLUMNS + " WHERE e.id > :after ORDER BY e.id LIMIT :limit"

# One static statement for every filter combination: the id range keeps it a primary-key
# range scan, and a NULL filter matches everything.
_REPLAY = (
    "SELECT " + _JOB_COLUMNS + " WHERE e.id > :after AND e.id <= :upto"
    " AND (:org IS NULL OR e.org = :org) AND (:job_id IS NULL OR e.job_id = :job_id)"
    " ORDER BY e.id LIMIT :limit"
)


@dataclasses.dataclass(frozen=True, slots=True)
class EventRow:
    """One row of the event log, with the org of its job as stored (None: job deleted).

    ``data`` is as stored: a ``job`` event's times are integers until the broker renders the
    event for a stream (:meth:`edgejobs.broker.Event.encode`). ``extras`` holds what a ``job``
    event's job object shows beyond the stored array (None for other kinds).
    """

    id: int
    org: str
    job_id: str
    kind: str
    data: str
    created_at: int
    job_org: str | None
    extras: JobEventExtras | None = None


def _rows(cursor: sqlite3.Cursor) -> list[EventRow]:
    # By position (the order of _JOB_COLUMNS): the tailer reads every event of every org, and
    # a lookup by name costs more than the rest of building the row.
    return [
        EventRow(
            int(r[0]),
            r[1],
            r[2],
            r[3],
            r[4],
            int(r[5]),
            r[6],
            JobEventExtras(r[7], r[8], r[9], r[10], r[11], r[12]) if r[3] == "job" else None,
        )
        for r in cursor
    ]


def last_event_id(conn: sqlite3.Connection) -> int:
    """The id of the newest event (0 when the log is empty)."""
    # sqlite_sequence keeps the AUTOINCREMENT high-water mark even when every row was pruned.
    row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
    newest = conn.execute("SELECT max(id) FROM events").fetchone()
    values = [int(v) for v in (row[0] if row else None, newest[0]) if v is not None]
    return max(values, default=0)


def tail(conn: sqlite3.Connection, *, after: int, limit: int) -> list[EventRow]:
    """Up to ``limit`` events with an id greater than ``after``, oldest first (every org)."""
    return _rows(conn.execute(_TAIL, {**_PATHS, "after": after, "limit": limit}))


@dataclasses.dataclass(frozen=True, slots=True)
class WindowCheck:
    """Whether the events after a client's ``Last-Event-ID`` can still be replayed."""

    replayable: bool
    reason: str | None = None


def check_window(
    conn: sqlite3.Connection,
    *,
    after: int,
    upto: int,
    max_events: int,
    min_created_at: int,
) -> WindowCheck:
    """Decide whether every event in ``(after, upto]`` is still in the log and in the window.

    The window is the last ``max_events`` events up to ``upto`` and nothing created before
    ``min_created_at``. Retention deletes the oldest events first, so "the event right after
    ``after`` still exists" means none of the missed ones was pruned.
    """
    if after >= upto:
        return WindowCheck(True)
    if upto - after > max_events:
        return WindowCheck(False, f"more than {max_events} events were missed")
    first = conn.execute(
        "SELECT id, created_at FROM events WHERE id > ? ORDER BY id LIMIT 1", (after,)
    ).fetchone()
    if first is None or int(first["id"]) != after + 1:
        return WindowCheck(False, "some missed events were already deleted")
    if int(first["created_at"]) < min_created_at:
        return WindowCheck(False, "the missed events are older than the replay window")
    return WindowCheck(True)


def replay(
    conn: sqlite3.Connection,
    *,
    after: int,
    upto: int,
    org: str | None,
    job_id: str | None,
    limit: int,
) -> list[EventRow] | None:
    """Up to ``limit`` events in ``(after, upto]`` of ``org`` (every org when None), oldest
    first, optionally of one job only; None when an event after ``after`` is no longer in the
    log (read in the same snapshot). The log loses its oldest rows first, so the oldest left
    lying past ``after + 1`` means the events in between were deleted since a replay's window
    was checked: a replay read a page at a time could lose its tail to the trim."""
    oldest = conn.execute("SELECT min(id) FROM events").fetchone()[0]
    if oldest is None or int(oldest) > after + 1:
        return None
    params = {**_PATHS, "after": after, "upto": upto, "org": org, "job_id": job_id, "limit": limit}
    return _rows(conn.execute(_REPLAY, params))
