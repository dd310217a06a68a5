"""Runtime-control routes: pause/resume and overrides of job types, schedules, the audit log.

Changing a job type acts on the whole runner (every org's jobs), so it needs an admin token
that is also a system token. Schedules are listed per org like jobs; audit entries too: an org
admin reads the entries concerning its org, a system admin all of them. The work itself is in
:mod:`edgejobs.control` (shared with the CLI); this module adds authentication, parsing and the
response shapes.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import Response

from edgejobs import control
from edgejobs.api.auth import Principal, acting_org, app_of, authenticate
from edgejobs.api.body import query_values, read_model
from edgejobs.api.errors import ApiResponse, BadRequest, Forbidden
from edgejobs.api.openapi import ORG_PARAM, Operation, Param
from edgejobs.api.schemas import EmptyBody, JobTypeOut

if TYPE_CHECKING:
    from edgejobs.app import EdgeJobs

DEFAULT_AUDIT_LIMIT = 50
_LIMIT = re.compile(r"[0-9]{1,6}")
_CURSOR = re.compile(r"[1-9][0-9]{0,17}")


# -- response models (the OpenAPI document is built from them) ---------------------------------


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class JobTypeStateOut(JobTypeOut):
    """A job type after a change: effective policy, the overrides alone, the declared policy
    (what applies again when an override is removed) and whether it is paused."""

    declared: dict[str, Any]


class ScheduleOut(_Out):
    """A periodic schedule with its next run and the due time it last fired."""

    name: str
    cron: str
    timezone: str
    job_type: str
    org: str
    params: dict[str, Any]
    priority: str | None
    catch_up: str
    next_run_at: str | None
    last_run_at: str | None
    last_job_id: str | None


class ScheduleList(_Out):
    """Schedules of the caller's org (system token: every org), by name."""

    items: list[ScheduleOut]


class AuditEntryOut(_Out):
    """One operator action: who (token id, role, the token's org), what, on what, when."""

    id: int
    at: str
    token_id: str
    role: str
    actor_org: str | None = Field(description="the acting token's org; null: a system token")
    org: str | None = Field(description="the org the action concerns; null: the whole runner")
    action: str
    target: str
    details: dict[str, Any]


class AuditList(_Out):
    """A page of audit entries, newest first."""

    items: list[AuditEntryOut]
    next_cursor: str | None


# -- helpers ------------------------------------------------------------------------------------


async def _system_admin(request: Request) -> Principal:
    principal = await authenticate(request, "admin")
    if principal.org is not None:
        raise Forbidden(
            "changing a job type affects every org: this needs an admin token of the system"
            " (created with --org '*')"
        )
    return principal


def _name(request: Request) -> str:
    name: str = request.path_params["name"]
    return name


# -- endpoints ----------------------------------------------------------------------------------


async def pause_job_type(request: Request) -> Response:
    """Pause a job type: its jobs are accepted, none starts; running ones finish."""
    principal = await _system_admin(request)
    await read_model(request, EmptyBody, optional=True)
    view = await control.pause_job_type(app_of(request), _name(request), actor=principal)
    return ApiResponse(view.to_dict())


async def resume_job_type(request: Request) -> Response:
    """Resume a paused job type: its queued jobs start again, in priority order."""
    principal = await _system_admin(request)
    await read_model(request, EmptyBody, optional=True)
    view = await control.resume_job_type(app_of(request), _name(request), actor=principal)
    return ApiResponse(view.to_dict())


async def patch_job_type(request: Request) -> Response:
    """Set runtime overrides of a job type (``null`` removes one)."""
    principal = await _system_admin(request)
    patch = await read_model(request, control.JobTypeOverrides)
    view = await control.override_job_type(app_of(request), _name(request), patch, actor=principal)
    return ApiResponse(view.to_dict())


async def list_schedules(request: Request) -> Response:
    """Schedules with their next and last run (a tenant sees its org's only)."""
    principal = await authenticate(request, "viewer")
    values = query_values(request, frozenset({"org"}))
    org = acting_org(principal, values.get("org"))
    views = await control.list_schedules(app_of(request), org=org)
    return ApiResponse({"items": [view.to_dict() for view in views]})


async def list_audit(request: Request) -> Response:
    """Operator actions, newest first (an org admin sees its org's entries only)."""
    principal = await authenticate(request, "admin")
    values = query_values(request, frozenset({"limit", "cursor", "org"}))
    limit = DEFAULT_AUDIT_LIMIT
    if "limit" in values:
        text = values["limit"]
        if not _LIMIT.fullmatch(text) or not 1 <= int(text) <= control.MAX_AUDIT_PAGE:
            raise BadRequest(f"limit must be an integer from 1 to {control.MAX_AUDIT_PAGE}")
        limit = int(text)
    before: int | None = None
    if "cursor" in values:
        if not _CURSOR.fullmatch(values["cursor"]):
            raise BadRequest("cursor must be the next_cursor of the previous page")
        before = int(values["cursor"])
    org = acting_org(principal, values.get("org"))
    entries, cursor = await control.list_audit(
        app_of(request), org=org, limit=limit, before_id=before
    )
    return ApiResponse(
        {
            "items": [entry.to_dict() for entry in entries],
            "next_cursor": str(cursor) if cursor is not None else None,
        }
    )


# -- wiring -------------------------------------------------------------------------------------

_NAME = (Param("name", {"type": "string", "minLength": 1}, "a job type", location="path"),)


def operations(ej: EdgeJobs) -> list[Operation]:
    """The runtime-control routes, documented."""
    return [
        Operation(
            "PATCH",
            "/api/v1/job-types/{name}",
            patch_job_type,
            "Override a job type's policy at runtime",
            "admin",
            {200: JobTypeStateOut},
            body=control.JobTypeOverrides,
            params=_NAME,
            tags=("job types",),
            description="System admin tokens only. Keys left out keep their override; `null`"
            " removes one (the configured value applies again). timeout_s, concurrency and"
            " org_concurrency apply from the next claim; priority, max_retries and rate_limit"
            " to jobs submitted from then on.",
        ),
        Operation(
            "POST",
            "/api/v1/job-types/{name}/pause",
            pause_job_type,
            "Pause a job type",
            "admin",
            {200: JobTypeStateOut},
            body=EmptyBody,
            body_required=False,
            params=_NAME,
            tags=("job types",),
            description="System admin tokens only. Submissions are still accepted; nothing of"
            " this type starts until it is resumed; running jobs finish.",
        ),
        Operation(
            "POST",
            "/api/v1/job-types/{name}/resume",
            resume_job_type,
            "Resume a paused job type",
            "admin",
            {200: JobTypeStateOut},
            body=EmptyBody,
            body_required=False,
            params=_NAME,
            tags=("job types",),
            description="System admin tokens only.",
        ),
        Operation(
            "GET",
            "/api/v1/schedules",
            list_schedules,
            "Periodic schedules with their next and last run",
            "viewer",
            {200: ScheduleList},
            params=(ORG_PARAM,),
            tags=("schedules",),
        ),
        Operation(
            "GET",
            "/api/v1/audit",
            list_audit,
            "The operator audit log, newest first",
            "admin",
            {200: AuditList},
            params=(
                Param(
                    "limit",
                    {
                        "type": "integer",
                        "minimum": 1,
                        "maximum": control.MAX_AUDIT_PAGE,
                        "default": DEFAULT_AUDIT_LIMIT,
                    },
                ),
                Param("cursor", {"type": "string", "minLength": 1}, "next_cursor of a page"),
                ORG_PARAM,
            ),
            tags=("audit",),
            description="Cancel, retry, pause, resume, override, token create and revoke."
            " An org's admin reads the entries concerning its org; a system admin all.",
        ),
    ]
