"""Helpers of the SSE tests (imported as ``sse_support``; see conftest.py): a real uvicorn on a
free loopback port, tokens, and a small Server-Sent Events reader over httpx streaming."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import closing
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from ej_testkit import free_port, poll_until

from edgejobs import EdgeJobs
from edgejobs.broker import Broker, get_broker
from edgejobs.config import Config, EventsConfig, ProgressConfig, RunnerConfig
from edgejobs.runner.context import JobContext
from edgejobs.store.tokens import create_token, revoke_token

REPO = Path(__file__).resolve().parents[2]
"""The checkout (for subprocesses: ``PYTHONPATH``)."""

GUARD_S = 30.0
"""Hang guard for every wait in these tests (never a performance bound)."""


def make_config(
    *,
    keepalive_s: float = 15.0,
    buffer: int = 1000,
    replay_max_events: int = 10000,
    replay_max_age_s: float = 3600.0,
    min_interval_ms: int = 0,
    workers: int = 8,
    shutdown_grace_s: float = 5.0,
    max_streams_per_token: int = 0,
) -> Config:
    """A configuration for one test (events and progress settings overridden; tests open
    many streams with one token, so by default without the per-token limit)."""
    return Config(
        runner=RunnerConfig(workers=workers, shutdown_grace_s=shutdown_grace_s),
        progress=ProgressConfig(min_interval_ms=min_interval_ms),
        events=EventsConfig(
            keepalive_s=keepalive_s,
            subscriber_buffer=buffer,
            replay_max_events=replay_max_events,
            replay_max_age_s=replay_max_age_s,
            max_streams_per_token=max_streams_per_token,
        ),
    )


def register_job_types(ej: EdgeJobs) -> None:
    """The job types the SSE tests run."""

    @ej.job_type("quick", max_retries=0, dedup=False)
    async def quick(ctx: JobContext, params: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True}

    @ej.job_type("steps", max_retries=0, dedup=False)
    async def steps(ctx: JobContext, params: dict[str, Any]) -> dict[str, Any]:
        for percent in params.get("steps", [25, 50, 75]):
            await ctx.progress(percent, params.get("message") or f"step {percent}")
            await asyncio.sleep(params.get("pause_s", 0.005))
        return {"ok": True}

    @ej.job_type("gate", max_retries=0, dedup=False)
    async def gate(ctx: JobContext, params: dict[str, Any]) -> None:
        # Runs until a test cancels it: a job that stays "running".
        await asyncio.sleep(3600)


@dataclasses.dataclass
class Token:
    """A token's secret (for the Authorization header) and id (to revoke it)."""

    secret: str
    id: str

    @property
    def headers(self) -> dict[str, str]:
        """The Authorization header."""
        return {"Authorization": f"Bearer {self.secret}"}


async def make_token(ej: EdgeJobs, org: str | None, role: str = "viewer") -> Token:
    """Create a token of ``org`` (None: a system token)."""
    new = await ej.store.write(
        partial(create_token, org=org, role=role, name="sse-test", now=ej.clock.now_ms())
    )
    return Token(new.secret, new.info.id)


async def revoke(ej: EdgeJobs, token: Token) -> None:
    """Revoke a token."""
    await ej.store.write(partial(revoke_token, token_id=token.id, now=ej.clock.now_ms()))


class Server:
    """``ej``'s app served by a real uvicorn on a free loopback port, in this event loop."""

    def __init__(self, ej: EdgeJobs) -> None:
        self.ej = ej
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            ej.asgi_app(),
            host="127.0.0.1",
            port=self.port,
            lifespan="on",
            log_level="warning",
            timeout_graceful_shutdown=None,
        )
        self.server = uvicorn.Server(config)
        self.task: asyncio.Task[None] | None = None

    @property
    def broker(self) -> Broker:
        """The broker serving the streams."""
        return get_broker(self.ej)

    async def start(self) -> Server:
        """Serve, and return once uvicorn accepts connections."""
        self.task = asyncio.create_task(self.server.serve())
        async with asyncio.timeout(GUARD_S):
            while not self.server.started:
                if self.task.done():
                    self.task.result()
                await asyncio.sleep(0.01)
        return self

    async def stop(self) -> None:
        """Ask uvicorn to exit (like SIGTERM does) and wait until it has."""
        if self.task is None:
            return
        self.server.should_exit = True
        async with asyncio.timeout(GUARD_S):
            await self.task
        self.task = None


Serve = Callable[..., Awaitable[Server]]
"""The type of the ``serve`` fixture (conftest.py): ``await serve(config=..., clock=...)``."""


def client(**kwargs: Any) -> httpx.AsyncClient:
    """An httpx client for streams: no read timeout (the tests guard every wait themselves)."""
    return httpx.AsyncClient(
        timeout=httpx.Timeout(10.0, read=None),
        limits=httpx.Limits(max_connections=1000, max_keepalive_connections=0),
        **kwargs,
    )


@dataclasses.dataclass
class SSE:
    """One received event."""

    id: int | None
    event: str
    data: Any


class Stream:
    """Reads Server-Sent Events from a streaming httpx response."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self._lines = response.aiter_lines()
        self.comments: list[str] = []
        self.ended = False

    async def next(self) -> SSE | None:
        """The next event, or None when the server ended the stream."""
        fields: dict[str, str] = {}
        data: list[str] = []
        while True:
            try:
                line = await anext(self._lines)
            except (StopAsyncIteration, httpx.RemoteProtocolError, httpx.ReadError):
                self.ended = True
                return None
            if line == "":
                if data or fields:
                    raw_id = fields.get("id")
                    text = "\n".join(data)
                    return SSE(
                        id=int(raw_id) if raw_id else None,
                        event=fields.get("event", "message"),
                        data=json.loads(text) if text else None,
                    )
                continue
            if line.startswith(":"):
                self.comments.append(line[1:].strip())
                continue
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "data":
                data.append(value)
            else:
                fields[name] = value

    async def until(self, predicate: Callable[[SSE], bool]) -> list[SSE]:
        """Events up to and including the first one ``predicate`` accepts."""
        seen: list[SSE] = []
        async with asyncio.timeout(GUARD_S):
            while True:
                event = await self.next()
                assert event is not None, f"stream ended early after {seen[-3:]}"
                seen.append(event)
                if predicate(event):
                    return seen

    async def until_end(self) -> list[SSE]:
        """Every event until the server ends the stream."""
        seen: list[SSE] = []
        async with asyncio.timeout(GUARD_S):
            while (event := await self.next()) is not None:
                seen.append(event)
        return seen


@contextlib.asynccontextmanager
async def open_stream(
    http: httpx.AsyncClient,
    server: Server,
    token: Token,
    *,
    params: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
    expect: int = 200,
) -> AsyncIterator[Stream]:
    """GET /api/v1/events and read it as a :class:`Stream` (the subscription is registered
    once this yields: the server subscribes before it sends the response headers)."""
    async with http.stream(
        "GET",
        server.base_url + "/api/v1/events",
        params=params,
        headers={**token.headers, **(headers or {})},
    ) as response:
        assert response.status_code == expect, (response.status_code, await response.aread())
        if expect == 200:
            assert response.headers["content-type"].startswith("text/event-stream")
        yield Stream(response)


def is_final(job_id: str, status: str = "completed") -> Callable[[SSE], bool]:
    """Predicate: the ``job`` event that shows ``job_id`` in ``status``."""
    return lambda e: e.event == "job" and e.data["id"] == job_id and e.data["status"] == status


def event_rows(path: Path, *, where: str = "1", args: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
    """Event rows as committed in the database file, oldest first."""
    with closing(sqlite3.connect(str(path), timeout=10)) as conn:
        conn.row_factory = sqlite3.Row
        rows = conn.execute(f"SELECT * FROM events WHERE {where} ORDER BY id", args).fetchall()
    return [dict(r) for r in rows]


async def wait_for(condition: Callable[[], bool], what: str) -> None:
    """Poll ``condition`` until it holds (hang-guarded)."""
    await poll_until(
        condition, timeout=GUARD_S, interval=0.01, message=f"timed out waiting for {what}"
    )


async def start_ej(path: Path, config: Config, **kwargs: Any) -> EdgeJobs:
    """An EdgeJobs on ``path`` with the test job types, its runner started."""
    ej = EdgeJobs(database=path, config=config, **kwargs)
    register_job_types(ej)
    await ej.start()
    return ej
