"""Claiming ready jobs for free worker slots, and renewing the leases of running ones."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from collections.abc import Mapping

from edgejobs.models import Status
from edgejobs.store.db import WriteTx
from edgejobs.store.transitions import promote_due, record_job_events


@dataclasses.dataclass(frozen=True, slots=True)
class ClaimLimits:
    """What may be claimed now.

    Only jobs of ``types`` are claimed (the types this runner can run, minus paused ones).
    ``type_free`` is how many more jobs of a type with a
    ``concurrency`` limit may run; ``org_limit`` is the ``org_concurrency`` of a type and
    ``running_per_org`` the jobs of (type, org) running now. Types absent from these maps are
    unlimited.
    """

    types: frozenset[str] = frozenset()
    type_free: Mapping[str, int] = dataclasses.field(default_factory=dict)
    org_limit: Mapping[str, int] = dataclasses.field(default_factory=dict)
    running_per_org: Mapping[tuple[str, str], int] = dataclasses.field(default_factory=dict)

    @property
    def simple(self) -> bool:
        """No per-type or per-org limit applies: one UPDATE … RETURNING does the claim."""
        return not self.type_free and not self.org_limit


# Both claims return the columns the pool starts an attempt from, the claim order's keys and
# what the job event needs. Not ``RETURNING *``: every returned column crosses into Python on
# the writer thread, and a claim returns a row per job.
_CLAIM_SIMPLE = (
    "UPDATE jobs SET status = 'running', attempts = attempts + 1, started_at = :now,"
    " updated_at = :now, lease_expires_at = :lease, progress = 0, progress_message = NULL"
    " WHERE seq IN (SELECT seq FROM jobs WHERE status = 'queued'"
    " AND job_type IN (SELECT value FROM json_each(:types))"
    " ORDER BY priority, run_at, seq LIMIT :limit)"
    " RETURNING seq, id, org, job_type, status, priority, params, attempts, run_at"
)

# The limited claim's candidates, one page at a time: ready jobs of the types that still have
# room, minus the (org, job type) pairs at their org_concurrency ("org\x1fjob_type" keys: an org
# holds no control character), continuing after the last row of the page before. Full pairs
# are left out by SQLite as it walks the index, not skipped one by one in Python, and the walk
# resumes where it stopped instead of counting an OFFSET from the start: one org's backlog of
# 50,000 jobs had made every claim skip 50,000 rows in Python, page after page (quadratic:
# seconds per claim, inside the write transaction every other write waits for).
_CANDIDATES = (
    "SELECT seq, job_type, org, priority, run_at FROM jobs WHERE status = 'queued'"
    " AND job_type IN (SELECT value FROM json_each(:types))"
    " AND org || char(31) || job_type NOT IN (SELECT value FROM json_each(:full))"
    " AND (priority, run_at, seq) > (:priority, :run_at, :seq)"
    " ORDER BY priority, run_at, seq LIMIT :limit"
)
_BEFORE_EVERY_JOB = (-1, -1, -1)  # (priority, run_at, seq): each is >= 0

_CLAIM_SEQS = (
    "UPDATE jobs SET status = 'running', attempts = attempts + 1, started_at = :now,"
    " updated_at = :now, lease_expires_at = :lease, progress = 0, progress_message = NULL"
    " WHERE status = 'queued' AND seq IN (SELECT value FROM json_each(:seqs))"
    " RETURNING seq, id, org, job_type, status, priority, params, attempts, run_at"
)


def claim_ready(
    conn: sqlite3.Connection,
    tx: WriteTx,
    *,
    now: int,
    slots: int,
    lease_ms: int,
    limits: ClaimLimits,
) -> list[sqlite3.Row]:
    """Promote due jobs, then move up to ``slots`` queued jobs to running, in priority order.

    Also starts the attempt rows. Runs inside the writer's ``BEGIN IMMEDIATE`` transaction,
    so the selection and the UPDATE are one atomic step even where limits need a look first.
    """
    promote_due(conn, tx, now=now)
    if slots <= 0 or not limits.types:
        return []
    if limits.simple:
        rows = conn.execute(
            _CLAIM_SIMPLE,
            {
                "now": now,
                "lease": now + lease_ms,
                "types": json.dumps(sorted(limits.types)),
                "limit": slots,
            },
        ).fetchall()
    else:
        rows = _claim_with_limits(conn, now=now, slots=slots, lease_ms=lease_ms, limits=limits)
    if rows:
        conn.executemany(
            "INSERT INTO attempts (job_seq, number, started_at) VALUES (?, ?, ?)",
            [(row["seq"], row["attempts"], now) for row in rows],
        )
        record_job_events(conn, tx, rows, was=Status.QUEUED.value)
    # RETURNING gives rows in no promised order; hand them out in claim order.
    return sorted(rows, key=lambda r: (r["priority"], r["run_at"], r["seq"]))


def _claim_with_limits(
    conn: sqlite3.Connection, *, now: int, slots: int, lease_ms: int, limits: ClaimLimits
) -> list[sqlite3.Row]:
    type_free = dict(limits.type_free)
    per_org = dict(limits.running_per_org)
    types = {t for t in limits.types if type_free.get(t, 1) > 0}
    full = {
        (job_type, org)
        for (job_type, org), running in per_org.items()
        if job_type in limits.org_limit and running >= limits.org_limit[job_type]
    }
    chosen: list[int] = []
    after = _BEFORE_EVERY_JOB
    page = max(32, slots * 4)
    while len(chosen) < slots and types:
        candidates = conn.execute(
            _CANDIDATES,
            {
                "types": json.dumps(sorted(types)),
                "full": json.dumps(sorted(f"{org}\x1f{job_type}" for job_type, org in full)),
                "priority": after[0],
                "run_at": after[1],
                "seq": after[2],
                "limit": page,
            },
        ).fetchall()
        if not candidates:
            break
        last = candidates[-1]
        after = (last["priority"], last["run_at"], last["seq"])
        for cand in candidates:
            # A type or pair that filled up on this page is skipped for the rest of it; the
            # next page leaves it out in SQL.
            job_type, org = cand["job_type"], cand["org"]
            if job_type not in types or (job_type, org) in full:
                continue
            chosen.append(cand["seq"])
            if job_type in type_free:
                type_free[job_type] -= 1
                if type_free[job_type] <= 0:
                    types.discard(job_type)
            running = per_org[(job_type, org)] = per_org.get((job_type, org), 0) + 1
            if job_type in limits.org_limit and running >= limits.org_limit[job_type]:
                full.add((job_type, org))
            if len(chosen) >= slots:
                break
    if not chosen:
        return []
    return conn.execute(
        _CLAIM_SEQS, {"now": now, "lease": now + lease_ms, "seqs": json.dumps(chosen)}
    ).fetchall()


def renew_leases(
    conn: sqlite3.Connection,
    tx: WriteTx,
    *,
    running: Mapping[int, int],
    until: int,
    expiring_before: int | None = None,
) -> int:
    """Extend the lease of every job this runner is running (seq → attempt), fenced.

    With ``expiring_before``, only leases that end before it are touched: the tick uses it to
    save from recovery exactly what its recovery would take, without rewriting every running
    row each tick.
    """
    cur = conn.executemany(
        "UPDATE jobs SET lease_expires_at = :until WHERE seq = :seq AND status = 'running'"
        " AND attempts = :attempt AND (:before IS NULL OR lease_expires_at < :before)",
        [
            {"until": until, "seq": seq, "attempt": attempt, "before": expiring_before}
            for seq, attempt in running.items()
        ],
    )
    return cur.rowcount


def parent_results(conn: sqlite3.Connection, seqs: list[int]) -> dict[int, dict[str, object]]:
    """Results of the parents of the given jobs, as {child seq: {parent id: result}}."""
    found: dict[int, dict[str, object]] = {}
    for row in conn.execute(
        "SELECT d.child_seq, p.id, p.result FROM job_deps d JOIN jobs p ON p.seq = d.parent_seq"
        " WHERE d.child_seq IN (SELECT value FROM json_each(?))",
        (json.dumps(seqs),),
    ):
        found.setdefault(row[0], {})[row[1]] = json.loads(row[2]) if row[2] is not None else None
    return found
