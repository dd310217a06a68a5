"""Progress: coalesced to ``[progress] min_interval_ms`` per job (the last report always lands),
refused outside 0-100, and ETAs from past durations or from the progress rate."""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path
from typing import Any

import pytest
from sse_support import (
    Serve,
    client,
    event_rows,
    is_final,
    make_config,
    make_token,
    open_stream,
    wait_for,
)

from edgejobs import EdgeJobs, Status
from edgejobs.errors import ValidationError
from edgejobs.runner.context import JobContext, SyncJobContext, check_progress
from edgejobs.runner.progress import ProgressCoalescer
from edgejobs.testing import FakeClock

FLOOD_CALLS = 10_000


async def test_ten_thousand_reports_in_a_second_are_coalesced_and_the_last_is_delivered(
    serve: Serve,
) -> None:
    interval_ms = 250
    server = await serve(make_config(min_interval_ms=interval_ms))
    ej = server.ej

    @ej.job_type("flood", max_retries=0, dedup=False)
    async def flood(ctx: JobContext, params: dict[str, Any]) -> None:
        for i in range(1, FLOOD_CALLS + 1):
            await ctx.progress(i * 100 / FLOOD_CALLS, f"item {i}")
            if i % 100 == 0:
                await asyncio.sleep(0.01)  # 100 pauses: about one second in all

    token = await make_token(ej, "acme")
    async with client() as http, open_stream(http, server, token) as stream:
        job = await ej.submit("flood", org="acme")
        seen = await stream.until(is_final(job.id))
    done = await ej.get(job.id)
    assert done.status is Status.COMPLETED

    rows = event_rows(ej.store.path, where="job_id = ? AND kind = 'progress'", args=(job.id,))
    # The first report is written at once, then at most one per interval, plus the pending
    # last one flushed before the final write.
    assert done.started_at is not None and done.finished_at is not None
    running_ms = _ms(done.finished_at) - _ms(done.started_at)
    # One interval of slack: the coalescer paces writes by the monotonic clock, the bound is
    # read from wall-clock times in the database. Without coalescing there would be 10,000.
    bound = 3 + running_ms // interval_ms
    assert 2 <= len(rows) <= bound, (
        len(rows),
        running_ms,
        [(r["id"], r["created_at"]) for r in rows],
        (done.started_at, done.finished_at),
    )
    last = json.loads(rows[-1]["data"])
    assert (last["progress"], last["progress_message"]) == (100.0, f"item {FLOOD_CALLS}")

    # The stream carried exactly those progress events, the final 100 % before "completed".
    progress = [e for e in seen if e.event == "progress"]
    assert [e.id for e in progress] == [r["id"] for r in rows]
    assert progress[-1].data["progress"] == 100.0
    assert [e.data["status"] for e in seen if e.event == "job"] == [
        "queued",
        "running",
        "completed",
    ]
    assert seen.index(progress[-1]) < len(seen) - 1


def _ms(iso: Any) -> int:
    from datetime import datetime

    if isinstance(iso, int):
        return iso
    return int(datetime.fromisoformat(str(iso).replace("Z", "+00:00")).timestamp() * 1000)


async def test_coalescer_writes_at_most_one_report_per_interval() -> None:
    clock = FakeClock()
    writes: list[tuple[float, str | None]] = []
    coalescer = ProgressCoalescer(250, clock, lambda p, m: writes.append((p, m)))
    for i in range(1000):
        coalescer.report(i / 10, f"m{i}")
    assert writes == [(0.0, "m0")]  # the first at once, the rest pending
    clock.advance(0.1)
    coalescer.report(50, "still within the interval")
    assert len(writes) == 1
    clock.advance(0.15)
    coalescer.report(60, "interval over")  # the interval has passed: written at once
    assert writes[-1] == (60, "interval over") and len(writes) == 2
    coalescer.report(70, "pending")
    coalescer.report(80, "last")
    coalescer.flush()  # before the attempt's final write: the last report is never lost
    assert writes[-1] == (80, "last") and len(writes) == 3
    coalescer.report(90, "after the end")
    assert len(writes) == 3


@pytest.mark.parametrize(
    "bad", [-0.1, 100.01, math.nan, math.inf, -math.inf, True, "50", None, [50]]
)
def test_progress_outside_0_to_100_is_refused_clearly(bad: Any) -> None:
    with pytest.raises(ValidationError, match="progress must be"):
        check_progress(bad, None)


def test_progress_bounds_are_allowed() -> None:
    assert check_progress(0, None) == (0.0, None)
    assert check_progress(100, "done") == (100.0, "done")


async def test_a_handler_reporting_bad_progress_fails_with_the_reason(tmp_path: Path) -> None:
    ej = EdgeJobs(database=tmp_path / "jobs.db", config=make_config())

    @ej.job_type("overshoot", max_retries=0)
    async def overshoot(ctx: JobContext, params: dict[str, Any]) -> None:
        await ctx.progress(150)

    @ej.job_type("undershoot", max_retries=0)
    def undershoot(ctx: SyncJobContext, params: dict[str, Any]) -> None:
        ctx.progress(-5)

    await ej.start(run_workers=False)
    try:
        jobs = [await ej.submit(name, org="acme") for name in ("overshoot", "undershoot")]
        await ej.drain(timeout=30)
        for job, value in zip(jobs, ("150", "-5"), strict=True):
            ended = await ej.get(job.id)
            assert ended.status is Status.FAILED
            assert ended.error is not None
            assert f"progress must be from 0 to 100, got {value}" in ended.error.message
        assert not event_rows(ej.store.path, where="kind = 'progress'")
    finally:
        await ej.close()


# -- ETA ------------------------------------------------------------------------------------


async def test_eta_from_history_and_from_progress_rate(tmp_path: Path) -> None:
    clock = FakeClock()
    ej = EdgeJobs(database=tmp_path / "jobs.db", config=make_config(), clock=clock)
    release = asyncio.Event()
    reported = asyncio.Event()

    @ej.job_type("timed", max_retries=0, dedup=False)
    async def timed(ctx: JobContext, params: dict[str, Any]) -> None:
        clock.advance(params["took_s"])

    @ej.job_type("held", max_retries=0, dedup=False)
    async def held(ctx: JobContext, params: dict[str, Any]) -> None:
        if "progress" in params:
            await ctx.progress(params["progress"])
            reported.set()
        await release.wait()

    await ej.start(run_workers=False)
    try:
        # No history: nothing to base an estimate on.
        first = await ej.submit("timed", org="acme", params={"took_s": 10})
        assert first.eta_s is None
        never_ran = await ej.submit("held", org="acme")
        assert never_ran.eta_s is None
        await ej.cancel(never_ran.id)
        await ej.drain(timeout=30)
        # One run of 10 s: a waiting job needs 10 s.
        assert (await ej.submit("timed", org="acme", params={"took_s": 20})).eta_s == 10.0
        await ej.drain(timeout=30)
        # A second run of 20 s: the weighted mean moves a fifth of the way, to 12 s.
        waiting = await ej.submit("timed", org="acme", params={"took_s": 0})
        assert waiting.eta_s == 12.0
        assert (await ej.get(waiting.id)).eta_s == 12.0
    finally:
        release.set()
        await ej.close()

    # The progress rate of a running job, on an instance of its own.
    clock = FakeClock()
    ej = EdgeJobs(database=tmp_path / "rate.db", config=make_config(), clock=clock)
    ej.register("held", held, max_retries=0, dedup=False)
    release.clear()
    await ej.start(run_workers=False)
    try:
        job = await ej.submit("held", org="acme", params={"progress": 25})
        assert ej.pool is not None
        await ej.pool.claim_once()
        clock.advance(5)  # 5 s into the attempt ... (the handler reports 25 % now)
        async with asyncio.timeout(30):
            await reported.wait()
        await wait_for(
            lambda: bool(event_rows(ej.store.path, where="kind = 'progress'")),
            "the progress write",
        )
        event = json.loads(event_rows(ej.store.path, where="kind = 'progress'")[0]["data"])
        # ... 25 % in 5 s: 75 % more takes 15 s.
        assert event["eta_s"] == 15.0
        assert (await ej.get(job.id)).eta_s == 15.0
        clock.advance(5)  # no news for 5 more seconds: the rate slows down
        assert (await ej.get(job.id)).eta_s == 30.0
    finally:
        release.set()
        await ej.drain(timeout=30)
        await ej.close()


async def test_eta_of_a_running_job_without_progress_counts_down_from_the_mean(
    tmp_path: Path,
) -> None:
    clock = FakeClock()
    ej = EdgeJobs(database=tmp_path / "jobs.db", config=make_config(), clock=clock)
    release = asyncio.Event()

    @ej.job_type("work", max_retries=0, dedup=False)
    async def work(ctx: JobContext, params: dict[str, Any]) -> None:
        if params.get("hold"):
            await release.wait()
        else:
            clock.advance(10)

    await ej.start(run_workers=False)
    try:
        await ej.submit("work", org="acme")
        await ej.drain(timeout=30)
        job = await ej.submit("work", org="acme", params={"hold": True})
        assert ej.pool is not None
        await ej.pool.claim_once()
        assert (await ej.get(job.id)).status is Status.RUNNING
        clock.advance(4)
        assert (await ej.get(job.id)).eta_s == 6.0
        clock.advance(10)
        assert (await ej.get(job.id)).eta_s == 0.0  # overdue: never negative
        release.set()
        await ej.drain(timeout=30)
        assert (await ej.get(job.id)).eta_s is None  # terminal
    finally:
        release.set()
        await ej.close()
