"""Job routes: submit, dedup, batches, listing with filters and cursors, cancel, retry, and
how errors of the engine reach the client (409, 429, 503, 507, 500)."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from pathlib import Path

import pytest
from api_support import ORG_A, Api, lifespan, make_api, make_config

from edgejobs.models import Status
from edgejobs.store import jobs as store_jobs


async def test_submit_returns_the_job_and_dedup_returns_the_pending_one(api: Api) -> None:
    headers = api.auth("operator")
    body = {"job_type": "t.dedup", "params": {"month": "2026-11"}, "priority": "high"}
    first = await api.client.post("/api/v1/jobs", json=body, headers=headers)
    assert first.status_code == 201
    job = first.json()
    assert job["status"] == "queued" and job["priority"] == "high" and job["org"] == ORG_A
    assert job["params"] == {"month": "2026-11"} and job["deduplicated"] is False
    assert job["created_at"].endswith("Z")
    again = await api.client.post("/api/v1/jobs", json=body, headers=headers)
    assert again.status_code == 200
    assert again.json()["id"] == job["id"] and again.json()["deduplicated"] is True
    fresh = await api.client.post("/api/v1/jobs", json={**body, "dedup": False}, headers=headers)
    assert fresh.status_code == 201 and fresh.json()["id"] != job["id"]


async def test_submit_scheduled_and_dependent_jobs(api: Api) -> None:
    headers = api.auth("operator")
    later = await api.client.post(
        "/api/v1/jobs", json={"job_type": "t.echo", "delay_s": 3600}, headers=headers
    )
    assert later.json()["status"] == "scheduled"
    at = await api.client.post(
        "/api/v1/jobs",
        json={"job_type": "t.echo", "run_at": "2999-01-01T00:00:00+02:00"},
        headers=headers,
    )
    assert at.json()["status"] == "scheduled"
    assert at.json()["run_at"] == "2998-12-31T22:00:00.000Z"
    parent = (
        await api.client.post("/api/v1/jobs", json={"job_type": "t.echo"}, headers=headers)
    ).json()
    child = await api.client.post(
        "/api/v1/jobs", json={"job_type": "t.echo", "depends_on": [parent["id"]]}, headers=headers
    )
    assert child.json()["status"] == "blocked" and child.json()["depends_on"] == [parent["id"]]
    await api.ej.drain()
    shown = await api.client.get(f"/api/v1/jobs/{child.json()['id']}", headers=headers)
    assert shown.json()["status"] == "completed"


@pytest.mark.parametrize(
    "run_at",
    [
        "0001-01-01T00:00:00Z",
        "1969-12-31T23:59:59.999Z",
        "1970-01-01T00:30:00+01:00",  # 1969 in UTC
        "9999-12-31T23:59:59.500Z",
    ],
)
async def test_submit_refuses_a_run_at_outside_unix_seconds(api: Api, run_at: str) -> None:
    response = await api.client.post(
        "/api/v1/jobs", json={"job_type": "t.echo", "run_at": run_at}, headers=api.auth("operator")
    )
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "validation_error"
    assert "run_at" in error["message"] and "1970-01-01T00:00:00Z" in error["message"]
    assert sum((await api.ej.stats())["by_status"].values()) == 0


async def test_submit_accepts_the_bounds_of_run_at(api: Api) -> None:
    headers = api.auth("operator")
    for run_at, shown in [
        ("1970-01-01T00:00:00Z", "1970-01-01T00:00:00.000Z"),
        ("9999-12-31T23:59:59Z", "9999-12-31T23:59:59.000Z"),
    ]:
        response = await api.client.post(
            "/api/v1/jobs", json={"job_type": "t.echo", "run_at": run_at}, headers=headers
        )
        assert response.status_code == 201, response.text
        assert response.json()["run_at"] == shown


async def test_batch_is_all_or_nothing_with_index_references(api: Api) -> None:
    headers = api.auth("operator")
    jobs = [
        {"job_type": "t.echo", "params": {"step": "fetch"}},
        {"job_type": "t.echo", "params": {"step": "transform"}, "depends_on": [0]},
        {"job_type": "t.echo", "params": {"step": "report"}, "depends_on": [1]},
    ]
    response = await api.client.post("/api/v1/jobs/batch", json={"jobs": jobs}, headers=headers)
    assert response.status_code == 201
    created = response.json()["jobs"]
    assert [job["status"] for job in created] == ["queued", "blocked", "blocked"]
    assert created[2]["depends_on"] == [created[1]["id"]]
    bad = [*jobs, {"job_type": "no.such.type"}]
    response = await api.client.post("/api/v1/jobs/batch", json={"jobs": bad}, headers=headers)
    assert response.status_code == 422
    assert "jobs[3]" in response.json()["error"]["message"]
    forward = [{"job_type": "t.echo", "depends_on": [1]}, {"job_type": "t.echo"}]
    response = await api.client.post("/api/v1/jobs/batch", json={"jobs": forward}, headers=headers)
    assert response.status_code == 422
    assert sum((await api.ej.stats())["by_status"].values()) == 3


async def test_list_filters_and_pagination(api: Api) -> None:
    ids = []
    for n in range(7):
        job = await api.job(
            params={"n": n, "tag": "alpha" if n % 2 else "beta"},
            priority="high" if n < 2 else "low",
        )
        ids.append(job.id)
    failed = await api.job(job_type="t.fail", params={"why": "kaput-123"})
    await api.ej.drain()  # everything runs: 7 completed, 1 failed
    queued = await api.job(params={"n": "queued"})
    submitted = [*ids, failed.id, queued.id]
    headers = api.auth("viewer")

    async def items(query: str) -> list[dict[str, object]]:
        response = await api.client.get("/api/v1/jobs" + query, headers=headers)
        assert response.status_code == 200, response.text
        result: list[dict[str, object]] = response.json()["items"]
        return result

    assert len(await items("")) == 9
    assert [j["id"] for j in await items("?status=failed")] == [failed.id]
    assert len(await items("?status=failed&status=queued")) == 2
    assert len(await items("?status=failed,queued")) == 2
    assert len(await items("?job_type=t.fail")) == 1
    assert len(await items("?priority=high")) == 2
    assert len(await items("?q=alpha")) == 3
    assert [j["id"] for j in await items("?q=kaput")] == [failed.id]  # the error's text
    assert [j["id"] for j in await items(f"?q={ids[3]}")] == [ids[3]]
    assert len(await items("?q=100%25")) == 0  # LIKE wildcards are literal
    assert len(await items("?created_after=2999-01-01T00:00:00Z")) == 0
    assert len(await items("?created_before=2000-01-01T00:00:00%2B00:00")) == 0
    # Pages of 4: newest first, no gaps, no repeats, and the last page says so.
    seen: list[str] = []
    cursor = None
    while True:
        query = "?limit=4" + (f"&cursor={cursor}" if cursor else "")
        page = (await api.client.get("/api/v1/jobs" + query, headers=headers)).json()
        seen.extend(item["id"] for item in page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == submitted[::-1]


async def test_a_page_of_few_matches_may_be_short_or_empty_and_its_cursor_goes_on(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each page walks at most HISTORY_WALK jobs of the history: a filter that matches few
    of them gives short pages, even empty ones, with a cursor; following it returns every
    match once, newest first, and only the last page's cursor is null."""
    monkeypatch.setattr(store_jobs, "HISTORY_WALK", 3)
    submitted = []
    for n in range(10):
        job_type = "t.dedup" if n in (1, 2, 8) else "t.echo"
        submitted.append((await api.job(job_type=job_type, params={"n": n})).id)
    headers = api.auth("viewer")
    pages: list[list[str]] = []
    cursor = None
    while True:
        query = "?job_type=t.dedup&limit=2" + (f"&cursor={cursor}" if cursor else "")
        response = await api.client.get("/api/v1/jobs" + query, headers=headers)
        assert response.status_code == 200, response.text
        pages.append([item["id"] for item in response.json()["items"]])
        cursor = response.json()["next_cursor"]
        if cursor is None:
            break
    # Newest first: n=9..7 (one match), 6..4 (none), 3..1 (two: a full page), 0 (none).
    assert pages == [[submitted[8]], [], [submitted[2], submitted[1]], []]


async def test_show_attempts_cancel_and_retry(api: Api) -> None:
    headers = api.auth("operator")
    failed = await api.job(job_type="t.fail", params={"why": "nope"})
    await api.ej.drain()
    attempts = (await api.client.get(f"/api/v1/jobs/{failed.id}/attempts", headers=headers)).json()
    assert [a["outcome"] for a in attempts["items"]] == ["failed"]
    assert attempts["items"][0]["error"]["message"] == "nope"
    retried = await api.client.post(f"/api/v1/jobs/{failed.id}/retry", headers=headers)
    assert retried.status_code == 200 and retried.json()["status"] == "queued"
    again = await api.client.post(f"/api/v1/jobs/{failed.id}/retry", headers=headers)
    assert again.status_code == 409 and again.json()["error"]["code"] == "conflict"
    canceled = await api.client.post(
        f"/api/v1/jobs/{failed.id}/cancel", json={"reason": "not needed"}, headers=headers
    )
    assert canceled.status_code == 200
    assert canceled.json()["status"] == "canceled"
    assert canceled.json()["cancel_reason"] == "not needed"
    twice = await api.client.post(f"/api/v1/jobs/{failed.id}/cancel", headers=headers)
    assert twice.status_code == 409


async def test_cancel_racing_completion_has_exactly_one_winner(api: Api) -> None:
    """A cancel through the API and the handler's completion, released together, many
    times: either the cancel wins (200, job canceled, attempt canceled) or the completion
    does (409, job completed): never both, never a mix."""
    assert api.ej.pool is not None
    outcomes = {"cancel": 0, "complete": 0}
    for round_number in range(30):
        key = f"race-{round_number}"
        job = await api.job(job_type="t.gate", params={"key": key})
        await api.ej.pool.claim_once()
        await asyncio.wait_for(api.gates.started_event(key).wait(), 5)
        cancel = asyncio.create_task(
            api.client.post(f"/api/v1/jobs/{job.id}/cancel", headers=api.auth("operator"))
        )
        # Vary the interleaving: release the handler at once or up to 2.5 ms later, so the
        # cancel (an auth read, then its write) sometimes gets there first and sometimes not.
        await asyncio.sleep(0.0005 * (round_number % 6))
        api.gates.event(key).set()
        response = await cancel
        await api.ej.pool.wait_idle()
        final = await api.ej.get(job.id)
        attempts = await api.ej.attempts(job.id)
        if response.status_code == 200:
            outcomes["cancel"] += 1
            assert response.json()["status"] == "canceled"
            assert final.status is Status.CANCELED and final.result is None
            assert attempts[-1].outcome is not None and attempts[-1].outcome.value == "canceled"
        else:
            outcomes["complete"] += 1
            assert response.status_code == 409, response.text
            assert final.status is Status.COMPLETED and final.result == "released"
            assert attempts[-1].outcome is not None and attempts[-1].outcome.value == "completed"
    # Both sides won at least once (typically 10-20 times each), so both paths were checked.
    assert outcomes["cancel"] > 0 and outcomes["complete"] > 0, outcomes


async def test_rate_limit_is_429_with_retry_after(api: Api) -> None:
    headers = api.auth("operator")
    for _ in range(2):
        response = await api.client.post(
            "/api/v1/jobs", json={"job_type": "t.limited"}, headers=headers
        )
        assert response.status_code == 201
    response = await api.client.post(
        "/api/v1/jobs", json={"job_type": "t.limited"}, headers=headers
    )
    assert response.status_code == 429
    assert response.json()["error"]["code"] == "rate_limited"
    assert 1 <= int(response.headers["retry-after"]) <= 60


async def test_a_batch_no_window_can_take_is_422_not_429(api: Api) -> None:
    """A batch of 3 against 2 per minute would get 429 with a Retry-After forever: a client
    that follows it loops. It is refused as invalid, and takes nothing from the window."""
    headers = api.auth("operator")
    batch = {"jobs": [{"job_type": "t.limited", "params": {"n": n}} for n in range(3)]}
    response = await api.client.post("/api/v1/jobs/batch", json=batch, headers=headers)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "validation_error"
    assert "smaller batches" in response.json()["error"]["message"]
    batch["jobs"] = batch["jobs"][:2]
    response = await api.client.post("/api/v1/jobs/batch", json=batch, headers=headers)
    assert response.status_code == 201, response.text


async def test_a_refused_submit_does_not_use_the_rate_limit(api: Api) -> None:
    headers = api.auth("operator")
    # Refused after the limit was taken (no such parent): three of them, against a limit of 2.
    for _ in range(3):
        response = await api.client.post(
            "/api/v1/jobs",
            json={"job_type": "t.limited", "depends_on": ["06H2NOSUCHPARENT0000000000"]},
            headers=headers,
        )
        assert response.status_code == 422, response.text
        assert response.json()["error"]["code"] == "unknown_parent"
    for _ in range(2):
        response = await api.client.post(
            "/api/v1/jobs", json={"job_type": "t.limited"}, headers=headers
        )
        assert response.status_code == 201, response.text
    response = await api.client.post(
        "/api/v1/jobs", json={"job_type": "t.limited"}, headers=headers
    )
    assert response.status_code == 429


async def test_database_busy_is_503_with_retry_after(tmp_path: Path) -> None:
    api = await make_api(tmp_path / "busy.db", make_config(database={"busy_timeout_ms": 100}))
    try:
        async with lifespan(api.app):
            blocker = sqlite3.connect(tmp_path / "busy.db", isolation_level=None)
            blocker.execute("BEGIN IMMEDIATE")  # another process holds the write lock
            try:
                response = await api.client.post(
                    "/api/v1/jobs", json={"job_type": "t.echo"}, headers=api.auth("operator")
                )
            finally:
                blocker.execute("ROLLBACK")
                blocker.close()
            assert response.status_code == 503
            assert response.json()["error"]["code"] == "database_busy"
            assert int(response.headers["retry-after"]) >= 1
            response = await api.client.post(
                "/api/v1/jobs", json={"job_type": "t.echo"}, headers=api.auth("operator")
            )
            assert response.status_code == 201
    finally:
        await api.client.aclose()
        await api.ej.close()


async def test_storage_full_is_507(api: Api) -> None:
    def fill_limit(conn: sqlite3.Connection, tx: object) -> None:
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count = {pages + 1}")

    await api.ej.store.write(fill_limit)
    big = {"job_type": "t.echo", "params": {"x": "y" * 60_000}}
    response = await api.client.post("/api/v1/jobs", json=big, headers=api.auth("operator"))
    assert response.status_code == 507, response.text
    assert response.json()["error"]["code"] == "storage_full"


async def test_an_unexpected_error_is_a_logged_500_with_the_error_body(
    api: Api, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken(**_: object) -> None:
        raise RuntimeError("boom in stats")

    monkeypatch.setattr(api.ej, "stats", broken)
    with caplog.at_level(logging.ERROR, logger="edgejobs.api"):
        response = await api.client.get("/api/v1/stats", headers=api.auth("viewer"))
    assert response.status_code == 500
    assert response.json() == {
        "error": {
            "code": "internal",
            "message": "internal server error (this is a bug)",
            "details": None,
        }
    }
    assert "boom" not in response.text  # no internals leak to the client
    assert response.headers["x-content-type-options"] == "nosniff"
    assert any("boom in stats" in (r.exc_text or "") for r in caplog.records)


async def test_submissions_during_shutdown_are_503(api: Api) -> None:
    await api.ej.stop(grace_s=0)
    response = await api.client.post(
        "/api/v1/jobs", json={"job_type": "t.echo"}, headers=api.auth("operator")
    )
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "shutting_down"
    assert "retry-after" in response.headers
