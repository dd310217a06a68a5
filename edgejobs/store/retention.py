"""Retention: deleting old terminal jobs (with their attempts and events) in small batches."""

from __future__ import annotations

import dataclasses
import json
import sqlite3

from edgejobs.store.db import WriteTx
from edgejobs.store.rows import TERMINAL_STATUS_SQL

# A job is deletable when it is terminal, finished before the cutoff, and every child of it
# has completed. A child that has not — waiting, running, or ended unsuccessfully and so still
# retryable — needs its parents: their statuses decide whether it may run (a retry of a child
# whose parent failed is refused until the parent is retried) and their results are its
# ``ctx.parent_results``. Deleting such a parent would let a retried child run without it.
_DELETE_JOBS = (
    "DELETE FROM jobs WHERE seq IN ("  # noqa: S608 - constant fragments only
    " SELECT j.seq FROM jobs j"
    " WHERE " + TERMINAL_STATUS_SQL + " AND j.finished_at <= :cutoff"
    " AND NOT EXISTS (SELECT 1 FROM job_deps d JOIN jobs c ON c.seq = d.child_seq"
    "  WHERE d.parent_seq = j.seq AND c.status != 'completed')"
    " ORDER BY j.finished_at LIMIT :batch)"
    " RETURNING org, job_type, status, id, finished_at"
)

# A deleted job's events go with it. The event log has no index on job_id (every status change
# appends an event: the index would cost the hottest commits), so the log — bounded by its own
# replay window — is scanned, and only when its oldest event is not newer than the newest
# finish deleted: with the default 30 days of jobs against an hour of events, never. (With a
# clock set back that test may skip events it could have deleted; the log's own window deletes
# them soon after.)
_DELETE_JOB_EVENTS = (
    "DELETE FROM events WHERE job_id IN (SELECT value FROM json_each(:ids))"
    " AND (SELECT created_at FROM events ORDER BY id LIMIT 1) <= :newest_finish"
)

# Before deleting, the highest seq so far is kept in job_seq_floor (a write only when it grew),
# so that deleting the newest jobs never lets their seqs be handed out again.
_KEEP_SEQ_FLOOR = (
    "INSERT INTO job_seq_floor (one, seq) SELECT 1, coalesce(max(seq), 0) FROM jobs WHERE true"
    " ON CONFLICT (one) DO UPDATE SET seq = excluded.seq WHERE excluded.seq > job_seq_floor.seq"
)

# The oldest events go first, as a prefix of the id order (ids follow commit order), and only
# the oldest ``batch`` rows are looked at: a filter on created_at alone walked the whole table
# whenever nothing was old yet, once per batch of a trim (quadratic in the log's size). A
# prefix also keeps replay honest: it tells a client it missed events by comparing ids with
# the oldest one stored, which is only right when no newer event was deleted before an older
# one (with a clock set back, an old event waits until the newer ones before it are old).
_DELETE_EVENTS = (
    "DELETE FROM events WHERE id < coalesce("
    " (SELECT min(id) FROM (SELECT id, created_at FROM events ORDER BY id LIMIT :batch)"
    "  WHERE created_at >= :cutoff),"
    " (SELECT max(id) FROM (SELECT id FROM events ORDER BY id LIMIT :batch)) + 1)"
)  # (a DELETE, not WITH … DELETE: sqlite3 reports no rowcount for a statement led by WITH)


# A kept count that went back to 0 — every job of that (org, job type) left the status, or
# retention deleted them — is a row no reader needs: a missing row counts 0, and the writer's
# upsert recreates it. Left in place, the table would grow with every org and job type that
# ever held a job, and the claim of a type with a concurrency limit reads its queued rows.
_DELETE_ZERO_COUNTS = (
    "DELETE FROM job_counts WHERE (org, job_type, status) IN ("
    " SELECT org, job_type, status FROM job_counts WHERE n = 0 LIMIT :batch)"
)


@dataclasses.dataclass(frozen=True, slots=True)
class Deleted:
    """What one retention batch deleted."""

    jobs: int
    events: int


def delete_old_jobs(
    conn: sqlite3.Connection, tx: WriteTx, *, cutoff_ms: int, batch: int
) -> Deleted:
    """Delete up to ``batch`` terminal jobs finished at or before ``cutoff_ms``, and their
    events.

    Attempts and dependency rows go with them (ON DELETE CASCADE). Children go before their
    parents: each round deletes what nothing holds any more, which may free the parents for
    the next round, all in this one transaction, so a run that deletes fewer than ``batch``
    jobs has deleted every deletable job (also whole old graphs).
    """
    conn.execute(_KEEP_SEQ_FLOOR)
    ids: list[str] = []
    newest_finish = 0
    while len(ids) < batch:
        gone = conn.execute(
            _DELETE_JOBS, {"cutoff": cutoff_ms, "batch": batch - len(ids)}
        ).fetchall()
        if not gone:
            break
        for org, job_type, status, job_id, finished_at in gone:
            tx.count(org, job_type, status, None)
            ids.append(job_id)
            newest_finish = max(newest_finish, finished_at)
    events = 0
    if ids:
        events = conn.execute(
            _DELETE_JOB_EVENTS, {"ids": json.dumps(ids), "newest_finish": newest_finish}
        ).rowcount
    return Deleted(len(ids), events)


def delete_old_events(conn: sqlite3.Connection, tx: WriteTx, *, cutoff_ms: int, batch: int) -> int:
    """Delete up to ``batch`` events older than ``cutoff_ms``, oldest first, stopping at the
    first that is not (so what is left is always a suffix of the id order)."""
    return conn.execute(_DELETE_EVENTS, {"cutoff": cutoff_ms, "batch": batch}).rowcount


def trim_events(conn: sqlite3.Connection, tx: WriteTx, *, keep: int, batch: int) -> int:
    """Delete the oldest events beyond the newest ``keep`` (at most ``batch`` at a time)."""
    row = conn.execute("SELECT max(id) FROM events").fetchone()
    if row is None or row[0] is None:
        return 0
    floor = int(row[0]) - keep
    return conn.execute(
        "DELETE FROM events WHERE id IN (SELECT id FROM events WHERE id <= ? ORDER BY id LIMIT ?)",
        (floor, batch),
    ).rowcount


def delete_zero_counts(conn: sqlite3.Connection, tx: WriteTx, *, batch: int) -> int:
    """Delete up to ``batch`` kept job counts that are 0; return how many.

    Safe inside any transaction: count changes staged by the transaction's other operations
    are written after it as ``n = n + change``, which gives the same count on a missing row.
    """
    return conn.execute(_DELETE_ZERO_COUNTS, {"batch": batch}).rowcount
