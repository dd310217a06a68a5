"""Deployment behind a reverse proxy, under a path prefix, and mounted in another app.

A real uvicorn serves the app under a prefix the way a proxy that strips it sees it
(``root_path``, what ``--root-path`` sets), and a Starlette app mounts it at ``/edgejobs``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import httpx
import uvicorn
from api_support import Api
from ej_testkit import free_port
from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.types import ASGIApp


@contextlib.asynccontextmanager
async def serving(app: ASGIApp, root_path: str = "") -> AsyncIterator[httpx.AsyncClient]:
    """``app`` on a real uvicorn in this event loop (its lifespan is the test's), and a
    client of it."""
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=free_port(),
        lifespan="off",
        log_config=None,
        access_log=False,
        root_path=root_path,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:  # uvicorn has no event for it
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{config.port}") as client:
            yield client
    finally:
        server.should_exit = True
        await task


def mounted(api: Api) -> Starlette:
    """Another app with edgejobs mounted at ``/edgejobs``."""
    return Starlette(routes=[Mount("/edgejobs", app=api.app)])


async def test_api_answers_are_not_cacheable_under_a_prefix(api: Api) -> None:
    # Tenant data must not linger in a proxy's or browser's cache, wherever the app is served.
    headers = api.auth("viewer")
    async with serving(api.app, root_path="/jobs") as client:
        stripped = await client.get("/api/v1/stats", headers=headers)
    async with serving(mounted(api)) as client:
        mount = await client.get("/edgejobs/api/v1/stats", headers=headers)
    for response in (stripped, mount):
        assert response.status_code == 200
        assert response.headers["cache-control"] == "no-store"
