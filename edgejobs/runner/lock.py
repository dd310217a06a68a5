"""One runner per database file, enforced with an advisory lock the kernel drops on death."""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import stat
import time
from pathlib import Path

from edgejobs.errors import RunnerAlreadyActive

_HELD_HERE: set[Path] = set()
"""The lock files this process holds (a second ``flock`` of its own would fail against them)."""


def lock_path(database: Path) -> Path:
    """``<database>.runner.lock``, named after the file the path leads to: a second runner
    reaching it through a symlink (or another relative path) must meet the same lock."""
    real = database.resolve()
    return real.with_name(real.name + ".runner.lock")


@dataclasses.dataclass(frozen=True, slots=True)
class Holder:
    """What a runner's lock file says of the runner holding it."""

    pid: str
    """Its pid as it wrote it, or "unknown"."""
    schema_version: int | None
    """The schema version it runs (it migrates the file to that at its start); None for a
    runner of a version that did not record it (an older edgejobs)."""


def _read_holder(fd: int) -> Holder:
    """The lock file's record: ``"<pid> <schema version>"``, or a bare pid (older runners)."""
    fields = os.pread(fd, 64, 0).decode(errors="replace").split()
    pid = fields[0] if fields else "unknown"
    version = int(fields[1]) if len(fields) > 1 and fields[1].isdigit() else None
    return Holder(pid=pid, schema_version=version)


def runner_elsewhere(database: Path) -> str | None:
    """The pid (as the lock file records it, or "unknown") of a runner in ANOTHER process
    holding ``database``'s lock; None when there is none (or this process holds it).
    :func:`holder_elsewhere` says which schema version that runner runs, too.

    Looked at without creating the lock file, and without taking the lock for longer than the
    look: a shared lock that cannot be had means an exclusive one is held.

    Raises :class:`PermissionError` when this user may not open the lock file (it is
    ``0600``, its runner's user's): whether a runner is there cannot be told, and each caller
    decides what that means for it (refusing an upgrade, keeping a hint to itself).
    """
    holder = holder_elsewhere(database)
    return None if holder is None else holder.pid


def holder_elsewhere(database: Path) -> Holder | None:
    """:func:`runner_elsewhere`, with the schema version the runner recorded."""
    path = lock_path(database)
    if path in _HELD_HERE:
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except PermissionError:
        raise  # not "no runner": a group member of a shared database lands here
    except OSError:  # no lock file: no runner ever ran here
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _read_holder(fd)
    except OSError:
        return None
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


_ACQUIRE_TRIES = 20
_ACQUIRE_PAUSE_S = 0.01


def _lock_soon(fd: int) -> None:
    """Take the exclusive lock, trying for ~0.2 s: :func:`runner_elsewhere` (another process's
    look, a CLI's) holds a shared lock for an instant, and a runner starting right then was
    refused as if a runner were there. A runner that is there holds it for good."""
    for _ in range(_ACQUIRE_TRIES - 1):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            time.sleep(_ACQUIRE_PAUSE_S)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


class RunnerLock:
    """An exclusive ``flock`` on ``<database>.runner.lock``.

    The kernel releases it when the process dies, even by SIGKILL, so a crashed runner never
    blocks the next one; while a runner is alive, a second one fails at once.
    """

    def __init__(self, database: Path) -> None:
        self.path = lock_path(database)
        self._fd: int | None = None

    def acquire(self, schema_version: int | None = None) -> None:
        """Take the lock or raise :class:`RunnerAlreadyActive` naming the holder's pid (the
        database's folder is made if missing, as opening the database would).

        ``schema_version`` (the one this runner migrates the file to) is recorded beside the
        pid: a command of the same version that opens the file while this runner migrates it
        waits for the migration instead of refusing it as an older runner's file."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        _drop_read_only_access(fd)
        try:
            _lock_soon(fd)
        except BlockingIOError:
            holder = _read_holder(fd).pid
            os.close(fd)
            raise RunnerAlreadyActive(
                f"another edgejobs runner (pid {holder}) is already running on this database;"
                " stop it first, or use another database file"
            ) from None
        os.ftruncate(fd, 0)
        record = str(os.getpid()) if schema_version is None else f"{os.getpid()} {schema_version}"
        os.pwrite(fd, record.encode(), 0)
        self._fd = fd
        _HELD_HERE.add(self.path)

    def release(self) -> None:
        """Drop the lock."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)
            self._fd = None
            _HELD_HERE.discard(self.path)


def _drop_read_only_access(fd: int) -> None:
    """Take read permission from the group and others where they lack write permission.

    ``flock`` needs no write access: anybody who can open the file, even read-only, can take
    the lock and keep every runner from starting. A runner opens it read-write, so read
    permission alone serves nobody; a lock file made ``0644`` by an older edgejobs (or a
    umask) is narrowed, while one shared read-write with a group on purpose stays as it is.
    """
    current = stat.S_IMODE(os.fstat(fd).st_mode)
    wanted = current
    for read, write in ((stat.S_IRGRP, stat.S_IWGRP), (stat.S_IROTH, stat.S_IWOTH)):
        if current & read and not current & write:
            wanted &= ~read
    if wanted != current:
        with contextlib.suppress(OSError):  # not the file's owner: leave it to its owner
            os.fchmod(fd, wanted)
