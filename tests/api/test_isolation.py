"""Tenant isolation: one org's token never sees, touches or learns about another org's jobs."""

from __future__ import annotations

import json

import pytest
from api_support import ORG_A, ORG_B, Api
from route_table import active_routes, request

from edgejobs.ids import new_job_id

MARKER = "SECRET-OF-GLOBEX"


def _normalised(body: dict[str, object], job_id: str) -> str:
    return json.dumps(body, sort_keys=True).replace(job_id, "<id>")


async def test_another_orgs_job_is_reported_exactly_like_a_missing_one(api: Api) -> None:
    """For every route that takes a job id: org B's token on org A's job (and the reverse)
    gets the same 404 body as for an id that exists nowhere."""
    cases = [case for case in active_routes(api) if case.job_scoped]
    assert len(cases) >= 4
    for case in cases:
        for owner, caller in ((ORG_A, "b"), (ORG_B, "admin"), (ORG_B, "viewer")):
            if caller == "viewer" and case.method != "GET":
                continue
            theirs = (
                await api.ended_job(owner) if case.path.endswith("retry") else await api.job(owner)
            )
            missing = new_job_id(api.ej.clock.now_ms())
            path = case.path.replace("{id}", theirs.id)
            other = await api.client.request(case.method, path, headers=api.auth(caller))
            absent = await api.client.request(
                case.method, case.path.replace("{id}", missing), headers=api.auth(caller)
            )
            assert other.status_code == absent.status_code == 404, (case.path, other.text)
            assert _normalised(other.json(), theirs.id) == _normalised(absent.json(), missing)
            assert set(other.headers.keys()) == set(absent.headers.keys())
            # ...and the job was not touched.
            after = await api.ej.get(theirs.id)
            assert after.status == theirs.status and after.updated_at == theirs.updated_at


async def _populate_org_b(api: Api) -> list[str]:
    ids = []
    for n in range(3):
        job = await api.job(ORG_B, params={"note": MARKER, "n": n})
        ids.append(job.id)
    failing = await api.job(ORG_B, job_type="t.fail", params={"why": MARKER})
    ids.append(failing.id)
    await api.ej.drain()  # B's jobs complete / fail: B has finished jobs in this minute
    ids.append((await api.job(ORG_B, params={"still": MARKER})).id)  # and a queued one
    return ids


@pytest.mark.parametrize("who", ["viewer", "admin"])
async def test_lists_stats_series_and_metrics_never_show_another_org(api: Api, who: str) -> None:
    b_ids = await _populate_org_b(api)
    mine = await api.job(ORG_A, params={"mine": True})
    listing = [case for case in active_routes(api) if case.lists_jobs]
    assert {"/api/v1/jobs", "/api/v1/stats", "/api/v1/stats/timeseries"} <= {
        case.path for case in listing
    }
    queries = [
        "",
        "?limit=500",
        f"?q={MARKER}",
        "?status=completed&status=failed",
        "?job_type=t.fail",
        "?status=queued",
    ]
    for case in listing:
        if case.min_role == "admin" and who != "admin":
            continue
        for query in queries if case.path == "/api/v1/jobs" else [""]:
            response = await api.client.get(case.path + query, headers=api.auth(who))
            assert response.status_code == 200, (case.path, query, response.text)
            text = response.text
            assert ORG_B not in text and MARKER not in text, (case.path, query)
            assert not any(job_id in text for job_id in b_ids), (case.path, query)
    # A's own job is there, counts are A's alone, and B's finished jobs are not in A's chart.
    jobs = (await api.client.get("/api/v1/jobs", headers=api.auth(who))).json()
    assert [item["id"] for item in jobs["items"]] == [mine.id]
    stats = (await api.client.get("/api/v1/stats", headers=api.auth(who))).json()
    assert sum(stats["by_status"].values()) == 1 and "by_org" not in stats
    series = (await api.client.get("/api/v1/stats/timeseries", headers=api.auth(who))).json()
    assert len(series["minutes"]) == 60
    assert all(m["completed"] == 0 and m["failed"] == 0 for m in series["minutes"])
    assert series["minutes"][-1]["queue_depth"] == 1
    # Metrics are shared by every org, so they carry no org at all.
    metrics = (await api.client.get("/metrics")).text
    assert "org=" not in metrics and ORG_B not in metrics and ORG_A not in metrics
    # A system token does see both.
    system = (await api.client.get("/api/v1/stats", headers=api.auth("system"))).json()
    assert set(system["by_org"]) == {ORG_A, ORG_B}
    series = (await api.client.get("/api/v1/stats/timeseries", headers=api.auth("system"))).json()
    assert sum(m["completed"] for m in series["minutes"]) == 3
    assert sum(m["failed"] for m in series["minutes"]) == 1


async def test_naming_another_org_is_forbidden(api: Api) -> None:
    headers = api.auth("operator")
    response = await api.client.post(
        "/api/v1/jobs", json={"job_type": "t.echo", "org": ORG_B}, headers=headers
    )
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "forbidden"
    response = await api.client.post(
        "/api/v1/jobs/batch",
        json={"jobs": [{"job_type": "t.echo"}, {"job_type": "t.echo", "org": ORG_B}]},
        headers=headers,
    )
    assert response.status_code == 403
    assert (await api.ej.stats())["by_status"]["queued"] == 0  # all or nothing
    response = await api.client.get(f"/api/v1/jobs?org={ORG_B}", headers=api.auth("viewer"))
    assert response.status_code == 403
    # Naming one's own org is fine; a system token must name one.
    response = await api.client.post(
        "/api/v1/jobs", json={"job_type": "t.echo", "org": ORG_A}, headers=headers
    )
    assert response.status_code == 201 and response.json()["org"] == ORG_A
    response = await api.client.post(
        "/api/v1/jobs", json={"job_type": "t.echo"}, headers=api.auth("system")
    )
    assert response.status_code == 422
    response = await api.client.post(
        "/api/v1/jobs", json={"job_type": "t.echo", "org": ORG_B}, headers=api.auth("system")
    )
    assert response.status_code == 201 and response.json()["org"] == ORG_B


async def test_another_orgs_parent_looks_like_an_unknown_one(api: Api) -> None:
    theirs = await api.job(ORG_B)
    missing = new_job_id(api.ej.clock.now_ms())
    answers = []
    for parent in (theirs.id, missing):
        response = await api.client.post(
            "/api/v1/jobs",
            json={"job_type": "t.echo", "depends_on": [parent]},
            headers=api.auth("operator"),
        )
        assert response.status_code == 422
        answers.append(_normalised(response.json(), parent))
    assert answers[0] == answers[1]
    assert '"code": "unknown_parent"' in answers[0]


async def test_a_cursor_of_another_org_is_refused(api: Api) -> None:
    for n in range(3):
        await api.job(ORG_B, params={"n": n})
        await api.job(ORG_A, params={"n": n})
    page = (await api.client.get("/api/v1/jobs?limit=1", headers=api.auth("b"))).json()
    cursor = page["next_cursor"]
    assert cursor
    response = await api.client.get(
        f"/api/v1/jobs?limit=1&cursor={cursor}", headers=api.auth("viewer")
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_cursor"


async def test_system_token_can_act_on_every_org(api: Api) -> None:
    for case in active_routes(api):
        if not case.job_scoped:
            continue
        response = await request(api, case, "system")
        assert response.status_code == 200, case.path
    theirs = await api.job(ORG_B)
    response = await api.client.get(f"/api/v1/jobs/{theirs.id}", headers=api.auth("system"))
    assert response.status_code == 200 and response.json()["org"] == ORG_B
