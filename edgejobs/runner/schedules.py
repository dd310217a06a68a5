"""The scheduler: a tick task that submits the jobs of ``[[schedules]]`` at their due times.

Due times come from croniter's wall-clock times placed on the time line of the schedule's
IANA zone (see ``docs/schedules.md`` for what happens in the hours that daylight saving time
skips or repeats). The state of every schedule lives in the ``schedules`` table; each firing and its
job are one transaction (see :mod:`edgejobs.store.schedules`), so a due time fires at most
once, across restarts and crashes too.

A due time seen more than the grace period after it passed (the runner was down, the machine
slept) counts as *missed*: missed due times are never replayed one by one; the schedule's
``catch_up`` decides whether the latest of them runs once (``"once"``) or not (``"skip"``).
"""

from __future__ import annotations

import dataclasses
import logging
import sqlite3
from collections.abc import Sequence
from datetime import datetime, timedelta
from functools import partial
from zoneinfo import ZoneInfo

from croniter import croniter

from edgejobs.app import EdgeJobs, JobSpec, check_org
from edgejobs.config import ScheduleConfig
from edgejobs.errors import ConfigError, EdgeJobsError
from edgejobs.models import iso_ms
from edgejobs.runner.ticks import CLOCK_JUMP_MIN_S
from edgejobs.store.jobs import NewJob
from edgejobs.store.rows import strict_dumps
from edgejobs.store.schedules import (
    Fired,
    Firing,
    ScheduleSeed,
    ScheduleState,
    due_schedules,
    fire,
    load_schedules,
    next_fire_after,
    sync_schedules,
)

log = logging.getLogger("edgejobs.schedules")

MIN_GRACE_MS = 60_000
"""A due time is on time (not missed) while it is at most this late (or 3 ticks, if longer)."""


DST_MARGIN = timedelta(hours=3)
"""More than any zone's clocks move at once (a DST change moves them by one hour, a few zones by
two): the wall-clock window searched around an instant for the cron times that map near it."""


def _wall(at_ms: int, zone: ZoneInfo) -> datetime:
    """The naive wall-clock time of an instant in ``zone``."""
    return datetime.fromtimestamp(at_ms / 1000, zone).replace(tzinfo=None)


def _ms(moment: datetime) -> int:
    return round(moment.timestamp() * 1000)


def repeats_in_fall_back(cron: str) -> bool:
    """Whether ``cron`` also fires in the second pass of a repeated hour: only when its minute
    or hour field starts with ``*`` (Vixie cron's rule: ``*/15 * * * *`` keeps running every
    15 minutes, ``30 2 * * *`` runs once)."""
    minute, hour = cron.split()[:2]
    return minute.startswith("*") or hour.startswith("*")


def _instants(wall: datetime, zone: ZoneInfo, repeat: bool) -> list[int]:
    """The instants a cron time (naive wall-clock ``wall`` of ``zone``) fires at: normally one;
    in a repeated hour the first pass (and the second if ``repeat``); in a skipped hour the
    first instant after the gap."""
    first = _ms(wall.replace(tzinfo=zone, fold=0))
    second = _ms(wall.replace(tzinfo=zone, fold=1))
    if first == second:
        return [first]
    if _wall(first, zone) == wall:  # both exist: the hour repeats (fold 0 is the first pass)
        return [first, second] if repeat else [first]
    # Neither exists: between them the clocks jumped past ``wall``. The first instant whose
    # wall-clock time is after it is the end of the gap.
    before, after = min(first, second), max(first, second)
    while after - before > 1:
        middle = (before + after) // 2
        if _wall(middle, zone) > wall:
            after = middle
        else:
            before = middle
    return [after]


def _steady(zone: ZoneInfo, at_ms: int) -> bool:
    """Whether ``zone`` keeps one UTC offset within :data:`DST_MARGIN` of ``at_ms``: there, wall
    time and instants move together and the first cron time either way is the answer."""
    margin_s = DST_MARGIN.total_seconds()
    before = datetime.fromtimestamp(at_ms / 1000 - margin_s, zone).utcoffset()
    return before == datetime.fromtimestamp(at_ms / 1000 + margin_s, zone).utcoffset()


def next_due_after(cron: str, timezone: str, after_ms: int) -> int:
    """The first due time of ``cron`` (read in ``timezone``) strictly after ``after_ms``.

    croniter walks naive wall-clock times (plain calendar arithmetic); each is then placed on
    the zone's time line by :func:`_instants`, which decides what a skipped or repeated time
    does (croniter on aware datetimes fires a repeated time at both passes).
    """
    zone = ZoneInfo(timezone)
    repeat = repeats_in_fall_back(cron)
    if _steady(zone, after_ms):
        # A later cron time never fires before an earlier one's first instant.
        wall: datetime = croniter(cron, _wall(after_ms, zone)).get_next(datetime)
        return min(_instants(wall, zone, repeat))
    # Near a change, a wall time up to an hour or two before ``after`` may fire after it.
    walls = croniter(cron, _wall(after_ms, zone) - DST_MARGIN)
    best: tuple[int, datetime] | None = None
    while True:
        wall = walls.get_next(datetime)
        if best is not None and wall > best[1] + DST_MARGIN:
            return best[0]
        for instant in _instants(wall, zone, repeat):
            if instant > after_ms and (best is None or instant < best[0]):
                best = (instant, wall)


def latest_due_at_or_before(cron: str, timezone: str, at_ms: int) -> int:
    """The last due time of ``cron`` (read in ``timezone``) at or before ``at_ms``."""
    zone = ZoneInfo(timezone)
    repeat = repeats_in_fall_back(cron)
    if _steady(zone, at_ms):
        wall: datetime = croniter(cron, _wall(at_ms + 1, zone)).get_prev(datetime)
        fired = [instant for instant in _instants(wall, zone, repeat) if instant <= at_ms]
        if fired:
            return max(fired)
    walls = croniter(cron, _wall(at_ms, zone) + DST_MARGIN)
    best: tuple[int, datetime] | None = None
    while True:
        wall = walls.get_prev(datetime)
        if best is not None and wall < best[1] - DST_MARGIN:
            return best[0]
        for instant in _instants(wall, zone, repeat):
            if instant <= at_ms and (best is None or instant > best[0]):
                best = (instant, wall)


def rewound_next_fire(
    cron: str, timezone: str, next_fire_at: int, now: int, jump_ms: int | None
) -> int:
    """The next due time of a schedule after the wall clock went back (``next_fire_at`` when it
    did not).

    A stored due time is always the first one after some past reading of the clock, so it is
    never later than the first due time after ``now`` unless the clock went back since: then
    the schedule would wait for as long as the clock went back (a day, or years after a clock
    that started in the future was corrected). It keeps the wait it had left instead, rounded
    up to a due time: by ``jump_ms`` when the jump was measured against the monotonic clock,
    else (at a start, the jump unknown) at most one period from ``now``, which is never
    sooner than it really had left, so a due time does not fire twice for a small jump.
    """
    if next_fire_at <= next_due_after(cron, timezone, now):
        return next_fire_at
    if jump_ms is None:
        # The state was written at or after the due time before next_fire_at.
        previous = latest_due_at_or_before(cron, timezone, next_fire_at - 1)
        earliest = now + (next_fire_at - previous)
    else:
        earliest = next_fire_at + jump_ms
    return min(next_fire_at, next_due_after(cron, timezone, earliest - 1))


@dataclasses.dataclass(frozen=True, slots=True)
class Decision:
    """What to do with a due schedule: fire ``fire_at`` (None: fire nothing), then wait for
    ``next_fire_at``. ``missed`` tells whether the latest due time was missed."""

    fire_at: int | None
    next_fire_at: int
    missed: bool


def decide(schedule: ScheduleConfig, state: ScheduleState, now: int, *, grace_ms: int) -> Decision:
    """Decide what a due schedule does at ``now`` (a pure function of its state)."""
    after = next_due_after(schedule.cron, schedule.timezone, now)
    # The latest due time that has come; never earlier than the stored one, which is due.
    latest = max(state.next_fire_at, latest_due_at_or_before(schedule.cron, schedule.timezone, now))
    missed = now - latest > grace_ms
    if missed and schedule.catch_up == "skip":
        return Decision(fire_at=None, next_fire_at=after, missed=True)
    return Decision(fire_at=latest, next_fire_at=after, missed=missed)


def _due_and_next(
    conn: sqlite3.Connection, *, now: int, names: list[str]
) -> tuple[list[ScheduleState], int | None]:
    """One snapshot: the due schedules, and the earliest due time of the others."""
    return due_schedules(conn, now=now), next_fire_after(conn, now=now, names=names)


class Scheduler:
    """Fires the configured schedules of one runner (a :class:`~edgejobs.runner.ticks.Ticker`
    task: call :meth:`tick` with the clock's ``now``)."""

    def __init__(self, ej: EdgeJobs, schedules: Sequence[ScheduleConfig], *, grace_ms: int) -> None:
        self._ej = ej
        self._schedules = {schedule.name: schedule for schedule in schedules}
        self.grace_ms = grace_ms
        self.fired = 0
        """Firings applied by this instance (a job submitted or reused)."""
        # The earliest due time of a schedule after the last tick (None: none; 0 until a tick
        # has looked; the tick's own time while one is going through): see next_due_ms.
        self._next_fire_ms: int | None = 0
        # Wall-clock ms and monotonic s at the last tick: a jump back between two ticks is
        # measured; None until the first tick, which judges by the stored times alone.
        self._last_clock: tuple[int, float] | None = None

    @property
    def schedules(self) -> dict[str, ScheduleConfig]:
        """The configured schedules by name."""
        return dict(self._schedules)

    def validate(self) -> None:
        """Refuse schedules whose job type this runner does not serve, whose org is invalid,
        whose cron expression never matches a date or whose params are too large to submit."""
        for index, schedule in enumerate(self._schedules.values(), start=1):
            where = f"[[schedules]] #{index} ({schedule.name})"
            if schedule.job_type not in self._ej.registry:
                raise ConfigError(
                    f"{where} job_type: expected a registered job type, got {schedule.job_type!r}"
                )
            try:
                check_org(schedule.org)
            except EdgeJobsError as exc:
                raise ConfigError(f"{where} org: {exc.message}") from None
            try:
                next_due_after(schedule.cron, schedule.timezone, self._ej.clock.now_ms())
            except ValueError:  # croniter's "failed to find next date" (e.g. 30 February)
                raise ConfigError(f"{where} cron: {schedule.cron!r} never matches a date") from None
            # Params the submit would refuse made every firing fail, once a tick, for ever.
            size = len(strict_dumps(schedule.params).encode())
            limit = self._ej.config.limits.max_params_bytes
            if size > limit:
                raise ConfigError(
                    f"{where} params: {size} bytes of JSON, above [limits] max_params_bytes"
                    f" ({limit})"
                )

    async def sync(self, now: int) -> None:
        """Store the configured schedules (new ones start at their first due time >= now)."""
        seeds = [
            ScheduleSeed(
                name=s.name,
                cron=s.cron,
                timezone=s.timezone,
                org=s.org,
                next_fire_at=next_due_after(s.cron, s.timezone, now - 1),
            )
            for s in self._schedules.values()
        ]
        await self._ej.store.write(partial(sync_schedules, seeds=seeds, now=now))

    def _job(self, schedule: ScheduleConfig, now: int) -> NewJob:
        spec = JobSpec(
            job_type=schedule.job_type,
            org=schedule.org,
            params=schedule.params,
            priority=schedule.priority,
        )
        # The facade's own validation (policy overrides, dedup hash, max_retries) applies, so a
        # schedule's job is an ordinary job.
        return self._ej._new_job(spec, {}, now)

    def next_due_ms(self) -> int | None:
        """When the tick loop must tick for a schedule next (None: no schedule)."""
        return self._next_fire_ms if self._schedules else None

    async def tick(self, now: int) -> None:
        """Fire every schedule that is due at ``now`` (the :class:`Ticker` calls this)."""
        if not self._schedules:
            return
        self._next_fire_ms = now  # not known until this tick has gone through
        await self._after_clock_went_back(now)
        due, upcoming = await self._ej.store.read(
            partial(_due_and_next, now=now, names=list(self._schedules))
        )
        next_times = [upcoming] if upcoming is not None else []
        known = True
        fired_any = False
        for state in due:
            schedule = self._schedules.get(state.name)
            if schedule is None:
                continue
            try:
                result, next_fire_at = await self._step(schedule, state, now)
            except EdgeJobsError as exc:
                log.warning("schedule %s could not fire: %s", schedule.name, exc)
                known = False
                continue
            except Exception:
                log.exception("schedule %s could not fire", schedule.name)
                known = False
                continue
            if result.applied:
                next_times.append(next_fire_at)
            else:
                known = False  # another writer moved its state: read it at the next tick
            if result.job_id is not None:
                fired_any = True
        if known:
            self._next_fire_ms = min(next_times) if next_times else None
        if fired_any and self._ej.pool is not None:
            self._ej.pool.wake()

    async def _after_clock_went_back(self, now: int) -> None:
        """Bring due times stored from a later clock reading back to the clock (at the first
        tick, and when the wall clock went back since the last tick); see
        :func:`rewound_next_fire`."""
        monotonic = self._ej.clock.monotonic()
        last, self._last_clock = self._last_clock, (now, monotonic)
        jump_ms: int | None = None
        if last is not None:
            jump_ms = (now - last[0]) - round((monotonic - last[1]) * 1000)
            # Under a second is drift (the tick read ``now`` a moment ago), not a jump.
            if jump_ms > -CLOCK_JUMP_MIN_S * 1000:
                return
        states = await self._ej.store.read(load_schedules)
        for state in states.values():
            schedule = self._schedules.get(state.name)
            if schedule is None or (state.cron, state.timezone) != (
                schedule.cron,
                schedule.timezone,
            ):
                continue
            moved = rewound_next_fire(
                schedule.cron, schedule.timezone, state.next_fire_at, now, jump_ms
            )
            if moved == state.next_fire_at:
                continue
            firing = Firing(
                name=state.name,
                expected_last=state.last_fire_at,
                expected_next=state.next_fire_at,
                fire_at=None,
                next_fire_at=moved,
                job=None,
            )
            result = await self._ej.store.write(partial(fire, firing=firing, now=now))
            if result.applied:
                log.warning(
                    "schedule %s: the wall clock went back; next run moved from %s to %s",
                    state.name,
                    iso_ms(state.next_fire_at),
                    iso_ms(moved),
                )

    async def _step(
        self, schedule: ScheduleConfig, state: ScheduleState, now: int
    ) -> tuple[Fired, int]:
        decision = decide(schedule, state, now, grace_ms=self.grace_ms)
        job = self._job(schedule, now) if decision.fire_at is not None else None
        firing = Firing(
            name=schedule.name,
            expected_last=state.last_fire_at,
            expected_next=state.next_fire_at,
            fire_at=decision.fire_at,
            next_fire_at=decision.next_fire_at,
            job=job,
        )
        result = await self._ej.store.write(partial(fire, firing=firing, now=now))
        if not result.applied:
            return result, decision.next_fire_at
        if decision.fire_at is None:
            log.info(
                "schedule %s: missed due time skipped (catch_up = skip); next at %s",
                schedule.name,
                iso_ms(decision.next_fire_at),
            )
        else:
            self.fired += 1
            log.info(
                "schedule %s fired for %s%s: job %s%s",
                schedule.name,
                iso_ms(decision.fire_at),
                " (missed, caught up once)" if decision.missed else "",
                result.job_id,
                " (deduplicated)" if result.deduplicated else "",
            )
        return result, decision.next_fire_at
