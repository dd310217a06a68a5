"""Hostile input on every route: each gets a 4xx with the error body, never a 500, and never
another org's rows."""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from api_support import ORG_B, Api
from route_table import RouteCase, active_routes, served, url

from edgejobs.api.middleware import SESSION_BODY_BYTES

MARKER = "SECRET-OF-GLOBEX"

SQL_INJECTIONS = (
    "' OR '1'='1",
    "' OR 1=1 --",
    "x'; DROP TABLE jobs; --",
    '" OR ""="',
    "%' OR org LIKE '%",
    "1 UNION SELECT * FROM tokens --",
    "\\' OR 1=1 /*",
    "%",
    "_",
    "*",
)


def assert_error(response: httpx.Response, *statuses: int) -> dict[str, Any]:
    """A 4xx (one of ``statuses`` when given) with the SPEC's error body and headers."""
    assert 400 <= response.status_code < 500, (response.status_code, response.text[:300])
    if statuses:
        assert response.status_code in statuses, (response.status_code, response.text[:300])
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "details"}
    assert isinstance(body["error"]["code"], str) and body["error"]["message"]
    assert response.headers["x-content-type-options"] == "nosniff"
    assert "content-security-policy" in response.headers
    assert MARKER not in response.text
    error: dict[str, Any] = body["error"]
    return error


async def body_routes(api: Api) -> list[RouteCase]:
    """Every write route: each takes a JSON body (optional where it has no fields), and its
    OpenAPI entry says so — a route that changes something must refuse a malformed body, not
    act on it, even when it needs no fields."""
    paths = (await api.client.get("/api/v1/openapi.json")).json()["paths"]
    found = [case for case in active_routes(api) if case.method != "GET"]
    for case in found:
        assert "requestBody" in paths[case.path][case.method.lower()], (case.method, case.path)
    assert {"/api/v1/jobs", "/api/v1/jobs/batch", "/login", "/logout"} <= {
        case.path for case in found
    }
    return found


async def _send(api: Api, case: RouteCase, **kwargs: Any) -> httpx.Response:
    built = await case.build(api, "system")
    path = url(case, built.get("path_params"))
    headers = {**api.auth("system"), **kwargs.pop("headers", {})}
    try:
        return await api.client.request(case.method, path, headers=headers, **kwargs)
    finally:
        api.client.cookies.clear()


@pytest.fixture
async def with_org_b(api: Api) -> Api:
    for n in range(3):
        await api.job(ORG_B, params={"note": MARKER, "n": n})
    return api


async def test_malformed_json_is_400_on_every_body_route(with_org_b: Api) -> None:
    api = with_org_b
    bodies = [
        b"{",
        b'{"job_type": ',
        b"[1, 2",
        b"nul",
        b"{'a': 1}",
        b'{"a": NaN}',
        b'{"a": Infinity}',
        b'{"a": 1e400}',
        b"\xff\xfe\xfd",
        b'{"a": "\\ud800"}',
        b"1" * 5000,
        b"[" * 100 + b"]" * 100,
    ]
    for case in await body_routes(api):
        for raw in bodies:
            response = await _send(
                api, case, content=raw, headers={"Content-Type": "application/json"}
            )
            # The routes anyone may reach take 4 KiB: a longer body is refused unread.
            small = case.path in ("/login", "/logout") and len(raw) > SESSION_BODY_BYTES
            assert_error(response, 413 if small else 400)


async def test_a_malformed_body_on_a_route_without_fields_changes_nothing(api: Api) -> None:
    # Pause and resume take no fields; a malformed body must still be refused before the
    # job type (every org's jobs) is paused.
    headers = {**api.auth("system"), "Content-Type": "application/json"}
    pause = await api.client.post("/api/v1/job-types/t.echo/pause", content=b"{", headers=headers)
    assert_error(pause, 400)
    types = (await api.client.get("/api/v1/job-types", headers=api.auth("system"))).json()
    echo = next(item for item in types["items"] if item["name"] == "t.echo")
    assert echo["paused"] is False
    ok = await api.client.post("/api/v1/job-types/t.echo/pause", content=b"{}", headers=headers)
    assert ok.status_code == 200 and ok.json()["paused"] is True


async def test_wrong_types_and_unknown_fields_are_rejected(with_org_b: Api) -> None:
    api = with_org_b
    hostile: list[Any] = [
        [],
        "text",
        5,
        None,
        True,
        {"job_type": 5},
        {"job_type": None},
        {"job_type": ["t.echo"]},
        {"job_type": "t.echo", "params": []},
        {"job_type": "t.echo", "params": "x"},
        {"job_type": "t.echo", "status": "completed"},
        {"job_type": "t.echo", "id": "x"},
        {"job_type": "t.echo", "attempts": 9},
        {"job_type": "t.echo", "result": 1},
        {"token": 5},
        {"token": ["x"]},
        {"jobs": {}},
        {"jobs": [5]},
        {"reason": 5},
        {"timeout_s": "5"},
        {"unknown": 1},
    ]
    for case in await body_routes(api):
        for body in hostile:
            response = await _send(api, case, json=body)
            if response.status_code < 400:
                # Only a body a route can take as valid may pass (e.g. {} fields all optional).
                assert case.path.endswith(("/cancel", "/retry", "/pause", "/resume", "/logout")), (
                    case.path,
                    body,
                    response.text,
                )
                continue
            assert_error(response, 400, 401, 404, 409, 413, 422)


async def test_submit_field_validation(api: Api) -> None:
    headers = api.auth("operator")
    bad: list[dict[str, Any]] = [
        {"job_type": "no.such.type"},
        {"job_type": ""},
        {"job_type": "x" * 1000},
        {"job_type": "t.echo", "priority": "urgent"},
        {"job_type": "t.echo", "priority": 1},
        {"job_type": "t.echo", "run_at": "tomorrow"},
        {"job_type": "t.echo", "run_at": "2026-01-01T00:00:00"},
        {"job_type": "t.echo", "run_at": 1700000000},
        {"job_type": "t.echo", "run_at": "9999-12-31T23:59:59-12:00"},  # past year 9999 in UTC
        {"job_type": "t.echo", "run_at": "0001-01-01T00:00:00+14:00"},  # before year 1 in UTC
        {"job_type": "t.echo", "run_at": "2026-01-01T00:00:00Z", "delay_s": 1},
        {"job_type": "t.echo", "delay_s": -1},
        {"job_type": "t.echo", "delay_s": "5"},
        {"job_type": "t.echo", "delay_s": True},
        {"job_type": "t.echo", "delay_s": 1e308},
        {"job_type": "t.echo", "dedup": "yes"},
        {"job_type": "t.echo", "dedup_key": 5},
        {"job_type": "t.echo", "depends_on": "ABC"},
        {"job_type": "t.echo", "depends_on": [1]},
        {"job_type": "t.echo", "depends_on": [""]},
        {"job_type": "t.echo", "depends_on": ["x" * 100]},
        {"job_type": "t.echo", "params": {"deep": json.loads("[" * 70 + "]" * 70)}},
    ]
    for body in bad:
        response = await api.client.post("/api/v1/jobs", json=body, headers=headers)
        error = assert_error(response, 400, 422)
        if response.status_code == 422:
            assert error["code"] in ("validation_error", "unknown_job_type")
    assert (await api.ej.stats())["by_status"]["queued"] == 0


async def test_sql_injection_in_every_filter_and_path(with_org_b: Api) -> None:
    api = with_org_b
    mine = await api.job(params={"text": "plain"})
    headers = api.auth("viewer")
    for text in SQL_INJECTIONS:
        for name in (
            "job_type",
            "q",
            "cursor",
            "status",
            "priority",
            "created_after",
            "created_before",
            "limit",
            "org",
        ):
            response = await api.client.get("/api/v1/jobs", params={name: text}, headers=headers)
            assert response.status_code < 500 and MARKER not in response.text, (name, text)
            if response.status_code == 200:
                ids = [item["id"] for item in response.json()["items"]]
                assert set(ids) <= {mine.id}, (name, text)
            else:
                assert_error(response, 400, 403)
        for case in active_routes(api):
            if case.stream:
                continue
            if case.job_scoped:
                path = case.path.replace("{id}", httpx.URL(path="/" + text).raw_path.decode()[1:])
                response = await api.client.request(case.method, path, headers=api.auth("system"))
                assert_error(response, 404)
            elif case.method == "GET" and case.min_role is not None:
                response = await api.client.get(
                    case.path,
                    params={"org": text, "limit": text, "cursor": text, "q": text},
                    headers=headers,
                )
                # Routes without these parameters ignore them; the others refuse the values.
                assert response.status_code in (200, 400, 403), (case.path, response.text)
                assert MARKER not in response.text and ORG_B not in response.text
                if response.status_code != 200:
                    assert_error(response)
    # The tables are all still there and whole.
    assert (await api.ej.stats(org=ORG_B))["by_status"]["queued"] == 3


@pytest.mark.parametrize(
    "query",
    [
        "created_after=0001-01-01T00:00:00%2B14:00",
        "created_before=9999-12-31T23:59:59-12:00",
        "created_after=2026-13-01T00:00:00Z",
        "created_before=2026-01-01",
        "status=",
        "status=QUEUED",
        "priority=",
        "limit=1&limit=2",
        "unknown=1",
        "cursor=",
        "org=",
    ],
)
async def test_malformed_queries(api: Api, query: str) -> None:
    response = await api.client.get(f"/api/v1/jobs?{query}", headers=api.auth("system"))
    if query == "cursor=":
        assert response.status_code == 200  # an empty cursor is the first page
    else:
        assert_error(response, 400)


@pytest.mark.parametrize("limit", ["-1", "0", str(10**9), "501", "abc", "1.5", "", "1e3", " 5"])
async def test_out_of_range_limits(api: Api, limit: str) -> None:
    response = await api.client.get(f"/api/v1/jobs?limit={limit}", headers=api.auth("viewer"))
    assert_error(response, 400)


async def test_tampered_cursors(api: Api) -> None:
    for n in range(4):
        await api.job(params={"n": n})
    headers = api.auth("viewer")
    page = (await api.client.get("/api/v1/jobs?limit=2", headers=headers)).json()
    cursor = page["next_cursor"]
    follow = await api.client.get(f"/api/v1/jobs?limit=2&cursor={cursor}", headers=headers)
    assert follow.status_code == 200 and len(follow.json()["items"]) == 2
    flipped = cursor[:-2] + ("A" if cursor[-2] != "A" else "B") + cursor[-1]
    forged = "YzEuOTk5LjAwMDAwMDAwMDAwMDAwMDA"  # "c1.999.0000000000000000"
    for bad in [flipped, cursor + "x", cursor[:-3], forged, "====", "%00", "🙂", "a" * 10_000]:
        response = await api.client.get(
            "/api/v1/jobs", params={"limit": "2", "cursor": bad}, headers=headers
        )
        assert_error(response, 400)
    # A cursor is bound to its filters: reused with others it is refused.
    response = await api.client.get(
        f"/api/v1/jobs?limit=2&status=queued&cursor={cursor}", headers=headers
    )
    assert_error(response, 400)


async def test_ten_megabyte_bodies_are_refused_before_parsing(api: Api) -> None:
    big = b'{"job_type": "t.echo", "params": {"x": "' + b"a" * (10 * 1024 * 1024) + b'"}}'
    for case in active_routes(api):  # every route, whether it reads a body or not
        response = await _send(api, case, content=big, headers={"Content-Type": "application/json"})
        assert_error(response, 413)

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted while streaming
        for _ in range(10):
            yield b"a" * (1024 * 1024)

    response = await api.client.post("/api/v1/jobs", content=chunks(), headers=api.auth("operator"))
    assert_error(response, 413)
    response = await api.client.post(
        "/api/v1/jobs", content=b"{}", headers={**api.auth("operator"), "Content-Length": "x"}
    )
    assert response.status_code == 400


async def test_huge_depends_on_and_batches(api: Api) -> None:
    headers = api.auth("operator")
    response = await api.client.post(
        "/api/v1/jobs", json={"job_type": "t.echo", "depends_on": ["A"] * 100_000}, headers=headers
    )
    assert_error(response, 413, 422)
    fake_id = "0" * 26
    response = await api.client.post(
        "/api/v1/jobs",
        json={"job_type": "t.echo", "depends_on": [fake_id] * 100_000},
        headers=headers,
    )
    assert_error(response, 413)
    response = await api.client.post(
        "/api/v1/jobs",
        json={"job_type": "t.echo", "depends_on": [fake_id] * 1001},
        headers=headers,
    )
    assert_error(response, 422)
    response = await api.client.post(
        "/api/v1/jobs/batch", json={"jobs": [{"job_type": "t.echo"}] * 1001}, headers=headers
    )
    assert_error(response, 413)
    response = await api.client.post("/api/v1/jobs/batch", json={"jobs": []}, headers=headers)
    assert_error(response, 422)
    big_params = {"job_type": "t.echo", "params": {"x": "a" * 70_000}}
    response = await api.client.post("/api/v1/jobs", json=big_params, headers=headers)
    assert assert_error(response, 413)["code"] == "payload_too_large"
    assert (await api.ej.stats())["by_status"]["queued"] == 0


async def test_unknown_routes_and_methods_get_the_error_body(api: Api) -> None:
    for method, path, status in [
        ("GET", "/nope", 404),
        ("GET", "/api/v1/nope", 404),
        ("GET", "/static/nope.js", 404),
        ("GET", "/static/../pyproject.toml", 404),
        ("DELETE", "/api/v1/jobs", 405),
        ("PUT", "/api/v1/jobs/ABC", 405),
        ("GET", "/api/v1/jobs/batch", 404),
        ("POST", "/healthz", 405),
        ("GET", "/login", 405),
    ]:
        response = await api.client.request(method, path, headers=api.auth("admin"))
        error = assert_error(response, status)
        assert error["code"] in ("not_found", "method_not_allowed")
        if status == 405:
            assert response.headers["allow"]


async def test_a_wrong_method_is_answered_with_every_method_of_the_path(api: Api) -> None:
    """Each method used to be its own route, so a 405 listed only the first route's method
    (``DELETE /api/v1/jobs``: ``Allow: POST``, though GET is served there too)."""
    response = await api.client.delete("/api/v1/jobs", headers=api.auth("admin"))
    assert assert_error(response, 405)["code"] == "method_not_allowed"
    assert response.headers["allow"] == "GET, HEAD, POST"
    by_path: dict[str, set[str]] = {}
    for method, path in served(api):
        by_path.setdefault(path, set()).add(method)
    for path, methods in by_path.items():
        concrete = path.replace("{id}", "ABC").replace("{name}", "t.echo")
        response = await api.client.request("PUT", concrete, headers=api.auth("admin"))
        assert assert_error(response, 405)["code"] == "method_not_allowed", path
        if "GET" in methods:
            methods = methods | {"HEAD"}
        assert response.headers["allow"] == ", ".join(sorted(methods)), path


_FIELDS = [
    "job_type",
    "params",
    "priority",
    "depends_on",
    "run_at",
    "delay_s",
    "dedup",
    "dedup_key",
    "org",
    "jobs",
    "token",
    "reason",
    "timeout_s",
    "max_retries",
    "status",
]
_STRINGS = [
    "",
    "t.echo",
    "acme",
    "globex",
    "high",
    "0" * 26,
    "9999-12-31T23:59:59-12:00",
    "0001-01-01T00:00:00+14:00",
    "2026-02-30T00:00:00Z",
    "2026-01-01T00:00:00+25:00",
    "NaN",
    "\x00",
    "\u202e",
    "🙂" * 100,
    "a" * 70_000,
    "' OR 1=1 --",
    "ej_",
    "*",
]


def _value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(9 if depth < 3 else 6)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False])
    if kind == 2:
        return rng.choice([0, -1, 1, 2**31, -(2**63), 2**64, 10**30])
    if kind == 3:
        return rng.choice([0.5, -1e308, 1e308, 1e-300, -0.0])
    if kind in (4, 5):
        return rng.choice(_STRINGS)
    if kind == 6:
        return [_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    if kind == 7:
        return {rng.choice(_FIELDS): _value(rng, depth + 1) for _ in range(rng.randrange(4))}
    return {"job_type": "t.echo", rng.choice(_FIELDS): _value(rng, depth + 1)}


async def test_random_bodies_never_cause_a_server_error(with_org_b: Api) -> None:
    """Seeded random JSON, field names of the API with odd values, on every body route."""
    api = with_org_b
    rng = random.Random(20261129)
    for case in await body_routes(api):
        for _ in range(150):
            body = _value(rng)
            if rng.random() < 0.5:
                body = {rng.choice(_FIELDS): _value(rng) for _ in range(rng.randrange(1, 5))}
            response = await _send(api, case, json=body)
            assert response.status_code < 500, (case.path, body, response.text[:300])
            assert MARKER not in response.text
            if response.status_code >= 400:
                assert_error(response)


async def test_random_queries_never_cause_a_server_error(with_org_b: Api) -> None:
    api = with_org_b
    rng = random.Random(11292026)
    names = [
        "status",
        "job_type",
        "priority",
        "created_after",
        "created_before",
        "q",
        "limit",
        "cursor",
        "org",
        "x",
    ]
    for _ in range(300):
        params = [(rng.choice(names), str(_value(rng))[:300]) for _ in range(rng.randrange(1, 4))]
        for who in ("viewer", "system"):
            response = await api.client.get("/api/v1/jobs", params=params, headers=api.auth(who))
            assert response.status_code in (200, 400, 403), (params, response.text[:300])
            if who == "viewer":
                assert MARKER not in response.text


async def test_a_job_id_that_cannot_exist_is_not_echoed_back(api: Api) -> None:
    """``/events?job_id=`` copied any text, of any length, into its 404 message (the job
    routes already answered "no job with this id")."""
    huge = "<b>" + "x" * 5_000
    for path in (f"/api/v1/events?job_id={huge}", f"/api/v1/jobs/{huge}"):
        response = await api.client.get(path, headers=api.auth("viewer"))
        assert response.status_code == 404, path
        message = response.json()["error"]["message"]
        assert message == "no job with this id", (path, message[:80])
