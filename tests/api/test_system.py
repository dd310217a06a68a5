"""Health, metrics, stats, the per-minute series, job types and the OpenAPI document."""

from __future__ import annotations

import asyncio
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from api_support import ORG_A, ORG_B, Api, lifespan, make_api, make_config
from openapi_spec_validator import validate
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from route_table import active_routes

from edgejobs import EdgeJobs
from edgejobs.errors import DatabaseBusy
from edgejobs.store.claim import ClaimLimits, claim_ready
from edgejobs.testing import FakeClock


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


async def test_healthz_runs_a_real_query(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    api = await make_api(tmp_path / "h.db", run_workers=True)  # ticks run, as under serve
    try:
        async with lifespan(api.app):
            await _check_health(api, monkeypatch)
    finally:
        await api.client.aclose()
        await api.ej.close()


async def _check_health(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    response = await api.client.get("/healthz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok" and body["database"] == "ok" and body["runner"] == "running"
    assert body["details"]["schema_version"] >= 2

    async def busy(fn: Any) -> Any:
        raise DatabaseBusy("the database is locked by another process; try again")

    monkeypatch.setattr(api.ej.store, "read", busy)
    monkeypatch.setattr(api.ej.store, "read_point", busy)  # the check's own read
    response = await api.client.get("/healthz")
    assert response.status_code == 503
    assert response.json()["status"] == "unavailable"
    assert "database_busy" in response.json()["database"]


async def test_healthz_is_unavailable_while_stopping(api: Api) -> None:
    await api.ej.stop(grace_s=0)
    response = await api.client.get("/healthz")
    assert response.status_code == 503 and response.json()["status"] == "unavailable"


async def test_metrics_count_jobs_attempts_durations_and_waits(api: Api) -> None:
    assert api.ej.pool is not None
    await api.job(params={"n": 1})
    await api.job(job_type="t.fail")
    gated = await api.job(job_type="t.gate", params={"key": "m"})
    await api.ej.pool.claim_once()  # all three start; echo and fail end at once
    await asyncio.wait_for(api.gates.started_event("m").wait(), 5)
    await api.ej.cancel(gated.id, org=ORG_A)
    await api.ej.pool.wait_idle()
    await api.job(ORG_B)  # queued: in the job counts, not in any attempt metric
    response = await api.client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples = _samples(response.text)

    def value(name: str, **labels: str) -> float:
        return samples.get((name, tuple(sorted(labels.items()))), 0.0)

    assert value("edgejobs_jobs", job_type="t.echo", status="completed") == 1
    assert value("edgejobs_jobs", job_type="t.echo", status="queued") == 1
    assert value("edgejobs_jobs", job_type="t.fail", status="failed") == 1
    assert value("edgejobs_jobs", job_type="t.gate", status="canceled") == 1
    assert value("edgejobs_submissions_total", job_type="t.echo") == 2
    assert value("edgejobs_attempts_total", job_type="t.echo", outcome="completed") == 1
    assert value("edgejobs_attempts_total", job_type="t.fail", outcome="failed") == 1
    assert value("edgejobs_attempts_total", job_type="t.gate", outcome="canceled") == 1
    assert value("edgejobs_attempt_duration_seconds_count", job_type="t.echo") == 1
    assert value("edgejobs_queue_wait_seconds_count", job_type="t.gate") == 1
    assert all("org" not in dict(labels) for _, labels in samples)


async def test_job_count_series_stay_at_zero_instead_of_vanishing(api: Api) -> None:
    """A Grafana panel or an alert on a status count needs the series to read 0, not to
    disappear, once the last job leaves that status (and before the first arrives)."""
    assert api.ej.pool is not None
    before = _samples((await api.client.get("/metrics")).text)
    assert before[("edgejobs_jobs", (("job_type", "t.echo"), ("status", "queued")))] == 0
    await api.job(params={"n": 1})
    queued = _samples((await api.client.get("/metrics")).text)
    assert queued[("edgejobs_jobs", (("job_type", "t.echo"), ("status", "queued")))] == 1
    await api.ej.pool.claim_once()
    await api.ej.pool.wait_idle()
    after = _samples((await api.client.get("/metrics")).text)
    assert after[("edgejobs_jobs", (("job_type", "t.echo"), ("status", "queued")))] == 0
    assert after[("edgejobs_jobs", (("job_type", "t.echo"), ("status", "completed")))] == 1
    job_types = {dict(labels)["job_type"] for name, labels in after if name == "edgejobs_jobs"}
    assert job_types == {job_type.name for job_type in api.ej.registry}  # bounded by the types


async def test_attempts_lost_by_a_crash_are_counted_by_the_next_runner(tmp_path: Path) -> None:
    """The jobs a killed runner left running are recovered as `lost` attempts at the next
    start, before the app begins serving: /metrics must count them (the crash alert)."""
    path = tmp_path / "crash.db"
    dead = EdgeJobs(database=path, config=make_config())
    dead.register("t.echo", lambda ctx, params: params, dedup=False)
    job = await dead.submit("t.echo", org=ORG_A)
    now = dead.clock.now_ms()
    limits = ClaimLimits(types=frozenset({"t.echo"}))
    # What the dead runner wrote before it was killed: the claim, and nothing after it.
    await dead.store.write(partial(claim_ready, now=now, slots=1, lease_ms=60_000, limits=limits))
    await dead.close()

    api = await make_api(path)
    try:
        async with lifespan(api.app):
            assert (await api.ej.get(job.id, org=ORG_A)).status.value == "retrying"
            samples = _samples((await api.client.get("/metrics")).text)
            lost = (("job_type", "t.echo"), ("outcome", "lost"))
            assert samples.get(("edgejobs_attempts_total", lost)) == 1
    finally:
        await api.client.aclose()
        await api.ej.close()


async def test_metrics_token_and_private_registries(tmp_path: Path) -> None:
    config = make_config(server={"metrics_token": "scrape-me"})
    api = await make_api(tmp_path / "m.db", config)
    try:
        async with lifespan(api.app):
            assert (await api.client.get("/metrics")).status_code == 401
            wrong = await api.client.get("/metrics", headers={"Authorization": "Bearer nope"})
            assert wrong.status_code == 401
            tenant = await api.client.get("/metrics", headers=api.auth("admin"))
            assert tenant.status_code == 401  # an API token is not the metrics token
            right = await api.client.get("/metrics", headers={"Authorization": "Bearer scrape-me"})
            assert right.status_code == 200 and "edgejobs_jobs" in right.text
            other = api.ej.asgi_app()
            assert other.state.metrics.registry is not api.app.state.metrics.registry
            assert "edgejobs_attempts_total" not in {
                name for collector in REGISTRY._collector_to_names.values() for name in collector
            }
    finally:
        await api.client.aclose()
        await api.ej.close()


async def test_stats_by_status_type_and_org(api: Api) -> None:
    await api.job(params={"n": 1})
    await api.job(job_type="t.fail")
    await api.job(ORG_B)
    await api.ej.drain()
    tenant = (await api.client.get("/api/v1/stats", headers=api.auth("viewer"))).json()
    assert tenant["by_status"]["completed"] == 1 and tenant["by_status"]["failed"] == 1
    assert tenant["by_type"] == {"t.echo": {"completed": 1}, "t.fail": {"failed": 1}}
    system = (await api.client.get("/api/v1/stats", headers=api.auth("system"))).json()
    assert system["by_status"]["completed"] == 2
    assert system["by_org"] == {ORG_A: {"completed": 1, "failed": 1}, ORG_B: {"completed": 1}}


async def test_stats_and_series_of_one_org_and_unknown_parameters(api: Api) -> None:
    """``org`` was ignored: a system token asking for one org got every org's totals, and a
    tenant naming another org got its own numbers instead of the 403 the listings give."""
    await api.job(params={"n": 1})
    await api.job(ORG_B)
    await api.job(ORG_B, params={"n": 2})
    await api.ej.drain()
    system = api.auth("system")
    one = (await api.client.get(f"/api/v1/stats?org={ORG_B}", headers=system)).json()
    assert one["by_status"]["completed"] == 2 and one["by_type"] == {"t.echo": {"completed": 2}}
    series = await api.client.get(f"/api/v1/stats/timeseries?org={ORG_B}", headers=system)
    assert sum(minute["completed"] for minute in series.json()["minutes"]) == 2
    own = await api.client.get(f"/api/v1/stats?org={ORG_A}", headers=api.auth("viewer"))
    assert own.status_code == 200 and own.json()["by_status"]["completed"] == 1
    for path in ("/api/v1/stats", "/api/v1/stats/timeseries"):
        other = await api.client.get(f"{path}?org={ORG_B}", headers=api.auth("viewer"))
        assert other.status_code == 403, path
    for path in (
        "/api/v1/stats",
        "/api/v1/stats/timeseries",
        "/api/v1/job-types",
        "/api/v1/whoami",
    ):
        typo = await api.client.get(f"{path}?orgg={ORG_B}", headers=system)
        assert typo.status_code == 400 and typo.json()["error"]["code"] == "bad_request", path


async def test_job_types_show_policy_overrides_and_pause(api: Api) -> None:
    api.ej.registry.overrides = {"t.echo": {"timeout_s": 2.5}}
    api.ej.registry.paused = frozenset({"t.fail"})
    items = (await api.client.get("/api/v1/job-types", headers=api.auth("viewer"))).json()["items"]
    by_name = {item["name"]: item for item in items}
    assert {"t.echo", "t.fail", "t.gate", "t.limited"} <= set(by_name)
    assert by_name["t.echo"]["policy"]["timeout_s"] == 2.5
    assert by_name["t.echo"]["overrides"] == {"timeout_s": 2.5}
    assert by_name["t.fail"]["paused"] is True and by_name["t.echo"]["paused"] is False
    assert by_name["t.limited"]["policy"]["rate_limit"] == "2/minute"


async def test_timeseries_per_minute_with_queue_depth_from_the_event_log(tmp_path: Path) -> None:
    clock = FakeClock(1_800_000_000_000)  # on a minute boundary
    api = await make_api(tmp_path / "ts.db", clock=clock)
    try:
        async with lifespan(api.app):
            clock.advance(5)
            for n in range(3):
                await api.job(params={"n": n})  # minute 0: three queued
            await api.job(ORG_B)  # another org: never in A's series
            clock.advance(120)  # minute 2: all of them run; one more is submitted
            await api.job(job_type="t.fail")
            await api.ej.drain()
            await api.job(params={"late": True})
            clock.advance(60)  # minute 3: now; one job waits
            response = await api.client.get("/api/v1/stats/timeseries", headers=api.auth("viewer"))
            minutes = response.json()["minutes"]
            assert len(minutes) == 60
            assert minutes[-1]["t"] == "2027-01-15T08:03:00.000Z"
            tail = [(m["completed"], m["failed"], m["queue_depth"]) for m in minutes[-5:]]
            #         before     minute 0   minute 1   minute 2   now
            assert tail == [(0, 0, 0), (0, 0, 3), (0, 0, 3), (3, 1, 1), (0, 0, 1)]
    finally:
        await api.client.aclose()
        await api.ej.close()


async def test_openapi_document_is_valid_and_covers_every_route(api: Api) -> None:
    response = await api.client.get("/api/v1/openapi.json")
    assert response.status_code == 200
    document = response.json()
    validate(document)  # OpenAPI 3.1 (raises on any error)
    assert document["openapi"].startswith("3.1")
    documented = {
        (method.upper(), path) for path, ops in document["paths"].items() for method in ops
    }
    own = {case.key for case in active_routes(api) if not case.optional}
    assert own <= documented, sorted(own - documented)
    submit = document["paths"]["/api/v1/jobs"]["post"]
    schema_ref = submit["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    schema = document["components"]["schemas"][schema_ref.rsplit("/", 1)[-1]]
    assert schema["additionalProperties"] is False
    assert not {"status", "attempts", "id"} & set(schema["properties"])
    assert "default" in submit["responses"] and "201" in submit["responses"]
