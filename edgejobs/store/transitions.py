"""The one state machine, written as compare-and-set UPDATEs inside the writer's transaction.

Every function here runs on the writer thread inside ``BEGIN IMMEDIATE`` (see ``db.Writer``).
Each status change checks the current status in its WHERE clause, writes its event row in the
same transaction, and applies the dependency consequences (promotion of children when the last
parent completes, cascade cancel when a parent ends without completing) before the COMMIT, so
no interleaving can leave a child ``blocked`` behind a finished parent.
"""

from __future__ import annotations

import json
import logging
import random
import sqlite3
from collections.abc import Callable, Sequence

from edgejobs.errors import Conflict, NotFound
from edgejobs.models import UNSUCCESSFUL, JobError, Outcome, Status, is_allowed, iso_ms
from edgejobs.retry import RetryPolicy, after_failure, backoff_delay_s
from edgejobs.store.db import WriteTx
from edgejobs.store.rows import TERMINAL_STATUS_SQL, RowLike, dumps

log = logging.getLogger("edgejobs.store")

PolicyFor = Callable[[str], RetryPolicy]
"""Looks up the retry policy of a job type (runtime overrides included)."""

_rng = random.Random()

PENDING_TWIN = (
    "SELECT id FROM jobs WHERE dedup_hash = ? AND seq != ? AND NOT " + TERMINAL_STATUS_SQL  # noqa: S608 - constant fragments only
)
"""Another job not yet ended with the same deduplication hash (read through ``jobs_dedup``,
whose condition this repeats)."""
_event_json = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


# The stored form of a ``job`` event (rows.JOB_EVENT_FIELDS, in that order), built by SQLite
# from the row itself in the statement that appends the event: events are written for every
# status change, three or more per job, and putting their JSON together in Python on the
# writer thread cost more than all the SQL of a claim. ``%!.17g`` keeps every digit of a float
# progress (SQLite's own JSON rendering keeps 15).
_EVENT_DATA = (
    "json_array(status, job_type, priority,"
    " json_extract(error, '$.type'), json_extract(error, '$.message'),"
    " json(printf('%!.17g', progress)), progress_message, attempts, max_retries, run_at,"
    " next_retry_at, created_at, started_at, finished_at, updated_at, cancel_reason)"
)
_JOB_EVENTS = (
    "INSERT INTO events (org, job_id, kind, data, created_at)"  # noqa: S608 - constant fragments only
    " SELECT org, id, 'job', " + _EVENT_DATA + ","
    " updated_at FROM jobs WHERE seq IN (SELECT value FROM json_each(?)) ORDER BY seq"
)
# One row's event as a single-row INSERT … VALUES: SQLite opens a statement journal for every
# INSERT … SELECT (it may write many rows), and inside the writer's per-operation SAVEPOINT
# ending one truncates the in-memory sub-journal by walking it from its start. An operation
# changing thousands of jobs one by one (recovering every running job at start, a cascade)
# paid that walk per event: quadratic, 6,000 recovered jobs took 4-5 s instead of 0.4.
_JOB_EVENT = (
    "INSERT INTO events (org, job_id, kind, data, created_at) VALUES ("  # noqa: S608 - constant fragments only
    "(SELECT org FROM jobs WHERE seq = ?1), (SELECT id FROM jobs WHERE seq = ?1), 'job',"
    " (SELECT " + _EVENT_DATA + " FROM jobs WHERE seq = ?1),"
    " (SELECT updated_at FROM jobs WHERE seq = ?1))"
)


def record_job_event(
    conn: sqlite3.Connection, tx: WriteTx, row: RowLike, *, was: str | None
) -> None:
    """Append a ``job`` event for the row's new state, note the change for waiters and stage
    it for the job counts: the job left status ``was`` (None: it was just inserted)."""
    record_job_events(conn, tx, (row,), was=was)


def record_job_events(
    conn: sqlite3.Connection, tx: WriteTx, rows: Sequence[RowLike], *, was: str | None
) -> None:
    """:func:`record_job_event` for many rows that all left status ``was``, with one
    statement; events follow seq order.

    Every status change goes through here (the one place that knows both the old and the new
    status of each row), which is what keeps the job counts exact.
    """
    if not rows:
        return
    ordered: Sequence[RowLike] = rows
    if len(rows) > 1:
        ordered = sorted(rows, key=lambda row: row["seq"])
        conn.execute(_JOB_EVENTS, (json.dumps([row["seq"] for row in ordered]),))
    else:
        conn.execute(_JOB_EVENT, (rows[0]["seq"],))
    tx.events += len(ordered)
    moved: dict[tuple[str, str, str], int] = {}  # per (org, type, new status), staged once
    for row in ordered:
        status = row["status"]
        tx.changed(row["id"], status)
        key = (row["org"], row["job_type"], status)
        moved[key] = moved.get(key, 0) + 1
    for (org, job_type, status), jobs in moved.items():
        tx.count(org, job_type, was, status, jobs)


def record_progress_event(
    conn: sqlite3.Connection, tx: WriteTx, row: sqlite3.Row, eta_s: float | None
) -> None:
    """Append a ``progress`` event."""
    data = {
        "job_id": row["id"],
        "org": row["org"],
        "progress": float(row["progress"]),
        "progress_message": row["progress_message"],
        "eta_s": eta_s,
        # When it was reported: a page that loads the job meanwhile can tell whether this
        # report is newer than what it loaded.
        "updated_at": iso_ms(row["updated_at"]),
    }
    conn.execute(
        "INSERT INTO events (org, job_id, kind, data, created_at) VALUES (?, ?, 'progress', ?, ?)",
        (row["org"], row["id"], _event_json(data), row["updated_at"]),
    )
    tx.events += 1


def _error_json(error: JobError) -> str:
    return dumps(error.to_dict())


def _finish_attempt_row(
    conn: sqlite3.Connection,
    seq: int,
    number: int,
    now: int,
    outcome: Outcome,
    error: JobError | None,
) -> None:
    conn.execute(
        "UPDATE attempts SET finished_at = ?, outcome = ?, error_type = ?, error_message = ?,"
        " traceback = ? WHERE job_seq = ? AND number = ? AND outcome IS NULL",
        (
            now,
            outcome.value,
            error.type if error else None,
            error.message if error else None,
            error.traceback if error else None,
            seq,
            number,
        ),
    )


def complete_attempt(
    conn: sqlite3.Connection,
    tx: WriteTx,
    *,
    seq: int,
    attempt: int,
    result_json: str,
    now: int,
) -> sqlite3.Row | None:
    """running → completed, fenced on the attempt; None when the attempt was abandoned."""
    return complete_attempts(conn, tx, items=[(seq, attempt, result_json)], now=now).get(seq)


_COMPLETE_MANY = (
    "UPDATE jobs SET status = 'completed', result = c.result, finished_at = :now,"
    " updated_at = max(updated_at, :now), lease_expires_at = NULL, progress = 100"
    " FROM (SELECT json_extract(value, '$[0]') AS seq, json_extract(value, '$[1]') AS attempt,"
    " json_extract(value, '$[2]') AS result FROM json_each(:items)) AS c"
    " WHERE jobs.seq = c.seq AND jobs.status = 'running' AND jobs.attempts = c.attempt"
    # Only what the completion's own steps read (durations, events, children): not RETURNING *,
    # whose every column crosses into Python per completed job.
    " RETURNING seq, id, org, job_type, status, attempts, started_at, has_dependents"
)


def complete_attempts(
    conn: sqlite3.Connection,
    tx: WriteTx,
    *,
    items: Sequence[tuple[int, int, str]],
    now: int,
) -> dict[int, sqlite3.Row]:
    """:func:`complete_attempt` for many (seq, attempt, result JSON) at once; the rows of the
    attempts that were still current, by seq (a missing seq: that attempt was abandoned).

    One UPDATE and one ``executemany`` instead of two statements per job: the pool writes
    every completion of a cycle this way, and per statement the Python side of a write costs
    more than SQLite's. The fence is the same compare-and-set on (status, attempts).
    """
    if not items:
        return {}
    rows = conn.execute(
        _COMPLETE_MANY,
        # Non-ASCII as is: no \u escapes (surrogate pairs) for older SQLite JSON code to decode.
        {"now": now, "items": json.dumps(items, separators=(",", ":"), ensure_ascii=False)},
    ).fetchall()
    rows.sort(key=lambda row: row["seq"])  # RETURNING promises no order; children follow seq
    conn.executemany(
        "UPDATE attempts SET finished_at = ?, outcome = 'completed'"
        " WHERE job_seq = ? AND number = ? AND outcome IS NULL",
        [(now, row["seq"], row["attempts"]) for row in rows],
    )
    for row in rows:
        if row["started_at"] is not None:
            tx.durations.append((row["job_type"], now - row["started_at"]))
    record_job_events(conn, tx, rows, was=Status.RUNNING.value)
    for row in rows:
        on_parent_terminal(conn, tx, row, now)
    return {row["seq"]: row for row in rows}


def fail_attempt(
    conn: sqlite3.Connection,
    tx: WriteTx,
    *,
    seq: int,
    attempt: int,
    outcome: Outcome,
    error: JobError,
    permanent: bool,
    now: int,
    policy: RetryPolicy,
) -> sqlite3.Row | None:
    """running → retrying | failed | timed_out | dead_letter, fenced on the attempt."""
    current = conn.execute(
        "SELECT attempts, retry_base, max_retries FROM jobs"
        " WHERE seq = ? AND status = 'running' AND attempts = ?",
        (seq, attempt),
    ).fetchone()
    if current is None:
        return None
    row = _apply_failure(conn, tx, seq, current, outcome, error, permanent, now, policy)
    _finish_attempt_row(conn, seq, attempt, now, outcome, error)
    return row


def _apply_failure(
    conn: sqlite3.Connection,
    tx: WriteTx,
    seq: int,
    current: sqlite3.Row,
    outcome: Outcome,
    error: JobError,
    permanent: bool,
    now: int,
    policy: RetryPolicy,
) -> sqlite3.Row:
    status, retry_number = after_failure(
        attempts=current["attempts"],
        retry_base=current["retry_base"],
        max_retries=current["max_retries"],
        outcome=outcome,
        permanent=permanent,
    )
    if status is Status.RETRYING:
        assert retry_number is not None
        next_retry_at = now + round(backoff_delay_s(retry_number, policy, _rng) * 1000)
        row: sqlite3.Row = conn.execute(
            "UPDATE jobs SET status = 'retrying', error = ?, next_retry_at = ?, updated_at = max(updated_at, ?),"
            " lease_expires_at = NULL WHERE seq = ? AND status = 'running' RETURNING *",
            (_error_json(error), next_retry_at, now, seq),
        ).fetchone()
    else:
        row = conn.execute(
            "UPDATE jobs SET status = ?, error = ?, next_retry_at = NULL, finished_at = ?,"
            " updated_at = max(updated_at, ?), lease_expires_at = NULL"
            " WHERE seq = ? AND status = 'running' RETURNING *",
            (status.value, _error_json(error), now, now, seq),
        ).fetchone()
    record_job_event(conn, tx, row, was=Status.RUNNING.value)
    if status in UNSUCCESSFUL:
        on_parent_terminal(conn, tx, row, now)
    return row


def set_progress(
    conn: sqlite3.Connection,
    tx: WriteTx,
    *,
    seq: int,
    attempt: int,
    progress: float,
    message: str | None,
    now: int,
    eta_for: Callable[[sqlite3.Row], float | None],
) -> bool:
    """Store a running attempt's progress and append a ``progress`` event (fenced)."""
    row = conn.execute(
        "UPDATE jobs SET progress = ?, progress_message = ?, updated_at = max(updated_at, ?)"
        " WHERE seq = ? AND status = 'running' AND attempts = ? RETURNING *",
        (progress, message, now, seq, attempt),
    ).fetchone()
    if row is None:
        return False
    record_progress_event(conn, tx, row, eta_for(row))
    return True


def job_row(conn: sqlite3.Connection, job_id: str, org: str | None) -> sqlite3.Row:
    """The stored row of a job of ``org`` (any org when None); :class:`NotFound` otherwise,
    so another org's job is indistinguishable from a missing one."""
    if org is None:
        row = conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
    else:
        row = conn.execute("SELECT * FROM jobs WHERE id = ? AND org = ?", (job_id, org)).fetchone()
    if row is None:
        raise NotFound(f"no job {job_id}")
    return row  # type: ignore[no-any-return]


def cancel_job(
    conn: sqlite3.Connection,
    tx: WriteTx,
    *,
    job_id: str,
    org: str | None,
    now: int,
    reason: str = "canceled by a user",
) -> sqlite3.Row:
    """Cancel a non-terminal job; a terminal one is a :class:`Conflict`.

    The read and the compare-and-set UPDATE share this transaction, so a cancel racing a
    claim or a completion either wins completely or fails with a conflict.
    """
    current = job_row(conn, job_id, org)
    status = Status(current["status"])
    if not is_allowed(status, Status.CANCELED):
        raise Conflict(
            f"job {job_id} is {status.value}; only a job that has not ended can be canceled"
        )
    row: sqlite3.Row = conn.execute(
        "UPDATE jobs SET status = 'canceled', cancel_reason = ?, finished_at = ?, updated_at = max(updated_at, ?),"
        " lease_expires_at = NULL, next_retry_at = NULL WHERE seq = ? AND status = ? RETURNING *",
        (reason, now, now, current["seq"], status.value),
    ).fetchone()
    if status is Status.RUNNING:
        _finish_attempt_row(conn, row["seq"], row["attempts"], now, Outcome.CANCELED, None)
        tx.canceled_running.append((row["id"], row["attempts"]))
    record_job_event(conn, tx, row, was=status.value)
    on_parent_terminal(conn, tx, row, now)
    return row


def retry_job(
    conn: sqlite3.Connection, tx: WriteTx, *, job_id: str, org: str | None, now: int
) -> sqlite3.Row:
    """Manual retry of an unsuccessful terminal job (SPEC §2 rule 6).

    The job gets a fresh retry budget; its history stays. It goes back to ``queued`` when its
    parents have all completed, to ``blocked`` while one is still on its way; a parent that ended
    without completing makes the retry a conflict (retry the parent first), so a child never
    runs before its parents completed.
    """
    current = job_row(conn, job_id, org)
    status = Status(current["status"])
    if status not in UNSUCCESSFUL:
        raise Conflict(
            f"job {job_id} is {status.value}; only failed, timed_out, dead_letter or canceled"
            " jobs can be retried"
        )
    parents = conn.execute(
        "SELECT p.id, p.status FROM job_deps d JOIN jobs p ON p.seq = d.parent_seq"
        " WHERE d.child_seq = ?",
        (current["seq"],),
    ).fetchall()
    for parent in parents:
        if parent["status"] in UNSUCCESSFUL:
            raise Conflict(
                f"parent {parent['id']} of job {job_id} is {parent['status']}; retry the parent first"
            )
    pending = sum(1 for parent in parents if parent["status"] != Status.COMPLETED.value)
    target = Status.BLOCKED if pending else Status.QUEUED
    if current["dedup_hash"] is not None:
        twin = conn.execute(
            PENDING_TWIN,
            (current["dedup_hash"], current["seq"]),
        ).fetchone()
        if twin is not None:
            raise Conflict(f"job {twin['id']} with the same parameters is already pending")
    row: sqlite3.Row = conn.execute(
        "UPDATE jobs SET status = ?, retry_base = attempts, pending_parents = ?, run_at = ?,"
        " next_retry_at = NULL, finished_at = NULL, cancel_reason = NULL, updated_at = max(updated_at, ?),"
        " progress = 0, progress_message = NULL WHERE seq = ? AND status = ? RETURNING *",
        (target.value, pending, now, now, current["seq"], status.value),
    ).fetchone()
    record_job_event(conn, tx, row, was=status.value)
    return row


def recover_running(
    conn: sqlite3.Connection,
    tx: WriteTx,
    *,
    now: int,
    expired_only: bool,
    policy_for: PolicyFor,
    reason: str,
) -> list[sqlite3.Row]:
    """Record a ``lost`` attempt for running jobs (all, at start-up; or those whose lease
    expired) and retry them under their policy, or end them ``dead_letter``."""
    if expired_only:
        rows = conn.execute(
            "SELECT seq, job_type, attempts, retry_base, max_retries FROM jobs"
            " WHERE status = 'running' AND lease_expires_at < ?",
            (now,),
        ).fetchall()
    else:
        rows = conn.execute(
            "SELECT seq, job_type, attempts, retry_base, max_retries FROM jobs"
            " WHERE status = 'running'"
        ).fetchall()
    recovered = []
    for current in rows:
        error = JobError(type="Lost", message=reason)
        row = _apply_failure(
            conn,
            tx,
            current["seq"],
            current,
            Outcome.LOST,
            error,
            False,
            now,
            policy_for(current["job_type"]),
        )
        _finish_attempt_row(conn, current["seq"], current["attempts"], now, Outcome.LOST, error)
        recovered.append(row)
    return recovered


def promote_due(conn: sqlite3.Connection, tx: WriteTx, *, now: int, limit: int = 1000) -> int:
    """scheduled and retrying jobs whose time has come → queued.

    A promoted retry's ``next_retry_at`` is cleared: the job object shows a next retry only
    while one is pending. (Two statements, one per former status, each a probe of its partial
    index; nothing else tells SQLite's RETURNING which status a row left.)
    """
    # One read first: every claim promotes, and almost always nothing is due. Two UPDATEs
    # that change nothing still cost ~16 µs each (a write statement's set-up, its RETURNING's
    # temp table), the earliest due time (a probe of both partial indexes) a few.
    due = next_due_ms(conn)
    if due is None or due > now:
        return 0
    scheduled = conn.execute(
        "UPDATE jobs SET status = 'queued', updated_at = max(updated_at, ?) WHERE seq IN ("
        " SELECT seq FROM jobs WHERE status = 'scheduled' AND run_at <= ? LIMIT ?) RETURNING *",
        (now, now, limit),
    ).fetchall()
    record_job_events(conn, tx, scheduled, was=Status.SCHEDULED.value)
    retried = conn.execute(
        "UPDATE jobs SET status = 'queued', next_retry_at = NULL, updated_at = max(updated_at, ?) WHERE seq IN ("
        " SELECT seq FROM jobs WHERE status = 'retrying' AND next_retry_at <= ? LIMIT ?)"
        " RETURNING *",
        (now, now, limit - len(scheduled)),
    ).fetchall()
    record_job_events(conn, tx, retried, was=Status.RETRYING.value)
    return len(scheduled) + len(retried)


def next_due_ms(conn: sqlite3.Connection) -> int | None:
    """The earliest time a scheduled job or a retry becomes due, if any."""
    row = conn.execute(
        "SELECT min(t) FROM (SELECT min(run_at) AS t FROM jobs WHERE status = 'scheduled'"
        " UNION ALL SELECT min(next_retry_at) FROM jobs WHERE status = 'retrying')"
    ).fetchone()
    return int(row[0]) if row and row[0] is not None else None


def next_maintenance_due_ms(conn: sqlite3.Connection) -> int | None:
    """The earliest time the tick has work without any new write: :func:`next_due_ms`, or a
    running job's lease expiring (a probe of the partial index ``jobs_lease``)."""
    lease = conn.execute("SELECT min(lease_expires_at) FROM jobs WHERE status = 'running'")
    times = [next_due_ms(conn), lease.fetchone()[0]]
    return min((int(t) for t in times if t is not None), default=None)


# -- dependencies ----------------------------------------------------------------------------


def on_parent_terminal(conn: sqlite3.Connection, tx: WriteTx, parent: RowLike, now: int) -> None:
    """Apply a parent's terminal status to its blocked children, in the same transaction.

    completed: each child loses one pending parent; at zero it becomes queued (or scheduled).
    anything else: every blocked descendant is canceled with a reason naming the parent.
    """
    if not parent["has_dependents"]:
        return  # most jobs have no children: skip the lookups
    if parent["status"] == Status.COMPLETED.value:
        children = conn.execute(
            "UPDATE jobs SET pending_parents = pending_parents - 1, updated_at = max(updated_at, ?)"
            " WHERE status = 'blocked'"
            " AND seq IN (SELECT child_seq FROM job_deps WHERE parent_seq = ?)"
            " RETURNING seq, pending_parents, run_at, created_at",
            (now, parent["seq"]),
        ).fetchall()
        for child in children:
            if child["pending_parents"] <= 0:
                _unblock(conn, tx, child["seq"], child["run_at"], child["created_at"], now)
    elif parent["status"] in UNSUCCESSFUL:
        _cascade_cancel(conn, tx, parent, now)


def _unblock(
    conn: sqlite3.Connection, tx: WriteTx, seq: int, run_at: int, created_at: int, now: int
) -> None:
    # Only a job submitted with a later run_at waits for it; one without (run_at is its
    # creation time) is ready at once, whatever clock skew there is between processes.
    target = Status.SCHEDULED if run_at > now and run_at > created_at else Status.QUEUED
    row = conn.execute(
        "UPDATE jobs SET status = ?, pending_parents = 0, updated_at = max(updated_at, ?)"
        " WHERE seq = ? AND status = 'blocked' RETURNING *",
        (target.value, now, seq),
    ).fetchone()
    if row is not None:
        record_job_event(conn, tx, row, was=Status.BLOCKED.value)


def _cascade_cancel(conn: sqlite3.Connection, tx: WriteTx, parent: RowLike, now: int) -> None:
    # Iterative walk down the graph: every blocked descendant is canceled, each naming the
    # job whose failure reached it.
    stack: list[RowLike] = [parent]
    while stack:
        current = stack.pop()
        reason = f"parent {current['id']} ended {current['status']}"
        children = conn.execute(
            "UPDATE jobs SET status = 'canceled', cancel_reason = ?, finished_at = ?,"
            " updated_at = max(updated_at, ?) WHERE status = 'blocked'"
            " AND seq IN (SELECT child_seq FROM job_deps WHERE parent_seq = ?) RETURNING *",
            (reason, now, now, current["seq"]),
        ).fetchall()
        record_job_events(conn, tx, children, was=Status.BLOCKED.value)
        stack.extend(children)


def resolve_stuck_blocked(conn: sqlite3.Connection, tx: WriteTx, *, now: int) -> list[str]:
    """Safety net: settle any blocked job whose parents are all terminal; return their ids.

    Finding one means a bug elsewhere (promotion and cascade run in the parent's transaction),
    so the caller logs a warning for each.
    """
    stuck = conn.execute(
        "SELECT j.seq, j.id, j.run_at, j.created_at FROM jobs j WHERE j.status = 'blocked'"
        " AND NOT EXISTS ("
        " SELECT 1 FROM job_deps d JOIN jobs p ON p.seq = d.parent_seq"
        " WHERE d.child_seq = j.seq AND p.status IN"
        " ('blocked', 'scheduled', 'queued', 'running', 'retrying'))"
    ).fetchall()
    fixed: list[str] = []
    for job in stuck:
        failed_parent = conn.execute(
            "SELECT p.* FROM job_deps d JOIN jobs p ON p.seq = d.parent_seq"
            " WHERE d.child_seq = ? AND p.status != 'completed' LIMIT 1",
            (job["seq"],),
        ).fetchone()
        if failed_parent is None:
            _unblock(conn, tx, job["seq"], job["run_at"], job["created_at"], now)
        else:
            reason = f"parent {failed_parent['id']} ended {failed_parent['status']}"
            row = conn.execute(
                "UPDATE jobs SET status = 'canceled', cancel_reason = ?, finished_at = ?,"
                " updated_at = max(updated_at, ?) WHERE seq = ? AND status = 'blocked' RETURNING *",
                (reason, now, now, job["seq"]),
            ).fetchone()
            if row is not None:
                record_job_event(conn, tx, row, was=Status.BLOCKED.value)
                _cascade_cancel(conn, tx, row, now)
        fixed.append(job["id"])
    return fixed


def requeue_interrupted(
    conn: sqlite3.Connection, tx: WriteTx, *, seq: int, attempt: int, now: int
) -> sqlite3.Row | None:
    """running → queued for an attempt a graceful shutdown interrupted (fenced).

    The attempt is recorded as ``canceled`` with the reason, and it does not use up a retry:
    the runner stopped it, not the handler.
    """
    row = conn.execute(
        "UPDATE jobs SET status = 'queued', retry_base = retry_base + 1, lease_expires_at = NULL,"
        " updated_at = max(updated_at, ?) WHERE seq = ? AND status = 'running' AND attempts = ? RETURNING *",
        (now, seq, attempt),
    ).fetchone()
    if row is None:
        return None
    error = JobError(
        "Shutdown", "the runner stopped before this attempt finished; the job was requeued"
    )
    _finish_attempt_row(conn, seq, attempt, now, Outcome.CANCELED, error)
    record_job_event(conn, tx, row, was=Status.RUNNING.value)
    return row  # type: ignore[no-any-return]
