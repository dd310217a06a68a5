"""Submitting jobs (dedup and dependencies in the insert transaction) and reading them back."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import operator
import sqlite3
from collections.abc import Sequence
from functools import partial
from typing import Any

from edgejobs.errors import UnknownParent, ValidationError
from edgejobs.ids import new_job_id
from edgejobs.models import UNSUCCESSFUL, Attempt, Job, Status
from edgejobs.store.db import MergeableOp, WriteTx, run_in_savepoint
from edgejobs.store.rates import RateTake, take_rates, written_share
from edgejobs.store.rows import (
    TERMINAL_STATUS_SQL,
    RowLike,
    attempt_from_row,
    estimate_eta_s,
    job_from_row,
)
from edgejobs.store.transitions import job_row, record_job_events


@dataclasses.dataclass(frozen=True, slots=True)
class NewJob:
    """A validated submission, ready to insert.

    ``depends_on`` holds job ids (str) or, inside a batch, the index (int) of an earlier job of
    the same batch: a reference can only point backwards, so a batch cannot form a cycle.
    """

    org: str
    job_type: str
    params_json: str
    priority_rank: int
    run_at: int | None
    max_retries: int
    dedup_hash: str | None
    depends_on: tuple[str | int, ...] = ()


PENDING_WITH_HASH = "SELECT * FROM jobs WHERE dedup_hash = ? AND NOT " + TERMINAL_STATUS_SQL  # noqa: S608 - constant fragments only
"""The job not yet ended with a deduplication hash (at most one: ``jobs_dedup``, whose
condition this repeats so that SQLite reads it)."""


def dedup_hash(org: str, job_type: str, key: str) -> str:
    """The deduplication hash of (org, job type, canonical params or dedup key)."""
    digest = hashlib.sha256()
    for part in (org, job_type, key):
        digest.update(part.encode())
        digest.update(b"\x00")
    return digest.hexdigest()[:32]


@dataclasses.dataclass(frozen=True, slots=True)
class Inserted:
    """One submission's outcome: the stored row, and whether it was an existing duplicate."""

    row: RowLike
    deduplicated: bool
    parent_ids: tuple[str, ...] = ()


def insert_jobs(
    conn: sqlite3.Connection, tx: WriteTx, *, jobs: Sequence[NewJob], now: int
) -> list[Inserted]:
    """Insert a batch of jobs all or nothing (the writer runs this in one savepoint)."""
    inserted = _insert_rows(conn, jobs, now)
    record_job_events(conn, tx, [item.row for item in inserted if not item.deduplicated], was=None)
    return inserted


@dataclasses.dataclass(frozen=True, slots=True)
class SubmitOp(MergeableOp):
    """The write of one submission (a batch, all or nothing), returning its :class:`Job`\\ s.

    Concurrent submissions that reach the writer together are written together
    (:meth:`write_together`): one savepoint, one events statement and, for each run of plain
    ones, one insert for all of them rather than one of each per submission. Should any of
    them be refused (an unknown parent, say), that attempt is rolled back and each is written
    alone in its own savepoint, so a refused submission never takes the others with it: the
    outcome of writing them one by one.
    """

    jobs: Sequence[NewJob]
    now: int
    rates: Sequence[RateTake] = ()
    """What the submission takes of the rate limits it falls under (in its transaction)."""

    def __call__(self, conn: sqlite3.Connection, tx: WriteTx) -> list[Job]:
        """Write this submission alone."""
        inserted = insert_jobs(conn, tx, jobs=self.jobs, now=self.now)
        # Counted after the insert, in its savepoint (a refusal rolls the insert back): only
        # what was written takes from the limit.
        take_rates(conn, _written_share(self.rates, inserted), self.now)
        return submitted_jobs(conn, inserted, self.now)

    @classmethod
    def write_together(
        cls, conn: sqlite3.Connection, tx: WriteTx, ops: list[Any]
    ) -> list[tuple[bool, Any]]:
        """Write several submissions; per submission its jobs or the error that refused it."""
        ok, together = run_in_savepoint(conn, tx, "op", partial(_insert_together, conn, tx, ops))
        if ok:
            means: dict[str, float | None] = {}
            return [
                (True, submitted_jobs(conn, rows, op.now, means))
                for op, rows in zip(ops, together, strict=True)
            ]
        return [run_in_savepoint(conn, tx, "op", partial(op, conn, tx)) for op in ops]


def _is_plain(jobs: Sequence[NewJob]) -> bool:
    """No parent and no deduplication: nothing to look up before the insert."""
    return all(not job.depends_on and job.dedup_hash is None for job in jobs)


def _insert_together(
    conn: sqlite3.Connection, tx: WriteTx, ops: Sequence[SubmitOp]
) -> list[list[Inserted]]:
    """The submissions of ``ops`` in their order, each as :func:`_insert_rows` would.

    A run of plain submissions (the common case when many clients submit at once) is one
    ``executemany``, not one per submission: per statement, Python costs more than SQLite.
    """
    results: list[list[Inserted]] = []
    for plain, run in itertools.groupby(ops, key=lambda op: _is_plain(op.jobs)):
        if not plain:
            results.extend(_insert_rows(conn, op.jobs, op.now) for op in run)
            continue
        submissions = list(run)
        rows = iter(_insert_plain(conn, [(job, op.now) for op in submissions for job in op.jobs]))
        results.extend([next(rows) for _ in op.jobs] for op in submissions)
    for op, inserted in zip(ops, results, strict=True):
        # A submission over its limit raises here: all are rolled back and written alone.
        take_rates(conn, _written_share(op.rates, inserted), op.now)
    new_rows = [item.row for inserted in results for item in inserted if not item.deduplicated]
    record_job_events(conn, tx, new_rows, was=None)
    return results


def _written_share(rates: Sequence[RateTake], inserted: Sequence[Inserted]) -> list[RateTake]:
    return written_share(
        rates,
        ((item.row["org"], item.row["job_type"]) for item in inserted if not item.deduplicated),
    )


def _insert_rows(conn: sqlite3.Connection, jobs: Sequence[NewJob], now: int) -> list[Inserted]:
    if _is_plain(jobs):
        return _insert_plain(conn, [(job, now) for job in jobs])
    inserted: list[Inserted] = []
    seq = next_seq(conn)  # this transaction's next seq; each job written alone takes one
    for index, job in enumerate(jobs):
        parents: list[RowLike] = []
        for ref in job.depends_on:
            if isinstance(ref, int):
                if not 0 <= ref < index:
                    raise ValidationError(
                        f"jobs[{index}].depends_on: batch reference {ref} must point to an"
                        " earlier job of the batch"
                    )
                earlier = inserted[ref].row
                if earlier["org"] != job.org:
                    raise UnknownParent(f"jobs[{index}].depends_on: unknown parent {earlier['id']}")
                parents.append(earlier)
            else:
                parent = conn.execute(
                    "SELECT seq, id, status FROM jobs WHERE id = ? AND org = ?", (ref, job.org)
                ).fetchone()
                if parent is None:
                    raise UnknownParent(f"unknown parent job {ref}")
                parents.append(parent)
        if job.dedup_hash is not None:
            if parents:
                job = dataclasses.replace(job, dedup_hash=_after_parents(job.dedup_hash, parents))
            existing = conn.execute(
                PENDING_WITH_HASH,
                (job.dedup_hash,),
            ).fetchone()
            if existing is not None:
                inserted.append(Inserted(existing, True))
                continue
        row = _insert_one(conn, job, parents, now, seq)
        seq += 1
        parent_ids = tuple(dict.fromkeys(p["id"] for p in parents))
        inserted.append(Inserted(row, False, parent_ids))
    return inserted


def _after_parents(key_hash: str, parents: Sequence[RowLike]) -> str:
    # A job that waits for parents duplicates only a job waiting for the same parents:
    # answering it with an equal job that does not wait for them would drop the dependency
    # and run the work too early. Deterministic, so a resubmitted workflow still deduplicates.
    return dedup_hash(key_hash, "depends_on", ",".join(sorted({p["id"] for p in parents})))


_INSERT_JOB = (
    "INSERT INTO jobs (seq, id, org, job_type, status, priority, params, max_retries, run_at,"
    " dedup_hash, pending_parents, created_at, updated_at, cancel_reason, finished_at)"
    " VALUES (:seq, :id, :org, :job_type, :status, :priority, :params, :max_retries, :run_at,"
    " :dedup_hash, :pending_parents, :created_at, :updated_at, :cancel_reason, :finished_at)"
)
# The same insert with positional parameters, for a batch: sqlite3 binds a named parameter by
# making its name a string and looking it up in the row, ~1.5 µs per row of 15 parameters.
_INSERT_JOB_POSITIONAL = (
    "INSERT INTO jobs (seq, id, org, job_type, status, priority, params, max_retries, run_at,"
    " dedup_hash, pending_parents, created_at, updated_at, cancel_reason, finished_at)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_INSERT_COLUMNS = tuple(_INSERT_JOB.partition("(")[2].partition(")")[0].split(", "))
"""The inserted columns, in the order of both statements."""
_insert_values = operator.itemgetter(*_INSERT_COLUMNS)


def _new_row(
    job: NewJob,
    now: int,
    status: Status,
    *,
    pending: int = 0,
    cancel_reason: str | None = None,
    seq: int | None = None,
) -> dict[str, Any]:
    # Every column of a new row is known here: no RETURNING (on this hot path it costs about
    # as much as the INSERT itself). The caller gives the seq (:func:`next_seq`).
    canceled = status is Status.CANCELED
    return {
        "seq": seq,
        "id": new_job_id(now),
        "org": job.org,
        "job_type": job.job_type,
        "status": status.value,
        "priority": job.priority_rank,
        "params": job.params_json,
        "result": None,
        "error": None,
        "progress": 0.0,
        "progress_message": None,
        "attempts": 0,
        "max_retries": job.max_retries,
        "retry_base": 0,
        "run_at": job.run_at if job.run_at is not None else now,
        "next_retry_at": None,
        "lease_expires_at": None,
        "dedup_hash": job.dedup_hash,  # a terminal row never holds the unique slot
        "pending_parents": pending,
        "has_dependents": 0,
        "created_at": now,
        "started_at": None,
        "finished_at": now if canceled else None,
        "updated_at": now,
        "cancel_reason": cancel_reason,
    }


def _ready_status(job: NewJob, now: int) -> Status:
    """A new job with nothing to wait for: queued, or scheduled when its run_at is later."""
    return Status.SCHEDULED if job.run_at is not None and job.run_at > now else Status.QUEUED


def next_seq(conn: sqlite3.Connection) -> int:
    """The seq of the next job inserted in this write transaction: above every seq ever
    handed out, also those of jobs retention has deleted since (never reused: a seq fences
    the writes of its job's attempts)."""
    row = conn.execute(
        "SELECT max(coalesce((SELECT max(seq) FROM jobs), 0),"
        " coalesce((SELECT seq FROM job_seq_floor), 0)) + 1"
    ).fetchone()
    return int(row[0])


def _insert_plain(conn: sqlite3.Connection, jobs: Sequence[tuple[NewJob, int]]) -> list[Inserted]:
    """Jobs without parents or deduplication, each with its submission time: one
    ``executemany``.

    Their seqs are given, not read back row by row: in this write transaction nobody else
    inserts, so :func:`next_seq` onwards are free.
    """
    first = next_seq(conn)
    rows = [
        _new_row(job, now, _ready_status(job, now), seq=first + offset)
        for offset, (job, now) in enumerate(jobs)
    ]
    conn.executemany(_INSERT_JOB_POSITIONAL, map(_insert_values, rows))
    return [Inserted(row, False) for row in rows]


def _insert_one(
    conn: sqlite3.Connection, job: NewJob, parents: list[RowLike], now: int, seq: int
) -> RowLike:
    unique_parents = {p["seq"]: p for p in parents}
    failed = [p for p in unique_parents.values() if p["status"] in UNSUCCESSFUL]
    pending = sum(1 for p in unique_parents.values() if p["status"] != Status.COMPLETED.value)
    if failed:
        # Same rule as a later cascade, so the outcome never depends on a race.
        reason = f"parent {failed[0]['id']} ended {failed[0]['status']}"
        row = _new_row(job, now, Status.CANCELED, cancel_reason=reason)
    elif pending:
        row = _new_row(job, now, Status.BLOCKED, pending=pending)
    else:
        row = _new_row(job, now, _ready_status(job, now))
    row["seq"] = seq
    conn.execute(_INSERT_JOB, row)
    if unique_parents:
        conn.executemany(
            "INSERT INTO job_deps (child_seq, parent_seq) VALUES (?, ?)",
            [(row["seq"], parent_seq) for parent_seq in unique_parents],
        )
        conn.executemany(
            "UPDATE jobs SET has_dependents = 1 WHERE seq = ? AND has_dependents = 0",
            [(parent_seq,) for parent_seq in unique_parents],
        )
    return row


# -- reads -------------------------------------------------------------------------------------


def _mean_ms(conn: sqlite3.Connection, job_type: str) -> float | None:
    row = conn.execute(
        "SELECT mean_ms FROM job_type_stats WHERE job_type = ?", (job_type,)
    ).fetchone()
    return float(row[0]) if row else None


def eta_for_row(conn: sqlite3.Connection, row: RowLike, now: int) -> float | None:
    """The ETA of one job row (see :func:`estimate_eta_s`)."""
    return estimate_eta_s(row, _mean_ms(conn, row["job_type"]), now)


def submitted_jobs(
    conn: sqlite3.Connection,
    inserted: Sequence[Inserted],
    now: int,
    means: dict[str, float | None] | None = None,
) -> list[Job]:
    """The :class:`Job` objects of a submission, without re-reading what the insert knows.

    A new job has no children yet and its parents are the ones just resolved; only a
    deduplicated (existing) job is loaded in full. ``means`` caches the mean run time per job
    type (for ETAs) across the submissions of one transaction.
    """
    if means is None:
        means = {}
    jobs: list[Job] = []
    for item in inserted:
        if item.deduplicated:
            jobs.append(load_job(conn, item.row, now, deduplicated=True))
            continue
        job_type = item.row["job_type"]
        if job_type not in means:
            means[job_type] = _mean_ms(conn, job_type)
        jobs.append(
            job_from_row(
                item.row,
                depends_on=item.parent_ids,
                eta_s=estimate_eta_s(item.row, means[job_type], now),
            )
        )
    return jobs


def load_job(conn: sqlite3.Connection, row: RowLike, now: int, deduplicated: bool = False) -> Job:
    """A full :class:`Job` (parents, children and ETA included) from its row."""
    parents = tuple(
        r[0]
        for r in conn.execute(
            "SELECT p.id FROM job_deps d JOIN jobs p ON p.seq = d.parent_seq"
            " WHERE d.child_seq = ? ORDER BY p.seq",
            (row["seq"],),
        )
    )
    children = tuple(
        r[0]
        for r in conn.execute(
            "SELECT c.id FROM job_deps d JOIN jobs c ON c.seq = d.child_seq"
            " WHERE d.parent_seq = ? ORDER BY c.seq",
            (row["seq"],),
        )
    )
    return job_from_row(
        row,
        depends_on=parents,
        dependents=children,
        eta_s=eta_for_row(conn, row, now),
        deduplicated=deduplicated,
    )


def get_job(conn: sqlite3.Connection, job_id: str, org: str | None, now: int) -> Job:
    """One job of ``org`` (any org when None); :class:`NotFound` otherwise."""
    return load_job(conn, job_row(conn, job_id, org), now)


def get_attempts(conn: sqlite3.Connection, job_id: str, org: str | None) -> list[Attempt]:
    """The execution log of one job, oldest first."""
    job = job_row(conn, job_id, org)
    rows = conn.execute(
        "SELECT * FROM attempts WHERE job_seq = ? ORDER BY number", (job["seq"],)
    ).fetchall()
    return [attempt_from_row(job_id, row) for row in rows]


@dataclasses.dataclass(frozen=True, slots=True)
class JobFilter:
    """Filters of a job listing. ``org`` None means every org (system callers only)."""

    org: str | None
    statuses: tuple[str, ...] = ()
    job_type: str | None = None
    priority_rank: int | None = None
    created_after: int | None = None
    created_before: int | None = None
    text: str | None = None
    before_seq: int | None = None
    limit: int = 50


# The listing query is assembled only from these constant fragments; every value is bound.
_LIST_CONDITIONS = {
    "org": "org = :org",
    "statuses": "status IN (SELECT value FROM json_each(:statuses))",
    "job_type": "job_type = :job_type",
    "priority_rank": "priority = :priority_rank",
    "created_after": "created_at >= :created_after",
    "created_before": "created_at < :created_before",
    "text": "(id = :text_exact OR params LIKE :text ESCAPE '\\' OR error LIKE :text ESCAPE '\\')",
    "before_seq": "seq < :before_seq",
}


# The partial index of each status but ``completed``. A listing filtered to such statuses
# reads these (every org's jobs of those statuses) instead of the org's whole history through
# jobs_org, when the kept counts say that is fewer rows: the dashboard's "running" link for a
# big org read its hundreds of thousands of finished jobs to find the eight running ones, and
# its dead-letter view read them all to find none. ``completed`` has no such index on purpose
# (see 0011_unsuccessful_by_seq.sql): a listing of it walks the history.
_UNSUCCESSFUL = "SELECT * FROM jobs INDEXED BY jobs_unsuccessful WHERE status = "
_BY_STATUS = {
    "queued": "SELECT * FROM jobs INDEXED BY jobs_ready WHERE status = 'queued'",
    "running": "SELECT * FROM jobs INDEXED BY jobs_lease WHERE status = 'running'",
    "blocked": "SELECT * FROM jobs INDEXED BY jobs_blocked WHERE status = 'blocked'",
    "scheduled": "SELECT * FROM jobs INDEXED BY jobs_scheduled_due WHERE status = 'scheduled'",
    "retrying": "SELECT * FROM jobs INDEXED BY jobs_retry_due WHERE status = 'retrying'",
    **{status.value: _UNSUCCESSFUL + "'" + status.value + "'" for status in sorted(UNSUCCESSFUL)},
}


def _read_by_status(conn: sqlite3.Connection, flt: JobFilter) -> bool:
    """Whether to read the statuses' partial indexes rather than the org's history."""
    if not flt.statuses or not set(flt.statuses) <= _BY_STATUS.keys():
        return False
    wanted = json.dumps(sorted(set(flt.statuses)))
    by_status = conn.execute(
        "SELECT coalesce(sum(n), 0) FROM job_counts"
        " WHERE status IN (SELECT value FROM json_each(?))",
        (wanted,),
    ).fetchone()[0]
    if flt.org is None:
        history = conn.execute("SELECT coalesce(sum(n), 0) FROM job_counts").fetchone()[0]
    else:
        history = conn.execute(
            "SELECT coalesce(sum(n), 0) FROM job_counts WHERE org = ?", (flt.org,)
        ).fetchone()[0]
    return int(by_status) < int(history)


HISTORY_WALK = 50_000
"""At most this many jobs of the history one filtered listing page examines.

A page filtered by type, text, priority, time or ``completed`` walks the org's jobs (every
org's for a system caller) newest first from its cursor, each row read and tested; with few
matches in a long history that was every job the org ever had, ~0.4-0.8 s per page with
1,000,000 of them, and the dashboard's live search asks for a page up to once a second. Past
this many rows the page ends with what it found, possibly nothing, and its cursor points
where the walk stopped: following it goes on, and every match still comes once, in order.
50,000 rows cost ~20-40 ms on a 2-core box (25,000: ~10-17 ms, 100,000: ~55-120 ms); fewer
would make a reader click through more empty pages of a long history.
"""


_UNFILTERED = JobFilter(org=None, limit=0)
"""A listing that filters nothing (its org, cursor and page size aside)."""


def _walk_floor(conn: sqlite3.Connection, flt: JobFilter) -> int | None:
    """The seq of the :data:`HISTORY_WALK`-th job of the walk, newest first below the
    cursor, when the history goes on past it (the walk stops there); None when the walk would
    reach the oldest job first, or nothing is filtered (every row then matches: the page
    ends after ``limit`` rows anyway)."""
    filtered = dataclasses.replace(flt, org=None, before_seq=None, limit=0) != _UNFILTERED
    if not filtered:
        return None
    # Index entries only (jobs_org holds (org, seq)); a system caller's walk reads the table's
    # seqs. LIMIT 2: a second row says there is history below the floor.
    sql = (
        "SELECT seq FROM jobs INDEXED BY jobs_org WHERE org = :org"
        if flt.org is not None
        else "SELECT seq FROM jobs WHERE 1"
    )
    if flt.before_seq is not None:
        sql += " AND seq < :before_seq"
    rows = conn.execute(
        sql + " ORDER BY seq DESC LIMIT 2 OFFSET :skip",
        {"org": flt.org, "before_seq": flt.before_seq, "skip": HISTORY_WALK - 1},
    ).fetchall()
    return int(rows[0][0]) if len(rows) == 2 else None


def _like_pattern(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def list_jobs(conn: sqlite3.Connection, flt: JobFilter, now: int) -> tuple[list[Job], int | None]:
    """A page of jobs, newest first, and the seq to continue from (None on the last page).

    A filtered page of the history examines at most :data:`HISTORY_WALK` jobs: it may hold
    fewer than ``limit`` jobs, even none, and still give a seq to continue from.
    """

    params: dict[str, object] = {"limit": flt.limit + 1}
    conditions: list[str] = []
    values = {
        "org": flt.org,
        "statuses": json.dumps(list(flt.statuses)) if flt.statuses else None,
        "job_type": flt.job_type,
        "priority_rank": flt.priority_rank,
        "created_after": flt.created_after,
        "created_before": flt.created_before,
        "text": _like_pattern(flt.text) if flt.text else None,
        "before_seq": flt.before_seq,
    }
    for key, value in values.items():
        if value is not None:
            conditions.append(_LIST_CONDITIONS[key])
            params[key] = value
    if flt.text:
        params["text_exact"] = flt.text
    if _read_by_status(conn, flt):
        # One part per status, each through its partial index (named, as the planner cannot
        # tell that "status = 'running'" matches jobs_lease's WHERE without statistics).
        others = [c for c in conditions if c != _LIST_CONDITIONS["statuses"]]
        parts = [
            _BY_STATUS[status] + "".join(" AND " + c for c in others)
            for status in sorted(set(flt.statuses))
        ]
        sql = (
            "SELECT * FROM (" + " UNION ALL ".join(parts) + ") ORDER BY seq DESC LIMIT :limit"  # noqa: S608 - constant fragments only
        )
        del params["statuses"]
        floor = None
    else:
        floor = _walk_floor(conn, flt)
        if floor is not None:
            conditions.append("seq >= :walk_floor")
            params["walk_floor"] = floor
        where = " AND ".join(conditions) if conditions else "1"
        # A bounded walk names jobs_org: the bound counts the org's rows, which the table
        # interleaves with every other org's (the planner may prefer the seq range). Else the
        # planner's choice stands (an unfiltered page of a one-org file reads the table).
        bounded = flt.org is not None and floor is not None
        source = "jobs INDEXED BY jobs_org" if bounded else "jobs"
        sql = "SELECT * FROM " + source + " WHERE " + where + " ORDER BY seq DESC LIMIT :limit"  # noqa: S608 - constant fragments only
    rows = conn.execute(sql, params).fetchall()
    more = len(rows) > flt.limit
    rows = rows[: flt.limit]
    seqs = [row["seq"] for row in rows]
    # A walk that stopped at its bound before the page filled: go on from where it stopped.
    after = seqs[-1] if more and seqs else floor
    parents: dict[int, list[str]] = {seq: [] for seq in seqs}
    children: dict[int, list[str]] = {seq: [] for seq in seqs}
    if seqs:
        seq_json = json.dumps(seqs)
        for child_seq, parent_id in conn.execute(
            "SELECT d.child_seq, p.id FROM job_deps d JOIN jobs p ON p.seq = d.parent_seq"
            " WHERE d.child_seq IN (SELECT value FROM json_each(?)) ORDER BY p.seq",
            (seq_json,),
        ):
            parents[child_seq].append(parent_id)
        for parent_seq, child_id in conn.execute(
            "SELECT d.parent_seq, c.id FROM job_deps d JOIN jobs c ON c.seq = d.child_seq"
            " WHERE d.parent_seq IN (SELECT value FROM json_each(?)) ORDER BY c.seq",
            (seq_json,),
        ):
            children[parent_seq].append(child_id)
    means: dict[str, float | None] = {}
    jobs = []
    for row in rows:
        job_type = row["job_type"]
        if job_type not in means:
            means[job_type] = _mean_ms(conn, job_type)
        jobs.append(
            job_from_row(
                row,
                depends_on=tuple(parents[row["seq"]]),
                dependents=tuple(children[row["seq"]]),
                eta_s=estimate_eta_s(row, means[job_type], now),
            )
        )
    return jobs, after


def count_by_status(conn: sqlite3.Connection, org: str | None) -> dict[str, dict[str, int]]:
    """Counts as {job_type: {status: n}} for one org (all orgs when None).

    Read from ``job_counts``, which every write keeps up to date (``WriteTx.count``): a few
    rows per org and type, however many finished jobs the table holds.
    """
    if org is None:
        rows = conn.execute(
            "SELECT job_type, status, sum(n) FROM job_counts WHERE n != 0 GROUP BY job_type, status"
        ).fetchall()
    else:  # one org's rows through the primary key, however many orgs there are
        rows = conn.execute(
            "SELECT job_type, status, n FROM job_counts WHERE org = ? AND n != 0", (org,)
        ).fetchall()
    result: dict[str, dict[str, int]] = {}
    for job_type, status, count in rows:
        result.setdefault(job_type, {})[status] = count
    return result


def count_queued(conn: sqlite3.Connection, *, types: Sequence[str]) -> int:
    """How many jobs of these types are queued (ready to claim), all orgs, from ``job_counts``."""
    row = conn.execute(
        "SELECT coalesce(sum(n), 0) FROM job_counts WHERE status = 'queued'"
        " AND job_type IN (SELECT value FROM json_each(?))",
        (json.dumps(list(types)),),
    ).fetchone()
    return int(row[0])


def count_by_org(conn: sqlite3.Connection) -> dict[str, dict[str, int]]:
    """Counts as {org: {status: n}} (system callers only)."""
    result: dict[str, dict[str, int]] = {}
    for org, status, count in conn.execute(
        "SELECT org, status, sum(n) FROM job_counts WHERE n != 0 GROUP BY org, status"
    ):
        result.setdefault(org, {})[status] = count
    return result


def recount_jobs(conn: sqlite3.Connection, tx: WriteTx) -> int:
    """Count the jobs table again into ``job_counts``; return how many of the kept counts were
    wrong (0 unless the file was changed by something that does not keep them: rows edited by
    hand, or an edgejobs of the previous version still writing after a newer one migrated it).

    One ``GROUP BY`` over every job: seconds with millions of them, in one write transaction.
    Other operations of the same transaction may have staged count changes already (written
    at its end): the table already shows their jobs, so the counts are written without them.
    """
    counted = {
        (r[0], r[1], r[2]): int(r[3])
        for r in conn.execute(
            "SELECT org, job_type, status, count(*) FROM jobs GROUP BY org, job_type, status"
        )
    }
    staged = tx.staged_counts()
    kept = {
        (r[0], r[1], r[2]): int(r[3])
        for r in conn.execute("SELECT org, job_type, status, n FROM job_counts WHERE n != 0")
    }
    keys = counted.keys() | kept.keys() | staged.keys()
    wrong = sum(1 for key in keys if counted.get(key, 0) != kept.get(key, 0) + staged.get(key, 0))
    conn.execute("DELETE FROM job_counts")
    conn.executemany(
        "INSERT INTO job_counts (org, job_type, status, n) VALUES (?, ?, ?, ?)",
        [(*key, counted.get(key, 0) - staged.get(key, 0)) for key in keys],
    )
    return wrong


def running_attempts(
    conn: sqlite3.Connection, job_ids: Sequence[str]
) -> dict[str, tuple[str, int]]:
    """Current (status, attempts) of the given jobs (the runner checks its tasks against it)."""

    rows = conn.execute(
        "SELECT id, status, attempts FROM jobs WHERE id IN (SELECT value FROM json_each(?))",
        (json.dumps(list(job_ids)),),
    ).fetchall()
    return {row["id"]: (row["status"], row["attempts"]) for row in rows}
