"""``rate_limit`` of a job type: submissions per org and window, counted in the database."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from control_support import Factory, build, query

from edgejobs import JobSpec
from edgejobs.errors import RateLimited, ValidationError
from edgejobs.testing import FakeClock

LIMITED = ("work", {"dedup": False, "rate_limit": "2/minute"})


async def test_the_limit_holds_across_processes_on_the_same_file(
    runner: Factory, db_path: Path, clock: FakeClock
) -> None:
    """The command line and other clients submit through their own EdgeJobs: each counting
    on its own, every process got the whole limit."""
    ej = await runner(types=[LIMITED])
    client = build(db_path, clock, types=[])  # like the CLI: the runner declared the type
    await client.open()
    try:
        await ej.submit("work", org="acme")
        await client.submit("work", org="acme")
        with pytest.raises(RateLimited, match="may submit 2 work jobs per 60 s") as info:
            await client.submit("work", org="acme")
        assert 1 <= info.value.retry_after_s <= 60
        with pytest.raises(RateLimited):
            await ej.submit("work", org="acme")
        await client.submit("work", org="other")  # per org
    finally:
        await client.close()
    assert query(db_path, "SELECT org, count(*) FROM jobs GROUP BY org") == [
        ("acme", 2),
        ("other", 1),
    ]


async def test_the_limit_survives_a_restart_and_the_next_window_opens(
    runner: Factory, clock: FakeClock
) -> None:
    ej = await runner(types=[LIMITED])
    for _ in range(2):
        await ej.submit("work", org="acme")
    await ej.stop(grace_s=0)
    await ej.close()
    again = await runner(types=[LIMITED])
    with pytest.raises(RateLimited):
        await again.submit("work", org="acme")
    clock.advance(60)
    await again.submit("work", org="acme")


async def test_submissions_written_together_each_count(runner: Factory, db_path: Path) -> None:
    ej = await runner(types=[LIMITED])
    outcomes = await asyncio.gather(
        *(ej.submit("work", org="acme") for _ in range(5)), return_exceptions=True
    )
    refused = [o for o in outcomes if isinstance(o, RateLimited)]
    assert (len(outcomes) - len(refused), len(refused)) == (2, 3)
    assert query(db_path, "SELECT count(*) FROM jobs") == [(2,)]


async def test_a_deduplicated_submission_takes_nothing_from_the_limit(
    runner: Factory, db_path: Path
) -> None:
    """A client that resends a submission (its answer was lost) gets the existing job back:
    counted as a submission, it got a 429 once the window was used up instead of its job."""
    ej = await runner(types=[("work", {"dedup": True, "rate_limit": "2/minute"})])
    first = await ej.submit("work", org="acme", params={"n": 1})
    again = await ej.submit("work", org="acme", params={"n": 1})
    assert again.id == first.id and again.deduplicated
    second = await ej.submit("work", org="acme", params={"n": 2})
    resent = await asyncio.gather(  # together, as the writer merges concurrent submissions
        *(ej.submit("work", org="acme", params={"n": n}) for n in (1, 2))
    )
    assert [job.id for job in resent] == [first.id, second.id]
    with pytest.raises(RateLimited):
        await ej.submit("work", org="acme", params={"n": 3})
    assert query(db_path, "SELECT count(*) FROM jobs") == [(2,)]


async def test_a_batch_with_equal_jobs_is_measured_by_what_it_can_write(
    runner: Factory, db_path: Path
) -> None:
    """Equal jobs of one batch are written once: the check that refuses a batch no window
    could ever take counted each of them, and refused a batch that writes two jobs under a
    limit of two with "submit it in smaller batches"."""
    ej = await runner(types=[("work", {"dedup": True, "rate_limit": "2/minute"})])
    first = await ej.submit("work", org="acme", params={"n": 1})
    jobs = await ej.submit_many([JobSpec("work", "acme", {"n": n}) for n in (1, 1, 2)])
    assert jobs[0].id == jobs[1].id == first.id and jobs[2].id != first.id
    assert query(db_path, "SELECT count(*) FROM jobs") == [(2,)]
    with pytest.raises(ValidationError, match="smaller batches"):  # three different ones
        await ej.submit_many([JobSpec("work", "acme", {"n": n}) for n in (3, 4, 5)])


async def test_retention_deletes_the_windows_that_have_ended(
    runner: Factory, db_path: Path, clock: FakeClock
) -> None:
    """One row per (org, job type) that ever submitted a limited type, kept for good: the
    table grew with every org. Retention deletes the windows that ended (the longest limit is
    a day), keeps the current ones, and a deleted window counts as empty, as it did."""
    daily = ("daily", {"dedup": False, "rate_limit": "2/day"})
    ej = await runner(types=[LIMITED, daily])
    day_ms = 86_400_000
    clock.advance((day_ms - clock.now_ms() % day_ms) / 1000 + 3600)  # 01:00 UTC
    for n in range(5):
        await ej.submit("work", org=f"tenant{n}")
    await ej.submit("daily", org="acme")  # its window started at midnight
    clock.advance(22 * 3600)
    await ej.submit("work", org="recent")
    await ej.prune()
    assert query(db_path, "SELECT count(*) FROM rate_windows") == [(7,)]  # none a day old
    clock.advance(2 * 3600)  # 01:00 the next day
    report = await ej.prune()
    assert query(db_path, "SELECT org, job_type FROM rate_windows") == [("recent", "work")]
    assert report.rate_windows == 6
    await ej.submit("daily", org="acme")
    await ej.submit("daily", org="acme")
    with pytest.raises(RateLimited):
        await ej.submit("daily", org="acme")
