"""Each org's stream carries its own events only, in order; a system token sees every org."""

from __future__ import annotations

import contextlib
import json
import sqlite3
from functools import partial

from sse_support import (
    SSE,
    Serve,
    client,
    event_rows,
    is_final,
    make_config,
    make_token,
    open_stream,
    wait_for,
)

from edgejobs.app import JobSpec
from edgejobs.store.db import WriteTx


def _job_ids(events: list[SSE]) -> set[str]:
    return {e.data["id"] if e.event == "job" else e.data["job_id"] for e in events}


async def test_org_stream_carries_own_events_in_order_and_nothing_of_another_org(
    serve: Serve,
) -> None:
    server = await serve()
    ej = server.ej
    token_a = await make_token(ej, "acme")
    token_system = await make_token(ej, None)
    async with (
        client() as http,
        open_stream(http, server, token_a) as stream_a,
        open_stream(http, server, token_system) as stream_all,
    ):
        # Org B: 250 jobs x (queued, running, progress, completed) = 1,000 events ...
        b_jobs = await ej.submit_many(
            [JobSpec("steps", "globex", {"steps": [50], "pause_s": 0}) for _ in range(250)]
        )
        # ... while org A runs one job that reports progress three times.
        job_a = await ej.submit("steps", org="acme", params={"steps": [25, 50, 75]})
        a_events = await stream_a.until(is_final(job_a.id))
        await ej.wait(job_a.id, timeout=30)
        for job in b_jobs:
            await ej.wait(job.id, timeout=30)
        b_rows = event_rows(ej.store.path, where="org = 'globex'")
        assert len(b_rows) == 1000

        # A marker job of org A, committed after every event of org B: anything of B that
        # leaked to A's stream would have to arrive before it.
        marker = await ej.submit("quick", org="acme")
        a_events += await stream_a.until(is_final(marker.id))
        all_events = await stream_all.until(is_final(marker.id))

    assert {e.data["org"] for e in a_events} == {"acme"}
    assert _job_ids(a_events) == {job_a.id, marker.id}

    # Org A's own job: every status change and every progress report, in order.
    mine = [e for e in a_events if _job_ids([e]) == {job_a.id}]
    assert [(e.event, e.data.get("status") or e.data["progress"]) for e in mine] == [
        ("job", "queued"),
        ("job", "running"),
        ("progress", 25.0),
        ("progress", 50.0),
        ("progress", 75.0),
        ("job", "completed"),
    ]
    ids = [e.id for e in a_events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)

    # The system stream: both orgs, every event of the log, in id order.
    assert {e.data["org"] for e in all_events} == {"acme", "globex"}
    assert [e.id for e in all_events] == [r["id"] for r in event_rows(ej.store.path)]
    assert server.broker.dropped == 0


async def test_system_token_org_filter_and_tenant_naming_another_org(serve: Serve) -> None:
    server = await serve()
    ej = server.ej
    token_a = await make_token(ej, "acme")
    token_system = await make_token(ej, None)
    other = await ej.submit("quick", org="globex")
    await ej.wait(other.id, timeout=30)
    async with client() as http:
        # A tenant naming another org: 403; another org's job: 404 (nothing revealed).
        async with open_stream(http, server, token_a, params={"org": "globex"}, expect=403):
            pass
        async with open_stream(http, server, token_a, params={"job_id": other.id}, expect=404):
            pass
        async with open_stream(http, server, token_a, params={"org": "acme"}) as own:
            async with open_stream(http, server, token_system, params={"org": "globex"}) as only_b:
                job_a = await ej.submit("quick", org="acme")
                job_b = await ej.submit("quick", org="globex")
                b_seen = await only_b.until(is_final(job_b.id))
                a_seen = await own.until(is_final(job_a.id))
    assert {e.data["org"] for e in b_seen} == {"globex"}
    assert {e.data["org"] for e in a_seen} == {"acme"}


async def test_unknown_and_repeated_query_parameters_are_a_bad_request(serve: Serve) -> None:
    """Like every other route's: a misspelled filter must not stream everything, and a repeated
    org must not be resolved by its order (``org=globex&org=acme`` streamed acme's events to
    an acme token while ``org=acme&org=globex`` was a 403)."""
    server = await serve()
    token_a = await make_token(server.ej, "acme")
    job = await server.ej.submit("quick", org="acme")
    async with client() as http:
        for query in (
            "bogus=1",
            "jobid=" + job.id,
            "org=acme&org=globex",
            "org=globex&org=acme",
            "org=acme&org=acme",
            f"job_id={job.id}&job_id={job.id}",
            "last_event_id=1&last_event_id=2",
        ):
            url = f"{server.base_url}/api/v1/events?{query}"
            async with http.stream("GET", url, headers=token_a.headers) as response:
                assert response.status_code == 400, query  # not a stream that never ends
                body = json.loads(await response.aread())
            assert body["error"]["code"] == "bad_request", query
        # The documented parameters still work, each once.
        query = {"org": "acme", "job_id": job.id, "last_event_id": "0"}
        async with open_stream(http, server, token_a, params=query):
            pass


async def test_job_filter_carries_only_that_job(serve: Serve) -> None:
    server = await serve()
    ej = server.ej
    token = await make_token(ej, "acme")
    async with client() as http:
        gate = await ej.submit("gate", org="acme")
        async with open_stream(http, server, token, params={"job_id": gate.id}) as stream:
            noise = await ej.submit_many([JobSpec("quick", "acme") for _ in range(20)])
            for job in noise:
                await ej.wait(job.id, timeout=30)
            await ej.cancel(gate.id)
            seen = await stream.until(is_final(gate.id, "canceled"))
    assert _job_ids(seen) == {gate.id}


async def test_event_whose_org_differs_from_its_jobs_stored_org_is_dropped(serve: Serve) -> None:
    server = await serve()
    ej = server.ej
    token_a = await make_token(ej, "acme")
    token_system = await make_token(ej, None)
    victim = await ej.submit("gate", org="globex")

    def forge(conn: sqlite3.Connection, tx: WriteTx, *, org: str) -> None:
        # A row claiming org A for a job of org B: what a bug elsewhere could write.
        data = json.dumps({"job_id": victim.id, "org": org, "progress": 1})
        conn.execute(
            "INSERT INTO events (org, job_id, kind, data, created_at) VALUES (?, ?, 'progress', ?, 0)",
            (org, victim.id, data),
        )
        tx.events += 1

    async with (
        client() as http,
        open_stream(http, server, token_a) as stream_a,
        open_stream(http, server, token_system) as stream_all,
    ):
        await ej.store.write(partial(forge, org="acme"))
        await wait_for(lambda: server.broker.dropped == 1, "the forged event to be dropped")
        marker = await ej.submit("quick", org="acme")
        a_events = await stream_a.until(is_final(marker.id))
        all_events = await stream_all.until(is_final(marker.id))
        await ej.cancel(victim.id)
    assert all(e.data["org"] == "acme" for e in a_events)
    assert victim.id not in _job_ids(a_events)
    forged_id = event_rows(ej.store.path, where="kind = 'progress'")[0]["id"]
    assert forged_id not in {e.id for e in all_events}
    # A replay reads the log again: the same check applies.
    async with (
        client() as http,
        open_stream(http, server, token_a, headers={"Last-Event-ID": "0"}) as replayed,
    ):
        marker2 = await ej.submit("quick", org="acme")
        seen = await replayed.until(is_final(marker2.id))
    assert forged_id not in {e.id for e in seen}
    assert {e.data["org"] for e in seen} == {"acme"}


async def test_one_token_holds_a_bounded_number_of_streams_and_others_still_connect(
    serve: Serve,
) -> None:
    """Each stream is a connection and a queue: a client opening streams without end took
    every file descriptor of the server, and every other tenant was locked out. Past its
    limit a token gets 429 (with Retry-After); other tokens are not affected, and a closed
    stream frees its place."""
    server = await serve(make_config(max_streams_per_token=3))
    token_a, token_b = await make_token(server.ej, "acme"), await make_token(server.ej, "globex")
    async with client() as http, contextlib.AsyncExitStack() as streams:
        for _ in range(3):
            await streams.enter_async_context(open_stream(http, server, token_a))
        url = server.base_url + "/api/v1/events"
        refused = await http.get(url, headers=token_a.headers)
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "rate_limited"
        assert int(refused.headers["retry-after"]) >= 1
        async with open_stream(http, server, token_b):
            assert server.broker.subscriber_count == 4
        await streams.aclose()
        await wait_for(lambda: server.broker.subscriber_count == 0, "the streams to close")
        async with open_stream(http, server, token_a):
            assert server.broker.subscriber_count == 1
