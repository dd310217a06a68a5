"""A ``job`` event's data is the job object (SPEC §6): params, result, parents and children,
the error's traceback and an ETA, as ``GET /api/v1/jobs/{id}`` shows the job at that change;
and a stream's queue is bounded in bytes too, now that events carry params and results."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sse_support import (
    SSE,
    Server,
    Token,
    client,
    is_final,
    make_config,
    make_token,
    open_stream,
    wait_for,
)

from edgejobs import EdgeJobs, JobContext
from edgejobs.app import JobSpec
from edgejobs.broker import Event, Subscriber, get_broker
from edgejobs.testing import FakeClock

RETRY_WAIT_S = 3600 * 1.1
"""Past any first retry's due time (base delay 60 s, jitter at most 10 %)."""


@dataclasses.dataclass
class Served:
    """A served runner on a fake clock, its held ``make`` jobs' release, a token of acme."""

    server: Server
    ej: EdgeJobs
    clock: FakeClock
    release: asyncio.Event
    token: Token


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    """A runner on a fake clock, served; its ``make`` jobs wait for ``release`` when held."""
    clock = FakeClock()
    ej = EdgeJobs(database=tmp_path / "jobs.db", config=make_config(), clock=clock)
    release = asyncio.Event()

    @ej.job_type("make", max_retries=0, dedup=False)
    async def make(ctx: JobContext, params: dict[str, Any]) -> dict[str, Any]:
        if params.get("hold"):
            await release.wait()
        clock.advance(params.get("took_s", 0))
        return {"doubled": params["n"] * 2}

    @ej.job_type("flaky", max_retries=1, dedup=False)
    async def flaky(ctx: JobContext, params: dict[str, Any]) -> None:
        raise ValueError(f"attempt {ctx.attempt} of {params['name']}")

    await ej.start()
    server = await Server(ej).start()
    try:
        yield Served(server, ej, clock, release, await make_token(ej, "acme"))
    finally:
        release.set()
        await server.stop()
        await ej.close()


def _of(events: list[SSE], job_id: str) -> list[dict[str, Any]]:
    return [e.data for e in events if e.event == "job" and e.data["id"] == job_id]


async def _get(http: Any, server: Server, token: Any, job_id: str) -> dict[str, Any]:
    answer = await http.get(f"{server.base_url}/api/v1/jobs/{job_id}", headers=token.headers)
    assert answer.status_code == 200
    job: dict[str, Any] = answer.json()
    del job["deduplicated"]  # a submit answer's flag, not part of the job
    return job


async def test_each_job_event_is_the_job_object_and_the_last_equals_the_stored_job(
    served: Served,
) -> None:
    server, ej, release, token = served.server, served.ej, served.release, served.token
    async with client() as http:
        async with open_stream(http, server, token) as stream:
            parent = await ej.submit("make", org="acme", params={"n": 21, "hold": True})
            child = await ej.submit("make", org="acme", params={"n": 2}, depends_on=[parent.id])
            events = await stream.until(is_final(parent.id, "running"))
            release.set()
            events += await stream.until(is_final(child.id))
        got = {job.id: await _get(http, server, token, job.id) for job in (parent, child)}

    parent_events, child_events = _of(events, parent.id), _of(events, child.id)
    assert [e["status"] for e in parent_events] == ["queued", "running", "completed"]
    assert [e["status"] for e in child_events] == ["blocked", "queued", "running", "completed"]
    # The change that ended each job shows exactly what the API shows of it now.
    assert parent_events[-1] == got[parent.id]
    assert child_events[-1] == got[child.id]
    assert parent_events[-1]["result"] == {"doubled": 42}
    assert parent_events[-1]["dependents"] == [child.id]
    # Every change carries the params and the parents; a result only once completed.
    for job, job_events in ((parent, parent_events), (child, child_events)):
        assert all(e["params"] == got[job.id]["params"] for e in job_events)
        assert all(e["depends_on"] == got[job.id]["depends_on"] for e in job_events)
        assert all(e["result"] is None for e in job_events[:-1])
    assert child_events[0]["depends_on"] == [parent.id]


async def test_an_errors_event_carries_the_traceback_of_the_attempt_that_raised_it(
    served: Served,
) -> None:
    server, ej, clock, token = served.server, served.ej, served.clock, served.token
    async with client() as http:
        async with open_stream(http, server, token) as stream:
            job = await ej.submit("flaky", org="acme", params={"name": "x"})
            events = await stream.until(is_final(job.id, "retrying"))
            clock.advance(RETRY_WAIT_S)
            assert ej.ticker is not None
            await ej.ticker.tick()
            events += await stream.until(is_final(job.id, "dead_letter"))
        got = await _get(http, server, token, job.id)
        attempts = await http.get(
            f"{server.base_url}/api/v1/jobs/{job.id}/attempts", headers=token.headers
        )
    first, second = attempts.json()["items"]
    retrying = next(e for e in _of(events, job.id) if e["status"] == "retrying")
    assert retrying["error"] == first["error"]
    assert "attempt 1 of x" in retrying["error"]["traceback"]
    dead = _of(events, job.id)[-1]
    assert dead == got
    assert dead["error"] == second["error"]
    assert "attempt 2 of x" in dead["error"]["traceback"]


async def test_a_waiting_jobs_event_has_the_eta_its_submit_answered(
    served: Served,
) -> None:
    server, ej, token = served.server, served.ej, served.token
    async with client() as http:
        done = await ej.submit("make", org="acme", params={"n": 1, "took_s": 8})
        await ej.wait(done.id, timeout=30)
        async with open_stream(http, server, token) as stream:
            # Held, so nothing of the type ends (and moves the mean) before the read.
            waiting = await ej.submit("make", org="acme", params={"n": 2, "hold": True})
            events = await stream.until(is_final(waiting.id, "running"))
    queued, running = _of(events, waiting.id)
    assert waiting.eta_s == 8.0
    assert queued["eta_s"] == waiting.eta_s
    assert running["eta_s"] == 8.0  # nothing of the mean spent yet on the fake clock
    assert queued["params"] == {"n": 2, "hold": True} and queued["result"] is None


async def test_a_stream_holding_too_many_bytes_is_disconnected_not_one_that_reads(
    tmp_path: Path,
) -> None:
    ej = EdgeJobs(database=tmp_path / "jobs.db", config=make_config(buffer=100))
    ej.register("bulky", _bulky, max_retries=0, dedup=False)
    await ej.start(run_workers=False)
    broker = get_broker(ej)
    try:
        await broker.start()
        broker.max_bytes = 100_000
        slow = broker.subscribe(org="acme")
        reader = broker.subscribe(org="acme")
        received: list[Event] = []

        async def read(subscriber: Subscriber) -> None:
            while not subscriber.closed:
                received.extend(await subscriber.take(0.05))

        reading = asyncio.create_task(read(reader))
        # 6 events of ~30 kB: far fewer than the 100 events a queue holds, more bytes than
        # 100 kB.
        for index in range(6):
            await ej.submit_many([JobSpec("bulky", "acme", {"blob": f"{index}" * 30_000})])
        await wait_for(lambda: len(received) == 6, "the reader to receive every event")
        assert slow.closed and slow.queued_bytes == 0
        assert broker.subscribers() == [reader]
        assert broker.disconnected == 1
        assert all(len(e.encode()) > 30_000 for e in received)
        reader.close("test over")
        await reading
    finally:
        await broker.close()
        await ej.close()


async def _bulky(ctx: JobContext, params: dict[str, Any]) -> None:
    return None
