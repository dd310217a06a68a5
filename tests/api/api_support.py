"""Helpers of the HTTP API tests: an app on a real SQLite file with tokens of every kind, an
httpx client over ASGI with the app's lifespan driven by hand, and a real uvicorn server."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import threading
from collections.abc import AsyncIterator, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from starlette.applications import Starlette

from edgejobs import EdgeJobs, PermanentError
from edgejobs.config import Config
from edgejobs.models import Job
from edgejobs.runner.context import JobContext
from edgejobs.store import tokens

ORG_A = "acme"
ORG_B = "globex"

ROLE_NAMES = ("viewer", "operator", "admin", "system")
"""Tokens of org A by role, plus a system admin token."""


def make_config(**sections: dict[str, Any]) -> Config:
    """A config for tests: quick shutdown, small limits where tests need them."""
    data: dict[str, Any] = {
        "runner": {"shutdown_grace_s": 2.0, "tick_interval_s": 0.2},
        "retry": {"base_delay_s": 0.01, "max_delay_s": 0.05, "jitter": False},
    }
    for name, values in sections.items():
        data[name] = {**data.get(name, {}), **values}
    return Config.model_validate(data)


class Gates:
    """Per-test events that the ``t.gate`` handler waits on (keyed by a param)."""

    def __init__(self) -> None:
        self.events: dict[str, asyncio.Event] = {}
        self.started: dict[str, asyncio.Event] = {}

    def event(self, key: str) -> asyncio.Event:
        return self.events.setdefault(key, asyncio.Event())

    def started_event(self, key: str) -> asyncio.Event:
        return self.started.setdefault(key, asyncio.Event())


def register_types(ej: EdgeJobs, gates: Gates) -> None:
    """The job types the API tests submit."""

    async def echo(ctx: JobContext, params: dict[str, Any]) -> Any:
        return params

    async def fail(ctx: JobContext, params: dict[str, Any]) -> None:
        raise PermanentError(str(params.get("why", "no reason")))

    async def gate(ctx: JobContext, params: dict[str, Any]) -> str:
        key = str(params["key"])
        gates.started_event(key).set()
        await gates.event(key).wait()
        return "released"

    ej.register("t.echo", echo, timeout_s=10, max_retries=0, dedup=False)
    ej.register("t.dedup", echo, timeout_s=10, max_retries=0)
    ej.register("t.fail", fail, timeout_s=10, max_retries=0, dedup=False)
    ej.register("t.gate", gate, timeout_s=30, max_retries=0, dedup=False)
    ej.register("t.limited", echo, timeout_s=10, rate_limit="2/minute", dedup=False)


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    """Run the app's ASGI lifespan (startup before, shutdown after the block)."""
    to_app: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    from_app: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    task = asyncio.create_task(
        app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, to_app.get, from_app.put)
    )
    await to_app.put({"type": "lifespan.startup"})
    message = await from_app.get()
    assert message["type"] == "lifespan.startup.complete", message
    try:
        yield
    finally:
        await to_app.put({"type": "lifespan.shutdown"})
        message = await from_app.get()
        assert message["type"] == "lifespan.shutdown.complete", message
        await task


@dataclasses.dataclass
class Api:
    """One app under test: the runner, the ASGI client and a token per role."""

    ej: EdgeJobs
    app: Starlette
    client: httpx.AsyncClient
    gates: Gates
    secrets: dict[str, str] = dataclasses.field(default_factory=dict)
    token_ids: dict[str, str] = dataclasses.field(default_factory=dict)

    def auth(self, who: str | None) -> dict[str, str]:
        """Headers for ``who``: a role name, ``"bad"``, ``"revoked"``, ``"b"`` or None."""
        if who is None or who == "none":
            return {}
        if who == "bad":
            return {"Authorization": "Bearer ej_" + "x" * 43}
        return {"Authorization": f"Bearer {self.secrets[who]}"}

    async def make_token(self, name: str, org: str | None, role: str) -> str:
        new = await self.ej.store.write(
            partial(tokens.create_token, org=org, role=role, name=name, now=self.ej.clock.now_ms())
        )
        self.secrets[name] = new.secret
        self.token_ids[name] = new.info.id
        return new.secret

    async def revoke(self, name: str) -> None:
        await self.ej.store.write(
            partial(tokens.revoke_token, token_id=self.token_ids[name], now=self.ej.clock.now_ms())
        )

    async def job(self, org: str = ORG_A, job_type: str = "t.echo", **kwargs: Any) -> Job:
        """Submit through the Python API (no HTTP)."""
        return await self.ej.submit(job_type, org=org, **kwargs)

    async def ended_job(self, org: str = ORG_A) -> Job:
        """A job that ended ``canceled`` (so it can be retried)."""
        job = await self.job(org)
        return await self.ej.cancel(job.id, org=org)


async def make_api(
    path: Path, config: Config | None = None, *, run_workers: bool = False, **ej_kwargs: Any
) -> Api:
    """A started runner behind an ASGI client; without ``run_workers`` nothing runs in the
    background (tests step the pool), with it workers and ticks run as under ``serve``."""
    ej = EdgeJobs(database=path, config=config or make_config(), **ej_kwargs)
    gates = Gates()
    register_types(ej, gates)
    await ej.start(run_workers=run_workers)
    app = ej.asgi_app()
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")
    api = Api(ej, app, client, gates)
    await api.make_token("viewer", ORG_A, "viewer")
    await api.make_token("operator", ORG_A, "operator")
    await api.make_token("admin", ORG_A, "admin")
    await api.make_token("system", None, "admin")
    await api.make_token("b", ORG_B, "admin")
    await api.make_token("revoked", ORG_A, "admin")
    await api.revoke("revoked")
    return api


class ThreadedServer:
    """A real uvicorn serving an app in a thread with its own event loop.

    The runner lives in that loop too (the app's lifespan starts it), exactly like
    ``edgejobs serve``; tests talk to it over loopback with synchronous clients.
    """

    def __init__(self, make_app: Any, port: int) -> None:
        self.make_app = make_app
        self.port = port
        self.server: uvicorn.Server | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.error: BaseException | None = None
        self.ready = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _run(self) -> None:
        async def main() -> None:
            self.loop = asyncio.get_running_loop()
            app = await self.make_app()
            config = uvicorn.Config(
                app,
                host="127.0.0.1",
                port=self.port,
                lifespan="on",
                log_config=None,
                access_log=False,
                timeout_graceful_shutdown=2,
            )
            self.server = uvicorn.Server(config)
            self.ready.set()
            await self.server.serve()

        try:
            asyncio.run(main())
        except BaseException as exc:  # reported to the test
            self.error = exc
            self.ready.set()

    def call(self, coro: Any, timeout: float = 30) -> Any:
        """Run a coroutine in the server's loop and return its result."""
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    @contextlib.contextmanager
    def running(self) -> Iterator[ThreadedServer]:
        self.thread.start()
        self.ready.wait(30)
        for _ in range(600):
            if self.error is not None:
                raise self.error
            if self.server is not None and self.server.started:
                break
            threading.Event().wait(0.05)
        else:
            raise TimeoutError("uvicorn did not start")
        try:
            yield self
        finally:
            assert self.server is not None
            self.server.should_exit = True
            self.thread.join(30)
