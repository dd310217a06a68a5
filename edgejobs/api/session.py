"""Dashboard sign-in: ``POST /login`` trades a token for a session cookie, ``POST /logout``
ends the session.

The session id lives in an HttpOnly, SameSite=Strict cookie (scripts cannot read it, other
sites cannot send it); only its SHA-256 is stored, bound to the token, so revoking the token
ends its sessions. The CSRF token is in a readable cookie and in the login answer, for the
dashboard to echo in ``X-CSRF-Token``. A logout also closes the session's open event streams.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlsplit

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from edgejobs.api.auth import (
    CSRF_COOKIE,
    SESSION_COOKIE,
    CsrfFailed,
    app_of,
    check_csrf,
)
from edgejobs.api.body import parse_json, read_model, validate
from edgejobs.api.errors import ApiResponse, BadRequest, Unauthorized
from edgejobs.api.openapi import Operation
from edgejobs.api.schemas import EmptyBody, Login, LoginOut, LogoutOut
from edgejobs.broker import get_broker
from edgejobs.store import tokens

if TYPE_CHECKING:
    from edgejobs.app import EdgeJobs

_FORM = "application/x-www-form-urlencoded"


def _login_body(raw: bytes, content_type: str) -> Login:
    if content_type == _FORM:
        try:
            fields = parse_qs(
                raw.decode("utf-8"), keep_blank_values=True, max_num_fields=10, strict_parsing=True
            )
        except (UnicodeDecodeError, ValueError):
            raise BadRequest("malformed form body") from None
        if any(len(values) != 1 for values in fields.values()):
            raise BadRequest("each form field may be given once")
        return validate(Login, {key: values[0] for key, values in fields.items()})
    return validate(Login, parse_json(raw))


def _set_cookies(
    response: Response, request: Request, session: tokens.NewSession, ttl_s: int
) -> None:
    secure = request.url.scheme == "https"
    response.set_cookie(
        SESSION_COOKIE,
        session.session_id,
        max_age=ttl_s,
        path="/",
        secure=secure,
        httponly=True,
        samesite="strict",
    )
    response.set_cookie(
        CSRF_COOKIE,
        session.csrf_token,
        max_age=ttl_s,
        path="/",
        secure=secure,
        httponly=False,
        samesite="strict",
    )


def _refuse_cross_site(request: Request) -> None:
    """Refuse a login another site's page made the browser send (403).

    Login CSRF: a form on any site could post the attacker's token here, and the answer's
    cookies (set on a top-level navigation whatever SameSite says) would sign the victim into
    the attacker's org, replacing the victim's own session. Browsers say where a request comes
    from in ``Sec-Fetch-Site``; older ones only in ``Origin``, compared with ``Host`` then.
    Only the dashboard's own pages (``same-origin``) and a request the user made by hand
    (``none``) may sign in: ``same-site`` is another origin too — another port of the same
    host, a sibling subdomain — which the ``Origin`` comparison refuses as well.
    Clients that are not browsers send neither and are let through.
    """
    site = request.headers.get("sec-fetch-site")
    if site is not None:
        if site not in ("same-origin", "none"):
            raise CsrfFailed("a login from another site's page is refused")
        return
    origin = request.headers.get("origin")
    if origin is not None and urlsplit(origin).netloc != request.headers.get("host", ""):
        raise CsrfFailed("a login from another site's page is refused")


async def login(request: Request) -> Response:
    """Start a session from a token (JSON ``{"token": ...}`` or a form field ``token``)."""
    _refuse_cross_site(request)
    ej = app_of(request)
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    body = _login_body(await request.body(), content_type)
    secret = body.token.strip()
    info = await ej.store.read(lambda conn: tokens.lookup_secret(conn, secret))
    if info is None:
        raise Unauthorized("unknown or revoked token")
    ttl_s = ej.config.server.session_ttl_s
    session = await ej.store.write(
        partial(
            tokens.create_session,
            token_id=info.id,
            ttl_ms=int(ttl_s * 1000),
            now=ej.clock.now_ms(),
        )
    )
    response: Response
    if content_type == _FORM and "text/html" in request.headers.get("accept", ""):
        # A plain HTML form post (no script): go to the dashboard, next to this route —
        # relative, as the app may be served under a path prefix it cannot see.
        response = RedirectResponse("./", status_code=303)
    else:
        response = ApiResponse({"csrf_token": session.csrf_token})
    response.headers["Cache-Control"] = "no-store"
    _set_cookies(response, request, session, max(1, int(ttl_s)))
    return response


async def logout(request: Request) -> Response:
    """End the cookie's session (needs the CSRF header while the session is alive)."""
    ej = app_of(request)
    await read_model(request, EmptyBody, optional=True)
    session_id = request.cookies.get(SESSION_COOKIE)
    if session_id:
        now = ej.clock.now_ms()
        found = await ej.store.read(lambda conn: tokens.lookup_session(conn, session_id, now))
        if found is not None:
            _, csrf = found
            check_csrf(request, csrf)
            await ej.store.write(partial(tokens.delete_session, session_id=session_id))
            # The session's open event streams end now: they would otherwise go on carrying
            # the org's events until their next credentials check (``[events] keepalive_s``).
            get_broker(ej).end_session(tokens.hash_secret(session_id))
    response = ApiResponse({"ok": True})
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
    response.delete_cookie(CSRF_COOKIE, path="/", samesite="strict")
    return response


def operations(ej: EdgeJobs) -> list[Operation]:
    """The session routes, documented."""
    tags = ("session",)
    return [
        Operation(
            "POST",
            "/login",
            login,
            "Sign in to the dashboard with a token",
            None,
            {200: LoginOut},
            body=Login,
            form_body=True,
            tags=tags,
            description="Sets the session cookie (HttpOnly, SameSite=Strict) and the readable "
            "edgejobs_csrf cookie. A login another origin's page sends (Sec-Fetch-Site: "
            "cross-site or same-site, or an Origin other than the Host) is refused with 403.",
        ),
        Operation(
            "POST",
            "/logout",
            logout,
            "End the dashboard session",
            None,
            {200: LogoutOut},
            body=EmptyBody,
            body_required=False,
            tags=tags,
            description="With a live session cookie, needs the X-CSRF-Token header.",
        ),
    ]
