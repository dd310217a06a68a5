"""Dashboard sessions: login, cookies, CSRF, logout, revocation and expiry."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

import httpx
import pytest
from api_support import Api, lifespan, make_api

from edgejobs.store.tokens import MAX_SESSIONS_PER_TOKEN
from edgejobs.testing import FakeClock


def _cookies(response: httpx.Response) -> dict[str, str]:
    found = {}
    for header in response.headers.get_list("set-cookie"):
        name = header.split("=", 1)[0]
        found[name] = header
    return found


async def test_login_sets_an_httponly_strict_session_and_a_readable_csrf_cookie(api: Api) -> None:
    response = await api.client.post("/login", json={"token": api.secrets["operator"]})
    assert response.status_code == 200
    csrf = response.json()["csrf_token"]
    cookies = _cookies(response)
    session = cookies["edgejobs_session"].lower()
    assert "httponly" in session and "samesite=strict" in session and "path=/" in session
    readable = cookies["edgejobs_csrf"].lower()
    assert "httponly" not in readable and "samesite=strict" in readable
    assert api.client.cookies["edgejobs_csrf"] == csrf
    assert response.headers["cache-control"] == "no-store"
    # Only hashes are stored: neither the token's secret nor the session id is in the file.
    raw = b"".join(p.read_bytes() for p in Path(api.ej.config.database.path).parent.glob("api.db*"))
    assert api.secrets["operator"].encode() not in raw
    assert api.client.cookies["edgejobs_session"].encode() not in raw


async def test_cookie_requests_need_the_csrf_header_to_change_state(api: Api) -> None:
    login = await api.client.post("/login", json={"token": api.secrets["operator"]})
    csrf = login.json()["csrf_token"]
    assert (await api.client.get("/api/v1/whoami")).json()["role"] == "operator"
    body = {"job_type": "t.echo"}
    missing = await api.client.post("/api/v1/jobs", json=body)
    assert missing.status_code == 403 and missing.json()["error"]["code"] == "csrf_failed"
    wrong = await api.client.post("/api/v1/jobs", json=body, headers={"X-CSRF-Token": csrf + "x"})
    assert wrong.status_code == 403
    right = await api.client.post("/api/v1/jobs", json=body, headers={"X-CSRF-Token": csrf})
    assert right.status_code == 201
    cancel = await api.client.post(f"/api/v1/jobs/{right.json()['id']}/cancel")
    assert cancel.status_code == 403
    # A Bearer token needs no CSRF header (a browser never sends one on its own).
    api.client.cookies.clear()
    bearer = await api.client.post("/api/v1/jobs", json=body, headers=api.auth("operator"))
    assert bearer.status_code == 201


async def test_login_by_form_and_bad_logins(api: Api) -> None:
    form = await api.client.post("/login", data={"token": api.secrets["viewer"]})
    assert form.status_code == 200 and "csrf_token" in form.json()
    html = await api.client.post(
        "/login", data={"token": api.secrets["viewer"]}, headers={"Accept": "text/html"}
    )
    assert html.status_code == 303 and html.headers["location"] == "./"
    api.client.cookies.clear()
    for body, status in [
        ({"token": "ej_nope"}, 401),
        ({"token": api.secrets["revoked"]}, 401),
        ({"token": ""}, 422),
        ({}, 422),
        ({"token": api.secrets["viewer"], "role": "admin"}, 422),
    ]:
        response = await api.client.post("/login", json=body)
        assert response.status_code == status, body
        assert "set-cookie" not in response.headers
    response = await api.client.post(
        "/login",
        content=b"token=a&token=b",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 400


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"Sec-Fetch-Site": "cross-site", "Origin": "http://evil.example"}, 403),
        ({"Origin": "http://evil.example"}, 403),  # a browser without Sec-Fetch-*
        ({"Origin": "null"}, 403),  # a sandboxed frame or a file:// page
        # Another port of the same host or a sibling subdomain: same site, another origin.
        ({"Sec-Fetch-Site": "same-site", "Origin": "http://testserver:8080"}, 403),
        ({"Origin": "http://testserver:8080"}, 403),
        ({"Sec-Fetch-Site": "same-origin", "Origin": "http://testserver"}, 303),
        ({"Origin": "http://testserver"}, 303),
        ({"Sec-Fetch-Site": "none"}, 303),  # typed or bookmarked
        ({}, 303),  # not a browser (curl, scripts)
    ],
)
async def test_a_login_another_sites_page_sends_is_refused(
    api: Api, headers: dict[str, str], status: int
) -> None:
    """Login CSRF: a form on another site posting the attacker's token would sign the victim
    into the attacker's org (the answer's cookies are set on a top-level navigation, whatever
    SameSite says), replacing the victim's own session."""
    response = await api.client.post(
        "/login",
        data={"token": api.secrets["viewer"]},
        headers={"Accept": "text/html", **headers},
    )
    assert response.status_code == status, response.text
    if status == 403:
        assert response.json()["error"]["code"] == "csrf_failed"
        assert "set-cookie" not in response.headers
    else:
        assert "set-cookie" in response.headers


async def test_logout_ends_the_session_for_good(api: Api) -> None:
    login = await api.client.post("/login", json={"token": api.secrets["admin"]})
    csrf = login.json()["csrf_token"]
    stolen = api.client.cookies["edgejobs_session"]
    refused = await api.client.post("/logout")
    assert refused.status_code == 403  # a cross-site logout cannot be forced either
    out = await api.client.post("/logout", headers={"X-CSRF-Token": csrf})
    assert out.status_code == 200 and out.json() == {"ok": True}
    assert "edgejobs_session" not in api.client.cookies
    api.client.cookies.set("edgejobs_session", stolen)
    replay = await api.client.get("/api/v1/whoami")
    assert replay.status_code == 401
    # A dead session needs no CSRF header to be cleared: there is nothing left to protect.
    assert (await api.client.post("/logout")).status_code == 200


async def test_revoking_the_token_ends_its_sessions(api: Api) -> None:
    await api.make_token("dashboard", "acme", "viewer")
    await api.client.post("/login", json={"token": api.secrets["dashboard"]})
    assert (await api.client.get("/api/v1/stats")).status_code == 200
    await api.revoke("dashboard")
    response = await api.client.get("/api/v1/stats")
    assert response.status_code == 401 and response.json()["error"]["code"] == "unauthorized"


async def test_sessions_expire(tmp_path: Path) -> None:
    clock = FakeClock()
    api = await make_api(tmp_path / "api.db", clock=clock)
    try:
        async with lifespan(api.app):
            await api.client.post("/login", json={"token": api.secrets["viewer"]})
            clock.advance(api.ej.config.server.session_ttl_s - 1)
            assert (await api.client.get("/api/v1/whoami")).status_code == 200
            clock.advance(2)
            assert (await api.client.get("/api/v1/whoami")).status_code == 401
    finally:
        await api.client.aclose()
        await api.ej.close()


async def test_a_token_keeps_a_bounded_number_of_sessions(tmp_path: Path) -> None:
    """Each login stored a session for session_ttl_s, so any token, a viewer's too, could grow
    the database without bound; the oldest sessions beyond the bound are ended instead, and a
    new login always works."""
    clock = FakeClock()
    api = await make_api(tmp_path / "api.db", clock=clock)
    db = api.ej.config.database.path

    def sessions(name: str) -> int:
        with closing(sqlite3.connect(db)) as conn:
            row = conn.execute(
                "SELECT count(*) FROM sessions WHERE token_id = ?", (api.token_ids[name],)
            ).fetchone()
        return int(row[0])

    try:
        async with lifespan(api.app):
            await api.client.post("/login", json={"token": api.secrets["operator"]})
            other = api.client.cookies["edgejobs_session"]
            cookies = []
            for n in range(MAX_SESSIONS_PER_TOKEN + 10):
                if n < MAX_SESSIONS_PER_TOKEN + 5:
                    clock.advance(0.001)  # the last six logins share a millisecond
                login = await api.client.post("/login", json={"token": api.secrets["viewer"]})
                assert login.status_code == 200
                cookies.append(api.client.cookies["edgejobs_session"])
            assert sessions("viewer") == MAX_SESSIONS_PER_TOKEN
            assert sessions("operator") == 1

            async def whoami(session: str) -> int:
                api.client.cookies.set("edgejobs_session", session)
                return (await api.client.get("/api/v1/whoami")).status_code

            kept = cookies[-MAX_SESSIONS_PER_TOKEN:]
            assert [await whoami(session) for session in kept] == [200] * len(kept)
            ended = cookies[:-MAX_SESSIONS_PER_TOKEN]  # the oldest, by the later logins
            assert [await whoami(session) for session in ended] == [401] * len(ended)
            assert await whoami(other) == 200  # another token's session is not touched
    finally:
        await api.client.aclose()
        await api.ej.close()


async def test_dashboard_and_static_files_with_security_headers(api: Api) -> None:
    index = await api.client.get("/")
    assert index.status_code == 200 and "text/html" in index.headers["content-type"]
    assert 'id="login-form"' in index.text  # without a session it shows the sign-in form
    for response in (index, await api.client.get("/static/app.js"), await api.client.get("/x")):
        csp = response.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert "script-src 'self';" in csp and "unsafe-inline" not in csp
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["referrer-policy"] == "no-referrer"
    script = await api.client.get("/static/app.js")
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
