-- Periodic schedules and the operator audit log.

-- The firing state of each [[schedules]] entry (its definition stays in the config). A firing
-- and the job it submits are one transaction, compare-and-set on last_fire_at, so each due
-- time fires at most once, also across restarts and crashes.
CREATE TABLE schedules (
    name         TEXT PRIMARY KEY,
    cron         TEXT    NOT NULL,               -- the definition next_fire_at was computed from
    timezone     TEXT    NOT NULL,
    org          TEXT    NOT NULL,               -- for org-scoped listings
    last_fire_at INTEGER,                        -- the due time fired last (unix ms); NULL: never
    last_job_id  TEXT,                           -- the job that firing submitted (or reused)
    next_fire_at INTEGER NOT NULL,               -- the next due time (unix ms)
    updated_at   INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX schedules_due ON schedules (next_fire_at);

-- Operator actions: who (token id, never the secret; role; the token's org), what, when.
-- `org` is the org the action concerns (a job's or a token's org), so an org admin reads
-- exactly its org's entries; NULL for actions on the whole runner (job types).
CREATE TABLE audit_log (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    at        INTEGER NOT NULL,
    token_id  TEXT    NOT NULL,
    role      TEXT    NOT NULL,
    actor_org TEXT,                              -- NULL: a system token (or the CLI)
    org       TEXT,
    action    TEXT    NOT NULL,
    target    TEXT    NOT NULL,
    details   TEXT    NOT NULL DEFAULT '{}'      -- JSON
);
CREATE INDEX audit_log_at ON audit_log (at);
CREATE INDEX audit_log_org ON audit_log (org, id);
