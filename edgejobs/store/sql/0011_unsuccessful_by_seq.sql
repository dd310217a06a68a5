-- Unsuccessful terminal jobs, newest first: the dead-letter view and a listing filtered to
-- failed, timed_out, dead_letter or canceled read them here (edgejobs.store.jobs._BY_STATUS)
-- instead of walking the org's whole history through jobs_org, which holds every job it ever
-- had (~0.6 s per page with 1,000,000 finished jobs and no match). `completed` stays out on
-- purpose: it is the status of nearly every job, so the index would be as long as the history
-- and every completion would write it.
-- Written as ORs, not "status IN (...)": SQLite evaluates a partial index's WHERE on every
-- insert and status change, and builds an IN list's lookup table anew each time (~3 µs a row,
-- against ~0.3 µs for the comparisons). A query's "status = 'failed'" implies one side of the
-- OR, which is what lets SQLite read the index for it.
CREATE INDEX jobs_unsuccessful ON jobs (seq)
    WHERE status = 'failed' OR status = 'timed_out' OR status = 'dead_letter'
       OR status = 'canceled';
