"""System routes: health, metrics, stats, the per-minute series, who-am-I, job types.

``/healthz`` and ``/metrics`` need no token (``/metrics`` needs ``[server] metrics_token`` as a
Bearer token when one is set); the rest need a viewer token and are scoped to its org.
"""

from __future__ import annotations

import asyncio
import hmac
import sqlite3
import time
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response

from edgejobs.api.auth import acting_org, app_of, authenticate
from edgejobs.api.body import query_values
from edgejobs.api.errors import ApiResponse, Unauthorized
from edgejobs.api.metrics import CONTENT_TYPE, Metrics
from edgejobs.api.openapi import ORG_PARAM, Operation
from edgejobs.api.schemas import Health, JobTypeList, Stats, Timeseries, Whoami
from edgejobs.errors import EdgeJobsError
from edgejobs.models import iso_ms
from edgejobs.runner.maintenance import HEALTH_DB_TIMEOUT_S, HEALTH_WRITE_WAIT_S, extend_health
from edgejobs.store import events as events_store
from edgejobs.store import stats as stats_store

if TYPE_CHECKING:
    from edgejobs.app import EdgeJobs


async def health(ej: EdgeJobs) -> tuple[int, dict[str, Any]]:
    """Liveness and a real database query: (HTTP status, body).

    200 ``{"status": "ok", ...}`` when the database answers a query over the schema; 503
    ``{"status": "unavailable", ...}`` with the reason otherwise, or while shutting down.
    """
    runner = "stopping" if ej.stopping else ("running" if ej.is_runner else "not running")
    body: dict[str, Any] = {"status": "ok", "database": "ok", "runner": runner, "details": {}}
    try:
        # A point read on this thread, not a turn in the reader pool: slow listings filling
        # the pool must not make a liveness probe time out (and restart a healthy server).
        body["details"] = await asyncio.wait_for(
            ej.store.read_point(stats_store.database_check), HEALTH_DB_TIMEOUT_S
        )
    except TimeoutError:
        body.update(
            status="unavailable",
            database=f"no answer within {HEALTH_DB_TIMEOUT_S:g} s",
        )
    except EdgeJobsError as exc:
        body.update(status="unavailable", database=f"{exc.code}: {exc.message}")
    except Exception as exc:  # any failure is the answer here, not a crash
        body.update(status="unavailable", database=f"error: {type(exc).__name__}: {exc}"[:300])
    if body["status"] == "ok":
        await _check_writes(ej, body)
    if ej.stopping and body["status"] == "ok":
        body["status"] = "unavailable"
    extend_health(ej, body)  # tick staleness, file sizes, the reasons for a 503
    return (200 if body["status"] == "ok" else 503), body


async def _check_writes(ej: EdgeJobs, body: dict[str, Any]) -> None:
    """Unavailable while writes fail: a full disk or another process holding the write lock
    past the busy timeout stops every job, yet the read above still answers."""
    failure = ej.store.writer.last_failure
    settings = ej.maintenance.settings
    # Recent: within the time a stalled tick is given. Whoever failed retries sooner than
    # that (the pool every half second, the tick every interval), so a lasting failure keeps
    # this answer; once writes go through again it ends within that time.
    if failure is None or time.monotonic() - failure[0] > (
        settings.health_tick_factor * settings.tick_interval_s
    ):
        # An idle runner writes nothing that could fail: the probe writes (see WriteProbe).
        failure = await ej.maintenance.write_probe.check(HEALTH_WRITE_WAIT_S)
        if failure is None:
            return
        seen = "found by the write probe"
    else:
        seen = "a write failed"
    at, error = failure
    age = time.monotonic() - at
    body.update(
        status="unavailable",
        database=f"{error.code}: {error.message} ({seen} {age:.1f} s ago)",
    )


async def healthz(request: Request) -> Response:
    """Liveness and database check."""
    status, body = await health(app_of(request))
    return ApiResponse(body, status_code=status, headers={"Cache-Control": "no-store"})


async def metrics(request: Request) -> Response:
    """Prometheus text format (no org labels)."""
    ej = app_of(request)
    expected = ej.config.server.metrics_token
    if expected:
        header = request.headers.get("authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            value.strip().encode("latin-1", "replace"), expected.encode("utf-8")
        ):
            raise Unauthorized("this server's /metrics needs its metrics token as a Bearer token")
    registry: Metrics = request.app.state.metrics
    return Response(await registry.render(ej), media_type=CONTENT_TYPE)


_ORG_ONLY = frozenset({"org"})
_NONE: frozenset[str] = frozenset()


async def stats(request: Request) -> Response:
    """Counts by status and job type (a system token also gets them per org, or those of the
    one org it names)."""
    principal = await authenticate(request, "viewer")
    org = acting_org(principal, query_values(request, _ORG_ONLY).get("org"))
    return ApiResponse(await app_of(request).stats(org=org))


async def timeseries(request: Request) -> Response:
    """The last hour per minute: completed, failed and queue depth (see ``minute_series``)."""
    principal = await authenticate(request, "viewer")
    org = acting_org(principal, query_values(request, _ORG_ONLY).get("org"))
    ej = app_of(request)
    now = ej.clock.now_ms()

    def read(conn: sqlite3.Connection) -> tuple[list[stats_store.Minute], int]:
        # One snapshot: the events after last_event_id are exactly the ones the series lacks.
        return stats_store.minute_series(conn, org, now), events_store.last_event_id(conn)

    minutes, last_event_id = await ej.store.read(read)
    return ApiResponse(
        {
            "minutes": [
                {
                    "t": iso_ms(m.t),
                    "completed": m.completed,
                    "failed": m.failed,
                    "queue_depth": m.queue_depth,
                }
                for m in minutes
            ],
            "last_event_id": last_event_id,
        }
    )


async def whoami(request: Request) -> Response:
    """The caller's org (``*`` for a system token), role and token id."""
    principal = await authenticate(request, "viewer")
    query_values(request, _NONE)
    return ApiResponse(
        {
            "org": principal.org if principal.org is not None else "*",
            "role": principal.role,
            "token_id": principal.token_id,
        }
    )


def job_type_items(ej: EdgeJobs) -> list[dict[str, Any]]:
    """Registered and stored job types with effective policy, overrides and pause flag."""
    registry = ej.registry
    items: dict[str, dict[str, Any]] = {}
    for declared in registry:
        items[declared.name] = {
            "name": declared.name,
            "policy": registry.get(declared.name).policy(),
            "overrides": dict(registry.overrides.get(declared.name, {})),
            "paused": declared.name in registry.paused,
            "registered": True,
        }
    for name, state in ej._stored_types.items():
        if name in items or not state.policy:
            continue
        items[name] = {
            "name": name,
            "policy": state.effective_policy,
            "overrides": dict(state.overrides),
            "paused": state.paused,
            "registered": False,
        }
    return [items[name] for name in sorted(items)]


async def job_types(request: Request) -> Response:
    """Job types with their policy (runtime overrides applied) and whether they are paused."""
    await authenticate(request, "viewer")
    query_values(request, _NONE)
    return ApiResponse({"items": job_type_items(app_of(request))})


def operations(ej: EdgeJobs) -> list[Operation]:
    """The system routes, documented."""
    return [
        Operation(
            "GET",
            "/api/v1/whoami",
            whoami,
            "The caller's org and role",
            "viewer",
            {200: Whoami},
            tags=("system",),
        ),
        Operation(
            "GET",
            "/api/v1/stats",
            stats,
            "Counts by status and job type",
            "viewer",
            {200: Stats},
            params=(ORG_PARAM,),
            tags=("system",),
        ),
        Operation(
            "GET",
            "/api/v1/stats/timeseries",
            timeseries,
            "The last hour, per minute",
            "viewer",
            {200: Timeseries},
            params=(ORG_PARAM,),
            tags=("system",),
            description="completed/failed by finished_at; queue_depth (queued + retrying + "
            "scheduled) counted now for the current minute, reconstructed from the event log "
            "for earlier ones.",
        ),
        Operation(
            "GET",
            "/api/v1/job-types",
            job_types,
            "Job types and their policy",
            "viewer",
            {200: JobTypeList},
            tags=("job types",),
        ),
        Operation(
            "GET",
            "/healthz",
            healthz,
            "Liveness and database check",
            None,
            {200: Health, 503: Health},
            tags=("system",),
        ),
        Operation(
            "GET",
            "/metrics",
            metrics,
            "Prometheus metrics",
            None,
            {200: "text/plain"},
            tags=("system",),
            security=[{}, {"bearer": []}],
            description="Needs [server] metrics_token as a Bearer token when one is set.",
        ),
    ]
