-- Submissions per (org, job type) in the current window of the type's rate_limit. Kept in the
-- database and taken in the submission's own transaction, so the limit holds for every process
-- that submits (the server, the command line, other clients of the file) and across restarts;
-- a submission that is refused or rolled back takes nothing. One row per pair: a new window
-- overwrites the old one.
CREATE TABLE rate_windows (
    org TEXT NOT NULL,
    job_type TEXT NOT NULL,
    window_start INTEGER NOT NULL,                   -- unix ms, a multiple of the window
    used INTEGER NOT NULL,
    PRIMARY KEY (org, job_type)
) WITHOUT ROWID;
