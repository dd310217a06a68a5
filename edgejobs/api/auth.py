"""Who is calling: a Bearer token or the dashboard's session cookie, its org and its role.

Routes call :func:`authenticate` first thing (other modules too: SSE, runtime control); it
returns a :class:`Principal` or raises 401/403. A tenant's ``org`` scopes every store call the
route makes; a system token (``org`` None) sees every org.

Cookie-authenticated requests that change state must carry ``X-CSRF-Token`` equal to the
session's CSRF token: the session cookie is SameSite=Strict already, the header is the second
lock (a cross-site form cannot set a header). Bearer requests need no CSRF token: a browser
never attaches them on its own.
"""

from __future__ import annotations

import dataclasses
import hmac
from typing import TYPE_CHECKING

from starlette.requests import Request

from edgejobs.api.errors import Forbidden, Unauthorized
from edgejobs.store import tokens

if TYPE_CHECKING:
    from edgejobs.app import EdgeJobs

SESSION_COOKIE = "edgejobs_session"
"""HttpOnly cookie holding the session id (only its hash is stored)."""

CSRF_COOKIE = "edgejobs_csrf"
"""Readable cookie holding the session's CSRF token, for the dashboard's script."""

CSRF_HEADER = "x-csrf-token"

ROLE_RANK: dict[str, int] = {role: rank for rank, role in enumerate(tokens.ROLES)}
"""viewer < operator < admin."""

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class CsrfFailed(Forbidden):
    """A cookie-authenticated state change without the right ``X-CSRF-Token`` header."""

    code = "csrf_failed"


@dataclasses.dataclass(frozen=True, slots=True)
class Principal:
    """The authenticated caller.

    ``org`` None means a system token (every org); ``via_cookie`` tells whether the request
    came with the dashboard's session cookie rather than a Bearer token.
    """

    token_id: str
    org: str | None
    role: str
    via_cookie: bool

    def has_role(self, role: str) -> bool:
        """Whether the caller's role is ``role`` or above."""
        return ROLE_RANK[self.role] >= ROLE_RANK[role]


def app_of(request: Request) -> EdgeJobs:
    """The :class:`EdgeJobs` instance the app serves."""
    ej: EdgeJobs = request.app.state.ej
    return ej


def _bearer(header: str) -> str:
    scheme, _, value = header.strip().partition(" ")
    value = value.strip()
    if scheme.lower() != "bearer" or not value:
        raise Unauthorized("expected the header 'Authorization: Bearer <token>'")
    return value


def check_csrf(request: Request, expected: str) -> None:
    """Refuse a cookie-authenticated change without the session's ``X-CSRF-Token`` (403)."""
    sent = request.headers.get(CSRF_HEADER, "")
    if not sent or not hmac.compare_digest(
        sent.encode("latin-1", "replace"), expected.encode("latin-1", "replace")
    ):
        raise CsrfFailed("missing or wrong X-CSRF-Token header for this session")


async def authenticate(request: Request, min_role: str) -> Principal:
    """The caller of ``request``, who must hold ``min_role`` or above.

    Raises :class:`Unauthorized` (401) without valid credentials and :class:`Forbidden` (403)
    for a role too low or a cookie-authenticated state change without the CSRF header.
    """
    if min_role not in ROLE_RANK:
        raise ValueError(f"unknown role {min_role!r}")
    ej = app_of(request)
    header = request.headers.get("authorization")
    if header is not None:
        secret = _bearer(header)
        info = await ej.store.read(lambda conn: tokens.lookup_secret(conn, secret))
        if info is None:
            raise Unauthorized("unknown or revoked token")
        principal = Principal(info.id, info.org, info.role, via_cookie=False)
    else:
        session_id = request.cookies.get(SESSION_COOKIE)
        if not session_id:
            raise Unauthorized("sign in, or send the header 'Authorization: Bearer <token>'")
        now = ej.clock.now_ms()
        found = await ej.store.read(lambda conn: tokens.lookup_session(conn, session_id, now))
        if found is None:
            raise Unauthorized("the session has ended; sign in again")
        info, csrf = found
        principal = Principal(info.id, info.org, info.role, via_cookie=True)
        if request.method not in SAFE_METHODS:
            check_csrf(request, csrf)
    if not principal.has_role(min_role):
        raise Forbidden(f"this needs the {min_role} role or above; the token is {principal.role}")
    return principal


def acting_org(principal: Principal, requested: str | None) -> str | None:
    """The org a request acts on: a tenant's own org (naming another is 403), or for a
    system token the one it names (None: every org)."""
    if principal.org is None:
        return requested
    if requested is not None and requested != principal.org:
        raise Forbidden(f"this token belongs to org {principal.org}; it cannot act for another org")
    return principal.org
