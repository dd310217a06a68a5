"""Connections, PRAGMAs, the single writer (group commit) and the read pool.

Why a writer thread instead of one awaited call per statement: through a thread hop an awaited
call costs more than the SQL it runs (tens of microseconds against one). So every write is a
plain function ``op(conn, tx)`` that runs on the writer thread; the writer takes every operation
waiting in its queue, runs them all in ONE ``BEGIN IMMEDIATE`` transaction, each inside its own
SAVEPOINT (so one failing operation does not undo the others), commits once and then resolves
all their futures with one hop back to the event loop. No caller is told an operation succeeded
before its COMMIT returned. Transactions are never interleaved: one thread owns the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

from edgejobs import faults
from edgejobs.errors import (
    DatabaseBusy,
    DatabaseReadOnly,
    EdgeJobsError,
    StorageFull,
    StoreTooOld,
    out_of_resources,
)
from edgejobs.store.wal_watch import WalWatch, open_watch

log = logging.getLogger("edgejobs.store")

T = TypeVar("T")

MIN_SQLITE = (3, 35, 0)
MAX_BATCH_OPS = 512
IDLE_POLL_S = 0.1
"""How often an idle writer looks at ``PRAGMA data_version`` for other processes' commits
where the WAL file cannot be watched (see ``wal_watch``)."""
WATCHED_POLL_S = 30.0
"""How often it looks anyway where the WAL file is watched: a safety net against a missed
notification, rare because every wake-up of an idle process costs milliseconds of CPU on a
small virtual machine."""
SETTLE_S = 0.06
"""A watched writer that got no operation for this long goes idle: only then is the watch
armed. While operations flow it is not, so this process's own commits do not wake the event
loop and the writer (that cost the pickup latency ~0.2 ms); the writer looks after its
batches instead, and every ``BUSY_POLL_S`` while it settles. Looking only at the end of the
settling, a client's ``wait()`` heard of a job a runner elsewhere ran in 3 ms after ~60 ms,
and a runner started a job submitted from another process up to 60 ms late."""
BUSY_POLL_S = 0.005
"""How often a busy writer looks (between batches; every batch would cost a statement each)."""
RECHECK_AFTER_S = (0.002, 0.01, 0.05, 0.25)
"""After the watch said the WAL was written but ``data_version`` shows no commit yet, look
again after these pauses: the other process may be mid-commit (its frames written, its
wal-index — shared memory, which no notification announces — not yet updated, an fsync away
under ``synchronous = full``). Without them such a commit waited for the next unrelated
wake-up, seconds on an idle runner (up to ``WATCHED_POLL_S``)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Pragmas:
    """Connection settings applied to (and read back from) every connection."""

    synchronous: str = "normal"
    busy_timeout_ms: int = 5000
    journal_size_limit_bytes: int = 64 * 1024 * 1024


def check_sqlite_version() -> None:
    """Refuse to run on a SQLite without ``RETURNING`` (3.35)."""
    if sqlite3.sqlite_version_info < MIN_SQLITE:
        raise StoreTooOld(
            f"edgejobs needs SQLite >= 3.35 (RETURNING); this Python links {sqlite3.sqlite_version}"
        )


PRIVATE_FILE_MODE = 0o600
"""Permission bits of a database file edgejobs creates: owner only."""


def create_private(path: Path, mode: int = PRIVATE_FILE_MODE) -> None:
    """Create ``path`` as an empty file with ``mode`` if nothing is there yet.

    The file holds job params and results (often secrets), token hashes and the audit log;
    SQLite alone would create it ``0644`` under the usual umask, readable by every local
    user. SQLite starts a new database in an empty file and gives its ``-wal``, ``-shm`` and
    ``-journal`` files the database file's permissions, so they are private too. An existing
    file keeps the mode its operator gave it. Never raises: when the file cannot be made
    here (a missing or read-only folder), opening it reports why.
    """
    if not str(path):
        return
    # Through a symlink to a file not there yet, O_EXCL refuses the link itself: SQLite
    # would then create the file it points to with the umask's 0644.
    target = Path(path).resolve()
    with contextlib.suppress(OSError):  # FileExistsError included: keep the file as it is
        os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode))


def connect(
    path: Path, pragmas: Pragmas, *, readonly: bool = False, create: bool = False
) -> sqlite3.Connection:
    """Open a connection in autocommit mode with the PRAGMAs set and verified.

    ``create``: a missing database file is created, readable by its owner only
    (:func:`create_private`) — only the store's :meth:`prepare
    <edgejobs.store.store.Store.prepare>` does. Every other connection opens an existing file
    or fails: a reader or checkpointer opened after the file was moved or deleted under a
    running process would otherwise leave an empty database at the old path, which the next
    start would take for a new one.
    """
    target, uri = str(path), False
    if create:
        create_private(path)
    else:
        target, uri = Path(path).absolute().as_uri() + "?mode=rw", True
    conn = sqlite3.connect(
        target,
        isolation_level=None,
        check_same_thread=False,
        timeout=pragmas.busy_timeout_ms / 1000,
        uri=uri,
    )
    try:
        _configure(conn, path, pragmas, readonly=readonly)
    except BaseException:
        # Not left to the garbage collector: a connection that failed here (no descriptor for
        # the WAL file, say) still holds the database file's descriptor.
        conn.close()
        raise
    return conn


def _configure(conn: sqlite3.Connection, path: Path, pragmas: Pragmas, *, readonly: bool) -> None:
    """Set and verify the PRAGMAs of a new connection (see :func:`connect`)."""
    conn.row_factory = sqlite3.Row
    settings: list[tuple[str, str | int, str | int]] = [
        ("busy_timeout", pragmas.busy_timeout_ms, pragmas.busy_timeout_ms),
        ("foreign_keys", "ON", 1),
        (
            "synchronous",
            pragmas.synchronous.upper(),
            {"NORMAL": 1, "FULL": 2}[pragmas.synchronous.upper()],
        ),
    ]
    if not readonly:
        settings.insert(0, ("journal_mode", "WAL", "wal"))
        settings.append(
            (
                "journal_size_limit",
                pragmas.journal_size_limit_bytes,
                pragmas.journal_size_limit_bytes,
            )
        )
    for name, value, expected in settings:
        # PRAGMA arguments cannot be bound parameters; names and values here are constants or
        # validated integers from the config model, never user input.
        _execute_when_unlocked(conn, f"PRAGMA {name} = {value}", pragmas.busy_timeout_ms / 1000)
        actual = conn.execute(f"PRAGMA {name}").fetchone()[0]
        if str(actual).lower() != str(expected).lower():
            raise EdgeJobsError(f"could not set PRAGMA {name} = {value} on {path} (got {actual})")
    if not readonly:
        faults.limit_pages(conn)  # test-only; inert unless EDGEJOBS_TEST_MAX_PAGE_COUNT is set
    if readonly:
        mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
        if str(mode).lower() != "wal":
            raise EdgeJobsError(f"{path} is not in WAL mode (journal_mode={mode})")
        conn.execute("PRAGMA query_only = ON")


LOCKED_RETRY_S = 0.01
"""The pause between tries of a connection's settings while another opening holds the file."""


def _execute_when_unlocked(conn: sqlite3.Connection, sql: str, timeout_s: float) -> None:
    """Run ``sql``, trying again while SQLite answers "database is locked", up to
    ``timeout_s``.

    Two processes opening a fresh file at once (a worker starting, a ``submit`` run beside it)
    both switch it to WAL, which needs an exclusive lock: SQLite refuses one of them at once,
    without its busy handler (waiting could deadlock two lock upgrades), and the command
    failed "database is locked" — 11 of 60 such pairs. The other one is done in milliseconds.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            conn.execute(sql)
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
        time.sleep(LOCKED_RETRY_S)


def wal_path(path: Path) -> Path:
    """The WAL file that belongs to the database at ``path``: next to the file a symlink
    points to, where SQLite puts it (watched, measured and checkpointed by that name)."""
    real = path.resolve()
    return real.with_name(real.name + "-wal")


def connect_writer(path: Path, pragmas: Pragmas) -> sqlite3.Connection:
    """:func:`connect`, for the connection that runs the engine's write transactions.

    Its temporary structures are kept in memory (``temp_store = MEMORY``): every
    ``UPDATE … RETURNING`` (a claim, a completion, a promotion) collects its rows in an
    ephemeral table first, and with temporary storage on file SQLite sets one up per
    statement at ~70 µs, five times the cost of the claim itself. Those tables hold one
    statement's returned rows, bounded by the batch limits. Only this connection: elsewhere a
    large sort (an index built by a migration) may still spill to a temporary file.
    """
    conn = connect(path, pragmas)
    conn.execute("PRAGMA temp_store = MEMORY")
    return conn


def translate(exc: sqlite3.Error) -> EdgeJobsError | None:
    """Map SQLite's lock, read-only and disk-full errors to the errors the API reports (503 /
    503 / 507), and a file it could not open for want of a descriptor to :class:`OutOfResources` (503)."""
    code = getattr(exc, "sqlite_errorcode", None)
    text = str(exc).lower()
    if code in (sqlite3.SQLITE_FULL,) or "database or disk is full" in text:
        return StorageFull("the disk is full: nothing was written")
    if code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED) or "database is locked" in text:
        return DatabaseBusy("the database is locked by another process; try again")
    # SQLite opens a file it may not write read-only without a word (BEGIN IMMEDIATE and
    # COMMIT still succeed): the first write says so, with an extended code in the low byte.
    if (code is not None and code & 0xFF == sqlite3.SQLITE_READONLY) or (
        "readonly database" in text
    ):
        return DatabaseReadOnly(
            "the database file cannot be written (a read-only file, folder or mount, or the"
            " file was moved away): nothing was written"
        )
    return out_of_resources(exc)


TxMark = tuple[int, int, int, int, int]
"""What :meth:`WriteTx.mark` returns: how much each staged list held at that point."""

_UPSERT_COUNTS = (
    "INSERT INTO job_counts (org, job_type, status, n) VALUES (?, ?, ?, ?)"
    " ON CONFLICT (org, job_type, status) DO UPDATE SET n = n + excluded.n"
)


@dataclasses.dataclass(slots=True)
class WriteTx:
    """What the operations of one transaction leave for the writer and for after COMMIT.

    ``jobs_changed`` maps job ids to their new status (for waiters and the pool);
    ``events`` counts event rows written (the broker tails the table when it is non-zero).
    Event rows go straight into the table, in the statement order of the changes, so their
    ids follow the order of the changes and a rolled-back savepoint takes its events with it.
    Run durations and the changes of the job counts are staged here and written once per
    transaction, just before COMMIT.
    """

    jobs_changed: dict[str, str] = dataclasses.field(default_factory=dict)
    events: int = 0
    canceled_running: list[tuple[str, int]] = dataclasses.field(default_factory=list)
    durations: list[tuple[str, int]] = dataclasses.field(default_factory=list)
    _change_log: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    _count_log: list[tuple[str, str, str | None, str | None, int]] = dataclasses.field(
        default_factory=list
    )

    def changed(self, job_id: str, status: str) -> None:
        """Record that ``job_id`` moved to ``status`` in this transaction."""
        self.jobs_changed[job_id] = status
        self._change_log.append((job_id, status))

    def count(
        self, org: str, job_type: str, was: str | None, now: str | None, jobs: int = 1
    ) -> None:
        """Stage a change of the job counts: ``jobs`` jobs of (org, job_type) left status
        ``was`` (None: they are new) for ``now`` (None: they were deleted)."""
        if was != now:
            self._count_log.append((org, job_type, was, now, jobs))

    def mark(self) -> TxMark:
        """A point to roll staged rows back to when an operation's savepoint is rolled back."""
        return (
            self.events,
            len(self.durations),
            len(self._change_log),
            len(self._count_log),
            len(self.canceled_running),
        )

    def rollback_to(self, mark: TxMark) -> None:
        """Forget what was staged and reported after ``mark`` (its savepoint was undone)."""
        self.events = mark[0]
        del self.durations[mark[1] :]
        if len(self._change_log) > mark[2]:
            del self._change_log[mark[2] :]
            self.jobs_changed = dict(self._change_log)
        del self._count_log[mark[3] :]
        # An undone cancel must not stop the handler: its job is still running.
        del self.canceled_running[mark[4] :]

    def flush(self, conn: sqlite3.Connection) -> None:
        """Write the staged run durations and count changes (called just before COMMIT)."""
        if self.durations:
            totals: dict[str, list[int]] = {}
            for job_type, duration in self.durations:
                totals.setdefault(job_type, []).append(duration)
            # An exponentially weighted mean (alpha 0.2 per run) follows drift without history;
            # a batch of n runs is folded in as n steps of the same mean.
            conn.executemany(
                "INSERT INTO job_type_stats (job_type, runs, mean_ms) VALUES (?, ?, ?)"
                " ON CONFLICT (job_type) DO UPDATE SET runs = runs + excluded.runs,"
                " mean_ms = mean_ms * power(0.8, excluded.runs)"
                " + excluded.mean_ms * (1 - power(0.8, excluded.runs))",
                [(t, len(d), sum(d) / len(d)) for t, d in totals.items()],
            )
            self.durations = []
        if self._count_log:
            # A drain cycle moves 16 jobs queued -> running and 16 running -> completed: summed
            # first, that is a row or two to write, not one per change.
            deltas = self.staged_counts()
            conn.executemany(_UPSERT_COUNTS, [(*key, n) for key, n in deltas.items() if n])
            self._count_log = []

    def staged_counts(self) -> dict[tuple[str, str, str], int]:
        """The count changes staged so far, summed per (org, job_type, status)."""
        deltas: dict[tuple[str, str, str], int] = {}
        for org, job_type, was, now, jobs in self._count_log:
            if was is not None:
                key = (org, job_type, was)
                deltas[key] = deltas.get(key, 0) - jobs
            if now is not None:
                key = (org, job_type, now)
                deltas[key] = deltas.get(key, 0) + jobs
        return deltas


WriteOp = Callable[[sqlite3.Connection, WriteTx], T]


class MergeableOp:
    """A write operation that the writer may write together with the other operations of its
    class in the same transaction (:meth:`write_together`), instead of one savepoint each.

    Concurrent submissions are the case: fifty callers each submitting one job make fifty
    operations, and written as one they share one savepoint and one statement per table.
    """

    def __call__(self, conn: sqlite3.Connection, tx: WriteTx) -> Any:
        """Write this operation alone."""
        raise NotImplementedError

    @classmethod
    def write_together(
        cls, conn: sqlite3.Connection, tx: WriteTx, ops: list[Any]
    ) -> list[tuple[bool, Any]]:
        """Write ``ops`` (all of this class); per op, ``(True, result)`` or ``(False, error)``
        exactly as :func:`run_in_savepoint` would have returned it for the op alone."""
        raise NotImplementedError


SavepointName = Literal["op", "outcome"]
_SAVEPOINT_SQL: dict[str, tuple[str, str, str]] = {
    name: (f"SAVEPOINT {name}", f"ROLLBACK TO {name}", f"RELEASE {name}")
    for name in ("op", "outcome")
}
"""Savepoint statements, built once from these constant names (they cannot be parameters)."""


FULL_DISK_RETRIES = 2
"""How many times a batch is written again without the operation that met a full disk (see
:meth:`Writer._run_batch`)."""


def run_in_savepoint(
    conn: sqlite3.Connection, tx: WriteTx, name: SavepointName, write: Callable[[], T]
) -> tuple[bool, Any]:
    """``write()`` inside a savepoint: ``(True, result)``, or ``(False, error)`` with the
    savepoint and what ``tx`` staged since rolled back, so that one failing operation does not
    undo the others of its transaction (the writer's per-operation savepoints, the pool's per
    outcome ones nested in them).

    Raised instead of returned: what leaves nothing to write — SQLite rolled the whole
    transaction back (it may on SQLITE_FULL), or the disk is full.
    """
    begin, rollback, release = _SAVEPOINT_SQL[name]
    conn.execute(begin)
    mark = tx.mark()
    try:
        result = write()
    except BaseException as exc:
        tx.rollback_to(mark)
        if not conn.in_transaction:
            raise  # no savepoint is left: fail the whole transaction with the cause
        conn.execute(rollback)
        conn.execute(release)
        if isinstance(exc, sqlite3.Error):
            translated = translate(exc)
            if isinstance(translated, StorageFull | DatabaseReadOnly):
                raise  # the whole transaction cannot proceed
            return False, translated or exc
        return False, exc
    conn.execute(release)
    return True, result


@dataclasses.dataclass(slots=True)
class _Pending(Generic[T]):
    op: WriteOp[T]
    future: asyncio.Future[T]
    first: bool = False  # told before the other callers of its transaction


class _CheckForeign:
    """Queued when the WAL file was written to: look whether another process committed."""


_CHECK_FOREIGN = _CheckForeign()


CommitListener = Callable[[WriteTx], None]


class Writer:
    """The one thread that owns the write connection and runs operations in group commits."""

    def __init__(self, path: Path, pragmas: Pragmas) -> None:
        self._path = path
        self._pragmas = pragmas
        self._queue: queue.SimpleQueue[_Pending[Any] | _CheckForeign | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._conn: sqlite3.Connection | None = None
        self._commit_listeners: list[CommitListener] = []
        self._foreign_listeners: list[Callable[[], None]] = []
        self._data_version = 0
        self._checked_foreign_at = 0.0
        self._watch: WalWatch | None = None
        self._check_queued = False
        self._armed = False  # the watch is registered with the event loop (loop thread only)
        self._idle = False  # set by the writer when it goes idle, cleared by each submit
        self._closed = False
        self.fault_hook: Callable[[str, int], None] | None = None
        """Test hook: called with ("before_commit" | "after_commit", n) around every commit."""
        self.commits = 0
        self.last_failure: tuple[float, DatabaseBusy | StorageFull] | None = None
        """When (``time.monotonic()``) and why the last transaction failed because the
        database was locked past the busy timeout or the disk was full: the health check
        reports it (reads, which it also runs, keep working in both cases)."""

    def add_commit_listener(self, listener: CommitListener) -> None:
        """Call ``listener(tx)`` on the event loop after every successful commit."""
        self._commit_listeners.append(listener)

    def add_foreign_listener(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` on the event loop when another connection has committed."""
        self._foreign_listeners.append(listener)

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The event loop the writer was started in: its futures and wake-ups live there."""
        return self._loop

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Open the connection and start the writer thread."""
        self._loop = loop
        self._conn = connect_writer(self._path, self._pragmas)
        self._data_version = self._conn.execute("PRAGMA data_version").fetchone()[0]
        self._watch = open_watch(wal_path(self._path))
        self._thread = threading.Thread(target=self._run, name="edgejobs-writer", daemon=True)
        self._thread.start()

    async def restart(self, loop: asyncio.AbstractEventLoop) -> None:
        """Move to ``loop`` from the event loop the writer was started in, which has ended or
        stopped.

        The thread first finishes what was queued there (resolved on that loop, as it would
        have been); then a new thread, connection and WAL watch resolve and wake on ``loop``.
        Refused while the old loop still runs (in another thread): its callers would have
        their futures resolved on a loop they do not run in.
        """
        if self._loop is not None and self._loop is not loop and self._loop.is_running():
            raise EdgeJobsError("the store is in use by an event loop that is still running")
        await self.close()
        self._closed = False
        self._idle = False
        self._check_queued = False
        self.start(loop)

    def _on_own_loop(self) -> bool:
        # False in a callback the thread scheduled on an event loop the writer has since left
        # (see restart) and that ran again: it may still resolve its futures, which belong to
        # that loop, but must not touch the watch or tell the listeners, which live elsewhere.
        return asyncio.get_running_loop() is self._loop

    def _arm(self) -> None:
        # On the event loop, asked by the writer once it went idle. Events that arrived since
        # the writer's last look are still in the descriptor: they fire the callback at once.
        if not self._idle or self._armed or self._closed or self._watch is None:
            return
        if not self._on_own_loop():
            return
        assert self._loop is not None
        try:
            self._loop.add_reader(self._watch.fileno(), self._on_wal_written)
        except (NotImplementedError, RuntimeError):  # e.g. a proactor event loop: poll
            self._watch.close()
            self._watch = None
            self._queue.put(_CHECK_FOREIGN)  # the writer notices and polls from now on
            return
        self._armed = True

    def _disarm(self) -> None:
        # On the event loop, at every submit: the writer is busy again and looks by itself.
        self._idle = False
        if self._armed:
            self._armed = False
            assert self._loop is not None and self._watch is not None
            self._loop.remove_reader(self._watch.fileno())

    def _on_wal_written(self) -> None:
        # On the event loop, armed only while the writer is idle: another process wrote to the
        # WAL. One look queued at a time; data_version says whether it committed.
        assert self._watch is not None
        self._watch.drain()
        if not self._check_queued and not self._closed:
            self._check_queued = True
            self._queue.put(_CHECK_FOREIGN)

    @property
    def rows_changed(self) -> int:
        """Rows this writer inserted, updated or deleted so far (SQLite's ``total_changes``):
        unchanged means nothing was written, not even by an empty transaction."""
        conn = self._conn
        return conn.total_changes if conn is not None else 0

    @property
    def watch_armed(self) -> bool:
        """Whether the WAL watch is armed now: the writer is idle and waits to be told."""
        return self._armed

    @property
    def watching(self) -> bool:
        """Whether other processes' commits are noticed by watching the WAL file (else by
        polling ``PRAGMA data_version`` every ``IDLE_POLL_S``)."""
        return self._watch is not None

    def run_sync(self, op: WriteOp[T]) -> T:
        """Run one operation in its own transaction on the calling thread (before ``start``)."""
        conn = self._conn or connect_writer(self._path, self._pragmas)
        try:
            tx = WriteTx()
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = op(conn, tx)
                tx.flush(conn)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:  # not after SQLite rolled it back itself (disk full)
                    conn.execute("ROLLBACK")
                raise
            return result
        except sqlite3.Error as exc:
            raise (translate(exc) or exc) from exc
        finally:
            if conn is not self._conn:
                conn.close()

    def _check_loop(self) -> asyncio.AbstractEventLoop:
        # Before anything is queued: an operation queued from another event loop than the
        # writer's would be committed, and its caller then told it failed (its future is
        # resolved on a loop it does not await in).
        if self._closed or self._loop is None:
            raise EdgeJobsError("the store is closed")
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is not self._loop:
            raise EdgeJobsError(
                "the store was opened in another event loop; nothing was written"
                " (use one EdgeJobs per event loop)"
            )
        return running

    async def submit(self, op: WriteOp[T]) -> T:
        """Queue ``op`` for the next group commit and wait for that commit."""
        future: asyncio.Future[T] = self._check_loop().create_future()
        self._disarm()
        self._queue.put(_Pending(op, future))
        return await future

    def submit_nowait(self, op: WriteOp[T], *, first: bool = False) -> asyncio.Future[T]:
        """Queue ``op`` and return the future resolved after its commit.

        ``first``: resolve it one event-loop turn before the other operations of its
        transaction (the pool's claims: the handlers they start then run before the callers
        that submitted those jobs go on).
        """
        future: asyncio.Future[T] = self._check_loop().create_future()
        self._disarm()
        self._queue.put(_Pending(op, future, first))
        return future

    async def close(self) -> None:
        """Finish the queued operations, then stop the thread and close the connection."""
        if self._thread is None or self._closed:
            self._closed = True
            return
        self._closed = True
        self._disarm()
        if self._watch is not None:
            self._watch.close()
            self._watch = None
        self._queue.put(None)
        await asyncio.get_running_loop().run_in_executor(None, self._thread.join)
        self._thread = None

    # -- writer thread -------------------------------------------------------------------

    def _run(self) -> None:
        assert self._conn is not None
        conn = self._conn
        timeout = self._settle_timeout()
        rechecks: list[float] = []  # pauses before the next looks (RECHECK_AFTER_S)
        settled_at: float | None = None  # looking every BUSY_POLL_S until then
        stop = False
        while not stop:
            try:
                item = self._queue.get(timeout=timeout)
            except queue.Empty:
                changed = self._check_foreign(conn)
                recheck = rechecks.pop(0) if rechecks and not changed else None
                if changed:
                    rechecks = []
                if settled_at is not None:
                    left = settled_at - time.monotonic()
                    if left > 0:  # a recheck does not hold up the looks while settling
                        timeout = min(left, BUSY_POLL_S, recheck or BUSY_POLL_S)
                        continue
                    settled_at = None
                if recheck is not None:
                    timeout = recheck
                    continue
                if self._watch is None:
                    timeout = IDLE_POLL_S
                else:  # idle: let the watch tell us, and look once in a while anyway
                    timeout = WATCHED_POLL_S
                    if not self._idle:
                        self._idle = True
                        self._call_soon(self._arm)
                continue
            batch: list[_Pending[Any]] = []
            check = False
            while True:
                if item is None:
                    stop = True
                elif isinstance(item, _CheckForeign):
                    check = True
                else:
                    batch.append(item)
                if len(batch) >= MAX_BATCH_OPS:
                    break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            if batch:
                self._run_batch(conn, batch)
                # A commit that was on its way held the write lock our transaction took: it
                # is visible now, nothing is left to recheck. A recheck left over (up to
                # 0.25 s) had stood in for the settle timeout, and the watch stays unarmed
                # until then: another process's commits went unheard that long (a client's
                # wait(), a runner's pickup of a job submitted elsewhere: ~250 ms).
                rechecks = []
                timeout = self._settle_timeout()
                if self._watch is not None:  # unarmed while it settles: look meanwhile
                    settled_at = time.monotonic() + timeout
                    timeout = min(timeout, BUSY_POLL_S)
            if check:
                self._check_queued = False  # a write after this point queues a new check
                if self._check_foreign(conn) or batch:
                    rechecks = []
                else:  # told of a write not visible yet: a commit may be on its way
                    rechecks = list(RECHECK_AFTER_S)
                    timeout = rechecks.pop(0)
            elif batch and time.monotonic() - self._checked_foreign_at >= BUSY_POLL_S:
                self._check_foreign(conn)
        try:
            conn.execute("PRAGMA optimize")
        except sqlite3.Error:
            pass
        conn.close()
        self._conn = None

    def _settle_timeout(self) -> float:
        # After a batch: how long to wait for the next operation before looking once more.
        return IDLE_POLL_S if self._watch is None else SETTLE_S

    def _check_foreign(self, conn: sqlite3.Connection) -> bool:
        """Whether another connection committed since the last look (listeners are told)."""
        self._checked_foreign_at = time.monotonic()
        try:
            version = conn.execute("PRAGMA data_version").fetchone()[0]
        except sqlite3.Error:
            return False
        if version == self._data_version:
            return False
        self._data_version = version
        if self._foreign_listeners and self._loop is not None:
            self._call_soon(self._notify_foreign)
        return True

    def _notify_foreign(self) -> None:
        if not self._on_own_loop():
            return
        for listener in self._foreign_listeners:
            try:
                listener()
            except Exception:
                log.exception("foreign-change listener failed")

    def _run_batch(self, conn: sqlite3.Connection, batch: list[_Pending[Any]]) -> None:
        """Write ``batch`` in one transaction; resolve every operation's future.

        A full disk (or file size limit) that one operation meets rolls the whole transaction
        back in SQLite itself: a submission too big for the room left failed every other
        submission, claim and outcome written with it, which may well fit. Then the batch is
        written again without that operation (an operation of a merged group is first written
        alone, to find which); at most twice, so that a truly full disk fails the batch after
        three short tries, as the one try did before.
        """
        alone: set[int] = set()  # id() of the operations written alone, not merged
        for retries_left in range(FULL_DISK_RETRIES, -1, -1):
            culprit = self._try_batch(conn, batch, alone, retry=retries_left > 0)
            if culprit is None:
                return
            group, error = culprit
            if len(group) > 1:
                alone.update(id(pending) for pending in group)
            else:
                self._resolve_all_failed(group, error)
                batch = [pending for pending in batch if pending is not group[0]]
                if not batch:
                    return

    def _try_batch(
        self,
        conn: sqlite3.Connection,
        batch: list[_Pending[Any]],
        alone: set[int],
        *,
        retry: bool,
    ) -> tuple[list[_Pending[Any]], StorageFull] | None:
        """One try of :meth:`_run_batch`: None when its futures are resolved (committed, or
        failed as a whole); with ``retry``, the group of operations whose write met a full
        disk that took the transaction with it (nothing resolved then)."""
        tx = WriteTx()
        outcomes: list[tuple[bool, Any]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            self._resolve_all_failed(batch, translate(exc) or exc)
            return None
        groups = _write_groups(batch, alone)
        batch = [pending for group in groups for pending in group]  # outcomes follow this order
        current: list[_Pending[Any]] | None = None
        try:
            for group in groups:
                current = group
                first = group[0].op
                if len(group) > 1 and isinstance(first, MergeableOp):
                    ops = [pending.op for pending in group]
                    outcomes.extend(type(first).write_together(conn, tx, ops))
                else:
                    outcomes.append(run_in_savepoint(conn, tx, "op", partial(first, conn, tx)))
            current = None
            tx.flush(conn)
            self.commits += 1
            if self.fault_hook is not None:
                self.fault_hook("before_commit", self.commits)
            conn.execute("COMMIT")
        except BaseException as exc:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            error = translate(exc) if isinstance(exc, sqlite3.Error) else None
            if retry and current is not None and len(batch) > 1 and isinstance(error, StorageFull):
                return current, error
            self._resolve_all_failed(batch, error or exc)
            return None
        if self.fault_hook is not None:
            self.fault_hook("after_commit", self.commits)
        self._call_soon(self._after_commit, batch, outcomes, tx)
        return None

    def _call_soon(self, callback: Callable[..., None], *args: Any) -> None:
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # loop closed during shutdown
            self._loop.call_soon_threadsafe(callback, *args)

    def _after_commit(
        self, batch: list[_Pending[Any]], outcomes: list[tuple[bool, Any]], tx: WriteTx
    ) -> None:
        if self._on_own_loop():
            for listener in self._commit_listeners:
                try:
                    listener(tx)
                except Exception:
                    log.exception("commit listener failed")
        results = list(zip(batch, outcomes, strict=True))
        first = [result for result in results if result[0].first]
        rest = [result for result in results if not result[0].first]
        _resolve(first)
        if first and rest:
            asyncio.get_running_loop().call_soon(_resolve, rest)
        else:
            _resolve(rest)

    def _resolve_all_failed(self, batch: list[_Pending[Any]], exc: BaseException) -> None:
        if isinstance(exc, DatabaseBusy | StorageFull):
            self.last_failure = (time.monotonic(), exc)
        self._call_soon(_resolve, [(pending, (False, exc)) for pending in batch])


def _resolve(results: list[tuple[_Pending[Any], tuple[bool, Any]]]) -> None:
    for pending, (ok, value) in results:
        if pending.future.done():
            continue
        if ok:
            pending.future.set_result(value)
        else:
            pending.future.set_exception(value)


def _write_groups(
    batch: list[_Pending[Any]], alone: set[int] | frozenset[int] = frozenset()
) -> list[list[_Pending[Any]]]:
    """The batch as the groups it is written in: every operation alone, in its place, except
    the mergeable ones, which go together (per class) in the place of the first of them —
    unless named in ``alone`` (their ``id()``)."""
    groups: list[list[_Pending[Any]]] = []
    merged: dict[type, list[_Pending[Any]]] = {}
    for pending in batch:
        if not isinstance(pending.op, MergeableOp) or id(pending) in alone:
            groups.append([pending])
            continue
        group = merged.get(type(pending.op))
        if group is None:
            group = merged[type(pending.op)] = []
            groups.append(group)
        group.append(pending)
    return groups


class PointReader:
    """One read-only connection for point reads on the event-loop thread itself.

    A read through the pool costs two thread hops and, while the writer or a handler thread
    is busy, a wait for the interpreter lock: ~0.3-0.5 ms, against ~50 µs for reading one job
    by its id here. So the reads a caller waits on with nothing else to do (``get``, and the
    two reads of ``wait``) run on the calling thread. Bounded, because only single-row lookups
    by key come here (never a listing), and never blocking on a lock: the connection has no
    busy timeout, and a read SQLite refuses as busy (a rare moment of a WAL reset or recovery)
    reports "not done" so that the caller goes through the pool instead.
    """

    def __init__(self, path: Path, pragmas: Pragmas) -> None:
        self._path = path
        self._pragmas = pragmas
        self._conn: sqlite3.Connection | None = None

    def try_run(self, fn: Callable[[sqlite3.Connection], T]) -> tuple[bool, T | None]:
        """``(True, fn(conn))`` in one read snapshot, or ``(False, None)`` when SQLite was
        busy (run it elsewhere). ``fn``'s own exceptions propagate."""
        conn = self._conn
        try:
            if conn is None:
                # Opened at the first read, which may come when no descriptor is left.
                conn = connect(self._path, self._pragmas, readonly=True)
                conn.execute("PRAGMA busy_timeout = 0")
                self._conn = conn
            conn.execute("BEGIN")
            try:
                return True, fn(conn)
            finally:
                conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn is not None and conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            error = translate(exc)
            if isinstance(error, DatabaseBusy):
                return False, None
            raise (error or exc) from exc

    def close(self) -> None:
        """Close the connection (it is opened again by the next read)."""
        if self._conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()
            self._conn = None


class Reader:
    """A small pool of read-only connections; each read runs in one hop and one snapshot."""

    def __init__(self, path: Path, pragmas: Pragmas, threads: int = 2) -> None:
        self._path = path
        self._pragmas = pragmas
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self.size = threads
        """How many reads run at once (the others wait their turn)."""
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="edgejobs-read")

    def _connection(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = connect(self._path, self._pragmas, readonly=True)
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    def run_sync(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` in one read transaction on the calling thread's connection."""
        try:
            # Each pool thread opens its connection at its first read, which may come when no
            # descriptor is left: that is translated like any other error of the read.
            conn = self._connection()
            conn.execute("BEGIN")
            try:
                return fn(conn)
            finally:
                conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise (translate(exc) or exc) from exc

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` in one read transaction on a pool thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.run_sync, fn)

    def close(self) -> None:
        """Close every connection the pool opened."""
        self._executor.shutdown(wait=True)
        with self._lock:
            for conn in self._connections:
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
            self._connections.clear()
