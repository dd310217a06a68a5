-- Job counts by (org, job type, status), kept up to date by every write that creates, moves
-- or deletes a job (edgejobs.store.db.WriteTx.count, written once per transaction), so that
-- /stats and the metrics read a few rows instead of counting a table that keeps every
-- finished job until retention deletes it (over a second with 1,000,000 of them).
-- Rows whose count went back to 0 stay; readers skip them.
CREATE TABLE job_counts (
    org      TEXT    NOT NULL,
    job_type TEXT    NOT NULL,
    status   TEXT    NOT NULL,
    n        INTEGER NOT NULL,
    PRIMARY KEY (org, job_type, status)
) WITHOUT ROWID;

INSERT INTO job_counts (org, job_type, status, n)
SELECT org, job_type, status, count(*) FROM jobs GROUP BY org, job_type, status;
