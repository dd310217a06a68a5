-- Empty in a live database. `edgejobs backup` writes one row into its copy: the wall-clock time
-- the copy's snapshot was taken. When a runner first starts on such a file (a restore), the
-- original kept handing out event ids and job seqs after that snapshot, which the copy does
-- not know of: SSE clients hold those ids as their Last-Event-ID. The runner therefore moves
-- both counters past anything the original can have issued since, then deletes the row
-- (edgejobs.store.maintenance.leave_backup_gap).
CREATE TABLE backup_copy (
    one INTEGER PRIMARY KEY CHECK (one = 1),        -- a single row
    taken_at INTEGER NOT NULL                       -- unix ms (wall clock) of the snapshot
);
