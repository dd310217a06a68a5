"""Domain values shared by the store, the runner and the API: statuses, priorities, jobs."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any


class Status(StrEnum):
    """A job's lifecycle status (SPEC §2); the values are the API spelling."""

    BLOCKED = "blocked"
    SCHEDULED = "scheduled"
    QUEUED = "queued"
    RUNNING = "running"
    RETRYING = "retrying"
    COMPLETED = "completed"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    DEAD_LETTER = "dead_letter"
    CANCELED = "canceled"


MAX_DELAY_S = 10 * 365 * 86_400
"""The longest delay (a job's ``delay_s``, a retry's backoff) in seconds: ten years, a bound
that keeps every due time well inside SQLite's 64-bit integers."""

MAX_RETRIES = 1_000_000
"""The most automatic retries a job type may allow (``max_retries``): far beyond any real
policy, and it keeps attempt counts inside SQLite's 64-bit integers."""

MAX_RETENTION_DAYS = 36_500
"""The longest retention (``[retention] days``, ``edgejobs prune --older-than-days``): 100 years."""

MAX_PAGE = 500
"""The most jobs one listing page holds (``limit`` of ``GET /api/v1/jobs`` and of
:meth:`edgejobs.EdgeJobs.list_jobs`); longer listings follow the cursor."""

LATEST_RUN_AT_S = 253_402_300_799
"""The latest ``run_at`` in unix seconds (9999-12-31T23:59:59Z, as far as a datetime goes)."""

RUN_AT_RANGE = "from 1970-01-01T00:00:00Z to 9999-12-31T23:59:59Z"
"""The ``run_at`` times accepted, as said in error messages."""

_EARLIEST_RUN_AT = datetime(1970, 1, 1, tzinfo=UTC)
_LATEST_RUN_AT = datetime.fromtimestamp(LATEST_RUN_AT_S, tz=UTC)


def run_at_in_range(value: datetime) -> bool:
    """Whether an aware datetime is an acceptable ``run_at``: within :data:`RUN_AT_RANGE`, the
    same bounds as unix seconds from 0 to :data:`LATEST_RUN_AT_S`."""
    # Compared as datetimes, not as rounded milliseconds: 1969-12-31T23:59:59.9999Z is before.
    return _EARLIEST_RUN_AT <= value <= _LATEST_RUN_AT


TERMINAL: frozenset[Status] = frozenset(
    {Status.COMPLETED, Status.FAILED, Status.TIMED_OUT, Status.DEAD_LETTER, Status.CANCELED}
)
"""Statuses a job never leaves on its own (a manual retry may requeue the unsuccessful ones)."""

UNSUCCESSFUL: frozenset[Status] = TERMINAL - {Status.COMPLETED}
"""Terminal statuses that cascade-cancel children and allow a manual retry."""

ALLOWED_TRANSITIONS: dict[Status, frozenset[Status]] = {
    Status.BLOCKED: frozenset({Status.QUEUED, Status.SCHEDULED, Status.CANCELED}),
    Status.SCHEDULED: frozenset({Status.QUEUED, Status.CANCELED}),
    Status.QUEUED: frozenset({Status.RUNNING, Status.CANCELED}),
    Status.RUNNING: frozenset(
        {
            Status.COMPLETED,
            Status.FAILED,
            Status.TIMED_OUT,
            Status.DEAD_LETTER,
            Status.RETRYING,
            Status.CANCELED,
            Status.QUEUED,  # a graceful shutdown requeues an interrupted attempt
        }
    ),
    Status.RETRYING: frozenset({Status.QUEUED, Status.CANCELED}),
    Status.COMPLETED: frozenset(),
    Status.FAILED: frozenset({Status.QUEUED}),
    Status.TIMED_OUT: frozenset({Status.QUEUED}),
    Status.DEAD_LETTER: frozenset({Status.QUEUED}),
    # A manual retry of a child canceled while a parent is still pending waits for it again.
    Status.CANCELED: frozenset({Status.QUEUED, Status.BLOCKED}),
}
"""The one state machine. Every write in the store checks its move against this table."""


def is_allowed(current: Status, target: Status) -> bool:
    """Whether the state machine allows moving a job from ``current`` to ``target``."""
    return target in ALLOWED_TRANSITIONS[current]


class Priority(StrEnum):
    """Job priority; ``critical`` runs first."""

    CRITICAL = "critical"
    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"

    @property
    def rank(self) -> int:
        """Sort key stored in the database: lower runs earlier."""
        return _PRIORITY_RANK[self]

    @classmethod
    def from_rank(cls, rank: int) -> Priority:
        """The priority stored as ``rank``."""
        return _RANK_PRIORITY[rank]


_PRIORITY_RANK = {Priority.CRITICAL: 0, Priority.HIGH: 1, Priority.NORMAL: 2, Priority.LOW: 3}
_RANK_PRIORITY = {rank: priority for priority, rank in _PRIORITY_RANK.items()}


class Outcome(StrEnum):
    """How one attempt ended."""

    COMPLETED = "completed"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    CANCELED = "canceled"
    LOST = "lost"


_iso_seconds: dict[int, str] = {}


def iso_ms(ms: int | None) -> str | None:
    """Integer unix milliseconds as ISO 8601 UTC with ``Z`` (the API's time format)."""
    if ms is None:
        return None
    second, millis = divmod(ms, 1000)
    prefix = _iso_seconds.get(second)
    if prefix is None:
        # Formatting is the costly part and a burst of jobs shares a few seconds: cache them.
        if len(_iso_seconds) > 4096:
            _iso_seconds.clear()
        # isoformat, not strftime("%Y"): glibc does not pad a year before 1000 to four digits,
        # and a row stored before run_at was bounded may hold one.
        prefix = datetime.fromtimestamp(second, tz=UTC).replace(tzinfo=None).isoformat()
        _iso_seconds[second] = prefix
    return f"{prefix}.{millis:03d}Z"


@dataclasses.dataclass(frozen=True, slots=True)
class JobError:
    """The last error of a job or the error of one attempt."""

    type: str
    message: str
    traceback: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The API shape ``{"type", "message", "traceback"}``."""
        return {"type": self.type, "message": self.message, "traceback": self.traceback}


@dataclasses.dataclass(frozen=True, slots=True)
class Job:
    """A snapshot of one job as stored. Times are unix milliseconds."""

    id: str
    org: str
    job_type: str
    status: Status
    priority: Priority
    params: dict[str, Any]
    result: Any
    error: JobError | None
    progress: float
    progress_message: str | None
    attempts: int
    max_retries: int
    depends_on: tuple[str, ...]
    dependents: tuple[str, ...]
    run_at: int | None
    next_retry_at: int | None
    created_at: int
    started_at: int | None
    finished_at: int | None
    updated_at: int
    cancel_reason: str | None
    eta_s: float | None = None
    deduplicated: bool = False

    @property
    def is_terminal(self) -> bool:
        """Whether the job has reached a terminal status."""
        return self.status in TERMINAL

    def to_dict(self) -> dict[str, Any]:
        """The API's job object (SPEC §6)."""
        return {
            "id": self.id,
            "org": self.org,
            "job_type": self.job_type,
            "status": self.status.value,
            "priority": self.priority.value,
            "params": self.params,
            "result": self.result,
            "error": self.error.to_dict() if self.error else None,
            "progress": self.progress,
            "progress_message": self.progress_message,
            "attempts": self.attempts,
            "max_retries": self.max_retries,
            "depends_on": list(self.depends_on),
            "dependents": list(self.dependents),
            "run_at": iso_ms(self.run_at),
            "next_retry_at": iso_ms(self.next_retry_at),
            "created_at": iso_ms(self.created_at),
            "started_at": iso_ms(self.started_at),
            "finished_at": iso_ms(self.finished_at),
            "updated_at": iso_ms(self.updated_at),
            "cancel_reason": self.cancel_reason,
            "eta_s": self.eta_s,
            "deduplicated": self.deduplicated,
        }


@dataclasses.dataclass(frozen=True, slots=True)
class Attempt:
    """One execution of a job (the execution log)."""

    job_id: str
    number: int
    started_at: int
    finished_at: int | None
    outcome: Outcome | None
    error: JobError | None

    def to_dict(self) -> dict[str, Any]:
        """The API shape of one attempt."""
        return {
            "job_id": self.job_id,
            "attempt": self.number,
            "started_at": iso_ms(self.started_at),
            "finished_at": iso_ms(self.finished_at),
            "outcome": self.outcome.value if self.outcome else None,
            "error": self.error.to_dict() if self.error else None,
        }


def is_valid_unicode(text: str) -> bool:
    """Whether SQLite can store ``text``: False when it holds a lone surrogate, what Python
    gives for a file name that is not UTF-8 (``os.listdir``, ``os.fsdecode``)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def storable_text(text: str) -> str:
    """``text`` as text SQLite can store: a lone surrogate (see :func:`is_valid_unicode`) is
    written as its escape (``\\udce9``) instead of making the whole outcome unwritable."""
    if is_valid_unicode(text):
        return text
    return text.encode("utf-8", "backslashreplace").decode("utf-8")
