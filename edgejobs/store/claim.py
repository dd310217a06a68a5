"""Claiming ready jobs for free worker slots, and renewing the leases of running ones."""

from __future__ import annotations

import dataclasses
import json
import logging
import sqlite3
from collections.abc import Mapping

from edgejobs.models import Status
from edgejobs.store.db import WriteTx
from edgejobs.store.transitions import promote_due, record_job_events

log = logging.getLogger("edgejobs.claim")


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
    " updated_at = max(updated_at, :now), lease_expires_at = :lease, progress = 0, progress_message = NULL"
    " WHERE seq IN (SELECT seq FROM jobs INDEXED BY jobs_ready WHERE status = 'queued'"
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
    "SELECT seq, job_type, org, priority, run_at FROM jobs INDEXED BY jobs_ready"
    " WHERE status = 'queued'"
    " AND job_type IN (SELECT value FROM json_each(:types))"
    " AND org || char(31) || job_type NOT IN (SELECT value FROM json_each(:full))"
    " AND (priority, run_at, seq) > (:priority, :run_at, :seq)"
    " ORDER BY priority, run_at, seq LIMIT :limit"
)
_BEFORE_EVERY_JOB = (-1, -1, -1)  # (priority, run_at, seq): each is >= 0

_CLAIM_SEQS = (
    "UPDATE jobs SET status = 'running', attempts = attempts + 1, started_at = :now,"
    " updated_at = max(updated_at, :now), lease_expires_at = :lease, progress = 0, progress_message = NULL"
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


# The other way to find the limited claim's candidates: the first jobs of each (job type, org)
# pair that still has room, pair after pair on jobs_ready_pair (the next pair is found by a
# probe past the last one, so full pairs cost nothing however long their backlog). The walk
# alone passed over a full pair's backlog in every claim: 100,000 such jobs of one org ahead
# in priority order took ~90 ms per claim, inside the write transaction every other write
# waits for, and the whole runner ran at half speed — what org_concurrency exists to prevent.
#
# The index exists only while some job type has a limit: other runners would keep it up for
# nothing (an entry written at every submit, deleted at every claim; measured within the noise
# of the store's write floor, -1 to +2 % in alternating runs on a quiet host). A runner that
# starts with a limit creates it (a scan of the table, once), one that starts with none drops
# it; a limited claim still makes sure it is there (a type registered with a limit later).
_PAIR_INDEX = "jobs_ready_pair"
_CREATE_PAIR_INDEX = (
    "CREATE INDEX IF NOT EXISTS jobs_ready_pair ON jobs (job_type, org, priority, run_at, seq)"
    " WHERE status = 'queued'"
)
# (Two seeks, not one row-value range: SQLite seeks (job_type, org) > (t, o) on job_type alone
# and then steps through every row of the pair it should jump over.)
_NEXT_ORG = (
    "SELECT job_type, org FROM jobs INDEXED BY jobs_ready_pair WHERE status = 'queued'"
    " AND job_type = :job_type AND org > :org ORDER BY org LIMIT 1"
)
_NEXT_TYPE = (
    "SELECT job_type, org FROM jobs INDEXED BY jobs_ready_pair WHERE status = 'queued'"
    " AND job_type > :job_type ORDER BY job_type, org LIMIT 1"
)
_PAIR_HEAD = (
    "SELECT seq, job_type, org, priority, run_at FROM jobs INDEXED BY jobs_ready_pair"
    " WHERE status = 'queued' AND job_type = :job_type AND org = :org"
    " ORDER BY priority, run_at, seq LIMIT :limit"
)
# What the two ways would read, from the kept counts: the queued jobs of pairs and types left
# out, full, paused or not served here (the walk passes over them), and the pairs with room
# (the other way probes each). Estimates only: either way claims the same jobs.
_QUEUED_PAIRS = "SELECT job_type, org, n FROM job_counts WHERE status = 'queued' AND n > 0"
PAIR_PROBE_COST = 4
"""Rows of a walk one probe of a pair is worth, in the choice between the two ways."""


@dataclasses.dataclass
class _Room:
    """What may still be claimed in this transaction, updated as candidates are chosen."""

    limits: ClaimLimits
    type_free: dict[str, int]
    per_org: dict[tuple[str, str], int]
    types: set[str]
    full: set[tuple[str, str]]

    @classmethod
    def of(cls, limits: ClaimLimits) -> _Room:
        type_free = dict(limits.type_free)
        per_org = dict(limits.running_per_org)
        full = {
            (job_type, org)
            for (job_type, org), running in per_org.items()
            if job_type in limits.org_limit and running >= limits.org_limit[job_type]
        }
        types = {t for t in limits.types if type_free.get(t, 1) > 0}
        return cls(limits, type_free, per_org, types, full)

    def allows(self, job_type: str, org: str) -> bool:
        return job_type in self.types and (job_type, org) not in self.full

    def pair_room(self, job_type: str, org: str, slots: int) -> int:
        """At most how many jobs of this pair this claim could take."""
        room = min(slots, self.type_free.get(job_type, slots))
        limit = self.limits.org_limit.get(job_type)
        if limit is not None:
            room = min(room, limit - self.per_org.get((job_type, org), 0))
        return max(0, room)

    def take(self, job_type: str, org: str) -> None:
        if job_type in self.type_free:
            self.type_free[job_type] -= 1
            if self.type_free[job_type] <= 0:
                self.types.discard(job_type)
        running = self.per_org[(job_type, org)] = self.per_org.get((job_type, org), 0) + 1
        if job_type in self.limits.org_limit and running >= self.limits.org_limit[job_type]:
            self.full.add((job_type, org))


def ensure_pair_index(conn: sqlite3.Connection) -> None:
    """Create ``jobs_ready_pair`` unless it exists (inside a write transaction)."""
    if not _has_index(conn, _PAIR_INDEX):
        log.info("creating the index of ready jobs per job type and org (a limit is set)")
        conn.execute(_CREATE_PAIR_INDEX)


def drop_pair_index(conn: sqlite3.Connection) -> None:
    """Drop ``jobs_ready_pair`` if it exists: no job type has a limit any more."""
    if _has_index(conn, _PAIR_INDEX):
        conn.execute("DROP INDEX jobs_ready_pair")


def _has_index(conn: sqlite3.Connection, name: str) -> bool:
    found = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = ?", (name,)
    ).fetchone()
    return found is not None


def _claim_with_limits(
    conn: sqlite3.Connection, *, now: int, slots: int, lease_ms: int, limits: ClaimLimits
) -> list[sqlite3.Row]:
    ensure_pair_index(conn)
    room = _Room.of(limits)
    if _pairs_cost_less(conn, room, slots):
        chosen = _choose_by_pairs(conn, room, slots)
    else:
        chosen = _choose_by_walk(conn, room, slots)
    if not chosen:
        return []
    return conn.execute(
        _CLAIM_SEQS, {"now": now, "lease": now + lease_ms, "seqs": json.dumps(chosen)}
    ).fetchall()


def _pairs_cost_less(conn: sqlite3.Connection, room: _Room, slots: int) -> bool:
    """Whether reading pair by pair costs less than walking past the jobs left out."""
    passed_over = probes = 0
    for job_type, org, queued in conn.execute(_QUEUED_PAIRS):
        if room.allows(job_type, org):
            probes += 2
        else:
            passed_over += int(queued)
    return passed_over > PAIR_PROBE_COST * probes + slots


def _choose_by_walk(conn: sqlite3.Connection, room: _Room, slots: int) -> list[int]:
    """The candidates in claim order from jobs_ready, full pairs and types left out."""
    chosen: list[int] = []
    after = _BEFORE_EVERY_JOB
    page = max(32, slots * 4)
    while len(chosen) < slots and room.types:
        candidates = conn.execute(
            _CANDIDATES,
            {
                "types": json.dumps(sorted(room.types)),
                "full": json.dumps(sorted(f"{org}\x1f{job_type}" for job_type, org in room.full)),
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
        # A type or pair that fills up on this page is skipped for the rest of it; the next
        # page leaves it out in SQL.
        chosen += _pick(room, candidates, slots - len(chosen))
    return chosen


def _choose_by_pairs(conn: sqlite3.Connection, room: _Room, slots: int) -> list[int]:
    """The first jobs of every pair with room, merged into claim order. Each pair gives as
    many as it could take at most, so the choice is the walk's."""
    candidates: list[sqlite3.Row] = []
    pair = ("", "")
    while (found := _next_pair(conn, pair)) is not None:
        pair = found
        if not room.allows(*pair):
            continue
        limit = room.pair_room(*pair, slots)
        if limit:
            params = {"job_type": pair[0], "org": pair[1], "limit": limit}
            candidates += conn.execute(_PAIR_HEAD, params).fetchall()
    candidates.sort(key=lambda c: (c["priority"], c["run_at"], c["seq"]))
    return _pick(room, candidates, slots)


def _next_pair(conn: sqlite3.Connection, after: tuple[str, str]) -> tuple[str, str] | None:
    """The first (job type, org) with queued jobs after ``after``, in index order."""
    params = {"job_type": after[0], "org": after[1]}
    found = (
        conn.execute(_NEXT_ORG, params).fetchone() or conn.execute(_NEXT_TYPE, params).fetchone()
    )
    return (found[0], found[1]) if found is not None else None


def _pick(room: _Room, candidates: list[sqlite3.Row], wanted: int) -> list[int]:
    """The seqs of the candidates (in claim order) that the room allows, at most ``wanted``."""
    chosen: list[int] = []
    for cand in candidates:
        if len(chosen) >= wanted:
            break
        job_type, org = cand["job_type"], cand["org"]
        if not room.allows(job_type, org):
            continue
        chosen.append(cand["seq"])
        room.take(job_type, org)
    return chosen


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
