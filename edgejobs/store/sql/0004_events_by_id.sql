-- The event log is read and trimmed in id order: replay walks ids, retention deletes the oldest
-- ids first (ids follow commit order, so the oldest ids are the oldest events), and the table
-- holds at most the replay window. An index on created_at only cost every event row one more
-- B-tree insert and delete, about two WAL pages of every hot commit.
DROP INDEX IF EXISTS events_created;
