"""Periodic schedules (SPEC §4 ``[[schedules]]``): each due time fires at most once, in the
schedule's time zone, across restarts and crashes; missed due times are caught up once or
skipped."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import textwrap
from datetime import UTC, datetime
from pathlib import Path

import pytest
from control_support import Factory, build, query

from edgejobs import EdgeJobs, Status
from edgejobs.config import LimitsConfig, ScheduleConfig
from edgejobs.control import list_schedules, scheduler_of
from edgejobs.errors import ConfigError
from edgejobs.runner.schedules import Scheduler, next_due_after
from edgejobs.runner.ticks import QUIET_MAX_S, Ticker, TickSettings
from edgejobs.testing import FakeClock

HERE = Path(__file__).resolve().parent
MINUTE = 60_000


def at(text: str) -> datetime:
    """An aware UTC datetime from ``YYYY-MM-DDTHH:MM[:SS]``."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def ms(text: str) -> int:
    return round(at(text).timestamp() * 1000)


def schedule(name: str = "every5", cron: str = "*/5 * * * *", **extra: object) -> dict[str, object]:
    return {"name": name, "cron": cron, "job_type": "report", "org": "acme", **extra}


def sched(ej: EdgeJobs) -> Scheduler:
    found = scheduler_of(ej)
    assert found is not None
    return found


def fired_due_times(db_path: Path, name: str) -> int | None:
    rows = query(db_path, "SELECT last_fire_at FROM schedules WHERE name = ?", (name,))
    return rows[0][0] if rows else None


def job_count(db_path: Path) -> int:
    return int(query(db_path, "SELECT count(*) FROM jobs")[0][0])


async def run_clock(
    ej: EdgeJobs, clock: FakeClock, db_path: Path, name: str, until: datetime, step_s: float
) -> list[int]:
    """Step the clock to ``until``, ticking the scheduler twice per step (the second tick must
    never fire again); return the due times fired, in order."""
    fired: list[int] = []
    scheduler = sched(ej)
    while clock.now_ms() + step_s * 1000 <= until.timestamp() * 1000:
        clock.advance(step_s)
        await scheduler.tick(clock.now_ms())
        await scheduler.tick(clock.now_ms())
        last = fired_due_times(db_path, name)
        if last is not None and (not fired or fired[-1] != last):
            fired.append(last)
    return fired


async def test_every_five_minutes_fires_exactly_once_per_due_time_over_a_day(
    runner: Factory, clock: FakeClock, db_path: Path
) -> None:
    clock.set(at("2025-12-31T23:59:30"))
    ej = await runner(schedules=[schedule()])
    # Irregular 37 s steps: due times are seen late by up to 37 s (within the grace period).
    fired = await run_clock(ej, clock, db_path, "every5", at("2026-01-01T23:59:59"), 37)

    expected = [ms("2026-01-01T00:00") + i * 5 * MINUTE for i in range(288)]
    assert fired == expected
    assert job_count(db_path) == 288
    assert sched(ej).fired == 288
    created = [row[0] for row in query(db_path, "SELECT created_at FROM jobs ORDER BY seq")]
    for due, created_at in zip(expected, created, strict=True):
        assert 0 <= created_at - due < 37_000  # fired at the first tick after its due time


async def test_the_scheduler_tells_a_quiet_tick_loop_its_next_due_time(
    runner: Factory, clock: FakeClock, db_path: Path
) -> None:
    clock.set(at("2026-01-01T00:01:30"))
    ej = await runner(schedules=[schedule(), schedule("hourly", "0 * * * *")])
    scheduler = sched(ej)
    assert scheduler.next_due_ms() == 0  # not looked yet: tick as usual
    await scheduler.tick(clock.now_ms())
    assert scheduler.next_due_ms() == ms("2026-01-01T00:05")  # the earlier of the two
    clock.set(at("2026-01-01T00:05:10"))
    await scheduler.tick(clock.now_ms())  # fires 00:05; next: 00:10
    assert fired_due_times(db_path, "every5") == ms("2026-01-01T00:05")
    assert scheduler.next_due_ms() == ms("2026-01-01T00:10")


async def test_the_quiet_tick_loop_sleeps_until_a_schedule_is_due(
    runner: Factory, clock: FakeClock, db_path: Path
) -> None:
    clock.set(at("2026-01-01T00:04:50"))
    ej = await runner(schedules=[schedule()])
    ticker = ej.ticker
    assert ticker is not None
    scheduler = sched(ej)
    # The runner's own ticker runs on the fake clock (it ticks every interval); this one is
    # the production arrangement: it may sleep, and the scheduler says until when.
    quiet = Ticker(
        ej.store,
        ej.registry,
        clock,
        TickSettings(interval_s=1.0),
        trim_events=ej.maintenance.trim_events,
        changes=lambda: ej.store.writer.rows_changed,
    )
    quiet.extra_tasks.append(scheduler.tick)
    quiet.wake_by.append(scheduler.next_due_ms)
    await quiet.tick()
    assert quiet.quiet_sleep_s() is None  # the first tick
    await quiet.tick()
    assert quiet.quiet_sleep_s() == pytest.approx(10.0)  # until 00:05, not 30 s
    clock.set(at("2026-01-01T00:05:00"))
    await quiet.tick()  # fires: a write
    assert fired_due_times(db_path, "every5") == ms("2026-01-01T00:05")
    assert quiet.quiet_sleep_s() is None
    await quiet.tick()
    assert quiet.quiet_sleep_s() == QUIET_MAX_S  # 00:10 is further away than the cap


async def test_berlin_spring_forward_fires_the_missing_0230_at_0300(
    runner: Factory, clock: FakeClock, db_path: Path
) -> None:
    """29 March 2026: Berlin clocks jump from 02:00 to 03:00 CEST, so 02:30 does not exist.
    croniter moves such a due time to the first instant after the gap, 03:00 CEST (01:00Z):
    the schedule still runs once that day."""
    clock.set(at("2026-03-27T12:00"))
    ej = await runner(schedules=[schedule("nightly", "30 2 * * *", timezone="Europe/Berlin")])
    fired = await run_clock(ej, clock, db_path, "nightly", at("2026-03-31T12:00"), 600)
    assert fired == [
        ms("2026-03-28T01:30"),  # 02:30 CET (UTC+1)
        ms("2026-03-29T01:00"),  # 03:00 CEST: the first instant after the skipped hour
        ms("2026-03-30T00:30"),  # 02:30 CEST (UTC+2)
        ms("2026-03-31T00:30"),
    ]
    assert job_count(db_path) == 4


async def test_berlin_fall_back_fires_the_repeated_0230_once(
    runner: Factory, clock: FakeClock, db_path: Path
) -> None:
    """25 October 2026: Berlin clocks go back from 03:00 CEST to 02:00 CET, so 02:30 happens
    twice. A daily job runs once, at the first pass (as in Vixie cron)."""
    clock.set(at("2026-10-23T12:00"))
    ej = await runner(
        schedules=[
            schedule("nightly", "30 2 * * *", timezone="Europe/Berlin"),
            schedule("twice", "0 2,3 * * *", timezone="Europe/Berlin"),
        ]
    )
    fired = await run_clock(ej, clock, db_path, "nightly", at("2026-10-27T12:00"), 600)
    assert fired == [
        ms("2026-10-24T00:30"),  # 02:30 CEST
        ms("2026-10-25T00:30"),  # 02:30 CEST, first pass; not again at 02:30 CET
        ms("2026-10-26T01:30"),  # 02:30 CET
        ms("2026-10-27T01:30"),
    ]
    created = query(
        db_path,
        "SELECT created_at FROM jobs WHERE created_at BETWEEN ? AND ?",
        (ms("2026-10-24T22:00"), ms("2026-10-25T04:00")),
    )
    # 02:30 (nightly) and 02:00 CEST, 03:00 CET (twice): no 02:00 CET.
    assert len(created) == 3
    assert job_count(db_path) == 4 + 8


async def test_wildcard_schedules_keep_running_through_the_repeated_hour(
    runner: Factory, clock: FakeClock, db_path: Path
) -> None:
    """A schedule whose minute or hour field starts with ``*`` runs by the real clock: every
    15 minutes through both passes of the repeated hour, and hourly twice at 02:00."""
    clock.set(at("2026-10-24T21:59"))  # 23:59 CEST
    ej = await runner(
        schedules=[
            schedule("quarter", "*/15 * * * *", timezone="Europe/Berlin"),
            schedule("hourly", "0 * * * *", timezone="Europe/Berlin"),
        ]
    )
    quarter = await run_clock(ej, clock, db_path, "quarter", at("2026-10-25T04:59"), 60)
    # 00:00 CEST to 05:45 CET: seven real hours, four runs each.
    assert quarter == [ms("2026-10-24T22:00") + i * 15 * MINUTE for i in range(28)]
    assert fired_due_times(db_path, "hourly") == ms("2026-10-25T04:00")
    assert job_count(db_path) == 28 + 7


def test_due_times_around_dst_changes_only_move_forward() -> None:
    """Wall-clock cron times are placed on each zone's time line one by one (a skipped time
    moves to the end of the gap, a repeated one may fire once): due times still strictly
    increase, also for a 30-minute DST change."""
    for cron in ("30 2 * * *", "0 2,3 * * *", "30 1-3 * * *", "*/20 * * * *", "0 * * * *"):
        for zone, start in (
            ("Europe/Berlin", "2026-10-24T20:00"),
            ("Europe/Berlin", "2026-03-28T20:00"),
            ("America/New_York", "2026-11-01T02:00"),
            ("Australia/Lord_Howe", "2026-04-04T12:00"),  # a 30-minute change
        ):
            due = ms(start)
            for _ in range(30):
                following = next_due_after(cron, zone, due)
                assert following > due, (cron, zone)
                due = following


def test_due_times_are_computed_in_the_schedule_time_zone() -> None:
    # New York is UTC-5 in January: 09:00 local is 14:00Z.
    assert next_due_after("0 9 * * *", "America/New_York", ms("2026-01-01T00:00")) == ms(
        "2026-01-01T14:00"
    )
    assert next_due_after("0 9 * * *", "UTC", ms("2026-01-01T09:00")) == ms("2026-01-02T09:00")


async def test_a_failed_commit_neither_skips_nor_doubles_the_firing(
    runner: Factory, clock: FakeClock, db_path: Path
) -> None:
    clock.set(at("2026-01-01T00:04:00"))
    ej = await runner(schedules=[schedule()])
    scheduler = sched(ej)
    clock.set(at("2026-01-01T00:05:01"))

    def crash(stage: str, _n: int) -> None:
        if stage == "before_commit":
            raise RuntimeError("simulated crash after the job insert, before COMMIT")

    ej.store.writer.fault_hook = crash
    await scheduler.tick(clock.now_ms())  # the error is logged; the firing is rolled back
    ej.store.writer.fault_hook = None
    assert job_count(db_path) == 0
    assert fired_due_times(db_path, "every5") is None

    clock.advance(1)
    await scheduler.tick(clock.now_ms())
    await scheduler.tick(clock.now_ms())
    assert job_count(db_path) == 1
    assert fired_due_times(db_path, "every5") == ms("2026-01-01T00:05")


async def test_concurrent_ticks_fire_a_due_time_once(
    runner: Factory, clock: FakeClock, db_path: Path
) -> None:
    """Ticks racing on the same due time (e.g. a stale scheduler and a fresh one) read the same
    state; the compare-and-set lets exactly one firing through."""
    clock.set(at("2026-01-01T00:04:00"))
    ej = await runner(schedules=[schedule()])
    other = Scheduler(ej, ej.config.schedules, grace_ms=60_000)
    for minute in range(5, 60, 5):
        clock.set(at(f"2026-01-01T00:{minute:02d}:01"))
        now = clock.now_ms()
        await asyncio.gather(*(s.tick(now) for s in (sched(ej), other, sched(ej), other)))
    assert job_count(db_path) == 11
    assert sched(ej).fired + other.fired == 11


_CHILD = textwrap.dedent(
    """
    import asyncio, os, signal, sys
    from control_support import build
    from edgejobs.control import scheduler_of
    from edgejobs.testing import FakeClock

    db, start_ms, fire_ms, stage = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]

    async def main():
        clock = FakeClock(start_ms)
        ej = build(db, clock, schedules=[dict(name="every5", cron="*/5 * * * *",
                                              job_type="report", org="acme")])
        await ej.start(run_workers=False)
        clock.set(fire_ms)

        def die(at_stage, _n):
            if at_stage == stage:
                os.kill(os.getpid(), signal.SIGKILL)

        ej.store.writer.fault_hook = die
        await scheduler_of(ej).tick(clock.now_ms())
        print("not killed", flush=True)

    asyncio.run(main())
    """
)


@pytest.mark.parametrize(("stage", "fired_by_child"), [("before_commit", 0), ("after_commit", 1)])
async def test_a_runner_killed_while_firing_neither_skips_nor_doubles(
    clock: FakeClock, db_path: Path, stage: str, fired_by_child: int
) -> None:
    """SIGKILL right before the COMMIT of a firing loses it entirely (the next runner fires it
    once); right after, it is done (the next runner does not fire it again)."""
    due = ms("2026-01-01T00:05")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), *sys.path])}
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _CHILD,
        str(db_path),
        str(due - 60_000),
        str(due + 2_000),
        stage,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(child.communicate(), timeout=60)
    assert child.returncode == -signal.SIGKILL, stderr.decode()
    assert job_count(db_path) == fired_by_child

    clock.set(due + 5_000)
    ej = build(db_path, clock, schedules=[schedule()])
    await ej.start(run_workers=False)
    try:
        await sched(ej).tick(clock.now_ms())
        await sched(ej).tick(clock.now_ms())
        assert job_count(db_path) == 1
        assert fired_due_times(db_path, "every5") == due
    finally:
        await ej.close()


async def test_catch_up_after_three_missed_periods(clock: FakeClock, db_path: Path) -> None:
    """Down for three periods: ``once`` runs the missed schedule once at the restart (for the
    latest missed due time), ``skip`` waits for the next due time; none replays one by one."""
    schedules = [
        schedule("caught", catch_up="once", params={"s": "caught"}),
        schedule("skipped", catch_up="skip", params={"s": "skipped"}),
    ]
    clock.set(at("2026-01-01T00:00:30"))
    ej = build(db_path, clock, schedules=schedules)
    await ej.start(run_workers=False)
    clock.set(at("2026-01-01T00:05:10"))
    assert ej.ticker is not None
    await ej.ticker.tick()  # the scheduler is a tick task of the runner
    assert job_count(db_path) == 2
    await ej.close()

    # Down while 00:10, 00:15 and 00:20 pass; back at 00:23 (00:20 is 3 minutes late: missed).
    clock.set(at("2026-01-01T00:23:00"))
    ej = build(db_path, clock, schedules=schedules)
    await ej.start(run_workers=False)
    try:
        assert ej.ticker is not None
        await ej.ticker.tick()
        await ej.ticker.tick()

        def per_schedule() -> dict[str, int]:
            rows = query(
                db_path, "SELECT json_extract(params, '$.s'), count(*) FROM jobs GROUP BY 1"
            )
            return {str(name): int(count) for name, count in rows}

        assert per_schedule() == {"caught": 2, "skipped": 1}
        assert fired_due_times(db_path, "caught") == ms("2026-01-01T00:20")
        assert fired_due_times(db_path, "skipped") == ms("2026-01-01T00:05")
        views = {v.config.name: v for v in await list_schedules(ej)}
        assert views["caught"].next_run_at == ms("2026-01-01T00:25")
        assert views["skipped"].next_run_at == ms("2026-01-01T00:25")

        clock.set(at("2026-01-01T00:25:02"))
        await ej.ticker.tick()
        assert per_schedule() == {"caught": 3, "skipped": 2}
    finally:
        await ej.close()


async def test_a_restart_within_the_grace_period_fires_a_skip_schedule(
    clock: FakeClock, db_path: Path
) -> None:
    """A due time only seconds old at the restart is late, not missed: even ``skip`` runs it."""
    clock.set(at("2026-01-01T00:04:00"))
    ej = build(db_path, clock, schedules=[schedule(catch_up="skip")])
    await ej.start(run_workers=False)
    await ej.close()
    clock.set(at("2026-01-01T00:05:20"))
    ej = build(db_path, clock, schedules=[schedule(catch_up="skip")])
    await ej.start(run_workers=False)
    try:
        await sched(ej).tick(clock.now_ms())
        assert job_count(db_path) == 1
    finally:
        await ej.close()


async def test_schedule_jobs_are_ordinary_jobs_and_deduplicate(
    runner: Factory, clock: FakeClock, db_path: Path
) -> None:
    clock.set(at("2026-01-01T00:04:00"))
    ej = await runner(
        schedules=[schedule(params={"month": "current"}, priority="high")],
        types=[("report", {})],  # dedup on (the default)
    )
    clock.set(at("2026-01-01T00:05:01"))
    await sched(ej).tick(clock.now_ms())
    first_id = query(db_path, "SELECT last_job_id FROM schedules")[0][0]
    job = await ej.get(first_id)
    assert (job.org, job.job_type, job.params, job.priority.value, job.status) == (
        "acme",
        "report",
        {"month": "current"},
        "high",
        Status.QUEUED,
    )
    # The next due time comes while the first run still waits: dedup returns that job.
    clock.set(at("2026-01-01T00:10:01"))
    await sched(ej).tick(clock.now_ms())
    assert job_count(db_path) == 1
    assert fired_due_times(db_path, "every5") == ms("2026-01-01T00:10")
    assert query(db_path, "SELECT last_job_id FROM schedules")[0][0] == first_id

    await ej.drain()
    assert (await ej.get(first_id)).status is Status.COMPLETED
    clock.set(at("2026-01-01T00:15:01"))
    await sched(ej).tick(clock.now_ms())
    assert job_count(db_path) == 2


async def test_schedule_of_an_unknown_job_type_is_refused_at_start(
    clock: FakeClock, db_path: Path
) -> None:
    ej = build(db_path, clock, schedules=[schedule(job_type="nope")])
    with pytest.raises(ConfigError, match=r"\[\[schedules\]\] #1 \(every5\) job_type"):
        await ej.start(run_workers=False)
    await ej.close()
    # The runner lock was released: a fixed configuration starts.
    ej = build(db_path, clock, schedules=[schedule()])
    await ej.start(run_workers=False)
    await ej.close()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"cron": "0 0 30 2 *"}, r"cron: '0 0 30 2 \*' never matches a date"),
        ({"org": "no spaces"}, r"org: org must be"),
    ],
)
async def test_impossible_schedules_are_refused_at_start(
    clock: FakeClock, db_path: Path, changes: dict[str, str], message: str
) -> None:
    # Built without the config's own validation (which already refuses 30 February), as
    # code may do: the runner still refuses it with a clear message.
    fields = {"timezone": "UTC", "params": {}, "priority": None, "catch_up": "once"}
    invalid = ScheduleConfig.model_construct(**{**fields, **schedule(**changes)})
    ej = build(db_path, clock, schedules=[invalid])
    with pytest.raises(ConfigError, match=message):
        await ej.start(run_workers=False)
    await ej.close()


async def test_schedule_params_too_large_to_submit_are_refused_at_start(
    clock: FakeClock, db_path: Path
) -> None:
    """They passed, and from the due time on every firing failed (a warning a tick, no job)."""
    too_big = schedule(params={"text": "x" * 100})
    ej = build(db_path, clock, schedules=[too_big], limits=LimitsConfig(max_params_bytes=64))
    with pytest.raises(ConfigError, match=r"#1 \(every5\) params: 111 bytes .* \(64\)"):
        await ej.start(run_workers=False)
    await ej.close()
    ej = build(db_path, clock, schedules=[schedule(params={"text": "x" * 40})],
               limits=LimitsConfig(max_params_bytes=64))  # fmt: skip
    await ej.start(run_workers=False)
    await ej.close()


async def test_a_changed_cron_starts_over_and_removed_schedules_are_forgotten(
    clock: FakeClock, db_path: Path
) -> None:
    clock.set(at("2026-01-01T00:01:00"))
    ej = build(db_path, clock, schedules=[schedule(), schedule("gone")])
    await ej.start(run_workers=False)
    await ej.close()
    clock.set(at("2026-01-01T03:00:00"))
    ej = build(db_path, clock, schedules=[schedule(cron="0 * * * *")])
    await ej.start(run_workers=False)
    try:
        assert query(db_path, "SELECT name, next_fire_at FROM schedules") == [
            ("every5", ms("2026-01-01T03:00"))
        ]
    finally:
        await ej.close()


async def test_list_schedules_shows_next_and_last_run_per_org(
    runner: Factory, clock: FakeClock
) -> None:
    clock.set(at("2026-01-01T00:04:00"))
    ej = await runner(schedules=[schedule(), schedule("other", cron="0 3 * * *", org="globex")])
    clock.set(at("2026-01-01T00:05:01"))
    await sched(ej).tick(clock.now_ms())
    views = await list_schedules(ej, org="acme")
    assert [v.config.name for v in views] == ["every5"]
    shown = views[0].to_dict()
    assert shown["last_run_at"] == "2026-01-01T00:05:00.000Z"
    assert shown["next_run_at"] == "2026-01-01T00:10:00.000Z"
    assert shown["last_job_id"] is not None
    everything = await list_schedules(ej)
    assert [v.config.name for v in everything] == ["every5", "other"]
    assert everything[1].to_dict()["last_run_at"] is None
    assert everything[1].to_dict()["next_run_at"] == "2026-01-01T03:00:00.000Z"


async def test_a_jump_back_of_a_day_keeps_the_schedule_firing(
    runner: Factory, clock: FakeClock, db_path: Path
) -> None:
    """The due times were computed from the later clock: without bringing them back, the
    schedule would wait a whole day for the wall clock to catch up."""
    clock.set(at("2026-01-02T00:00:30"))
    ej = await runner(schedules=[schedule()])
    fired = await run_clock(ej, clock, db_path, "every5", at("2026-01-02T00:17:00"), 60)
    assert fired[-1] == ms("2026-01-02T00:15")
    clock.set(clock.now_ms() - 24 * 60 * MINUTE)  # NTP steps the clock back a day
    fired = await run_clock(ej, clock, db_path, "every5", at("2026-01-01T00:31:00"), 60)
    # (The first entry is the last due time fired before the jump.) The minutes it had left,
    # then every 5 minutes of the new clock.
    assert fired[1:] == [ms("2026-01-01T00:20"), ms("2026-01-01T00:25"), ms("2026-01-01T00:30")]


async def test_a_small_jump_back_does_not_fire_a_daily_due_time_twice(
    runner: Factory, clock: FakeClock, db_path: Path
) -> None:
    clock.set(at("2026-01-01T01:59:00"))
    ej = await runner(schedules=[schedule("nightly", "0 2 * * *")])
    await run_clock(ej, clock, db_path, "nightly", at("2026-01-01T02:05:00"), 60)
    assert job_count(db_path) == 1
    clock.set(at("2026-01-01T01:55:00"))  # back 10 minutes: 02:00 comes again on the wall
    fired = await run_clock(ej, clock, db_path, "nightly", at("2026-01-02T02:01:00"), 60)
    assert fired == [ms("2026-01-01T02:00"), ms("2026-01-02T02:00")]  # the first: before
    assert job_count(db_path) == 2


async def test_a_runner_started_after_the_clock_went_back_fires_within_a_period(
    clock: FakeClock, db_path: Path
) -> None:
    """A box whose clock started years ahead fired a schedule, then was stopped and its clock
    corrected: the next runner does not wait years, and fires no earlier than a period on."""
    clock.set(at("2030-06-01T00:04:00"))
    ej = build(db_path, clock, schedules=[schedule()])
    await ej.start(run_workers=False)
    clock.set(at("2030-06-01T00:05:01"))
    await sched(ej).tick(clock.now_ms())
    assert job_count(db_path) == 1
    await ej.close()

    clock.set(at("2026-01-01T00:02:00"))
    ej = build(db_path, clock, schedules=[schedule()])
    await ej.start(run_workers=False)
    try:
        await sched(ej).tick(clock.now_ms())
        views = await list_schedules(ej)
        assert views[0].next_run_at == ms("2026-01-01T00:10")  # 00:02 + one period, rounded up
        fired = await run_clock(ej, clock, db_path, "every5", at("2026-01-01T00:16:00"), 60)
        assert fired[1:] == [ms("2026-01-01T00:10"), ms("2026-01-01T00:15")]
    finally:
        await ej.close()
