"""Resuming with ``Last-Event-ID``: exactly the missed events, in order; beyond the window, a
``reset`` first; then the stream is live."""

from __future__ import annotations

import json
from functools import partial
from typing import Any

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
from edgejobs.broker import get_broker
from edgejobs.store.retention import delete_old_events
from edgejobs.store.rows import render_job_event
from edgejobs.testing import FakeClock


async def _run_jobs(server: object, org: str, count: int) -> list[str]:
    ej = server.ej  # type: ignore[attr-defined]
    jobs = await ej.submit_many([JobSpec("steps", org, {"steps": [30, 60]}) for _ in range(count)])
    for job in jobs:
        await ej.wait(job.id, timeout=30)
    return [job.id for job in jobs]


_FROM_THE_JOB_ROW = ("params", "result", "depends_on", "dependents", "eta_s")


def _stored_part(event: SSE) -> Any:
    """A ``job`` event's data without what is read from the job's row (an error's traceback:
    None), to compare with the stored row rendered alone."""
    if event.event != "job":
        return event.data
    data = {**event.data, **dict.fromkeys(_FROM_THE_JOB_ROW)}
    data["depends_on"] = data["dependents"] = []
    if data["error"]:
        data["error"] = {**data["error"], "traceback": None}
    return data


def _without_eta(event: SSE) -> Any:
    return {k: v for k, v in event.data.items() if k != "eta_s"}


async def test_reconnect_with_last_event_id_replays_exactly_the_missed_events(
    serve: Serve,
) -> None:
    server = await serve()
    ej = server.ej
    token = await make_token(ej, "acme")
    async with client() as http:
        async with open_stream(http, server, token) as stream:
            first = await ej.submit("steps", org="acme")
            seen = await stream.until(is_final(first.id))
        last_id = seen[-1].id
        assert last_id is not None

        # While disconnected: jobs of both orgs run (events of org B are interleaved); a
        # second client of the org stays connected and sees them live.
        async with open_stream(http, server, token) as witness:
            await _run_jobs(server, "acme", 5)
            await _run_jobs(server, "globex", 5)
            await _run_jobs(server, "acme", 3)
            missed = event_rows(ej.store.path, where="org = 'acme' AND id > ?", args=(last_id,))
            assert len(missed) == 8 * 5  # queued, running, 2 x progress, completed
            live_then = [await witness.next() for _ in missed]

        async with open_stream(
            http, server, token, headers={"Last-Event-ID": str(last_id)}
        ) as resumed:
            replayed = [await resumed.next() for _ in missed]
            # ... then live.
            live = await ej.submit("quick", org="acme")
            after = await resumed.until(is_final(live.id))

    assert [e.id for e in replayed if e] == [row["id"] for row in missed]
    # What each stored row says, as the stream renders it ...
    assert [(e.event, _stored_part(e)) for e in replayed if e] == [
        (
            row["kind"],
            json.loads(
                render_job_event(row["data"], row["job_id"], row["org"])
                if row["kind"] == "job"
                else row["data"]
            ),
        )
        for row in missed
    ]
    # ... and the whole job object, as a client connected at the time received it (the ETA
    # aside: it is estimated from the type's durations as known when the event is read).
    assert [(e.id, e.event, _without_eta(e)) for e in replayed if e] == [
        (e.id, e.event, _without_eta(e)) for e in live_then if e
    ]
    assert all(e.data["params"] == {"steps": [30, 60]} for e in replayed if e and e.event == "job")
    assert {e.data["org"] for e in after} == {"acme"}
    assert after[0].id is not None and after[0].id > missed[-1]["id"]
    assert not any(e.event == "reset" for e in replayed + after if e)


async def test_last_event_id_query_parameter_and_nothing_missed(serve: Serve) -> None:
    server = await serve()
    ej = server.ej
    token = await make_token(ej, "acme")
    await _run_jobs(server, "acme", 2)
    rows = event_rows(ej.store.path)
    middle = rows[len(rows) // 2 - 1]["id"]
    async with client() as http:
        async with open_stream(
            http, server, token, params={"last_event_id": str(middle)}
        ) as resumed:
            marker = await ej.submit("quick", org="acme")
            seen = await resumed.until(is_final(marker.id))
        assert [e.id for e in seen][: len(rows) - len(rows) // 2] == [
            r["id"] for r in rows[len(rows) // 2 :]
        ]
        # Up to date: nothing to replay, no reset, straight to live.
        newest = seen[-1].id
        async with open_stream(
            http, server, token, headers={"Last-Event-ID": str(newest)}
        ) as resumed:
            marker2 = await ej.submit("quick", org="acme")
            seen2 = await resumed.until(is_final(marker2.id))
        assert seen2[0].data["id"] == marker2.id and seen2[0].data["status"] == "queued"


async def _first_event(server: object, token: object, last_id: int) -> SSE:
    async with client() as http:
        async with open_stream(
            http,
            server,  # type: ignore[arg-type]
            token,  # type: ignore[arg-type]
            headers={"Last-Event-ID": str(last_id)},
        ) as stream:
            event = await stream.next()
    assert event is not None
    return event


async def test_beyond_the_event_count_window_sends_reset(serve: Serve) -> None:
    server = await serve(make_config(replay_max_events=20))
    ej = server.ej
    token = await make_token(ej, "acme")
    await _run_jobs(server, "acme", 5)  # 25 events
    newest = event_rows(ej.store.path)[-1]["id"]
    # A stream's replay ends at the newest event the broker has tailed (later ones come
    # live); wait until it has tailed them all, so the window counts all 25.
    await wait_for(lambda: server.broker.last_id >= newest, "the broker tails every event")
    reset = await _first_event(server, token, newest - 21)
    assert reset.event == "reset"
    assert reset.id == newest
    assert reset.data["last_event_id"] == newest
    # Within the window: a replay, not a reset.
    replayed = await _first_event(server, token, newest - 20)
    assert replayed.event != "reset" and replayed.id == newest - 19


async def test_older_than_the_age_window_sends_reset(serve: Serve) -> None:
    clock = FakeClock()
    server = await serve(make_config(replay_max_age_s=600), clock=clock)
    ej = server.ej
    token = await make_token(ej, "acme")
    await _run_jobs(server, "acme", 1)
    first = event_rows(ej.store.path)[0]["id"]
    assert (await _first_event(server, token, first)).event != "reset"
    clock.advance(601)
    assert (await _first_event(server, token, first)).event == "reset"


async def test_pruned_or_unknown_event_ids_send_reset(serve: Serve) -> None:
    clock = FakeClock()
    server = await serve(clock=clock)
    ej = server.ej
    token = await make_token(ej, "acme")
    await _run_jobs(server, "acme", 2)
    clock.advance(10)
    await _run_jobs(server, "acme", 1)
    rows = event_rows(ej.store.path)
    # Retention deletes the oldest events: a client that last saw one of them missed some.
    cutoff = rows[5]["created_at"] + 1
    deleted = await ej.store.write(partial(delete_old_events, cutoff_ms=cutoff, batch=1000))
    assert deleted == 10
    assert (await _first_event(server, token, rows[0]["id"])).event == "reset"
    # The oldest event still stored follows right after the client's: nothing was lost.
    assert (await _first_event(server, token, rows[9]["id"])).id == rows[10]["id"]
    # An id this database never issued (a client of another, newer database).
    reset = await _first_event(server, token, rows[-1]["id"] + 1000)
    assert reset.event == "reset" and reset.id == rows[-1]["id"]


async def test_after_a_reset_for_an_id_ahead_of_the_database_the_stream_is_live(
    serve: Serve,
) -> None:
    server = await serve()
    ej = server.ej
    token = await make_token(ej, "acme")
    await _run_jobs(server, "acme", 1)
    newest = event_rows(ej.store.path)[-1]["id"]
    # A client of a database restored from an older backup (or a forged header): its id is
    # ahead of every event here. New events must still reach it after the reset.
    broker = get_broker(ej)
    await broker.ensure_started()
    for ahead in (newest + 1000, 9_999_999_999_999_999_999):
        # The reset names the subscription point: the broker's tail, which follows commits a
        # moment later (it once named event 4 with event 5 committed and not yet tailed).
        tailed = partial(lambda upto: broker.last_id >= upto, newest)
        await wait_for(tailed, "the broker to tail the newest event")
        async with client() as http:
            async with open_stream(
                http, server, token, headers={"Last-Event-ID": str(ahead)}
            ) as resumed:
                reset = await resumed.next()
                assert reset is not None and reset.event == "reset" and reset.id == newest
                live = await ej.submit("quick", org="acme")
                seen = await resumed.until(is_final(live.id))
        assert seen[0].id is not None and seen[0].id > newest
        assert not any(e.event == "reset" for e in seen)
        newest = event_rows(ej.store.path)[-1]["id"]


async def test_malformed_last_event_id_is_a_bad_request(serve: Serve) -> None:
    server = await serve()
    token = await make_token(server.ej, "acme")
    async with client() as http:
        for bad in ("abc", "-1", "1.5"):
            async with open_stream(http, server, token, headers={"Last-Event-ID": bad}, expect=400):
                pass
        # Digits to str.isdigit(), not to int(): superscripts and other scripts' digits.
        for bad in ("\u00b2", "1\u00b3", "\u0661\u0662"):
            async with open_stream(http, server, token, params={"last_event_id": bad}, expect=400):
                pass
    assert server.broker.subscriber_count == 0


async def test_an_event_row_this_version_cannot_read_is_skipped_and_the_stream_goes_on(
    serve: Serve,
) -> None:
    """One unreadable ``job`` event (the object form an older runner wrote into a file a newer
    edgejobs had migrated under it) raised in every stream that met it, live or replayed, and
    every resume met it again: the client could never get past it."""
    server = await serve()
    ej = server.ej
    token = await make_token(ej, "acme")
    first = await ej.submit("quick", org="acme")
    await ej.wait(first.id, timeout=30)
    before = event_rows(ej.store.path)[-1]["id"]
    # A live stream starts after the newest event the broker has tailed: wait until that is
    # `before`, or the stream would begin with it.
    await wait_for(lambda: server.broker.last_id >= before, "the broker tails every event")

    def write_an_old_form_event(conn: Any, tx: Any) -> None:
        conn.execute(
            "INSERT INTO events (org, job_id, kind, data, created_at)"
            " VALUES ('acme', ?, 'job', '{\"status\": \"queued\"}', ?)",
            (first.id, ej.clock.now_ms()),
        )
        tx.events += 1

    async with client() as http:
        async with open_stream(http, server, token) as live:
            await ej.store.write(write_an_old_form_event)
            after = await ej.submit("quick", org="acme")
            seen_live = await live.until(is_final(after.id))
        async with open_stream(
            http, server, token, headers={"Last-Event-ID": str(before)}
        ) as resumed:
            seen_replayed = await resumed.until(is_final(after.id))
    for seen, stream in ((seen_live, live), (seen_replayed, resumed)):
        assert seen[0].id == before + 1 and seen[0].data is None  # its id only, no data
        assert f"event {before + 1} could not be read" in stream.comments
        assert seen[1].data["id"] == after.id and seen[1].data["status"] == "queued"
