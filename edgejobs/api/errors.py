"""The one place where errors become HTTP responses: ``{"error": {"code", "message", "details"}}``.

:class:`~edgejobs.errors.EdgeJobsError` subclasses carry their own ``code`` and
``http_status``; this module adds the few errors only HTTP has (401, 403, 400, 404 for unknown
routes, 405) and the JSON renderer every API response uses. Anything else that escapes a
handler is a bug: :class:`ErrorBoundary` logs it and answers 500 ``internal`` — except that a
process out of file descriptors, threads or memory answers 503 ``out_of_resources``.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError as PydanticValidationError
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from edgejobs.errors import EdgeJobsError, OutOfResources, out_of_resources
from edgejobs.logs import RepeatLimiter

log = logging.getLogger("edgejobs.api")

MAX_DETAILS = 20

_shortages = RepeatLimiter(interval_s=10.0)
"""Requests failed for want of descriptors, threads or memory: one line per 10 s, not one
(with a traceback) per request."""


class Unauthorized(EdgeJobsError):
    """No credentials, or credentials that are unknown, revoked or expired (HTTP 401)."""

    code = "unauthorized"
    http_status = 401


class Forbidden(EdgeJobsError):
    """The caller is known but may not do this (role too low, other org, CSRF) (HTTP 403)."""

    code = "forbidden"
    http_status = 403


class BadRequest(EdgeJobsError):
    """Malformed JSON, a malformed query string or a tampered cursor (HTTP 400)."""

    code = "bad_request"
    http_status = 400


class InvalidCursor(BadRequest):
    """A listing cursor that is malformed, tampered with or from another query (HTTP 400)."""

    code = "invalid_cursor"


def _finite(value: Any) -> Any:
    """``value`` with NaN and infinities replaced by None (JSON has no spelling for them)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value


def dumps(content: Any) -> bytes:
    """Strict JSON bytes for a response body.

    Values a handler stored through the Python API may hold NaN (not JSON) or text with lone
    surrogates (not UTF-8); instead of failing the response, such values are rendered as
    ``null`` and ``\\udXXX`` escapes.
    """
    try:
        return json.dumps(
            content, ensure_ascii=False, allow_nan=False, separators=(",", ":")
        ).encode("utf-8")
    except (ValueError, UnicodeEncodeError):
        return json.dumps(_finite(content), ensure_ascii=True, separators=(",", ":")).encode()


class ApiResponse(JSONResponse):
    """A JSON response rendered by :func:`dumps`."""

    def render(self, content: Any) -> bytes:
        """Serialise ``content``."""
        return dumps(content)


def error_body(code: str, message: str, details: Any = None) -> dict[str, Any]:
    """The SPEC's error body."""
    return {"error": {"code": code, "message": message, "details": details}}


def error_response(
    status: int,
    code: str,
    message: str,
    details: Any = None,
    headers: Mapping[str, str] | None = None,
) -> ApiResponse:
    """An error response with the SPEC's body."""
    return ApiResponse(error_body(code, message, details), status_code=status, headers=headers)


def validation_details(exc: PydanticValidationError) -> list[dict[str, Any]]:
    """Pydantic errors as ``[{"loc", "message", "type"}]`` (never echoing the input)."""
    details = []
    for error in exc.errors(include_url=False, include_input=False)[:MAX_DETAILS]:
        details.append(
            {
                "loc": [part if isinstance(part, int) else str(part) for part in error["loc"]],
                "message": error["msg"],
                "type": error["type"],
            }
        )
    return details


def from_edgejobs_error(exc: EdgeJobsError) -> ApiResponse:
    """Map an :class:`EdgeJobsError` by its ``http_status`` and ``code``."""
    headers: dict[str, str] = {}
    retry_after = getattr(exc, "retry_after_s", None)
    if retry_after is not None and exc.http_status in (429, 503):
        headers["Retry-After"] = str(max(1, math.ceil(retry_after)))
    if exc.http_status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="edgejobs"'
    status = exc.http_status
    if isinstance(exc, OutOfResources):
        # No traceback per request: while the process is short of descriptors, threads or
        # memory, every request that needs one more fails the same way.
        _shortages.warning(log, "answered 503 out_of_resources: %s", exc.message)
    elif status >= 500 and status not in (503, 507):
        log.error("server-side error: %s (%s)", exc.message, exc.code)
    return error_response(status, exc.code, exc.message, exc.details, headers)


async def handle_edgejobs_error(request: Request, exc: Exception) -> Response:
    """Exception handler for :class:`EdgeJobsError`."""
    assert isinstance(exc, EdgeJobsError)
    return from_edgejobs_error(exc)


_HTTP_CODES = {
    400: ("bad_request", "the request is malformed"),
    413: ("payload_too_large", "the request body is too large"),
}


async def handle_http_exception(request: Request, exc: Exception) -> Response:
    """Exception handler for Starlette's routing errors (unknown route, wrong method...)."""
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        code, message = "not_found", f"no route {request.method} {request.url.path[:200]}"
    elif exc.status_code == 405:
        code = "method_not_allowed"
        message = f"{request.url.path[:200]} does not accept {request.method}"
    else:
        code, message = _HTTP_CODES.get(exc.status_code, ("http_error", str(exc.detail)))
    return error_response(exc.status_code, code, message, headers=exc.headers)


class ErrorBoundary:
    """ASGI middleware: an exception no handler mapped is a bug; log it, answer 500 — unless
    it says the process ran out of descriptors, threads or memory (503 ``out_of_resources``)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the app; turn an unexpected exception into the error body."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except ClientDisconnect:
            return  # the client left while sending its body: nobody to answer
        except EdgeJobsError as exc:
            # Raised outside a route (e.g. by the body limit while a middleware read the body).
            if started:
                raise
            response = from_edgejobs_error(exc)
            await response(scope, receive, send)
        except Exception as exc:
            shortage = out_of_resources(exc)
            if shortage is not None:  # no bug: answered 503 and logged without a traceback
                if started:
                    from_edgejobs_error(shortage)  # (its log line)
                    raise
                await from_edgejobs_error(shortage)(scope, receive, send)
                return
            log.exception("unhandled error in %s %s", scope.get("method"), scope.get("path"))
            if started:
                raise
            response = error_response(500, "internal", "internal server error (this is a bug)")
            await response(scope, receive, send)
