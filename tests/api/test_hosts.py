"""The Host allow-list (``[server] allowed_hosts``): what stops DNS rebinding.

A page on another site can re-point its own name at 127.0.0.1; the victim's browser then
reads the loopback server as that site, sending the site's name in ``Host``. A server bound
to loopback answers only loopback names by default; one whose address it does not know
(mounted, run by another server) applies only a configured list.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_support import make_config
from ej_testkit import asgi_client
from proxy_kit import prefix_proxy, serving
from starlette.applications import Starlette
from starlette.routing import Mount

from edgejobs import EdgeJobs
from edgejobs.api.app import create_app


@contextlib.asynccontextmanager
async def app_of(
    tmp_path: Path, listen_host: str | None, **server: Any
) -> AsyncIterator[Starlette]:
    """The app of an EdgeJobs (opened by its first request) with these ``[server]`` keys, as
    ``serve`` on ``listen_host`` builds it (None: as a host app mounts it)."""
    ej = EdgeJobs(database=tmp_path / "hosts.db", config=make_config(server=server))
    try:
        yield create_app(ej, listen_host=listen_host)
    finally:
        await ej.close()


async def status(app: Starlette, host: str, path: str = "/api/v1/openapi.json") -> int:
    """The status of ``GET path`` with this ``Host`` header, over ASGI."""
    async with asgi_client(app, "http://127.0.0.1:8000") as client:
        return (await client.get(path, headers={"Host": host})).status_code


async def test_a_loopback_server_refuses_other_host_names_on_every_route(tmp_path: Path) -> None:
    async with app_of(tmp_path, "127.0.0.1") as app:
        async with asgi_client(app, "http://127.0.0.1") as client:
            for method, path in [
                ("GET", "/metrics"),
                ("GET", "/healthz"),
                ("GET", "/api/v1/openapi.json"),
                ("GET", "/"),
                ("GET", "/static/app.js"),
                ("GET", "/api/v1/jobs"),
                ("GET", "/api/v1/events"),
                ("POST", "/login"),
            ]:
                answer = await client.request(
                    method, path, headers={"Host": "evil.example:8000"}, json={}
                )
                assert answer.status_code == 400, (path, answer.text)
                error = answer.json()["error"]
                assert error["code"] == "host_not_allowed"
                assert '"evil.example"' in error["message"]
                assert "[server] allowed_hosts" in error["message"]
                assert answer.headers["x-content-type-options"] == "nosniff"
        # Every spelling of a loopback name, any port; malformed headers are refused.
        for host in [
            "127.0.0.1:8000",
            "127.0.0.1",
            "localhost:1",
            "LocalHost.",
            "[::1]:8000",
            "[0:0::1]",
        ]:
            assert await status(app, host) == 200, host
        for host in ["localhost.evil.example", "127.0.0.1.nip.io", "a:b", "[::1", ""]:
            assert await status(app, host) == 400, host


async def test_a_configured_list_with_wildcards(tmp_path: Path) -> None:
    hosts = ["Box.Local.", "*.example.com", "10.0.0.5", "::2"]
    async with app_of(tmp_path, "0.0.0.0", allowed_hosts=hosts) as app:
        for host in ["box.local", "BOX.LOCAL:443", "jobs.example.com", "a.b.example.com:8000"]:
            assert await status(app, host) == 200, host
        for host in ["10.0.0.5", "[::2]:8000", "localhost:8000", "127.0.0.1"]:
            assert await status(app, host) == 200, host
        for host in ["example.com", "badexample.com", "box.local.evil", "10.0.0.6", "[::3]"]:
            assert await status(app, host) == 400, host
    async with app_of(tmp_path, "127.0.0.1", allowed_hosts=["*"]) as app:
        assert await status(app, "anything.example") == 200


async def test_off_the_loopback_or_without_a_known_address_any_host_by_default(
    tmp_path: Path,
) -> None:
    """Deployments behind proxies keep working; the docs recommend setting the list."""
    for listen_host in ["0.0.0.0", "192.168.1.10", "", None]:
        async with app_of(tmp_path, listen_host) as app:
            assert await status(app, "jobs.example.com") == 200, listen_host


async def test_a_mounted_app_applies_the_configured_list(tmp_path: Path) -> None:
    async with app_of(tmp_path, None, allowed_hosts=["box.local"]) as app:
        host_app = Starlette(routes=[Mount("/edgejobs", app=app)])
        assert await status(host_app, "box.local", "/edgejobs/api/v1/openapi.json") == 200
        assert await status(host_app, "evil.example", "/edgejobs/api/v1/openapi.json") == 400


async def test_a_proxy_forwarding_its_host_name_needs_it_allowed(tmp_path: Path) -> None:
    """nginx's ``proxy_set_header Host $host`` in front of a loopback ``serve``."""
    forwarding = {"Host": "box.local"}
    for allowed, expected in [(None, 400), (["box.local"], 200)]:
        server = {} if allowed is None else {"allowed_hosts": allowed}
        async with (
            app_of(tmp_path, "127.0.0.1", **server) as app,
            serving(app) as upstream,
            serving(prefix_proxy(upstream, "/jobs", forwarding)) as url,
            httpx.AsyncClient() as client,
        ):
            answer = await client.get(url + "/jobs/api/v1/openapi.json")
            assert answer.status_code == expected, answer.text


async def raw_status(url: str, request: bytes) -> bytes:
    """The status line a real server answers to ``request`` (sent as it is)."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(request)
        await writer.drain()
        return await reader.readline()
    finally:
        writer.close()
        await writer.wait_closed()


@pytest.mark.parametrize(
    ("request_bytes", "expected"),
    [
        (b"GET /api/v1/openapi.json HTTP/1.0\r\n\r\n", b" 200 "),  # no Host: not a browser
        (b"GET /api/v1/openapi.json HTTP/1.1\r\nHost: evil.example\r\n\r\n", b" 400 "),
    ],
)
async def test_over_a_real_server(tmp_path: Path, request_bytes: bytes, expected: bytes) -> None:
    async with app_of(tmp_path, "127.0.0.1") as app, serving(app) as url:
        assert expected in await raw_status(url, request_bytes)
        async with httpx.AsyncClient() as client:  # as the SSE and dashboard tests connect
            assert (await client.get(url + "/api/v1/openapi.json")).status_code == 200


async def test_a_refused_host_name_is_logged_once_a_minute(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The operator of a proxy that forwards an unlisted name reads why in the log; a page
    that keeps retrying does not flood it."""
    async with app_of(tmp_path, "127.0.0.1") as app:
        with caplog.at_level("WARNING", logger="edgejobs.api"):
            for _ in range(5):
                assert await status(app, "jobs.example.com") == 400
    refusals = [r.getMessage() for r in caplog.records if "refused a request" in r.getMessage()]
    assert len(refusals) == 1, refusals
    assert '"jobs.example.com"' in refusals[0]
    assert "[server] allowed_hosts" in refusals[0]
