"""Job routes: submit (one or a batch), list, show, attempts, cancel, retry.

Every store call passes the caller's org (None only for system tokens), so another org's job
is indistinguishable from a job that does not exist: the same 404 body either way.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import re
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response

from edgejobs.api.auth import Principal, acting_org, app_of, authenticate
from edgejobs.api.body import read_model
from edgejobs.api.errors import ApiResponse, BadRequest, InvalidCursor
from edgejobs.api.openapi import Operation, Param
from edgejobs.api.schemas import (
    AttemptList,
    CancelJob,
    JobBatchOut,
    JobList,
    JobOut,
    RetryJob,
    SubmitBatch,
    SubmitJob,
)
from edgejobs.app import JobSpec
from edgejobs.errors import NotFound, PayloadTooLarge, ValidationError
from edgejobs.ids import looks_like_job_id
from edgejobs.models import MAX_PAGE, Priority, Status

if TYPE_CHECKING:
    from edgejobs.app import EdgeJobs

DEFAULT_LIMIT = 50
MAX_QUERY_TEXT = 200

_STATUS_SET = frozenset(status.value for status in Status)
_PRIORITY_SET = frozenset(priority.value for priority in Priority)
_CURSOR = re.compile(r"c1\.([1-9][0-9]{0,17})\.([0-9a-f]{16})")
_B64URL = re.compile(r"[A-Za-z0-9_-]{1,128}")
_DISPLAY_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


# -- helpers ------------------------------------------------------------------------------------


def _job_id(request: Request) -> str:
    """The path's job id (see :func:`checked_job_id`)."""
    return checked_job_id(request.path_params["id"])


def checked_job_id(job_id: str) -> str:
    """A job id from a request; one that cannot exist is reported exactly like an unknown one,
    and named in the message only when it is short, plain text."""
    if not looks_like_job_id(job_id):
        shown = job_id if _DISPLAY_ID.fullmatch(job_id) else "with this id"
        raise NotFound(f"no job {shown}")
    return job_id


def _submit_org(principal: Principal, requested: str | None) -> str:
    org = acting_org(principal, requested)
    if org is None:
        raise ValidationError("a system token must name the job's org in the field 'org'")
    return org


def _spec(body: SubmitJob, org: str) -> JobSpec:
    return JobSpec(
        job_type=body.job_type,
        org=org,
        params=body.params,
        priority=body.priority,
        depends_on=tuple(body.depends_on),
        run_at=body.run_at,
        delay_s=body.delay_s,
        dedup=body.dedup,
        dedup_key=body.dedup_key,
    )


# -- cursor ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class ListQuery:
    """The validated query string of ``GET /api/v1/jobs``."""

    org: str | None
    statuses: tuple[str, ...] = ()
    job_type: str | None = None
    priority: str | None = None
    created_after: int | None = None
    created_before: int | None = None
    text: str | None = None
    limit: int = DEFAULT_LIMIT
    cursor: str | None = None

    def fingerprint(self) -> str:
        """What a cursor is bound to: the org scope and every filter."""
        parts = [
            self.org or "*",
            ",".join(sorted(self.statuses)),
            self.job_type or "",
            self.priority or "",
            str(self.created_after),
            str(self.created_before),
            self.text or "",
        ]
        digest = hashlib.sha256("\x00".join(parts).encode("utf-8", "replace"))
        return digest.hexdigest()[:16]


def encode_cursor(seq: int, query: ListQuery) -> str:
    """An opaque cursor: the last seq shown, bound to the query it came from."""
    text = f"c1.{seq}.{query.fingerprint()}"
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


_INVALID_CURSOR = "invalid cursor: start again from the first page"


def decode_cursor(cursor: str, query: ListQuery) -> int:
    """The seq inside a cursor of this very query; :class:`InvalidCursor` for anything else.

    The check is about integrity, not secrecy: the listing is scoped by org whatever the
    cursor says, so a forged seq could only page through the caller's own jobs.
    """
    if not _B64URL.fullmatch(cursor):
        raise InvalidCursor(_INVALID_CURSOR)
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
    except (binascii.Error, ValueError):
        raise InvalidCursor(_INVALID_CURSOR) from None
    match = _CURSOR.fullmatch(text)
    if match is None or match.group(2) != query.fingerprint():
        raise InvalidCursor(_INVALID_CURSOR)
    return int(match.group(1))


# -- query parsing --------------------------------------------------------------------------------

_LIST_PARAMS = frozenset(
    {
        "status",
        "job_type",
        "priority",
        "created_after",
        "created_before",
        "limit",
        "cursor",
        "q",
        "org",
    }
)


def _single(values: dict[str, list[str]], name: str) -> str | None:
    found = values.get(name)
    if not found:
        return None
    if len(found) > 1:
        raise BadRequest(f"query parameter {name!r} may be given once")
    return found[0]


def _time_ms(name: str, text: str | None) -> int | None:
    if text is None:
        return None
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise BadRequest(f"{name} must be an ISO 8601 time such as 2026-11-29T10:00:00Z") from None
    if value.tzinfo is None:
        raise BadRequest(f"{name} needs a UTC offset (e.g. 2026-11-29T10:00:00Z)")
    try:
        return round(value.astimezone(UTC).timestamp() * 1000)
    except (OverflowError, ValueError):
        raise BadRequest(f"{name} is out of range") from None


def parse_list_query(request: Request, principal: Principal) -> ListQuery:
    """Validate the listing's query string (400 for anything malformed or unknown)."""
    values: dict[str, list[str]] = {}
    for key, value in request.query_params.multi_items():
        if key not in _LIST_PARAMS:
            raise BadRequest(f"unknown query parameter {key[:40]!r}")
        values.setdefault(key, []).append(value)
    statuses: list[str] = []
    for status in values.get("status", []):
        for part in status.split(","):
            if part not in _STATUS_SET:
                raise BadRequest(f"status must be one of {', '.join(s.value for s in Status)}")
            statuses.append(part)
    priority = _single(values, "priority")
    if priority is not None and priority not in _PRIORITY_SET:
        raise BadRequest("priority must be one of critical, high, normal, low")
    limit_text = _single(values, "limit")
    limit = DEFAULT_LIMIT
    if limit_text is not None:
        if not re.fullmatch(r"[0-9]{1,6}", limit_text) or not 1 <= int(limit_text) <= MAX_PAGE:
            raise BadRequest(f"limit must be an integer from 1 to {MAX_PAGE}")
        limit = int(limit_text)
    job_type = _single(values, "job_type")
    text = _single(values, "q")
    for name, given in (("job_type", job_type), ("q", text)):
        if given is not None and len(given) > MAX_QUERY_TEXT:
            raise BadRequest(f"{name} is longer than {MAX_QUERY_TEXT} characters")
    org = _single(values, "org")
    if org is not None and not org:
        raise BadRequest("org must not be empty")
    return ListQuery(
        org=acting_org(principal, org),
        statuses=tuple(dict.fromkeys(statuses)),
        job_type=job_type or None,
        priority=priority,
        created_after=_time_ms("created_after", _single(values, "created_after")),
        created_before=_time_ms("created_before", _single(values, "created_before")),
        text=text or None,
        limit=limit,
        cursor=_single(values, "cursor") or None,
    )


# -- handlers ---------------------------------------------------------------------------------------


async def submit_job(request: Request) -> Response:
    """Submit one job (201; 200 with ``deduplicated: true`` when an equal one is pending)."""
    principal = await authenticate(request, "operator")
    body = await read_model(request, SubmitJob)
    org = _submit_org(principal, body.org)
    ej = app_of(request)
    [job] = await ej.submit_many([_spec(body, org)])
    return ApiResponse(job.to_dict(), status_code=200 if job.deduplicated else 201)


async def submit_batch(request: Request) -> Response:
    """Submit a batch in one transaction: all the jobs are created, or none."""
    principal = await authenticate(request, "operator")
    ej = app_of(request)
    limit = ej.config.limits.max_batch

    def within_limit(data: Any) -> None:
        # Counted on the parsed list, before the walk and the model see every job in it.
        jobs = data.get("jobs") if isinstance(data, dict) else None
        if isinstance(jobs, list) and len(jobs) > limit:
            raise PayloadTooLarge(f"a batch holds at most {limit} jobs; this one has {len(jobs)}")

    body = await read_model(request, SubmitBatch, precheck=within_limit)
    specs = [_spec(job, _submit_org(principal, job.org)) for job in body.jobs]
    jobs = await ej.submit_many(specs)
    return ApiResponse({"jobs": [job.to_dict() for job in jobs]}, status_code=201)


async def list_jobs(request: Request) -> Response:
    """A page of the caller's jobs, newest first."""
    principal = await authenticate(request, "viewer")
    query = parse_list_query(request, principal)
    before = decode_cursor(query.cursor, query) if query.cursor else None
    ej = app_of(request)
    jobs, next_seq = await ej.list_jobs(
        org=query.org,
        statuses=query.statuses,
        job_type=query.job_type,
        priority=query.priority,
        created_after=query.created_after,
        created_before=query.created_before,
        text=query.text,
        before_seq=before,
        limit=query.limit,
    )
    return ApiResponse(
        {
            "items": [job.to_dict() for job in jobs],
            "next_cursor": encode_cursor(next_seq, query) if next_seq is not None else None,
        }
    )


async def get_job(request: Request) -> Response:
    """One job."""
    principal = await authenticate(request, "viewer")
    job = await app_of(request).get(_job_id(request), org=principal.org)
    return ApiResponse(job.to_dict())


async def job_attempts(request: Request) -> Response:
    """The execution log of one job."""
    principal = await authenticate(request, "viewer")
    attempts = await app_of(request).attempts(_job_id(request), org=principal.org)
    return ApiResponse({"items": [attempt.to_dict() for attempt in attempts]})


async def cancel_job(request: Request) -> Response:
    """Cancel a job that has not ended (409 when it has)."""
    principal = await authenticate(request, "operator")
    job_id = _job_id(request)
    body = await read_model(request, CancelJob, optional=True)
    job = await app_of(request).cancel(
        job_id, org=principal.org, reason=body.reason, actor=principal
    )
    return ApiResponse(job.to_dict())


async def retry_job(request: Request) -> Response:
    """Manually retry a failed, timed-out, dead-lettered or canceled job (409 otherwise)."""
    principal = await authenticate(request, "operator")
    job_id = _job_id(request)
    await read_model(request, RetryJob, optional=True)
    job = await app_of(request).retry(job_id, org=principal.org, actor=principal)
    return ApiResponse(job.to_dict())


_STATUS_ENUM = [status.value for status in Status]
_PRIORITY_ENUM = [priority.value for priority in Priority]
_TIME = {"type": "string", "format": "date-time"}

LIST_PARAMS: tuple[Param, ...] = (
    Param(
        "status",
        {"type": "array", "items": {"type": "string", "enum": _STATUS_ENUM}},
        "repeatable; any of these statuses",
    ),
    Param("job_type", {"type": "string", "maxLength": MAX_QUERY_TEXT}, "empty: any type"),
    Param("priority", {"type": "string", "enum": _PRIORITY_ENUM}),
    Param("created_after", _TIME, "created at or after this time"),
    Param("created_before", _TIME, "created before this time"),
    Param(
        "q",
        {"type": "string", "maxLength": MAX_QUERY_TEXT},
        "text in params or error, or a job id (empty: no search)",
    ),
    Param(
        "limit", {"type": "integer", "minimum": 1, "maximum": MAX_PAGE, "default": DEFAULT_LIMIT}
    ),
    Param("cursor", {"type": "string", "maxLength": 128}, "next_cursor of the previous page"),
    Param(
        "org", {"type": "string", "minLength": 1, "maxLength": 64}, "system tokens: only this org"
    ),
)

_ID = (Param("id", {"type": "string", "minLength": 1}, "a job id", location="path"),)


def operations(ej: EdgeJobs) -> list[Operation]:
    """The job routes, documented."""
    tags = ("jobs",)
    return [
        Operation(
            "POST",
            "/api/v1/jobs/batch",
            submit_batch,
            "Submit a batch of jobs (all or nothing)",
            "operator",
            {201: JobBatchOut},
            body=SubmitBatch,
            tags=tags,
        ),
        Operation(
            "POST",
            "/api/v1/jobs",
            submit_job,
            "Submit a job",
            "operator",
            {201: JobOut, 200: JobOut},
            body=SubmitJob,
            tags=tags,
            description="200 with deduplicated=true when an equal job is pending.",
        ),
        Operation(
            "GET",
            "/api/v1/jobs",
            list_jobs,
            "List jobs, newest first",
            "viewer",
            {200: JobList},
            params=LIST_PARAMS,
            tags=tags,
        ),
        Operation(
            "GET",
            "/api/v1/jobs/{id}",
            get_job,
            "Show a job",
            "viewer",
            {200: JobOut},
            params=_ID,
            tags=tags,
        ),
        Operation(
            "GET",
            "/api/v1/jobs/{id}/attempts",
            job_attempts,
            "A job's attempts",
            "viewer",
            {200: AttemptList},
            params=_ID,
            tags=tags,
        ),
        Operation(
            "POST",
            "/api/v1/jobs/{id}/cancel",
            cancel_job,
            "Cancel a job",
            "operator",
            {200: JobOut},
            body=CancelJob,
            body_required=False,
            params=_ID,
            tags=tags,
        ),
        Operation(
            "POST",
            "/api/v1/jobs/{id}/retry",
            retry_job,
            "Retry a job",
            "operator",
            {200: JobOut},
            body=RetryJob,
            body_required=False,
            params=_ID,
            tags=tags,
        ),
    ]
