"""Pause/resume of job types and runtime policy overrides (SPEC §5 ``types``, §6 job-types)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from control_support import Factory, build, noop, query, wait_until

from edgejobs import EdgeJobs, Status
from edgejobs.config import Config, RunnerConfig
from edgejobs.control import (
    JobTypeOverrides,
    job_type_view,
    job_type_views,
    override_job_type,
    pause_job_type,
    resume_job_type,
)
from edgejobs.errors import NotFound, ValidationError
from edgejobs.testing import FakeClock


class Gate:
    """A handler that records the order jobs start in and blocks until released."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.release = asyncio.Event()

        async def handler(ctx: Any, params: dict[str, Any]) -> str:
            self.started.append(params["name"])
            await self.release.wait()
            return str(params["name"])

        self.handler = handler


async def test_a_paused_type_accepts_jobs_starts_none_and_resumes_in_priority_order(
    runner: Factory,
) -> None:
    gate = Gate()
    gate.release.set()
    ej = await runner(workers=1, types=[("work", {"handler": gate.handler}), ("other", {})])
    view = await pause_job_type(ej, "work")
    assert view.paused and "work" in ej.registry.paused

    for name, priority in [("low", "low"), ("normal", "normal"), ("crit", "critical")]:
        job = await ej.submit("work", org="acme", params={"name": name}, priority=priority)
        assert job.status is Status.QUEUED  # accepted
    await ej.submit("work", org="acme", params={"name": "high"}, priority="high")
    other = await ej.submit("other", org="acme")
    await ej.drain()
    assert gate.started == []  # nothing of the paused type started...
    assert (await ej.get(other.id)).status is Status.COMPLETED  # ...other types did

    view = await resume_job_type(ej, "work")
    assert not view.paused and "work" not in ej.registry.paused
    await ej.drain()
    assert gate.started == ["crit", "high", "normal", "low"]


async def test_running_jobs_finish_when_their_type_is_paused(runner: Factory) -> None:
    gate = Gate()
    ej = await runner(workers=2, types=[("work", {"handler": gate.handler})])
    first = await ej.submit("work", org="acme", params={"name": "first"})
    assert ej.pool is not None
    assert await ej.pool.claim_once() == 1
    await pause_job_type(ej, "work")
    second = await ej.submit("work", org="acme", params={"name": "second"})
    gate.release.set()
    await ej.drain()
    assert (await ej.get(first.id)).status is Status.COMPLETED
    assert (await ej.get(second.id)).status is Status.QUEUED
    assert gate.started == ["first"]


async def test_a_pause_from_another_process_reaches_the_runner(
    runner: Factory, db_path: Path, clock: FakeClock
) -> None:
    ej = await runner(types=[("work", {})])
    client = build(db_path, clock, types=[])  # like the CLI: no handlers, not a runner
    await client.open()
    try:
        await pause_job_type(client, "work")  # known through the runner's declaration
        await wait_until(lambda: "work" in ej.registry.paused)
        await client.submit("work", org="acme")
        assert ej.pool is not None
        assert await ej.pool.claim_once() == 0
        await resume_job_type(client, "work")
        await wait_until(lambda: "work" not in ej.registry.paused)
        assert await ej.pool.claim_once() == 1
    finally:
        await client.close()


async def test_a_resume_from_another_process_starts_the_queued_jobs_by_itself(
    db_path: Path, clock: FakeClock
) -> None:
    """The runner claims on its own (no stepping): the claim that another process's commit
    wakes must not run on the pause it read before that commit, then sleep with jobs ready.
    (Ticks far apart: a tick's own commits would hide a missed wake-up.)"""
    config = Config(runner=RunnerConfig(tick_interval_s=600))
    ej = EdgeJobs(db_path, config=config, clock=clock)
    ej.register("work", noop, dedup=False)
    await ej.start()
    client = build(db_path, clock, types=[])  # like the CLI: no handlers, not a runner
    await client.open()
    try:
        await pause_job_type(client, "work")
        await wait_until(lambda: "work" in ej.registry.paused)
        job = await client.submit("work", org="acme")
        assert (await ej.get(job.id)).status is Status.QUEUED
        await resume_job_type(client, "work")
        finished = await ej.wait(job.id, timeout=3)
        assert finished.status is Status.COMPLETED
    finally:
        await client.close()
        await ej.stop(grace_s=0)
        await ej.close()


async def test_a_client_open_before_an_override_submits_under_it(
    runner: Factory, db_path: Path, clock: FakeClock
) -> None:
    """A process that only submits (a web app's client) follows overrides made elsewhere,
    not the state it read when it opened."""
    await runner(types=[("work", {"dedup": False})])
    client = build(db_path, clock, types=[("work", {"dedup": False})])
    admin = build(db_path, clock, types=[])
    await client.open()
    await admin.open()
    try:
        assert (await client.submit("work", org="acme")).priority.value == "normal"
        await override_job_type(admin, "work", {"priority": "high", "rate_limit": "1/hour"})
        await wait_until(lambda: client.registry.get("work").priority.value == "high")
        assert (await client.submit("work", org="acme")).priority.value == "high"
        with pytest.raises(Exception, match="try again later"):
            await client.submit("work", org="acme")
    finally:
        await admin.close()
        await client.close()


async def test_a_concurrency_override_applies_at_the_next_claim_and_removal_restores_it(
    runner: Factory,
) -> None:
    gate = Gate()
    ej = await runner(workers=8, types=[("work", {"handler": gate.handler, "concurrency": 4})])
    for i in range(8):
        await ej.submit("work", org="acme", params={"name": str(i)})
    assert ej.pool is not None

    view = await override_job_type(ej, "work", {"concurrency": 1})
    assert view.policy["concurrency"] == 1 and view.declared["concurrency"] == 4
    assert view.overrides == {"concurrency": 1}
    assert await ej.pool.claim_once() == 1
    assert await ej.pool.claim_once() == 0

    view = await override_job_type(ej, "work", {"concurrency": None})
    assert view.policy["concurrency"] == 4 and view.overrides == {}
    assert await ej.pool.claim_once() == 3
    assert ej.pool.running_count == 4
    gate.release.set()
    await ej.drain()


async def test_a_timeout_override_applies_to_the_next_attempt(runner: Factory) -> None:
    async def slow(ctx: Any, params: dict[str, Any]) -> None:
        await asyncio.sleep(5)

    ej = await runner(types=[("slow", {"handler": slow, "max_retries": 0})])
    await override_job_type(ej, "slow", {"timeout_s": 0.05})
    job = await ej.submit("slow", org="acme")
    await ej.drain(timeout=10)
    assert (await ej.get(job.id)).status is Status.TIMED_OUT


async def test_submit_time_overrides_apply_to_new_jobs(runner: Factory) -> None:
    ej = await runner(types=[("work", {"dedup": False})])
    await override_job_type(
        ej, "work", {"priority": "high", "max_retries": 7, "rate_limit": "2/minute"}
    )
    job = await ej.submit("work", org="acme")
    assert (job.priority.value, job.max_retries) == ("high", 7)
    await ej.submit("work", org="acme")
    with pytest.raises(Exception, match="try again later"):
        await ej.submit("work", org="acme")


async def test_overrides_and_pause_survive_a_restart(
    db_path: Path, clock: FakeClock, runner: Factory
) -> None:
    ej = await runner(types=[("work", {"concurrency": 4})])
    await override_job_type(ej, "work", JobTypeOverrides.parse({"org_concurrency": 2}))
    await pause_job_type(ej, "work")
    await ej.close()
    again = await runner(types=[("work", {"concurrency": 4})])
    view = await job_type_view(again, "work")
    assert view.paused and view.overrides == {"org_concurrency": 2}
    assert again.registry.get("work").org_concurrency == 2
    assert "work" in again.registry.paused
    stored = query(db_path, "SELECT paused, overrides FROM job_types WHERE name = 'work'")
    assert stored == [(1, '{"org_concurrency":2}')]


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"timeout_s": 0}, "timeout_s"),
        ({"timeout_s": "10"}, "timeout_s"),
        ({"timeout_s": float("nan")}, "timeout_s"),
        ({"max_retries": -1}, "max_retries"),
        ({"max_retries": True}, "max_retries"),
        ({"priority": "urgent"}, "priority"),
        ({"concurrency": 0}, "concurrency"),
        ({"org_concurrency": 1.5}, "org_concurrency"),
        ({"rate_limit": "fast"}, "rate_limit"),
        ({"isolation": "process"}, "not an overridable key"),
        ([1, 2], "JSON object"),
    ],
)
async def test_invalid_overrides_are_refused(
    runner: Factory, db_path: Path, body: Any, fragment: str
) -> None:
    ej = await runner(types=[("work", {})])
    with pytest.raises(ValidationError, match=fragment) as info:
        await override_job_type(ej, "work", body)
    assert info.value.http_status == 422
    assert query(db_path, "SELECT overrides FROM job_types WHERE name = 'work'") == [("{}",)]


async def test_unknown_job_types_are_not_found(runner: Factory, db_path: Path) -> None:
    ej = await runner(types=[("work", {})])
    for action in (
        pause_job_type(ej, "nope"),
        resume_job_type(ej, "nope"),
        override_job_type(ej, "nope", {"concurrency": 1}),
        job_type_view(ej, "nope"),
    ):
        with pytest.raises(NotFound) as info:
            await action
        assert info.value.http_status == 404
    assert query(db_path, "SELECT name FROM job_types") == [("work",)]
    assert query(db_path, "SELECT count(*) FROM audit_log") == [(0,)]


async def test_job_type_views_show_declared_overridden_and_effective_policy(
    runner: Factory, db_path: Path, clock: FakeClock
) -> None:
    ej = await runner(types=[("a", {"timeout_s": 30}), ("b", {})])
    await override_job_type(ej, "a", {"timeout_s": 5, "priority": "low"})
    await pause_job_type(ej, "b")
    views = {v.name: v.to_dict() for v in await job_type_views(ej)}
    assert views["a"]["policy"]["timeout_s"] == 5
    assert views["a"]["policy"]["priority"] == "low"
    assert views["a"]["declared"]["timeout_s"] == 30
    assert views["a"]["overrides"] == {"timeout_s": 5, "priority": "low"}
    assert (views["a"]["paused"], views["b"]["paused"]) == (False, True)
    # A process without the handlers sees the runner's declaration with the same state.
    client: EdgeJobs = build(db_path, clock, types=[])
    await client.open()
    try:
        seen = {v.name: v.to_dict() for v in await job_type_views(client)}
        assert {name: item.pop("registered") for name, item in seen.items()} == {
            "a": False,
            "b": False,
        }
        assert {name: item.pop("registered") for name, item in views.items()} == {
            "a": True,
            "b": True,
        }
        assert seen == views
    finally:
        await client.close()
