"""Deployment behind a reverse proxy, under a path prefix, and mounted in another app.

A real uvicorn serves the app under a prefix the way a proxy that strips it sees it
(``root_path``, what ``--root-path`` sets), a Starlette app mounts it at ``/edgejobs``, and a
tiny reverse proxy (``proxy_kit``) strips ``/jobs`` in front of a plain server.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import httpx
import pytest
from api_support import Api, lifespan, make_config
from proxy_kit import prefix_proxy, serving
from starlette.applications import Starlette
from starlette.routing import Mount

from edgejobs import EdgeJobs, JobContext
from edgejobs.store import tokens


def mounted(api: Api) -> Starlette:
    """Another app with edgejobs mounted at ``/edgejobs``."""
    return Starlette(routes=[Mount("/edgejobs", app=api.app)])


async def test_api_answers_are_not_cacheable_under_a_prefix(api: Api) -> None:
    # Tenant data must not linger in a proxy's or browser's cache, wherever the app is served.
    headers = api.auth("viewer")
    async with serving(api.app, root_path="/jobs") as url, httpx.AsyncClient() as client:
        stripped = await client.get(url + "/api/v1/stats", headers=headers)
    async with serving(mounted(api)) as url, httpx.AsyncClient() as client:
        mount = await client.get(url + "/edgejobs/api/v1/stats", headers=headers)
    for response in (stripped, mount):
        assert response.status_code == 200
        assert response.headers["cache-control"] == "no-store"


@pytest.fixture(params=["proxy", "mount"])
async def dashboard(request: pytest.FixtureRequest, api: Api) -> AsyncIterator[str]:
    """The dashboard's address under a prefix: behind a proxy that strips ``/jobs`` (the app
    not told of it), or mounted at ``/edgejobs`` in another app."""
    if request.param == "mount":
        async with serving(mounted(api)) as url:
            yield url + "/edgejobs/"
    else:
        async with serving(api.app) as upstream, serving(prefix_proxy(upstream, "/jobs")) as url:
            yield url + "/jobs/"


async def test_the_dashboard_page_and_its_sign_in_work_under_a_prefix(
    dashboard: str, api: Api
) -> None:
    async with httpx.AsyncClient(follow_redirects=False) as client:
        page = await client.get(dashboard)
        assert page.status_code == 200
        # Every file the page loads, and its sign-in form's target, are under the prefix.
        links = {
            urljoin(dashboard, link)
            for link in re.findall(r'(?:href|src|action)="([^"#][^"]*)"', page.text)
        }
        wanted = {dashboard + "static/app.css", dashboard + "static/app.js", dashboard + "login"}
        assert wanted <= links and all(link.startswith(dashboard) for link in links), links
        for link in links - {dashboard + "login"}:
            assert (await client.get(link)).status_code == 200, link
        # The form without script: the answer sends the browser back to the dashboard.
        signed_in = await client.post(
            urljoin(dashboard, "login"),
            data={"token": api.secrets["viewer"]},
            headers={"Accept": "text/html"},
        )
        assert signed_in.status_code == 303
        assert urljoin(str(signed_in.url), signed_in.headers["location"]) == dashboard
        # The script's calls, relative to the page like its fetch and EventSource make them.
        me = await client.get(urljoin(dashboard, "api/v1/whoami"))
        assert me.status_code == 200 and me.json()["org"] == "acme"


async def _echo(ctx: JobContext, params: dict[str, Any]) -> Any:
    return params


def _with_types(ej: EdgeJobs) -> EdgeJobs:
    ej.register("t.echo", _echo, timeout_s=10, max_retries=0, dedup=False)
    return ej


async def _token(ej: EdgeJobs) -> dict[str, str]:
    new = await ej.store.write(
        partial(tokens.create_token, org="acme", role="operator", name="t", now=ej.clock.now_ms())
    )
    return {"Authorization": f"Bearer {new.secret}"}


async def test_mounted_without_its_lifespan_the_app_serves_as_a_client(tmp_path: Path) -> None:
    # Starlette's Mount passes no lifespan events: the app is then a client of the database
    # (which it creates if need be), and the runner another process — here another instance,
    # started later, as `edgejobs worker` would be.
    path = tmp_path / "jobs.db"
    client = _with_types(EdgeJobs(database=path, config=make_config()))
    client_app = client.asgi_app()
    host = Starlette(routes=[Mount("/edgejobs", app=client_app)])
    try:
        async with serving(host) as url, httpx.AsyncClient(base_url=url) as http:
            health = await http.get("/edgejobs/healthz")
            assert health.status_code == 200, health.text
            assert health.json()["runner"] == "not running"  # not in this process
            headers = await _token(client)
            listed = await http.get("/edgejobs/api/v1/jobs", headers=headers)
            assert listed.status_code == 200, listed.text
            submitted = await http.post(
                "/edgejobs/api/v1/jobs", json={"job_type": "t.echo"}, headers=headers
            )
            assert submitted.status_code == 201, submitted.text
            async with _with_types(EdgeJobs(database=path, config=make_config())) as runner:
                done = await runner.wait(submitted.json()["id"], timeout=10)
                assert done.status == "completed"
            shown = await http.get(f"/edgejobs/api/v1/jobs/{done.id}", headers=headers)
            assert shown.json()["status"] == "completed"
            # Its /metrics too: the lifespan it never saw had started them, so the storage
            # gauges were missing and the attempts run by the other process never counted.
            await client_app.state.metrics.tail()  # what its follower does at the next commit
            metrics = (await http.get("/edgejobs/metrics")).text
            counted = 'edgejobs_attempts_total{job_type="t.echo",outcome="completed"} 1.0'
            assert counted in metrics, metrics
            assert "edgejobs_database_size_bytes" in metrics
    finally:
        await client.close()


async def test_the_host_app_runs_the_runner_through_the_app_s_lifespan(tmp_path: Path) -> None:
    # The way docs/operations.md shows: the host's lifespan enters edgejobs' own.
    ej = _with_types(EdgeJobs(database=tmp_path / "jobs.db", config=make_config()))
    jobs_app = ej.asgi_app()

    @contextlib.asynccontextmanager
    async def host_lifespan(app: Starlette) -> AsyncIterator[None]:
        async with jobs_app.router.lifespan_context(jobs_app):
            yield

    host = Starlette(routes=[Mount("/edgejobs", app=jobs_app)], lifespan=host_lifespan)
    async with lifespan(host):
        headers = await _token(ej)
        async with serving(host) as url, httpx.AsyncClient(base_url=url) as http:
            submitted = await http.post(
                "/edgejobs/api/v1/jobs", json={"job_type": "t.echo"}, headers=headers
            )
            assert submitted.status_code == 201, submitted.text
            done = await ej.wait(submitted.json()["id"], timeout=10)
            assert done.status == "completed"
            assert (await http.get("/edgejobs/healthz")).json()["runner"] == "running"
            metrics = (await http.get("/edgejobs/metrics")).text
            assert 'edgejobs_attempts_total{job_type="t.echo",outcome="completed"} 1.0' in metrics


async def test_the_openapi_document_names_the_prefix_as_its_server(api: Api) -> None:
    async with serving(api.app, root_path="/jobs") as url, httpx.AsyncClient() as client:
        stripped = (await client.get(url + "/api/v1/openapi.json")).json()
    async with serving(mounted(api)) as url, httpx.AsyncClient() as client:
        mount = (await client.get(url + "/edgejobs/api/v1/openapi.json")).json()
    plain = (await api.client.get("/api/v1/openapi.json")).json()
    assert stripped["servers"] == [{"url": "/jobs"}]
    assert mount["servers"] == [{"url": "/edgejobs"}]
    assert "servers" not in plain  # at the root: the document's own origin
    assert stripped["paths"] == mount["paths"] == plain["paths"]
