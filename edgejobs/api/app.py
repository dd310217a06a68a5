"""The Starlette app: routes of every API module, middleware, error mapping and the lifespan.

Middleware, outermost first: security headers (on every response, errors included), the error
boundary (a bug becomes a logged 500 with the error body), the Host allow-list (400 for a name
the server does not answer to, before anything else runs), the body limit (413 before any
parsing), the database opened as a client when no lifespan started the app (mounted in
another app). Starlette's own exception middleware then maps :class:`EdgeJobsError` and routing
errors inside the routes (see :mod:`edgejobs.api.errors`).

The lifespan makes the app the runner: startup starts :class:`EdgeJobs` (workers and ticks in
this event loop), then the SSE module; shutdown closes the SSE streams
first (so the server is not kept waiting by them), stops the runner with its grace period and
closes the database. :func:`begin_shutdown` runs that first step early when a signal arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Mount
from starlette.staticfiles import StaticFiles

import edgejobs
from edgejobs.api import control, events, jobs, session, system
from edgejobs.api.errors import (
    ApiResponse,
    ErrorBoundary,
    handle_edgejobs_error,
    handle_http_exception,
)
from edgejobs.api.metrics import Metrics
from edgejobs.api.middleware import (
    SESSION_BODY_BYTES,
    AllowedHosts,
    BodyLimit,
    OpenOnFirstRequest,
    SecurityHeaders,
)
from edgejobs.api.openapi import Operation, build_document, build_routes
from edgejobs.errors import EdgeJobsError, NotFound
from edgejobs.hosts import allowed_patterns

if TYPE_CHECKING:
    from edgejobs.app import EdgeJobs

log = logging.getLogger("edgejobs.api")

OPENAPI_PATH = "/api/v1/openapi.json"


def web_dir() -> Path | None:
    """The dashboard's folder: ``web/`` next to the package (a checkout or an editable
    install) or inside it (a packaged copy); None when neither exists."""
    package = Path(edgejobs.__file__).resolve().parent
    for candidate in (package / "web", package.parent / "web"):
        if (candidate / "index.html").is_file():
            return candidate
    return None


async def begin_shutdown(app: Starlette) -> None:
    """The first step of a graceful stop: close the SSE streams and stop the runner claiming
    new jobs (running jobs get ``[runner] shutdown_grace_s`` to finish). Every caller awaits
    the same single run, so a signal handler and the lifespan can both call it."""
    state = app.state
    if state.shutdown_task is None:
        state.shutdown_task = asyncio.ensure_future(_begin_shutdown(app))
    await state.shutdown_task


async def _begin_shutdown(app: Starlette) -> None:
    ej: EdgeJobs = app.state.ej
    app.state.runner_stop = asyncio.create_task(ej.stop(), name="edgejobs-runner-stop")
    try:
        await events.on_shutdown(ej)
    except Exception:
        log.exception("closing the event streams failed")


def create_app(ej: EdgeJobs, *, listen_host: str | None = None) -> Starlette:
    """The ASGI app serving ``ej``: REST API, SSE, dashboard, health and metrics.

    ``listen_host`` is the address the server binds, when the caller runs that server
    (``serve``): on a loopback address only loopback names are answered unless ``[server]
    allowed_hosts`` says otherwise. Without it (the app mounted in a host app, or run by
    another server) only a configured ``allowed_hosts`` is applied: the app cannot know
    where it is reached, and the host app may check hosts itself.
    """
    metrics = Metrics()
    own: list[Operation] = [
        *session.operations(ej),
        *jobs.operations(ej),
        *system.operations(ej),
    ]
    # Built once: the same objects give the routes and the OpenAPI document.
    external: list[Operation] = [*events.operations(ej), *control.operations(ej)]
    documented = [*own, *external]
    document: dict[str, Any] = {}

    async def openapi(request: Request) -> Response:
        """This API's OpenAPI 3.1 document."""
        if not document:
            document.update(
                build_document(documented, title="edgejobs", version=edgejobs.__version__)
            )
        root_path: str = request.scope.get("root_path", "").rstrip("/")
        if root_path:
            # Served under a prefix (a Mount, uvicorn's --root-path): the paths are relative
            # to it, and a client resolving them against the host's root would miss the API.
            return ApiResponse({**document, "servers": [{"url": root_path}]})
        return ApiResponse(document)

    web = web_dir()

    async def index(request: Request) -> Response:
        """The dashboard (it shows its sign-in form until a session exists)."""
        if web is None:
            raise NotFound("the dashboard files (web/) are not installed")
        return FileResponse(web / "index.html", headers={"Cache-Control": "no-cache"})

    meta = [
        Operation(
            "GET",
            OPENAPI_PATH,
            openapi,
            "This OpenAPI document",
            None,
            {200: "application/json"},
            tags=("system",),
        ),
        Operation(
            "GET", "/", index, "The dashboard", None, {200: "text/html"}, tags=("dashboard",)
        ),
    ]
    documented.extend(meta)
    routes: list[BaseRoute] = [*build_routes([*own, *meta, *external])]
    if web is not None:
        routes.append(Mount("/static", app=StaticFiles(directory=web), name="static"))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await ej.start()
        try:
            await events.on_startup(ej)
            await metrics.start(ej)
            yield
        finally:
            await begin_shutdown(app)
            await metrics.stop()
            if app.state.runner_stop is not None:
                await app.state.runner_stop
            await ej.close()

    app = Starlette(
        routes=routes,
        middleware=[
            Middleware(SecurityHeaders),
            Middleware(ErrorBoundary),
            Middleware(
                AllowedHosts,
                patterns=allowed_patterns(ej.config.server.allowed_hosts, listen_host),
            ),
            Middleware(
                BodyLimit,
                max_bytes=ej.config.server.max_body_bytes,
                limits={"/login": SESSION_BODY_BYTES, "/logout": SESSION_BODY_BYTES},
            ),
            Middleware(OpenOnFirstRequest, ej=ej, on_open=partial(metrics.ensure_started, ej)),
        ],
        exception_handlers={
            EdgeJobsError: handle_edgejobs_error,
            HTTPException: handle_http_exception,
        },
        lifespan=lifespan,
    )
    app.state.ej = ej
    app.state.metrics = metrics
    app.state.shutdown_task = None
    app.state.runner_stop = None
    return app
