"""``GET /api/v1/events``: the Server-Sent Events stream of one org's jobs.

A stream carries ``job`` events (any status change; data: the job object as of that change —
its params, parents and children, its result when the change is its completion, the error's
traceback, and the ETA at that time are read from the job's row as the event is read),
``progress`` events (``{"job_id", "org", "progress", "progress_message", "eta_s"}``) and
``reset`` events (the client missed events that cannot be replayed: reload). Every event has
the event log's ``id``. Which events a stream may carry is decided by the broker
(:mod:`edgejobs.broker`), which checks every event against its job's stored org.

Resuming: a ``Last-Event-ID`` header (or a ``last_event_id`` query parameter, for clients that
cannot set headers) replays exactly the missed events when they are within the replay window,
then the stream goes live; otherwise the first event is a ``reset``.

Every ``[events] keepalive_s`` the stream sends a keep-alive comment (when nothing else was sent)
and checks that its token is still active (and, for the dashboard, that its session was not
ended), at least every 15 s however long that interval: a revoked token or an ended session
closes the stream within that time. A logout
through this server closes its session's streams at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
import struct
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, Protocol, TypeGuard

import anyio
from sse_starlette import EventSourceResponse
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from edgejobs.api.auth import SESSION_COOKIE, Principal, authenticate
from edgejobs.api.body import query_values
from edgejobs.api.errors import BadRequest, Forbidden, Unauthorized
from edgejobs.api.jobs import checked_job_id
from edgejobs.api.openapi import Operation, Param
from edgejobs.broker import Broker, Subscriber, get_broker
from edgejobs.errors import DatabaseBusy, EdgeJobsError, StorageFull
from edgejobs.store.tokens import hash_secret, is_active

if TYPE_CHECKING:
    from edgejobs.app import EdgeJobs

log = logging.getLogger("edgejobs.api.events")

SHUTDOWN_GRACE_S = 1.0
"""On server shutdown, how long a stream may take to end by itself before it is aborted."""
ABORT_FINISH_S = 0.5
"""After aborting a stream, how long to try to end its body cleanly (client not reading)."""
CHUNK_EVENTS = 64
"""At most this many queued events are written to the client at once."""
CREDENTIALS_CHECK_MAX_S = 15.0
"""A stream checks its token (and session) at least this often, however long ``[events]
keepalive_s`` is: ``edgejobs token revoke`` runs in another process, which this server hears of
only by reading, so this bounds how long a revoked token's streams go on."""
LAST_EVENT_ID = re.compile(r"[0-9]{1,19}")
"""An event id as a client may send it back: ASCII digits, 19 at most (an id beyond the newest
event is answered with a ``reset``, never compared in SQL)."""
_OPENED = b": stream open\r\n\r\n"
_KEEPALIVE = b": keep-alive\r\n\r\n"


def _comment(text: str) -> bytes:
    return b": " + " ".join(text.split()).encode() + b"\r\n\r\n"


def parse_last_event_id(request: Request, query_value: str | None) -> int | None:
    """The ``Last-Event-ID`` header, else ``query_value``, the ``last_event_id`` query
    parameter (None: absent)."""
    raw = request.headers.get("last-event-id")
    if raw is None or not raw.strip():
        raw = query_value
    if raw is None or not raw.strip():
        return None
    raw = raw.strip()
    # ASCII digits only: str.isdigit() also accepts "²", which int() then refuses.
    if LAST_EVENT_ID.fullmatch(raw) is None:
        raise BadRequest(
            f"Last-Event-ID must be an event id (a non-negative integer), got {raw!r}"[:200]
        )
    return int(raw)


def stream_org(principal: Principal, requested: str | None) -> str | None:
    """The org a stream is for: the token's own (a tenant naming another org is refused);
    for a system token the ``org`` filter, or None for every org."""
    if requested is not None and not requested.strip():
        requested = None
    if principal.org is None:
        return requested
    if requested is not None and requested != principal.org:
        raise Forbidden("this token may only read the events of its own org")
    return principal.org


class Abortable(Protocol):
    """What :func:`transport_of` needs of a connection's transport to cut it."""

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """The transport's ``socket`` and other details (asyncio's transport API)."""

    def abort(self) -> None:
        """Close at once, dropping what is buffered (asyncio's transport API)."""


def _is_transport(candidate: object) -> TypeGuard[Abortable]:
    # By shape, not by class: uvloop's transports (the loop of uvicorn[standard]) have
    # asyncio's transport methods but do not derive from asyncio.Transport.
    return callable(getattr(candidate, "abort", None)) and callable(
        getattr(candidate, "get_extra_info", None)
    )


def transport_of(send: Send) -> Abortable | None:
    """The connection under an ASGI ``send``, when the server is uvicorn (its ``send`` is a
    method of an object holding the transport; middleware wraps it in closures), on asyncio's
    event loop or uvloop; None when it cannot be found. ASGI has no way to abort a connection
    whose client stopped reading."""
    seen: set[int] = set()
    pending: list[object] = [send]
    while pending and len(seen) < 64:
        candidate = pending.pop()
        if id(candidate) in seen:
            continue
        seen.add(id(candidate))
        transport = getattr(getattr(candidate, "__self__", None), "transport", None)
        if _is_transport(transport):
            return transport
        for cell in getattr(candidate, "__closure__", None) or ():
            with contextlib.suppress(ValueError):  # an empty cell
                if callable(cell.cell_contents):
                    pending.append(cell.cell_contents)
        inner = getattr(candidate, "__wrapped__", None) or getattr(candidate, "__func__", None)
        if inner is not None:
            pending.append(inner)
    return None


def _reset(transport: Abortable) -> None:
    """Cut a connection at once: what is buffered for it in the process and in the kernel is
    dropped (a TCP reset, not a close that would still deliver the kernel's buffer)."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


class EventStream(EventSourceResponse):
    """One subscriber's stream: replay of the missed events, then live events and keep-alives.

    The subscriber is always unregistered when the response ends, however it ends (client
    gone, token revoked, slow client disconnected, server shutdown).
    """

    def __init__(
        self,
        *,
        ej: EdgeJobs,
        broker: Broker,
        subscriber: Subscriber,
        request: Request,
        principal: Principal,
        last_event_id: int | None,
    ) -> None:
        self._ej = ej
        self._broker = broker
        self._subscriber = subscriber
        self._request = request
        self._principal = principal
        self._last_event_id = last_event_id
        self._shutdown = anyio.Event()
        self._response_started = False
        self._response_done = False
        super().__init__(
            self._events(),
            ping=0,  # keep-alives come from the stream itself, with the token re-check
            shutdown_event=self._shutdown,
            shutdown_grace_period=SHUTDOWN_GRACE_S,
            data_sender_callable=self._end_on_shutdown,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve the stream; abortable at once by the broker (slow client, shutdown)."""

        async def tracked_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                self._response_started = True
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                self._response_done = True
            await send(message)

        try:
            with anyio.CancelScope() as cancel_scope:
                self._subscriber.bind_cancel(cancel_scope.cancel)
                await super().__call__(scope, receive, tracked_send)
            if cancel_scope.cancelled_caught and not self._response_done:
                await self._finish_aborted(tracked_send)
        finally:
            self._broker.unsubscribe(self._subscriber)

    async def _finish_aborted(self, send: Send) -> None:
        # End the chunked body so the client sees a clean end of stream and reconnects. A
        # client that does not read at all cannot take even that: the server would keep its
        # connection, and the megabytes buffered for it, for as long as the client likes
        # (closing a transport waits until its buffer is written). Its connection is cut.
        with anyio.move_on_after(ABORT_FINISH_S) as finishing:
            if not self._response_started:
                await send(
                    {"type": "http.response.start", "status": 200, "headers": self.raw_headers}
                )
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        if finishing.cancelled_caught:
            transport = transport_of(send)
            if transport is not None:
                _reset(transport)
                # The server hears of the reset one turn of the loop later: returning before
                # then, the stream looked to uvicorn like an app that did not finish its
                # response, an ERROR line for every client that stopped reading.
                await asyncio.sleep(0)
            else:
                log.warning("could not cut the connection of an event stream that stopped reading")

    async def _end_on_shutdown(self) -> None:
        await self._shutdown.wait()
        self._subscriber.close("the server is shutting down")

    async def _events(self) -> AsyncIterator[bytes]:
        subscriber = self._subscriber
        yield _OPENED
        # The backlog ends at the subscription point whether it replayed or reset, so live
        # events are filtered against that, never against the client's id: it may be ahead of
        # this database (a restored backup, a forged header) and would hide every new event.
        sent_upto = subscriber.start_id
        if self._last_event_id is not None:
            chunk: list[bytes] = []
            async for missed in self._broker.backlog(subscriber, self._last_event_id):
                if subscriber.closed:
                    return
                if missed.kind == "reset" or subscriber.matches(missed):
                    chunk.append(missed.encode())
                if len(chunk) >= CHUNK_EVENTS:
                    yield b"".join(chunk)
                    chunk = []
            if chunk:
                yield b"".join(chunk)
        loop_time = anyio.current_time
        interval = self._broker.keepalive_s
        check_every = min(interval, CREDENTIALS_CHECK_MAX_S)
        last_sent = loop_time()
        next_check = last_sent + check_every
        while True:
            wait = min(next_check, last_sent + interval) - loop_time()
            events = await subscriber.take(wait, CHUNK_EVENTS)
            if subscriber.closed:
                yield _comment(f"closing: {subscriber.closed_reason}")
                return
            now = loop_time()
            # Events queued together go out in one write; the org is checked once more here.
            out = [e.encode() for e in events if e.id > sent_upto and subscriber.matches(e)]
            if out:
                yield b"".join(out)
                last_sent = now
            if now >= next_check:
                reason = await self._authorization_ended()
                if reason is not None:
                    yield _comment(f"closing: {reason}")
                    return
                next_check = loop_time() + check_every
            if loop_time() - last_sent >= interval:
                yield _KEEPALIVE
                last_sent = loop_time()

    async def _authorization_ended(self) -> str | None:
        """Why the stream may no longer be served, or None while its credentials stand."""
        principal = self._principal
        try:
            if principal.via_cookie:
                # One read: the session lookup already requires its token not to be revoked.
                try:
                    again = await authenticate(self._request, principal.role)
                except Unauthorized:
                    return "the token was revoked or the session ended"
                if again.token_id != principal.token_id:
                    return "the session changed"
            elif not await self._ej.store.read(lambda conn: is_active(conn, principal.token_id)):
                return "the token was revoked"
        except (DatabaseBusy, StorageFull):
            return None  # a busy database is no reason to drop a client; check again later
        except EdgeJobsError as exc:
            return f"the session ended ({exc.code})"
        return None


async def open_stream(ej: EdgeJobs, request: Request) -> Response:
    """Authenticate (role viewer), resolve the filters and open the caller's stream."""
    principal = await authenticate(request, "viewer")
    # Read like every other route's query: an unknown parameter (a misspelled filter would
    # stream everything) or a repeated one (``org=a&org=b`` must not mean whichever came
    # first) is a 400.
    query = query_values(request, _QUERY)
    org = stream_org(principal, query.get("org"))
    job_id = query.get("job_id") or None
    last_event_id = parse_last_event_id(request, query.get("last_event_id"))
    if job_id is not None:
        # Another org's job is "not found", exactly like GET /api/v1/jobs/{id}.
        await ej.get(checked_job_id(job_id), org=org)
    broker = get_broker(ej)
    await broker.ensure_started()
    session = request.cookies.get(SESSION_COOKIE) if principal.via_cookie else None
    subscriber = broker.subscribe(
        org=org,
        job_id=job_id,
        owner=principal.token_id,
        session=hash_secret(session) if session else None,
    )
    return EventStream(
        ej=ej,
        broker=broker,
        subscriber=subscriber,
        request=request,
        principal=principal,
        last_event_id=last_event_id,
    )


_PARAMS = (
    Param("job_id", {"type": "string", "minLength": 1}, "only the events of this job"),
    Param("org", {"type": "string", "minLength": 1}, "system tokens: only this org's events"),
    Param(
        "Last-Event-ID",
        {"type": "string", "pattern": "^[0-9]+$"},
        "resume after this event id (replays the missed events, or sends `reset`)",
        location="header",
    ),
    Param(
        "last_event_id",
        {"type": "string", "pattern": "^[0-9]+$"},
        "the same as the Last-Event-ID header, for clients that cannot set headers",
    ),
)
_QUERY = frozenset(param.name for param in _PARAMS if param.location == "query")
"""The query parameters the stream takes; any other is a 400."""


def operations(ej: EdgeJobs) -> list[Operation]:
    """The SSE route, documented for ``/api/v1/openapi.json``."""

    async def stream_events(request: Request) -> Response:
        return await open_stream(ej, request)

    return [
        Operation(
            "GET",
            "/api/v1/events",
            stream_events,
            "Stream this org's job and progress events (Server-Sent Events)",
            "viewer",
            {200: "text/event-stream"},
            params=_PARAMS,
            tags=("events",),
            description=(
                "Events `job` (data: the job object as of that change),"
                " `progress` (data: job_id, org, progress, progress_message, eta_s) and"
                " `reset` (missed events beyond the replay window: reload). Every event has"
                " an `id`; keep-alive comments every `[events] keepalive_s`."
            ),
        )
    ]


async def on_startup(ej: EdgeJobs) -> None:
    """Called from the app's lifespan after the runner started: start the event tailer."""
    await get_broker(ej).start()


async def on_shutdown(ej: EdgeJobs) -> None:
    """End every open stream (a client that stopped reading: aborted after a second) and stop
    the tailer; new streams are refused with 503 from then on.

    uvicorn runs the lifespan's shutdown only after open connections ended, so this must run
    when shutdown *begins* (``edgejobs serve`` calls it on the signal). As a fallback, every
    stream also watches uvicorn's exit flag (``sse_starlette``) and ends by itself when the
    server was stopped some other way, so a shutdown never waits on a stream.
    """
    await get_broker(ej).close()
