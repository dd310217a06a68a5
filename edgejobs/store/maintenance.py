"""Database upkeep: WAL checkpoints, file sizes, incremental vacuum and online backups.

Everything here is plain synchronous SQLite; the runner's maintenance module decides when to
call it and on which thread. Two rules shape it:

* ``PRAGMA wal_checkpoint`` cannot run inside a transaction, and the writer wraps every
  operation in ``BEGIN IMMEDIATE``. Checkpoints therefore run on their own short-lived
  connection (:func:`open_checkpointer`). A PASSIVE checkpoint never waits for anybody; a
  TRUNCATE takes the write lock, so that connection gets a short busy timeout and simply
  reports ``busy`` when the database is in use.
* Python's ``sqlite3`` steps a row-less statement once, and ``PRAGMA incremental_vacuum(N)``
  gives back one page per step, so :func:`vacuum_step` runs it once per page (each run is a few
  microseconds). Each call is bounded, so the write lock is never held for long.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import secrets
import sqlite3
import stat
import time
from pathlib import Path

from edgejobs.errors import EdgeJobsError
from edgejobs.store import migrations
from edgejobs.store.db import Pragmas, WriteTx, connect, create_private, wal_path
from edgejobs.store.events import last_event_id
from edgejobs.store.jobs import next_seq

CHECKPOINT_MODES = frozenset({"PASSIVE", "FULL", "RESTART", "TRUNCATE"})


class BackupError(EdgeJobsError):
    """A backup could not be written (the target exists, or the copy failed verification)."""

    code = "backup_failed"


@dataclasses.dataclass(frozen=True, slots=True)
class Checkpoint:
    """The result of ``PRAGMA wal_checkpoint``: SQLite's (busy, log, checkpointed) triple."""

    mode: str
    busy: bool
    """A FULL/RESTART/TRUNCATE checkpoint could not get its locks (a writer or a reader)."""
    log_frames: int
    """Frames in the WAL (-1 when the database is not in WAL mode)."""
    checkpointed_frames: int
    """Frames copied back into the database file (-1 when not in WAL mode)."""

    @property
    def complete(self) -> bool:
        """Every frame of the WAL is in the database file: no reader needs an older snapshot."""
        return (
            not self.busy and self.log_frames >= 0 and self.checkpointed_frames == self.log_frames
        )


@dataclasses.dataclass(frozen=True, slots=True)
class FileSizes:
    """Bytes on disk of the database file and its WAL."""

    database_bytes: int
    wal_bytes: int


@dataclasses.dataclass(frozen=True, slots=True)
class PageStats:
    """Page geometry of the database (the WAL included)."""

    page_size: int
    page_count: int
    freelist_count: int

    @property
    def free_bytes(self) -> int:
        """Bytes held by free pages, which an incremental vacuum can give back."""
        return self.page_size * self.freelist_count


@dataclasses.dataclass(frozen=True, slots=True)
class BackupResult:
    """What :func:`backup_database` wrote."""

    path: Path
    bytes: int
    jobs: int
    seconds: float
    upgraded_from: int | None = None
    """The schema version of the database, when the copy was migrated to this edgejobs'
    (see :func:`mark_backup_copy`); None when it already had it."""


def file_sizes(path: Path) -> FileSizes:
    """Sizes of the database file and its WAL (0 for a file that does not exist)."""

    def size(file: Path) -> int:
        try:
            return file.stat().st_size
        except FileNotFoundError:
            return 0

    return FileSizes(database_bytes=size(path), wal_bytes=size(wal_path(path)))


def page_stats(conn: sqlite3.Connection) -> PageStats:
    """Page size, page count and free pages, as the connection's snapshot sees them."""
    return PageStats(
        page_size=int(conn.execute("PRAGMA page_size").fetchone()[0]),
        page_count=int(conn.execute("PRAGMA page_count").fetchone()[0]),
        freelist_count=int(conn.execute("PRAGMA freelist_count").fetchone()[0]),
    )


def open_checkpointer(path: Path, pragmas: Pragmas, *, busy_timeout_ms: int) -> sqlite3.Connection:
    """A connection for checkpoints, with its own (short) busy timeout.

    Close it after use: a long-lived idle connection is harmless, but a short-lived one never
    outlives the store.
    """
    return connect(path, dataclasses.replace(pragmas, busy_timeout_ms=busy_timeout_ms))


def checkpoint(conn: sqlite3.Connection, mode: str = "PASSIVE") -> Checkpoint:
    """Run ``PRAGMA wal_checkpoint(mode)`` outside any transaction.

    PASSIVE copies what it can without waiting; TRUNCATE additionally waits (up to the busy
    timeout) for the writer and every reader, then empties the WAL file.
    """
    mode = mode.upper()
    if mode not in CHECKPOINT_MODES:
        raise ValueError(f"unknown checkpoint mode {mode!r}")
    if conn.in_transaction:
        raise EdgeJobsError("a WAL checkpoint cannot run inside a transaction")
    # The mode is one of four constants checked above, never user input.
    busy, log, done = conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
    return Checkpoint(mode, bool(busy), int(log), int(done))


def vacuum_step(conn: sqlite3.Connection, tx: WriteTx, *, max_pages: int) -> int:
    """Give up to ``max_pages`` free pages back to the file system; return how many.

    Runs as a write operation (inside the writer's transaction). The file itself shrinks when
    the next checkpoint copies the shortened database back from the WAL.
    """
    free = int(conn.execute("PRAGMA freelist_count").fetchone()[0])
    pages = min(free, max(0, max_pages))
    for _ in range(pages):
        # One page per statement step; see the module docstring.
        conn.execute("PRAGMA incremental_vacuum(1)")
    return free - int(conn.execute("PRAGMA freelist_count").fetchone()[0])


# How far a restored copy moves its counters: past anything the original can have handed out
# since the snapshot, at up to this many new ids per millisecond (100,000 events a second, far
# beyond what one SQLite writer commits) ...
GAP_IDS_PER_MS = 100
# ... plus this much, for the clock's uncertainty (an appliance whose clock was set back).
GAP_MARGIN = 1_000_000


@dataclasses.dataclass(frozen=True, slots=True)
class BackupGap:
    """What :func:`leave_backup_gap` did on a restored copy."""

    event_id: int
    """The id the next event gets, less one."""
    job_seq: int
    """The seq the next job gets, less one."""


def mark_backup_copy(path: Path, taken_at_ms: int) -> int | None:
    """Record in a fresh copy that it is a backup taken at ``taken_at_ms`` (wall clock).

    A copy of a database whose schema predates the ``backup_copy`` table (an older runner
    still serves it) is migrated first, so that its restore leaves the id gap like any other;
    returns the copy's former schema version then, else None. (The copy is in rollback-journal
    mode, as ``VACUUM INTO`` writes it: the migration's writes stay in the one file.)
    """
    conn = sqlite3.connect(str(path), isolation_level=None)
    upgraded_from: int | None = None
    try:
        conn.execute("PRAGMA foreign_keys = ON")
        version = migrations.current_version(conn)
        if 0 < version < migrations.latest_version():
            migrations.migrate(conn)
            upgraded_from = version
        if conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'backup_copy'"
        ).fetchone():
            # A copy of a restored copy no runner has started yet holds the mark already: the
            # older time stays, whose gap covers the newer one too.
            conn.execute(
                "INSERT INTO backup_copy (one, taken_at) VALUES (1, ?)"
                " ON CONFLICT (one) DO NOTHING",
                (taken_at_ms,),
            )
    except sqlite3.Error as exc:
        raise BackupError(f"could not write the copy: {exc}") from exc
    finally:
        conn.close()
    return upgraded_from


def leave_backup_gap(conn: sqlite3.Connection, tx: WriteTx, *, now_ms: int) -> BackupGap | None:
    """On a database restored from a backup, skip the event ids and job seqs the original
    may have handed out after the snapshot; None on any other database.

    A client that saw event 1200 of the original, of which the copy holds 1000, would
    otherwise get ids 1001-1200 reused for new events: resuming at 1200, it would silently
    miss them and keep showing what the original did after the backup. Past the gap its
    ``Last-Event-ID`` names a missing event, which the replay answers with ``reset``. Seqs
    fence the writes of a job's attempts, so they too name one job only. The gap grows with
    the time since the snapshot (wall clock), so restoring the same backup twice leaves the
    second restore above the first one's ids too.
    """
    row = conn.execute("SELECT taken_at FROM backup_copy WHERE one = 1").fetchone()
    if row is None:
        return None
    gap = GAP_MARGIN + max(0, now_ms - int(row[0])) * GAP_IDS_PER_MS
    event_id = last_event_id(conn) + gap
    updated = conn.execute(
        "UPDATE sqlite_sequence SET seq = ? WHERE name = 'events'", (event_id,)
    ).rowcount
    if not updated:  # no event was ever written
        conn.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('events', ?)", (event_id,))
    job_seq = next_seq(conn) - 1 + gap
    conn.execute(
        "INSERT INTO job_seq_floor (one, seq) VALUES (1, :seq)"
        " ON CONFLICT (one) DO UPDATE SET seq = excluded.seq",
        {"seq": job_seq},
    )
    conn.execute("DELETE FROM backup_copy")
    return BackupGap(event_id=event_id, job_seq=job_seq)


def backup_database(source: Path, target: Path, pragmas: Pragmas) -> BackupResult:
    """Write a consistent copy of the database at ``source`` to ``target``, online.

    ``VACUUM INTO`` copies one read snapshot (every transaction committed before it began,
    nothing after) without blocking the writer, and compacts the copy on the way. The copy is
    written next to ``target`` under a temporary name, flushed to disk, verified with
    ``PRAGMA integrity_check``, and only then linked to ``target`` — atomically, and never over
    an existing file. A failed or interrupted backup leaves no file at ``target``.
    """
    started = time.monotonic()
    taken_at = int(time.time() * 1000)  # the snapshot is at most this old
    source = Path(source)
    target = Path(target).absolute()
    if target.exists() or target.is_symlink():
        raise BackupError(f"{target} already exists; not overwriting it")
    if target.parent.resolve() / target.name in _companions(source.resolve()):
        # Written there, the copy is taken for the database's own journal at the next open
        # (and discarded by SQLite as not a journal of it): a backup reported good, then gone.
        raise BackupError(
            f"{target} is the name of the database's own journal or shared-memory file:"
            " choose another name"
        )
    if not source.is_file():
        raise BackupError(f"there is no database at {source}")
    if not target.parent.is_dir():
        raise BackupError(f"the folder {target.parent} does not exist")
    partial = target.with_name(f".{target.name}.{secrets.token_hex(4)}.partial")
    try:
        # The copy holds all the database holds: it gets the database file's permissions
        # (VACUUM INTO fills an empty file as it finds it), not the umask's 0644.
        create_private(partial, stat.S_IMODE(source.stat().st_mode))
        try:
            conn = connect(source, pragmas)
        except sqlite3.Error as exc:  # not a database, unreadable, locked beyond the timeout
            raise BackupError(f"cannot open the database {source}: {exc}") from exc
        try:
            conn.execute("VACUUM INTO ?", (str(partial),))
        except sqlite3.Error as exc:
            raise BackupError(f"could not copy the database: {exc}") from exc
        finally:
            conn.close()
        upgraded_from = mark_backup_copy(partial, taken_at)
        _fsync(partial)
        jobs = _verify(partial)
        try:
            os.link(partial, target)  # fails if target appeared meanwhile: never overwrite
        except FileExistsError:
            raise BackupError(f"{target} already exists; not overwriting it") from None
        except OSError:
            # A file system without hard links: check, then rename (a narrow race instead
            # of none).
            if target.exists():
                raise BackupError(f"{target} already exists; not overwriting it") from None
            os.rename(partial, target)
        _fsync(target.parent)
        return BackupResult(
            path=target,
            bytes=target.stat().st_size,
            jobs=jobs,
            seconds=time.monotonic() - started,
            upgraded_from=upgraded_from,
        )
    except OSError as exc:  # a full or read-only disk while flushing or naming the copy
        raise BackupError(f"could not write the backup {target}: {exc.strerror or exc}") from exc
    finally:
        _remove_partial(partial)


def _companions(database: Path) -> set[Path]:
    """The files SQLite keeps beside a database, by name: a file created under one of these
    names is read (or deleted) as part of the database."""
    return {database.with_name(database.name + suffix) for suffix in ("-wal", "-shm", "-journal")}


def _remove_partial(partial: Path) -> None:
    """Remove the temporary copy and the rollback journal SQLite leaves next to it when
    ``VACUUM INTO`` fails half-way (a full disk), so a failed nightly backup leaves nothing.

    Never raises: on a read-only folder the removal itself fails, and that must not hide why
    the backup failed.
    """
    for leftover in (partial, partial.with_name(partial.name + "-journal")):
        with contextlib.suppress(OSError):
            leftover.unlink()


def _verify(path: Path) -> int:
    """Run ``PRAGMA integrity_check`` on a copy; return its job count."""
    conn = sqlite3.connect(str(path), isolation_level=None)
    try:
        problems = [row[0] for row in conn.execute("PRAGMA integrity_check").fetchall()]
        if problems != ["ok"]:
            raise BackupError("the copy failed PRAGMA integrity_check: " + "; ".join(problems[:5]))
        return int(conn.execute("SELECT count(*) FROM jobs").fetchone()[0])
    except sqlite3.Error as exc:
        raise BackupError(f"could not verify the copy: {exc}") from exc
    finally:
        conn.close()


def _fsync(path: Path) -> None:
    """Flush a file (or a folder's entries) to stable storage."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on folders; the data itself is flushed
    finally:
        os.close(fd)
