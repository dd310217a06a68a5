"""The runtime-control routes on the real app (SPEC §6): job-type PATCH/pause/resume (admin,
system tokens only), schedules (org-scoped) and the audit log (admin; org-scoped)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from functools import partial

import httpx
import pytest
from control_support import Factory
from ej_testkit import asgi_client

from edgejobs import EdgeJobs, Status
from edgejobs.api.app import create_app
from edgejobs.store.tokens import create_token
from edgejobs.testing import FakeClock

SCHEDULES = [
    {"name": "acme-nightly", "cron": "0 2 * * *", "job_type": "work", "org": "acme"},
    {"name": "globex-hourly", "cron": "0 * * * *", "job_type": "work", "org": "globex"},
]


class Api:
    """An httpx client on the app, with one token per (org, role) created on demand."""

    def __init__(self, ej: EdgeJobs, client: httpx.AsyncClient) -> None:
        self.ej = ej
        self.client = client
        self.tokens: dict[tuple[str | None, str], tuple[str, str]] = {}

    async def token(self, org: str | None, role: str) -> tuple[str, str]:
        """(id, secret) of a token of ``org`` (None: system) with ``role``."""
        key = (org, role)
        if key not in self.tokens:
            new = await self.ej.store.write(
                partial(create_token, org=org, role=role, name="t", now=self.ej.clock.now_ms())
            )
            self.tokens[key] = (new.info.id, new.secret)
        return self.tokens[key]

    async def call(
        self, method: str, path: str, org: str | None, role: str, **kwargs: object
    ) -> httpx.Response:
        _, secret = await self.token(org, role)
        extra = kwargs.pop("headers", {})
        assert isinstance(extra, dict)
        headers = {"Authorization": f"Bearer {secret}", **extra}
        return await self.client.request(method, path, headers=headers, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
async def api(runner: Factory, clock: FakeClock) -> AsyncIterator[Api]:
    clock.set(1767225600000 - 30_000)  # 2025-12-31T23:59:30Z
    ej = await runner(schedules=SCHEDULES, types=[("work", {"concurrency": 4})])
    async with asgi_client(create_app(ej), "http://test") as client:
        yield Api(ej, client)


ACTIONS = [
    ("PATCH", "/api/v1/job-types/work", {"json": {"concurrency": 1}}),
    ("POST", "/api/v1/job-types/work/pause", {}),
    ("POST", "/api/v1/job-types/work/resume", {}),
]


@pytest.mark.parametrize(("method", "path", "kwargs"), ACTIONS)
async def test_job_type_changes_need_a_system_admin(
    api: Api, method: str, path: str, kwargs: dict[str, object]
) -> None:
    assert (await api.client.request(method, path, **kwargs)).status_code == 401  # type: ignore[arg-type]
    for org, role in [(None, "viewer"), (None, "operator"), ("acme", "admin")]:
        response = await api.call(method, path, org, role, **kwargs)
        assert response.status_code == 403, (org, role)
        assert response.json()["error"]["code"] == "forbidden"
    response = await api.call(method, path, None, "admin", **kwargs)
    assert response.status_code == 200
    assert response.json()["name"] == "work"
    unknown = await api.call(method, path.replace("/work", "/nope"), None, "admin", **kwargs)
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "not_found"


async def test_patch_overrides_apply_and_show_in_the_job_type_list(api: Api) -> None:
    response = await api.call(
        "PATCH", "/api/v1/job-types/work", None, "admin", json={"concurrency": 1, "timeout_s": 9}
    )
    assert response.status_code == 200
    body = response.json()
    assert body["overrides"] == {"concurrency": 1, "timeout_s": 9}
    assert body["policy"]["concurrency"] == 1 and body["declared"]["concurrency"] == 4
    assert api.ej.registry.get("work").concurrency == 1  # at once, in process

    paused = await api.call("POST", "/api/v1/job-types/work/pause", None, "admin")
    assert paused.json()["paused"] is True
    listed = await api.call("GET", "/api/v1/job-types", "acme", "viewer")
    item = next(i for i in listed.json()["items"] if i["name"] == "work")
    assert item["paused"] is True
    assert item["overrides"] == {"concurrency": 1, "timeout_s": 9}
    assert item["policy"]["concurrency"] == 1 and item["policy"]["timeout_s"] == 9

    response = await api.call(
        "PATCH", "/api/v1/job-types/work", None, "admin", json={"concurrency": None}
    )
    assert response.json()["overrides"] == {"timeout_s": 9}
    assert api.ej.registry.get("work").concurrency == 4
    await api.call("POST", "/api/v1/job-types/work/resume", None, "admin")
    listed = await api.call("GET", "/api/v1/job-types", "acme", "viewer")
    item = next(i for i in listed.json()["items"] if i["name"] == "work")
    assert item["paused"] is False and item["policy"]["concurrency"] == 4


async def test_a_paused_type_accepts_submissions_over_http(api: Api) -> None:
    await api.call("POST", "/api/v1/job-types/work/pause", None, "admin")
    response = await api.call("POST", "/api/v1/jobs", "acme", "operator", json={"job_type": "work"})
    assert response.status_code == 201 and response.json()["status"] == "queued"
    await api.ej.drain()
    assert (await api.ej.get(response.json()["id"])).status is Status.QUEUED
    await api.call("POST", "/api/v1/job-types/work/resume", None, "admin")
    await api.ej.drain()
    assert (await api.ej.get(response.json()["id"])).status is Status.COMPLETED


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"{not json", 400, "bad_request"),
        (b'{"concurrency": 0}', 422, "validation_error"),
        (b'{"concurrency": "2"}', 422, "validation_error"),
        (b'{"timeout_s": -1}', 422, "validation_error"),
        # Past SQLite's integers: was stored, and every later submit of the type was a 500.
        (b'{"max_retries": 10000000000000000000}', 422, "validation_error"),
        (b'{"max_retries": 1000001}', 422, "validation_error"),
        (b'{"priority": "urgent"}', 422, "validation_error"),
        (b'{"rate_limit": "lots"}', 422, "validation_error"),
        (b'{"dedup": false}', 422, "validation_error"),
        (b"[]", 422, "validation_error"),
    ],
)
async def test_bad_patch_bodies(api: Api, body: bytes, status: int, code: str) -> None:
    response = await api.call(
        "PATCH",
        "/api/v1/job-types/work",
        None,
        "admin",
        content=body,
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code
    assert api.ej.registry.overrides == {}


async def test_schedules_are_listed_per_org(api: Api, clock: FakeClock) -> None:
    scheduler_tick = api.ej.ticker
    assert scheduler_tick is not None
    clock.advance(31)  # 2026-01-01T00:00:01Z: the hourly schedule is due
    await scheduler_tick.tick()

    acme = await api.call("GET", "/api/v1/schedules", "acme", "viewer")
    assert acme.status_code == 200
    assert [s["name"] for s in acme.json()["items"]] == ["acme-nightly"]
    assert acme.json()["items"][0]["next_run_at"] == "2026-01-01T02:00:00.000Z"
    assert acme.json()["items"][0]["last_run_at"] is None

    globex = (await api.call("GET", "/api/v1/schedules", "globex", "viewer")).json()["items"]
    assert [s["name"] for s in globex] == ["globex-hourly"]
    assert globex[0]["last_run_at"] == "2026-01-01T00:00:00.000Z"
    assert globex[0]["next_run_at"] == "2026-01-01T01:00:00.000Z"
    job = await api.call("GET", f"/api/v1/jobs/{globex[0]['last_job_id']}", "globex", "viewer")
    assert job.status_code == 200

    everything = await api.call("GET", "/api/v1/schedules", None, "viewer")
    assert [s["name"] for s in everything.json()["items"]] == ["acme-nightly", "globex-hourly"]
    only = await api.call("GET", "/api/v1/schedules?org=globex", None, "viewer")
    assert [s["name"] for s in only.json()["items"]] == ["globex-hourly"]
    other = await api.call("GET", "/api/v1/schedules?org=globex", "acme", "viewer")
    assert other.status_code == 403
    bad = await api.call("GET", "/api/v1/schedules?x=1", "acme", "viewer")
    assert bad.status_code == 400


async def test_every_action_is_audited_once_and_org_admins_see_their_own(api: Api) -> None:
    ej = api.ej
    a = await ej.submit("work", org="acme", params={"n": 1})
    b = await ej.submit("work", org="globex", params={"n": 2})
    acme_operator, _ = await api.token("acme", "operator")
    system_admin, _ = await api.token(None, "admin")

    assert (await api.call("POST", f"/api/v1/jobs/{a.id}/cancel", "acme", "operator")).is_success
    assert (await api.call("POST", f"/api/v1/jobs/{a.id}/retry", "acme", "operator")).is_success
    assert (await api.call("POST", f"/api/v1/jobs/{b.id}/cancel", None, "admin")).is_success
    refused = await api.call("POST", f"/api/v1/jobs/{b.id}/cancel", None, "admin")
    assert refused.status_code == 409  # no second entry for a refused action
    patch = {"json": {"max_retries": 1}}
    assert (await api.call("PATCH", "/api/v1/job-types/work", None, "admin", **patch)).is_success
    assert (await api.call("POST", "/api/v1/job-types/work/pause", None, "admin")).is_success
    assert (await api.call("POST", "/api/v1/job-types/work/resume", None, "admin")).is_success

    response = await api.call("GET", "/api/v1/audit", None, "admin")
    assert response.status_code == 200
    items = response.json()["items"]
    assert [(i["action"], i["target"], i["token_id"], i["org"]) for i in items] == [
        ("resume", "work", system_admin, None),
        ("pause", "work", system_admin, None),
        ("override", "work", system_admin, None),
        ("cancel", b.id, system_admin, "globex"),
        ("retry", a.id, acme_operator, "acme"),
        ("cancel", a.id, acme_operator, "acme"),
    ]
    assert items[-1]["role"] == "operator" and items[-1]["actor_org"] == "acme"
    for _, secret in api.tokens.values():
        assert secret not in response.text

    acme = (await api.call("GET", "/api/v1/audit", "acme", "admin")).json()["items"]
    assert [(i["action"], i["target"]) for i in acme] == [("retry", a.id), ("cancel", a.id)]
    globex = (await api.call("GET", "/api/v1/audit", "globex", "admin")).json()["items"]
    assert [(i["action"], i["target"]) for i in globex] == [("cancel", b.id)]
    assert (await api.call("GET", "/api/v1/audit?org=globex", "acme", "admin")).status_code == 403
    assert (await api.call("GET", "/api/v1/audit", "acme", "operator")).status_code == 403
    assert (await api.call("GET", "/api/v1/audit", None, "operator")).status_code == 403

    page = (await api.call("GET", "/api/v1/audit?limit=4", None, "admin")).json()
    rest = await api.call("GET", f"/api/v1/audit?cursor={page['next_cursor']}", None, "admin")
    assert len(page["items"]) == 4 and len(rest.json()["items"]) == 2
    assert rest.json()["next_cursor"] is None
    for query in ("limit=0", "limit=501", "cursor=abc", "limit=1&limit=2", "since=1"):
        bad = await api.call("GET", f"/api/v1/audit?{query}", None, "admin")
        assert bad.status_code == 400, query


async def test_the_routes_are_in_the_openapi_document(api: Api) -> None:
    document = json.loads((await api.client.get("/api/v1/openapi.json")).text)
    paths = document["paths"]
    assert set(paths["/api/v1/job-types/{name}"]) >= {"patch"}
    assert "post" in paths["/api/v1/job-types/{name}/pause"]
    assert "post" in paths["/api/v1/job-types/{name}/resume"]
    assert "get" in paths["/api/v1/schedules"] and "get" in paths["/api/v1/audit"]
