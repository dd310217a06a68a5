"""Pure ASGI middleware: the Host allow-list, the request body limit, the security headers,
and opening the database for an app whose lifespan did not run."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from edgejobs.api.errors import error_response
from edgejobs.errors import EdgeJobsError, PayloadTooLarge, RequestTimeout
from edgejobs.hosts import host_allowed, host_name
from edgejobs.logs import RepeatLimiter

if TYPE_CHECKING:
    from edgejobs.app import EdgeJobs

_log = logging.getLogger("edgejobs.api")

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)

SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
)


def route_path(scope: Scope) -> str:
    """The request's path inside this app: ``path`` without the ``root_path`` the app is
    served under (a ``Mount``, uvicorn's ``--root-path``), which both leave in ``path``."""
    path: str = scope.get("path", "")
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        return path[len(root) :] or "/"
    return path


class SecurityHeaders:
    """Adds the CSP, ``nosniff`` and ``no-referrer`` headers to every HTTP response, and
    ``Cache-Control: no-store`` to API answers (tenant data must not linger in caches)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Wrap ``send`` to extend the response headers."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        no_store = route_path(scope).startswith("/api/")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                names = {name.lower() for name, _ in message.get("headers", [])}
                extra = [(k, v) for k, v in SECURITY_HEADERS if k not in names]
                if no_store and b"cache-control" not in names:
                    extra.append((b"cache-control", b"no-store"))
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


class AllowedHosts:
    """Answers 400 ``host_not_allowed`` to a request whose ``Host`` header names no host in
    ``patterns`` (see :func:`edgejobs.hosts.allowed_patterns`; None allows any host).

    This is what stops DNS rebinding (:mod:`edgejobs.hosts`). A request without a ``Host``
    header (HTTP/1.0) passes: browsers always send one, so it cannot come from a rebinding
    page, and a plain client on the machine keeps working.
    """

    def __init__(self, app: ASGIApp, patterns: tuple[str, ...] | None) -> None:
        self.app = app
        self.patterns = patterns
        # Said in the log too: after an upgrade, a proxy that forwards its public name gets
        # 400s, and the operator reads the log, not the browser's answer. Once a minute per
        # name, so a rebinding page that keeps trying cannot flood it.
        self._refusals = RepeatLimiter()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Check every ``Host`` header, then serve."""
        if self.patterns is None or scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for key, value in scope.get("headers", []):
            if key != b"host":
                continue
            header = value.decode("latin-1")
            name = host_name(header)
            if name is not None and host_allowed(name, self.patterns):
                continue
            shown = json.dumps(header if len(header) <= 100 else header[:100] + "...")
            if name is None:
                message = f"malformed Host header {shown}"
            else:
                message = (
                    f"this server does not answer to the host name {json.dumps(name)} (Host:"
                    f" {shown}); to allow it, add it to [server] allowed_hosts (or"
                    " EDGEJOBS_ALLOWED_HOSTS)"
                )
            self._refusals.warning(_log, "refused a request: %s", message)
            response = error_response(400, "host_not_allowed", message)
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


BODY_DEADLINE_S = 60.0
"""A request's whole body must arrive within this many seconds of its first read (408, and
the connection closed, otherwise): a client trickling a byte now and then must not hold a
connection and its buffered bytes for good (uvicorn has no read timeout of its own)."""

SESSION_BODY_BYTES = 4096
"""The body limit of ``/login`` and ``/logout``, which anyone may reach without a token: a
token is at most 256 characters, and a login body of a megabyte of JSON cost ~0.4 s to parse
on the event loop, so a few clients without any token could stall every job and stream."""


class BodyLimit:
    """Refuses request bodies larger than ``max_bytes`` (or a smaller limit for the paths in
    ``limits``) before anything parses them, and bodies that take too long to arrive.

    A declared ``Content-Length`` over the limit is answered 413 at once, without reading;
    otherwise the body is counted while it streams in and reading stops at the first chunk
    past the limit (:class:`PayloadTooLarge` surfaces in the handler that reads, and becomes
    413 there), so a chunked upload cannot make the server buffer more than the limit. A
    body still incomplete :data:`BODY_DEADLINE_S` after its first read raises
    :class:`RequestTimeout` (408) the same way, counted from the request's arrival. Any answer
    that starts before the body was all read (those two, or a 401 that never read it) closes
    the connection: the rest of that body is never read, so it cannot carry another request.
    """

    def __init__(
        self, app: ASGIApp, max_bytes: int, limits: Mapping[str, int] | None = None
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.limits = dict(limits or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Check the declared length, then count the streamed one against the clock."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = min(self.max_bytes, self.limits.get(route_path(scope), self.max_bytes))
        has_body = False  # said by its headers (under HTTP/2 no header says it)
        for name, value in scope.get("headers", []):
            if name == b"transfer-encoding":
                has_body = True
            elif name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared < 0:
                    response = error_response(400, "bad_request", "invalid Content-Length header")
                    await response(scope, receive, send)
                    return
                if declared > limit:
                    response = error_response(
                        413,
                        PayloadTooLarge.code,
                        f"the request body is {declared} bytes; the limit is {limit}",
                        headers={"Connection": "close"},
                    )
                    await response(scope, receive, send)
                    return
                has_body = has_body or declared > 0
        # From the request's arrival: a route that answers without reading the body (a 401
        # before anything else) must not leave the server reading a trickle of it for good.
        deadline = asyncio.get_running_loop().time() + BODY_DEADLINE_S
        received = 0
        complete = False  # the whole body was read (or the client left)
        started = False  # the response began: the route no longer listens for errors
        cut = False  # the body was refused part-way

        async def limited_receive() -> Message:
            nonlocal received, complete, cut
            if complete:
                return await receive()  # only the disconnect is left to wait for
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                cut = True
                if started:  # a stream, say, that waits for the disconnect: this is one
                    return {"type": "http.disconnect"}
                raise RequestTimeout(
                    f"the request body did not arrive within {BODY_DEADLINE_S:g} s"
                ) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    cut = True
                    raise PayloadTooLarge(f"the request body is larger than {limit} bytes")
                complete = not message.get("more_body", False)
            else:
                complete = True  # the client left
            return message

        async def closing_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                # An answer before the body was all read (refused, timed out, or never read):
                # the rest of it must not be read for the next request on this connection.
                if cut or (has_body and not complete):
                    headers = [
                        (k, v) for k, v in message.get("headers", []) if k.lower() != b"connection"
                    ]
                    message = {**message, "headers": [*headers, (b"connection", b"close")]}
            await send(message)

        await self.app(scope, limited_receive, closing_send)


class OpenOnFirstRequest:
    """Opens the app's :class:`EdgeJobs` as a client (no workers) at the first request, when
    nothing started it.

    The app's lifespan starts the runner, but an app mounted in another one never sees a
    lifespan event (Starlette's ``Mount`` does not pass them on). Its routes then read a
    database nobody opened, and every write failed with "the store is closed". Opened here, the
    app serves the database like an ``EdgeJobs`` without ``start``: the runner is another
    process (``edgejobs worker``), or the host app runs this app's lifespan itself.
    """

    def __init__(
        self,
        app: ASGIApp,
        ej: EdgeJobs,
        on_open: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.app = app
        self.ej = ej
        self.on_open = on_open
        """Called once the database is open (the app's metrics, which its lifespan starts
        otherwise: mounted without it, /metrics had no storage gauges and counted nothing)."""
        self.opened = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Open the database once (a no-op when the lifespan did), then serve."""
        if not self.opened and scope["type"] in ("http", "websocket"):
            try:
                await self.ej.open()
            except EdgeJobsError as exc:
                if scope["type"] == "http":
                    response = error_response(503, exc.code, exc.message)
                    await response(scope, receive, send)
                return
            self.opened = True
            if self.on_open is not None:
                await self.on_open()
        await self.app(scope, receive, send)
