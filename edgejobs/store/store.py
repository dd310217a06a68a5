"""The store facade: opens the file, migrates it, and owns the writer and the readers."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from edgejobs.errors import EdgeJobsError, RunnerAlreadyActive
from edgejobs.runner.lock import holder_elsewhere, lock_path
from edgejobs.store import migrations
from edgejobs.store.db import (
    PointReader,
    Pragmas,
    Reader,
    WriteOp,
    Writer,
    check_sqlite_version,
    connect,
)

T = TypeVar("T")

UPGRADE_WAIT_S = 60.0
"""How long an open waits for a runner of this same version to finish migrating the file (a
runner migrates at its start: a command run just then saw a schema version in between)."""
UPGRADE_POLL_S = 0.05


class Store:
    """A database file with one group-committing writer and a pool of readers.

    ``write(op)`` runs ``op(conn, tx)`` in the next group commit; ``read(fn)`` runs ``fn(conn)``
    in one read snapshot. All SQL lives in the modules of this package as such functions.
    """

    def __init__(
        self, path: str | Path, pragmas: Pragmas | None = None, *, read_threads: int = 2
    ) -> None:
        # Absolute from the start: connections are also opened later (a reader thread's first
        # read, every checkpoint), and a sync handler runs in this process, where it may
        # change the working directory. A relative path then opened, or created, another
        # database in the handler's directory: listings failed and the WAL was never
        # checkpointed.
        self.path = Path(path).absolute()
        self.pragmas = pragmas or Pragmas()
        self.writer = Writer(self.path, self.pragmas)
        self.reader = Reader(self.path, self.pragmas, threads=read_threads)
        self.point_reader = PointReader(self.path, self.pragmas)
        self._opened = False
        self._closed = False

    def prepare(self) -> int:
        """Check SQLite, create the file, set WAL and apply migrations (synchronous, idempotent)."""
        check_sqlite_version()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = connect(self.path, self.pragmas, create=True)
        try:
            version = migrations.current_version(conn)
            if 0 < version < migrations.latest_version():
                self._refuse_upgrade_under_a_runner(conn, version)
            if version == 0:
                # Only possible before the first table exists: lets retention give pages back.
                conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
                # connect() switched to WAL, which already wrote the file header; the setting
                # only reaches the header through a VACUUM (instant on a file without tables).
                if conn.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchone() is None:
                    conn.execute("VACUUM")
            return migrations.migrate(conn)
        finally:
            conn.close()

    def _refuse_upgrade_under_a_runner(self, conn: sqlite3.Connection, version: int) -> None:
        """An older edgejobs still running on this file (a package upgraded, its service not
        yet restarted) would go on writing its old formats into the migrated file: events
        no stream could read, job counts left behind. Any first open by the new version, a
        CLI ``stats`` say, had migrated the file under it."""
        try:
            holder = holder_elsewhere(self.path)
            if holder is not None and holder.schema_version == migrations.latest_version():
                # A runner of this very version, migrating the file at its start (the first
                # open of a fresh file included): wait for it rather than refuse it.
                if self._still_upgrading_after_a_wait(conn):
                    raise RunnerAlreadyActive(
                        f"{self.path} is being upgraded to schema version"
                        f" {migrations.latest_version()} by its runner (pid {holder.pid}),"
                        f" still after {UPGRADE_WAIT_S:g} s: try again once it is done"
                    )
                return
        except PermissionError:
            raise RunnerAlreadyActive(
                f"{self.path} has schema version {version} and this edgejobs would upgrade it"
                f" to {migrations.latest_version()}, but this user may not read"
                f" {lock_path(self.path)} to tell whether a runner is using it: upgrade it as"
                " the user the runner runs as (docs/operations.md, Upgrading)"
            ) from None
        if holder is not None:
            raise RunnerAlreadyActive(
                f"{self.path} has schema version {version} and this edgejobs would upgrade it"
                f" to {migrations.latest_version()}, but a runner (pid {holder.pid}) is using"
                " it: stop that runner first, back the file up, then start this version"
                " (docs/operations.md, Upgrading)"
            )

    def _still_upgrading_after_a_wait(self, conn: sqlite3.Connection) -> bool:
        """Wait (in this worker thread, reading through ``conn``) until the file is at the
        latest schema version or its runner is gone (False: nothing to refuse, the migration
        that follows finishes the job or finds nothing to do), for at most
        :data:`UPGRADE_WAIT_S`; True if neither happened."""
        deadline = time.monotonic() + UPGRADE_WAIT_S
        while True:
            if migrations.current_version(conn) >= migrations.latest_version():
                return False
            if holder_elsewhere(self.path) is None:
                return False
            if time.monotonic() >= deadline:
                return True
            time.sleep(UPGRADE_POLL_S)

    async def open(self) -> None:
        """Prepare the file and start the writer thread.

        Open already, in an event loop that has since ended or stopped: move to the running
        one (:meth:`Writer.restart <edgejobs.store.db.Writer.restart>`).
        """
        loop = asyncio.get_running_loop()
        if self._opened:
            if self.writer.loop is not loop:
                await self.writer.restart(loop)
                # Its connection is bound to no loop, but it is used on the loop's thread and
                # this loop may run on another one: the next point read opens a new one.
                self.point_reader.close()
            return
        if self._closed:
            # close() shut the reader pool down for good.
            raise EdgeJobsError("the store is closed")
        await loop.run_in_executor(None, self.prepare)
        self.writer.start(loop)
        self._opened = True

    async def close(self) -> None:
        """Flush queued writes and close every connection."""
        if not self._opened:
            return
        self._opened = False
        self._closed = True
        await self.writer.close()
        self.point_reader.close()
        await asyncio.get_running_loop().run_in_executor(None, self.reader.close)

    @property
    def is_open(self) -> bool:
        """Whether ``open`` has run and ``close`` has not."""
        return self._opened

    def _check_open(self) -> None:
        """Raise unless :meth:`open` has run and :meth:`close` has not.

        A read connection is opened at a reader's first read: before ``open`` that created
        an empty database file (and then failed with "not in WAL mode"); after ``close`` it
        failed with "cannot schedule new futures after shutdown".
        """
        if self._opened:
            return
        if self._closed:
            raise EdgeJobsError("the store is closed")
        raise EdgeJobsError(
            f"the database {self.path} is not open: call `await ej.open()` (or use"
            " `async with ej`) first"
        )

    async def write(self, op: WriteOp[T]) -> T:
        """Run ``op(conn, tx)`` in the next group commit; return its result after COMMIT.

        :class:`~edgejobs.errors.EdgeJobsError` when the store is not open.
        """
        self._check_open()
        return await self.writer.submit(op)

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(conn)`` in one read transaction on a reader thread.

        :class:`~edgejobs.errors.EdgeJobsError` when the store is not open (nothing is
        created on disk).
        """
        self._check_open()
        return await self.reader.run(fn)

    async def read_point(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(conn)``, a lookup of one row by its key, in one read transaction on the
        calling thread (see :class:`~edgejobs.store.db.PointReader`); through a reader
        thread when SQLite is busy there."""
        self._check_open()
        done, value = self.point_reader.try_run(fn)
        if done:
            return value  # type: ignore[return-value]  # fn's result, not the placeholder
        return await self.reader.run(fn)
