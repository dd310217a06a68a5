"""Deployment behind a reverse proxy, under a path prefix, and mounted in another app.

A real uvicorn serves the app under a prefix the way a proxy that strips it sees it
(``root_path``, what ``--root-path`` sets), a Starlette app mounts it at ``/edgejobs``, and a
tiny reverse proxy (``proxy_kit``) strips ``/jobs`` in front of a plain server.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from urllib.parse import urljoin

import httpx
import pytest
from api_support import Api
from proxy_kit import prefix_proxy, serving
from starlette.applications import Starlette
from starlette.routing import Mount


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
