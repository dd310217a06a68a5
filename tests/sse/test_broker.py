"""The broker alone (no HTTP): which queue each event reaches, the org check, bounded queues,
and closing."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sse_support import make_config, register_job_types, wait_for

import edgejobs.broker as broker_module
from edgejobs import EdgeJobs
from edgejobs.app import JobSpec
from edgejobs.broker import Broker, Event, PacingAllowance, Subscriber, get_broker
from edgejobs.errors import ShuttingDown
from edgejobs.store.db import WriteTx


@pytest.fixture
async def ej(tmp_path: Path) -> AsyncIterator[EdgeJobs]:
    """A runner whose jobs are stepped by the test (``drain``)."""
    ej = EdgeJobs(database=tmp_path / "jobs.db", config=make_config(buffer=8))
    register_job_types(ej)
    await ej.start(run_workers=False)
    try:
        yield ej
    finally:
        await get_broker(ej).close()
        await ej.close()


@pytest.fixture
async def paced(tmp_path: Path) -> AsyncIterator[tuple[EdgeJobs, Broker]]:
    """A stepped runner and its started broker, streams of 100 events (bursts overflow them)."""
    ej = EdgeJobs(database=tmp_path / "paced.db", config=make_config(buffer=100))
    register_job_types(ej)
    await ej.start(run_workers=False)
    broker = get_broker(ej)
    try:
        await broker.start()
        yield ej, broker
    finally:
        await broker.close()
        await ej.close()


def _drain_queue(subscriber: Subscriber) -> list[Event]:
    events = []
    while subscriber.qsize:
        event = subscriber._queue.popleft()
        events.append(event)
    return events


async def _settle(broker: Broker, ej: EdgeJobs) -> None:
    newest = await ej.store.read(
        lambda conn: conn.execute("SELECT coalesce(max(id), 0) FROM events").fetchone()[0]
    )
    await wait_for(lambda: broker.last_id >= newest, "the tailer to read every event")


async def test_each_event_reaches_only_the_queues_of_its_org_and_job(ej: EdgeJobs) -> None:
    broker = get_broker(ej)
    await broker.start()
    acme = broker.subscribe(org="acme")
    globex = broker.subscribe(org="globex")
    everyone = broker.subscribe(org=None)
    job_a, job_b = await ej.submit_many([JobSpec("quick", "acme"), JobSpec("quick", "globex")])
    one_job = broker.subscribe(org="acme", job_id=job_a.id)
    await ej.drain(timeout=30)
    await _settle(broker, ej)

    assert {(e.org, e.job_id) for e in _drain_queue(acme)} == {("acme", job_a.id)}
    assert {(e.org, e.job_id) for e in _drain_queue(globex)} == {("globex", job_b.id)}
    assert {e.job_id for e in _drain_queue(one_job)} == {job_a.id}
    seen = _drain_queue(everyone)
    assert {e.org for e in seen} == {"acme", "globex"}
    assert [e.id for e in seen] == sorted(e.id for e in seen)
    assert broker.dropped == 0


async def test_an_event_naming_another_org_than_its_jobs_is_dropped(ej: EdgeJobs) -> None:
    broker = get_broker(ej)
    await broker.start()
    acme = broker.subscribe(org="acme")
    everyone = broker.subscribe(org=None)
    victim = await ej.submit("quick", org="globex")

    def forge(conn: sqlite3.Connection, tx: WriteTx) -> None:
        conn.execute(
            "INSERT INTO events (org, job_id, kind, data, created_at) VALUES (?, ?, 'progress', ?, 0)",
            ("acme", victim.id, '{"progress": 1}'),
        )
        tx.events += 1

    await ej.store.write(forge)
    await _settle(broker, ej)
    assert broker.dropped == 1
    assert all(e.job_id != victim.id for e in _drain_queue(acme))
    assert [e.kind for e in _drain_queue(everyone)] == ["job"]  # the real submit event only


async def test_a_full_queue_disconnects_that_subscriber_only(ej: EdgeJobs) -> None:
    broker = get_broker(ej)
    await broker.start()
    slow = broker.subscribe(org="acme")
    reader = broker.subscribe(org="acme")
    cancelled: list[bool] = []
    slow.bind_cancel(lambda: cancelled.append(True))

    async def read() -> int:
        count = 0
        while not reader.closed:
            count += len(await reader.take(0.05, limit=3))
        return count

    reading = asyncio.create_task(read())
    # 3 x 10 submissions: more than the queue of 8 holds, in bursts bigger than it.
    for _ in range(3):
        await ej.submit_many([JobSpec("quick", "acme") for _ in range(10)])
        await asyncio.sleep(0)
    await _settle(broker, ej)
    assert slow.closed and cancelled == [True]
    assert slow.qsize == 0
    assert broker.subscribers() == [reader]
    assert broker.disconnected == 1
    assert max(broker.queue_sizes()) <= 8
    reader.close("test over")
    assert await reading == 30


async def test_close_ends_every_stream_and_refuses_new_ones(ej: EdgeJobs) -> None:
    broker = get_broker(ej)
    await broker.start()
    subscribers = [broker.subscribe(org="acme") for _ in range(3)]
    waiting = [asyncio.create_task(s.take(60)) for s in subscribers]
    await asyncio.sleep(0)
    await broker.close(grace_s=0.1)
    assert await asyncio.gather(*waiting) == [[], [], []]
    assert all(s.closed for s in subscribers)
    assert broker.subscriber_count == 0 and not broker.running
    with pytest.raises(ShuttingDown):
        broker.subscribe(org="acme")
    await broker.ensure_started()  # closed for shutdown: stays closed
    assert not broker.running
    await broker.start()  # an explicit start reopens it
    assert broker.running


async def test_replay_window_of_the_broker(ej: EdgeJobs) -> None:
    broker = get_broker(ej)
    await broker.start()
    await ej.submit_many([JobSpec("quick", "acme") for _ in range(3)])
    await _settle(broker, ej)
    sub = broker.subscribe(org="acme")
    missed = [e async for e in broker.backlog(sub, 0)]
    assert [e.id for e in missed] == [1, 2, 3]
    assert [e.kind for e in [x async for x in broker.backlog(sub, 3)]] == []
    reset = [e async for e in broker.backlog(sub, 99)]
    assert [(e.kind, e.id) for e in reset] == [("reset", 3)]
    await ej.store.write(lambda conn, tx: conn.execute("DELETE FROM events WHERE id = 1"))
    assert [e.kind for e in [x async for x in broker.backlog(sub, 0)]] == ["reset"]
    assert [e.id for e in [x async for x in broker.backlog(sub, 1)]] == [2, 3]


async def test_events_deleted_before_the_tailer_read_them_end_every_stream(
    ej: EdgeJobs,
) -> None:
    """The log's trim keeps the newest events whatever the tailer has read: a tailer that fell
    that far behind skipped the deleted ones, and every stream went on without them, no
    ``reset`` said. The streams are ended, and a client resuming gets the ``reset``."""
    broker = get_broker(ej)
    await broker.start()
    job = await ej.submit("quick", org="acme")
    await _settle(broker, ej)
    seen = broker.last_id
    sub = broker.subscribe(org="acme")
    other = broker.subscribe(org=None)

    def written_then_trimmed(conn: sqlite3.Connection, tx: WriteTx) -> None:
        for n in range(3):
            conn.execute(
                "INSERT INTO events (org, job_id, kind, data, created_at)"
                " VALUES ('acme', ?, 'progress', ?, 0)",
                (job.id, f'{{"progress": {n}}}'),
            )
        tx.events += 3
        conn.execute("DELETE FROM events WHERE id IN (?, ?)", (seen + 1, seen + 2))

    await ej.store.write(written_then_trimmed)
    await _settle(broker, ej)
    assert sub.closed and other.closed
    assert "missed" in (sub.closed_reason or "")
    assert broker.subscribers() == []
    again = broker.subscribe(org="acme")
    assert [e.kind for e in [x async for x in broker.backlog(again, seen)]] == ["reset"]


async def test_a_replay_whose_tail_is_trimmed_while_it_is_sent_ends_with_a_reset(
    ej: EdgeJobs, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The replay window is checked once, then the missed events are read a page at a time as
    the client takes them; a trim in between deleted the rest, and the replay ended as if
    nothing was missing."""
    monkeypatch.setattr(broker_module, "TAIL_BATCH", 2)
    broker = get_broker(ej)
    await broker.start()
    await ej.submit_many([JobSpec("quick", "acme") for _ in range(6)])
    await _settle(broker, ej)
    sub = broker.subscribe(org="acme")
    replay = broker.backlog(sub, 0)
    first = [await anext(replay), await anext(replay)]
    assert [event.id for event in first] == [1, 2]
    await ej.store.write(lambda conn, tx: conn.execute("DELETE FROM events WHERE id <= 4"))
    rest = [event async for event in replay]
    assert [event.kind for event in rest] == ["reset"]
    assert "deleted" in rest[0].data


def test_a_pacing_allowance_refills_at_its_share_up_to_its_burst() -> None:
    allowance = PacingAllowance(burst=0.5, share=0.05, now=100.0)
    assert allowance.left(100.0) == 0.5
    allowance.spend(0.4, now=100.4)  # a wait begun full: no refill above the burst meanwhile
    assert allowance.left(100.4) == pytest.approx(0.1)
    allowance.spend(0.2, now=100.6)
    left = 0.1 + 0.2 * 0.05 - 0.2
    assert allowance.left(100.6) == pytest.approx(left) and left < 0  # overspent: no more waits
    assert allowance.left(102.0) == pytest.approx(left + 1.4 * 0.05)
    assert allowance.left(1000.0) == 0.5  # never above its burst


async def test_a_stream_that_reads_slower_than_events_arrive_does_not_pace_the_others(
    paced: tuple[EdgeJobs, Broker],
) -> None:
    """The tailer waits for a stream that fell behind only within that stream's allowance:
    one tenant's client reading ~800 events/s had held every other stream to its pace (each
    crossing of its half-full mark cost everyone a wait), and was itself never disconnected.
    Now it is disconnected once its allowance is spent (it resumes from the log), and the
    tailer's total wait stays within the allowance."""
    ej, broker = paced
    loop = asyncio.get_running_loop()
    started = loop.time()
    fast = broker.subscribe(org="acme")
    slow = broker.subscribe(org="beta")

    async def read(subscriber: Subscriber, want: int, pause_s: float) -> int:
        got = 0
        while got < want and not subscriber.closed:
            got += len(await subscriber.take(1.0, limit=16))
            if pause_s:
                await asyncio.sleep(pause_s)
        return got

    fast_reader = asyncio.create_task(read(fast, 3000, 0.0))
    slow_reader = asyncio.create_task(read(slow, 3000, 0.02))
    for _ in range(3):
        await ej.submit_many([JobSpec("quick", "beta") for _ in range(1000)])
        await ej.submit_many([JobSpec("quick", "acme") for _ in range(1000)])
    async with asyncio.timeout(60):
        assert await fast_reader == 3000
        await slow_reader
    elapsed = loop.time() - started
    assert slow.closed and "did not keep up" in (slow.closed_reason or "")
    assert not fast.closed and broker.disconnected == 1
    assert broker.paced_s <= (
        broker_module.PACING_BURST_S + broker_module.PACING_SHARE * elapsed + 0.05
    ), (broker.paced_s, elapsed)


async def test_a_stream_alone_is_waited_for_through_a_burst_longer_than_its_allowance(
    paced: tuple[EdgeJobs, Broker],
) -> None:
    """With no other stream to hold back, the pacing allowance is not spent: a lone client
    reading steadily, if slower than a burst arrives, was disconnected mid-burst (and, more
    events behind than the replay window holds, had to reload everything)."""
    ej, broker = paced
    alone = broker.subscribe(org="acme")

    async def read() -> int:
        got = 0
        while got < 3000 and not alone.closed:
            got += len(await alone.take(1.0, limit=16))
            await asyncio.sleep(0.005)  # ~3,200 events/s: slower than the burst
        return got

    reader = asyncio.create_task(read())
    for _ in range(3):
        await ej.submit_many([JobSpec("quick", "acme") for _ in range(1000)])
    async with asyncio.timeout(60):
        assert await reader == 3000
    assert not alone.closed and broker.disconnected == 0
    assert broker.paced_s == 0.0  # nobody else was held back: nothing charged
