"""Request and response models (pydantic): the validation of every body and the source of
``/api/v1/openapi.json``.

Request bodies forbid unknown fields and are validated strictly (no ``"5"`` for 5, no
``1`` for ``true``), so a client can never set what the server owns (``status``, ``attempts``,
``id``...) and a typo is an error instead of a silently ignored field.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema

from edgejobs.app import MAX_DEPENDS_ON
from edgejobs.models import MAX_DELAY_S, RUN_AT_RANGE, run_at_in_range

PriorityName = Literal["critical", "high", "normal", "low"]
StatusName = Literal[
    "blocked",
    "scheduled",
    "queued",
    "running",
    "retrying",
    "completed",
    "failed",
    "timed_out",
    "dead_letter",
    "canceled",
]
RoleName = Literal["viewer", "operator", "admin"]


def _aware_time(value: object) -> datetime:
    if not isinstance(value, str):
        raise ValueError("expected an ISO 8601 time string with a UTC offset")
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValueError("expected an ISO 8601 time such as 2026-11-29T10:00:00Z") from None
    if parsed.tzinfo is None:
        raise ValueError("the time needs a UTC offset (e.g. 2026-11-29T10:00:00Z)")
    # Checked before converting: e.g. 0001-01-01T00:00+14:00 is before year 1 in UTC.
    if not run_at_in_range(parsed):
        raise ValueError(f"the time must be {RUN_AT_RANGE}")
    return parsed.astimezone(UTC)


AwareTime = Annotated[
    datetime,
    BeforeValidator(_aware_time),
    WithJsonSchema({"type": "string", "format": "date-time"}),
]
"""An ISO 8601 time with an offset (strings only: no unix numbers, no naive times), from 1970
to year 9999 like :func:`edgejobs.app.parse_time_ms`."""

JobId = Annotated[str, Field(min_length=1, max_length=64)]
JsonObject = dict[str, Any]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class SubmitJob(_Request):
    """``POST /api/v1/jobs``: one job."""

    job_type: str = Field(min_length=1, max_length=128, description="a registered job type")
    params: JsonObject = Field(default_factory=dict, description="JSON object for the handler")
    priority: PriorityName | None = Field(default=None, description="default: the job type's")
    depends_on: list[JobId] = Field(
        default_factory=list,
        max_length=MAX_DEPENDS_ON,
        description="ids of parent jobs of the same org; the job waits until all completed",
    )
    run_at: AwareTime | None = Field(default=None, description="run not before this time")
    delay_s: float | None = Field(
        default=None, ge=0, le=MAX_DELAY_S, description="run not before now + delay_s"
    )
    dedup: bool | None = Field(default=None, description="default: the job type's setting")
    dedup_key: str | None = Field(
        default=None, min_length=1, max_length=512, description="deduplicate by this, not params"
    )
    org: str | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        description="must be the token's org; a system token names the org here",
    )


class BatchJob(SubmitJob):
    """One job of a batch: ``depends_on`` may also name an earlier job of the batch by index."""

    depends_on: list[JobId | Annotated[int, Field(ge=0)]] = Field(  # type: ignore[assignment]
        default_factory=list,
        max_length=MAX_DEPENDS_ON,
        description="job ids, or indexes of earlier jobs of this batch",
    )


class SubmitBatch(_Request):
    """``POST /api/v1/jobs/batch``: all the jobs are created, or none."""

    jobs: list[BatchJob] = Field(min_length=1, description="at most [limits] max_batch jobs")


class CancelJob(_Request):
    """``POST /api/v1/jobs/{id}/cancel`` (the body is optional)."""

    reason: str | None = Field(default=None, min_length=1, max_length=500)


class RetryJob(_Request):
    """``POST /api/v1/jobs/{id}/retry`` (the body is optional and has no fields)."""


class EmptyBody(_Request):
    """The body of a write route that takes no fields (pause, resume, logout): optional, and
    when sent it must be well-formed JSON ``{}`` — a malformed body is refused with 400 before
    anything changes, as on every other write route."""


class Login(_Request):
    """``POST /login``."""

    token: str = Field(min_length=1, max_length=256)


# -- responses -----------------------------------------------------------------------------------


class _Response(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorInfo(_Response):
    """What went wrong."""

    code: str
    message: str
    details: Any = None


class ErrorBody(_Response):
    """Every error response."""

    error: ErrorInfo


class JobErrorOut(_Response):
    """A job's last error."""

    type: str
    message: str
    traceback: str | None


class JobOut(_Response):
    """A job (SPEC §6). Times are ISO 8601 UTC with ``Z``."""

    id: str
    org: str
    job_type: str
    status: StatusName
    priority: PriorityName
    params: JsonObject
    result: Any
    error: JobErrorOut | None
    progress: float
    progress_message: str | None
    attempts: int
    max_retries: int
    depends_on: list[str]
    dependents: list[str]
    run_at: str | None
    next_retry_at: str | None
    created_at: str
    started_at: str | None
    finished_at: str | None
    updated_at: str
    cancel_reason: str | None
    eta_s: float | None
    deduplicated: bool


class JobList(_Response):
    """A page of jobs, newest first."""

    items: list[JobOut]
    next_cursor: str | None


class JobBatchOut(_Response):
    """The jobs of a batch, in the order submitted."""

    jobs: list[JobOut]


class AttemptOut(_Response):
    """One execution of a job."""

    job_id: str
    attempt: int
    started_at: str
    finished_at: str | None
    outcome: Literal["completed", "failed", "timed_out", "canceled", "lost"] | None
    error: JobErrorOut | None


class AttemptList(_Response):
    """A job's execution log, oldest first."""

    items: list[AttemptOut]


class Whoami(_Response):
    """The caller: ``org`` is ``"*"`` for a system token."""

    org: str
    role: RoleName
    token_id: str


class LoginOut(_Response):
    """A new dashboard session."""

    csrf_token: str


class LogoutOut(_Response):
    """The session has ended."""

    ok: bool


class Stats(_Response):
    """Counts by status, by job type (and by org for a system token)."""

    by_status: dict[str, int]
    by_type: dict[str, dict[str, int]]
    by_org: dict[str, dict[str, int]] | None = None


class MinuteOut(_Response):
    """One minute of the dashboard's charts."""

    t: str
    completed: int
    failed: int
    queue_depth: int


class Timeseries(_Response):
    """The last hour, one entry per minute, oldest first."""

    minutes: list[MinuteOut]
    last_event_id: int = Field(
        description="the newest event the series includes (read with it): a live view adds "
        "only the events after it"
    )


class JobTypeOut(_Response):
    """A job type: its effective policy (runtime overrides applied), the overrides alone,
    and whether it is paused."""

    name: str
    policy: JsonObject
    overrides: JsonObject
    paused: bool
    registered: bool = Field(description="whether this process has the handler")


class JobTypeList(_Response):
    """Every job type this process or the database knows."""

    items: list[JobTypeOut]


class Health(BaseModel):
    """Liveness and the database check (other checks may add fields)."""

    model_config = ConfigDict(extra="allow")

    status: Literal["ok", "unavailable"]
    database: str
    runner: str
    details: JsonObject = Field(default_factory=dict)
