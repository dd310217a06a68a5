-- The highest job seq retention has seen, kept where retention cannot delete it. A seq names
-- a job in every fenced write ("attempt N of job seq S"), so it must never name another job.
-- SQLite alone hands out max(seq) + 1, which gives a deleted job's seq to the next job once
-- retention has deleted the newest rows (a quiet runner whose every job grew old): a process
-- stopped for days that came back and wrote its late result would then finish another job.
-- New seqs start above both max(seq) and this floor (edgejobs.store.jobs.next_seq).
CREATE TABLE job_seq_floor (
    one INTEGER PRIMARY KEY CHECK (one = 1),        -- a single row
    seq INTEGER NOT NULL
);
INSERT INTO job_seq_floor (one, seq) SELECT 1, coalesce(max(seq), 0) FROM jobs;
