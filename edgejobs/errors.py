"""The error hierarchy: one root with a stable ``code`` and the HTTP status it maps to.

Every error a user can cause is an :class:`EdgeJobsError`; the HTTP layer and the CLI turn it
into an error body or a one-line message without a traceback. Anything else is a bug.
"""

from __future__ import annotations

import errno
import os
import resource
import sqlite3
from typing import Any


class EdgeJobsError(Exception):
    """Root of every error edgejobs raises on purpose."""

    code: str = "error"
    http_status: int = 400

    def __init__(self, message: str, *, details: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class ConfigError(EdgeJobsError):
    """The configuration file or environment holds an unknown key, a wrong type or a bad value."""

    code = "config_error"
    http_status = 500


class ValidationError(EdgeJobsError):
    """A request is well-formed but its values are not acceptable (HTTP 422)."""

    code = "validation_error"
    http_status = 422


class UnknownJobType(ValidationError):
    """The job type is not registered in this process."""

    code = "unknown_job_type"


class UnknownParent(ValidationError):
    """A ``depends_on`` id does not exist in the caller's org (another org's id looks the same)."""

    code = "unknown_parent"


class PayloadTooLarge(EdgeJobsError):
    """Params, a result or a request body exceed their configured limit."""

    code = "payload_too_large"
    http_status = 413


class RequestTimeout(EdgeJobsError):
    """A request's body did not arrive in time (HTTP 408; the connection is closed)."""

    code = "request_timeout"
    http_status = 408


class NotFound(EdgeJobsError):
    """No such job in the caller's org (another org's job is reported exactly the same way)."""

    code = "not_found"
    http_status = 404


class Conflict(EdgeJobsError):
    """The transition is not allowed from the job's current status."""

    code = "conflict"
    http_status = 409


class RateLimited(EdgeJobsError):
    """The org submitted this job type faster than its ``rate_limit`` allows."""

    code = "rate_limited"
    http_status = 429

    def __init__(self, message: str, *, retry_after_s: int, details: Any = None) -> None:
        super().__init__(message, details=details)
        self.retry_after_s = retry_after_s


class DatabaseBusy(EdgeJobsError):
    """The database stayed locked by another process past the busy timeout."""

    code = "database_busy"
    http_status = 503
    retry_after_s = 1


class DatabaseReadOnly(DatabaseBusy):
    """The database cannot be written by this process: its file or folder is read-only (file
    permissions, an immutable flag, a read-only mount) or the file was moved away while open.

    A :class:`DatabaseBusy` with its own code: like a held lock it refuses writes while reads
    keep working, and the runner keeps what it could not write and retries it.
    """

    code = "database_read_only"
    retry_after_s = 5


class StorageFull(EdgeJobsError):
    """The disk (or the configured page limit) is full; nothing was written."""

    code = "storage_full"
    http_status = 507


class OutOfResources(EdgeJobsError):
    """The process ran out of file descriptors, threads or memory for this request; what it
    already holds keeps working and the request may be tried again once some are free."""

    code = "out_of_resources"
    http_status = 503
    retry_after_s = 5

    def __init__(self, message: str, *, what: str = "resources", details: Any = None) -> None:
        super().__init__(message, details=details)
        self.what = what
        """What ran out: ``"file descriptors (open-file limit 1024)"``, ``"memory"``, ..."""


_NO_DESCRIPTOR = (errno.EMFILE, errno.ENFILE)


def _descriptors_exhausted() -> bool:
    """Whether this process cannot open one more file now (its open-file limit, or the
    system's, is reached)."""
    try:
        fd = os.open(os.devnull, os.O_RDONLY)
    except OSError as exc:
        return exc.errno in _NO_DESCRIPTOR
    os.close(fd)
    return False


def _descriptors() -> str:
    return f"file descriptors (open-file limit {resource.getrlimit(resource.RLIMIT_NOFILE)[0]})"


def _shortage(exc: BaseException) -> str | None:
    """What ran out, when ``exc`` (alone, not its cause) says a resource of the process did."""
    if isinstance(exc, OSError) and exc.errno in _NO_DESCRIPTOR:
        return _descriptors()
    if isinstance(exc, MemoryError) or (isinstance(exc, OSError) and exc.errno == errno.ENOMEM):
        return "memory"
    if isinstance(exc, RuntimeError) and "can't start new thread" in str(exc):
        return "threads (no new thread can be started)"
    # SQLite says only "unable to open database file" when it cannot open the database, its
    # WAL or a temporary file; which is it, a missing file or no descriptor left, is asked of
    # the system (only on this error path).
    if (
        isinstance(exc, sqlite3.Error)
        and getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_CANTOPEN
        and _descriptors_exhausted()
    ):
        return _descriptors()
    return None


def out_of_resources(exc: BaseException) -> OutOfResources | None:
    """An :class:`OutOfResources` when ``exc`` (or what it was raised from) means the process
    ran out of file descriptors, threads or memory; None for any other error.

    These are no bugs and no bad input: the request may work once the process holds fewer
    connections or threads, so they are answered 503 with ``Retry-After``, not 500.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OutOfResources):
            return current
        what = _shortage(current)
        if what is not None:
            # The cause is named, never its text: an OSError's names a file of the server.
            return OutOfResources(f"the server is out of {what}; try again shortly", what=what)
        current = current.__cause__
    return None


class Overloaded(EdgeJobsError):
    """The server has as much of this kind of work waiting as it keeps (large request bodies
    waiting to be parsed): try again shortly."""

    code = "overloaded"
    http_status = 503
    retry_after_s = 1


class ShuttingDown(EdgeJobsError):
    """The runner is stopping and accepts no new work through this path."""

    code = "shutting_down"
    http_status = 503
    retry_after_s = 5


class RunnerAlreadyActive(EdgeJobsError):
    """Another runner process holds this database file."""

    code = "runner_active"
    http_status = 409


class StoreTooOld(EdgeJobsError):
    """The linked SQLite library lacks features edgejobs needs (RETURNING: 3.35+)."""

    code = "sqlite_too_old"
    http_status = 500


class SchemaTooNew(EdgeJobsError):
    """The database was written by a newer edgejobs (a higher schema version than this one
    knows): it is left untouched; upgrade edgejobs to open it."""

    code = "schema_too_new"
    http_status = 500


class PermanentError(Exception):
    """Raise from a handler to fail the job at once, without retries.

    This is not an :class:`EdgeJobsError`: it is raised by user code, not by edgejobs.
    """
