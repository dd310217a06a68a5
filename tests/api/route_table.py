"""Every route of the app, with the least role it needs and how to build a valid request.

The role-matrix, isolation and hostile-input tests all walk this table, and
``test_every_route_is_in_the_table`` fails when the app serves a route that is missing here:
a new route must say who may call it before it can ship. Routes of other modules are listed
too and are tested when the app has them.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from api_support import ORG_A, Api

Build = Callable[[Api, str], Awaitable[dict[str, Any]]]
"""(api, who) -> keyword arguments of ``client.request`` besides method and headers."""


async def _nothing(api: Api, who: str) -> dict[str, Any]:
    return {}


def _org_field(who: str) -> dict[str, Any]:
    return {"org": ORG_A} if who == "system" else {}


async def _submit(api: Api, who: str) -> dict[str, Any]:
    body = {"job_type": "t.echo", "params": {"n": uuid.uuid4().hex}, **_org_field(who)}
    return {"json": body}


async def _batch(api: Api, who: str) -> dict[str, Any]:
    first = {"job_type": "t.echo", "params": {"n": uuid.uuid4().hex}, **_org_field(who)}
    second = {"job_type": "t.echo", "depends_on": [0], **_org_field(who)}
    return {"json": {"jobs": [first, second]}}


async def _existing_job(api: Api, who: str) -> dict[str, Any]:
    job = await api.job(ORG_A, params={"n": uuid.uuid4().hex})
    return {"path_params": {"id": job.id}}


async def _retryable_job(api: Api, who: str) -> dict[str, Any]:
    job = await api.ended_job(ORG_A)
    return {"path_params": {"id": job.id}}


async def _job_type(api: Api, who: str) -> dict[str, Any]:
    return {"path_params": {"name": "t.echo"}}


async def _patch_job_type(api: Api, who: str) -> dict[str, Any]:
    return {"path_params": {"name": "t.echo"}, "json": {"timeout_s": 5}}


async def _login(api: Api, who: str) -> dict[str, Any]:
    return {"json": {"token": api.secrets["viewer"]}}


@dataclasses.dataclass(frozen=True)
class RouteCase:
    """One method on one path."""

    method: str
    path: str
    min_role: str | None
    build: Build = _nothing
    success: int = 200
    system_only: bool = False
    job_scoped: bool = False
    stream: bool = False
    lists_jobs: bool = False
    optional: bool = False
    """Served by another module; tested only when the app has it."""

    @property
    def key(self) -> tuple[str, str]:
        return self.method, self.path

    def expected(self, who: str) -> int:
        """The status ``who`` gets for a valid request."""
        if self.min_role is None:
            return self.success
        if who in ("none", "bad", "revoked"):
            return 401
        rank = {"viewer": 0, "operator": 1, "admin": 2, "system": 2}
        if rank[who] < rank[self.min_role]:
            return 403
        if self.system_only and who != "system":
            return 403
        return self.success


ROUTES: tuple[RouteCase, ...] = (
    # sign-in and public routes
    RouteCase("POST", "/login", None, _login),
    RouteCase("POST", "/logout", None),
    RouteCase("GET", "/", None),
    RouteCase("GET", "/api/v1/openapi.json", None),
    RouteCase("GET", "/healthz", None),
    RouteCase("GET", "/metrics", None),
    # jobs
    RouteCase("POST", "/api/v1/jobs", "operator", _submit, success=201),
    RouteCase("POST", "/api/v1/jobs/batch", "operator", _batch, success=201),
    RouteCase("GET", "/api/v1/jobs", "viewer", lists_jobs=True),
    RouteCase("GET", "/api/v1/jobs/{id}", "viewer", _existing_job, job_scoped=True),
    RouteCase("GET", "/api/v1/jobs/{id}/attempts", "viewer", _existing_job, job_scoped=True),
    RouteCase("POST", "/api/v1/jobs/{id}/cancel", "operator", _existing_job, job_scoped=True),
    RouteCase("POST", "/api/v1/jobs/{id}/retry", "operator", _retryable_job, job_scoped=True),
    # system
    RouteCase("GET", "/api/v1/whoami", "viewer"),
    RouteCase("GET", "/api/v1/stats", "viewer", lists_jobs=True),
    RouteCase("GET", "/api/v1/stats/timeseries", "viewer", lists_jobs=True),
    RouteCase("GET", "/api/v1/job-types", "viewer"),
    # other modules (SSE, runtime control)
    RouteCase("GET", "/api/v1/events", "viewer", stream=True, optional=True),
    RouteCase(
        "PATCH",
        "/api/v1/job-types/{name}",
        "admin",
        _patch_job_type,
        system_only=True,
        optional=True,
    ),
    RouteCase(
        "POST",
        "/api/v1/job-types/{name}/pause",
        "admin",
        _job_type,
        system_only=True,
        optional=True,
    ),
    RouteCase(
        "POST",
        "/api/v1/job-types/{name}/resume",
        "admin",
        _job_type,
        system_only=True,
        optional=True,
    ),
    RouteCase("GET", "/api/v1/schedules", "viewer", lists_jobs=True, optional=True),
    RouteCase("GET", "/api/v1/audit", "admin", lists_jobs=True, optional=True),
)

MOUNTS = frozenset({"/static"})
"""Mounted apps (the dashboard's files; public)."""

WHO = ("none", "bad", "revoked", "viewer", "operator", "admin", "system")


def served(api: Api) -> set[tuple[str, str]]:
    """(method, path) of every route the app serves (HEAD aside: it mirrors GET)."""
    from starlette.routing import Route

    found = set()
    for route in api.app.routes:
        if isinstance(route, Route):
            for method in route.methods or ():
                if method != "HEAD":
                    found.add((method, route.path))
    return found


def active_routes(api: Api) -> list[RouteCase]:
    """The table's routes that this app serves (required ones always)."""
    have = served(api)
    return [case for case in ROUTES if not case.optional or case.key in have]


def url(case: RouteCase, path_params: dict[str, str] | None) -> str:
    path = case.path
    for name, value in (path_params or {}).items():
        path = path.replace("{" + name + "}", value)
    return path


async def request(api: Api, case: RouteCase, who: str, **extra: Any) -> Any:
    """Send ``case``'s valid request as ``who`` (``extra`` overrides parts of it)."""
    built = await case.build(api, who)
    path_params = built.pop("path_params", None)
    built.update(extra)
    headers = {**api.auth(who), **built.pop("headers", {})}
    try:
        return await api.client.request(
            case.method, url(case, path_params), headers=headers, **built
        )
    finally:
        api.client.cookies.clear()  # a /login must not authenticate the next request
