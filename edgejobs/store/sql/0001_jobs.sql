-- Jobs, their dependencies, the per-attempt execution log and the event log.
-- Times are INTEGER unix milliseconds. Priorities are ranks: 0 critical .. 3 low.

CREATE TABLE jobs (
    seq              INTEGER PRIMARY KEY,          -- submission order
    id               TEXT    NOT NULL UNIQUE,      -- opaque, time-sortable public id
    org              TEXT    NOT NULL,
    job_type         TEXT    NOT NULL,
    status           TEXT    NOT NULL,
    priority         INTEGER NOT NULL,
    params           TEXT    NOT NULL,             -- canonical JSON
    result           TEXT,                         -- JSON
    error            TEXT,                         -- JSON {"type","message","traceback"}
    progress         REAL    NOT NULL DEFAULT 0,
    progress_message TEXT,
    attempts         INTEGER NOT NULL DEFAULT 0,   -- attempts started, ever
    max_retries      INTEGER NOT NULL,
    retry_base       INTEGER NOT NULL DEFAULT 0,   -- `attempts` when the current retry budget began
    run_at           INTEGER NOT NULL,             -- due time (submit time unless scheduled)
    next_retry_at    INTEGER,
    lease_expires_at INTEGER,
    dedup_hash       TEXT,
    pending_parents  INTEGER NOT NULL DEFAULT 0,   -- parents not yet completed
    has_dependents   INTEGER NOT NULL DEFAULT 0,   -- 1 once any job depends on this one
    created_at       INTEGER NOT NULL,
    started_at       INTEGER,
    finished_at      INTEGER,
    updated_at       INTEGER NOT NULL,
    cancel_reason    TEXT
);

-- The claim: ready jobs in priority, due-time and submission order.
CREATE INDEX jobs_ready ON jobs (priority, run_at, seq) WHERE status = 'queued';
-- Due scheduled jobs and due retries.
CREATE INDEX jobs_scheduled_due ON jobs (run_at) WHERE status = 'scheduled';
CREATE INDEX jobs_retry_due ON jobs (next_retry_at) WHERE status = 'retrying';
-- Lease recovery.
CREATE INDEX jobs_lease ON jobs (lease_expires_at) WHERE status = 'running';
-- Dependency safety net.
CREATE INDEX jobs_blocked ON jobs (seq) WHERE status = 'blocked';
-- Retention: terminal jobs by age.
CREATE INDEX jobs_finished ON jobs (finished_at)
    WHERE status IN ('completed', 'failed', 'timed_out', 'dead_letter', 'canceled');
-- Listing per org, newest first (a status filter is applied while walking it: an index on
-- (org, status, seq) would cost every status change two more B-tree writes).
CREATE INDEX jobs_org ON jobs (org, seq);
-- Deduplication, enforced by the database: at most one non-terminal job per hash.
CREATE UNIQUE INDEX jobs_dedup ON jobs (dedup_hash)
    WHERE dedup_hash IS NOT NULL
      AND status NOT IN ('completed', 'failed', 'timed_out', 'dead_letter', 'canceled');

CREATE TABLE job_deps (
    child_seq  INTEGER NOT NULL REFERENCES jobs (seq) ON DELETE CASCADE,
    parent_seq INTEGER NOT NULL REFERENCES jobs (seq) ON DELETE CASCADE,
    PRIMARY KEY (child_seq, parent_seq)
) WITHOUT ROWID;
CREATE INDEX job_deps_parent ON job_deps (parent_seq, child_seq);

CREATE TABLE attempts (
    job_seq       INTEGER NOT NULL REFERENCES jobs (seq) ON DELETE CASCADE,
    number        INTEGER NOT NULL,
    started_at    INTEGER NOT NULL,
    finished_at   INTEGER,
    outcome       TEXT,
    error_type    TEXT,
    error_message TEXT,
    traceback     TEXT,
    PRIMARY KEY (job_seq, number)
) WITHOUT ROWID;

-- Append-only event log for SSE replay. AUTOINCREMENT: ids are never reused after pruning.
CREATE TABLE events (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    org        TEXT    NOT NULL,
    job_id     TEXT    NOT NULL,
    kind       TEXT    NOT NULL,                   -- 'job' | 'progress'
    data       TEXT    NOT NULL,                   -- JSON
    created_at INTEGER NOT NULL
);
CREATE INDEX events_created ON events (created_at);

-- Run durations per job type, for ETAs (exponentially weighted mean).
CREATE TABLE job_type_stats (
    job_type    TEXT PRIMARY KEY,
    runs        INTEGER NOT NULL,
    mean_ms     REAL    NOT NULL
) WITHOUT ROWID;

-- Job types as the runner declared them (so other processes can validate submissions), and
-- their runtime state: pause and policy overrides. The TOML (or code) stays the default.
CREATE TABLE job_types (
    name       TEXT PRIMARY KEY,
    policy     TEXT    NOT NULL DEFAULT '{}',      -- JSON: the declared policy
    paused     INTEGER NOT NULL DEFAULT 0,
    overrides  TEXT    NOT NULL DEFAULT '{}',      -- JSON object of overridden policy keys
    updated_at INTEGER NOT NULL
) WITHOUT ROWID;
