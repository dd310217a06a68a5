"""A tiny reverse proxy and a real uvicorn for the tests of edgejobs behind a proxy (imported as
``proxy_kit``; ``tests/conftest.py`` puts this folder on ``sys.path``).

The proxy does what ``location /jobs/ { proxy_pass http://127.0.0.1:8000/; }`` does in nginx:
a request under the prefix goes upstream without it, ``/jobs`` alone is redirected to
``/jobs/``, and answers (Server-Sent Events too) stream back as they come.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Iterator

import httpx
import uvicorn
from ej_testkit import free_port
from starlette.types import ASGIApp, Receive, Scope, Send

_HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"transfer-encoding", b"host"})


def prefix_proxy(upstream: str, prefix: str, headers: dict[str, str] | None = None) -> ASGIApp:
    """An ASGI reverse proxy to ``upstream`` for the requests under ``prefix`` (no trailing
    slash), which it strips; ``headers`` are added to every forwarded request (say,
    ``X-Forwarded-Proto``)."""
    added = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (message := await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        path: str = scope["path"]
        if not path.startswith(prefix + "/"):
            status, location = (301, prefix + "/") if path == prefix else (404, "")
            await send(
                {
                    "type": "http.response.start",
                    "status": status,
                    "headers": [(b"location", location.encode())] if location else [],
                }
            )
            await send({"type": "http.response.body", "body": b""})
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        target = path[len(prefix) :]
        if scope["query_string"]:
            target += "?" + scope["query_string"].decode("latin-1")
        forwarded = [(k, v) for k, v in scope["headers"] if k not in _HOP_BY_HOP] + added
        async with httpx.AsyncClient(base_url=upstream, timeout=None) as client:
            request = client.build_request(scope["method"], target, headers=forwarded, content=body)
            response = await client.send(request, stream=True)
            try:
                await send(
                    {
                        "type": "http.response.start",
                        "status": response.status_code,
                        "headers": [
                            (k.lower(), v)
                            for k, v in response.headers.raw
                            if k.lower() not in _HOP_BY_HOP
                        ],
                    }
                )
                async for chunk in response.aiter_raw():
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await send({"type": "http.response.body", "body": b""})
            finally:
                await response.aclose()

    return app


@contextlib.asynccontextmanager
async def serving(app: ASGIApp, root_path: str = "") -> AsyncIterator[str]:
    """``app`` on a real uvicorn in this event loop, without running its lifespan (the test
    runs it); yields the server's base URL."""
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=free_port(),
        lifespan="off",
        log_config=None,
        access_log=False,
        root_path=root_path,
        timeout_graceful_shutdown=1,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:  # uvicorn has no event for it
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{config.port}"
    finally:
        server.should_exit = True
        await task


@contextlib.contextmanager
def serving_in_thread(app: ASGIApp) -> Iterator[str]:
    """:func:`serving` for synchronous tests: uvicorn in a thread with its own event loop."""
    url: list[str] = []
    started = threading.Event()
    stop: list[asyncio.Event] = []

    async def main() -> None:
        stop.append(asyncio.Event())
        async with serving(app) as base:
            url.append(base)
            started.set()
            await stop[0].wait()

    loop_of: list[asyncio.AbstractEventLoop] = []

    def run() -> None:
        loop = asyncio.new_event_loop()
        loop_of.append(loop)
        try:
            loop.run_until_complete(main())
        finally:
            loop.close()
            started.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    started.wait(30)
    if not url:
        raise RuntimeError("the proxy did not start")
    try:
        yield url[0]
    finally:
        loop_of[0].call_soon_threadsafe(stop[0].set)
        thread.join(30)
