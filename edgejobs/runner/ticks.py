"""The tick loop: every ``tick_interval_s`` it promotes due work, recovers expired leases,
runs the dependency safety net and, less often, retention. Each task is a plain coroutine
taking ``now`` (unix ms), so tests can call :meth:`Ticker.tick` with a fake clock.

A quiet runner does not tick every interval. When a tick found nothing to do, nothing was
written since the previous one and no attempt runs, the next tick can only find work at a
known time (a scheduled job or a retry becoming due, a lease expiring) or after a change
(a write of this process, another process's commit). So the loop sleeps until the earliest
due time, at most ``QUIET_MAX_S``, and a change wakes it for a tick one interval after the
last. Why: on a small virtual machine every wake-up of an idle process costs milliseconds
of CPU, and a tick a second was most of an idle runner's.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import sqlite3
from collections.abc import Awaitable, Callable, Mapping
from functools import partial

from edgejobs.clock import Clock
from edgejobs.errors import EdgeJobsError, StorageFull
from edgejobs.logs import RepeatLimiter, job_fields
from edgejobs.runner.pacing import BatchPacer, delete_in_batches
from edgejobs.runner.registry import Registry
from edgejobs.store import Store
from edgejobs.store.claim import renew_leases
from edgejobs.store.clock_skew import shift_pending_retries
from edgejobs.store.db import WriteTx
from edgejobs.store.rates import delete_ended_windows
from edgejobs.store.retention import delete_old_jobs, delete_zero_counts
from edgejobs.store.tokens import delete_expired_sessions
from edgejobs.store.transitions import (
    next_maintenance_due_ms,
    promote_due,
    recover_running,
    resolve_stuck_blocked,
)

log = logging.getLogger("edgejobs.ticks")

TickTask = Callable[[int], Awaitable[None]]


@dataclasses.dataclass(slots=True)
class TickSettings:
    """Tick-loop knobs (from ``[runner]``, ``[retention]`` and ``[events]``)."""

    interval_s: float = 1.0
    retention_days: float = 30.0
    retention_interval_s: float = 3600.0
    retention_batch: int = 500
    lease_s: float = 30.0


CLOCK_JUMP_MIN_S = 1.0
"""Wall time and monotonic time that drift apart by more than this between two ticks (and
more than two tick intervals) count as a wall-clock jump."""
RETENTION_HOLD_FRACTION = 0.1
"""A forward jump larger than this fraction of the retention period holds retention back."""
QUIET_MAX_S = 30.0
"""The longest a quiet tick loop sleeps: the bound on how late the time-driven tick tasks
(retention, event trimming, the vacuum look) run on an idle runner."""


@dataclasses.dataclass(slots=True)
class PruneReport:
    """What one retention run deleted."""

    jobs: int = 0
    events: int = 0
    batches: int = 0
    sessions: int = 0
    """Expired dashboard sessions deleted."""
    counts: int = 0
    """Kept job counts deleted because they were 0."""
    rate_windows: int = 0
    """Rate-limit windows deleted because they had ended."""


def log_lost(rows: list[sqlite3.Row], why: str) -> None:
    """One WARNING per job whose attempt was recovered as ``lost`` (rows as returned by
    :func:`~edgejobs.store.transitions.recover_running`), naming the job like every job line
    and what became of it (retrying or dead_letter)."""
    for row in rows:
        log.warning(
            "job %s attempt %d lost (%s); the job is now %s",
            row["id"],
            row["attempts"],
            why,
            row["status"],
            extra=job_fields(row["id"], row["org"], row["job_type"], row["attempts"]),
        )


class Ticker:
    """Runs the periodic maintenance of the store."""

    def __init__(
        self,
        store: Store,
        registry: Registry,
        clock: Clock,
        settings: TickSettings,
        *,
        trim_events: Callable[[int], Awaitable[int]],
        make_room: Callable[[], Awaitable[bool]] | None = None,
        after_change: Callable[[], None] | None = None,
        healthy_leases: Callable[[], Mapping[int, int]] | None = None,
        changes: Callable[[], int] | None = None,
        busy: Callable[[], bool] | None = None,
    ) -> None:
        self._store = store
        self._registry = registry
        self._clock = clock
        self.settings = settings
        self._trim_events = trim_events
        self._make_room = make_room
        self._after_change = after_change
        self._healthy_leases = healthy_leases
        self._changes = changes
        self._busy = busy
        self._changes_seen: int | None = None  # ``changes()`` at the end of the last tick
        # The last tick promoted, recovered or settled something, or did not go through.
        self._found_work = True
        self._next_due_ms: int | None = None  # the earliest due time the last tick saw
        self._poked = asyncio.Event()
        self._last_wall_ms: int | None = None
        self._last_monotonic = 0.0
        self.retention_held_until: float | None = None
        """Monotonic time until which ticks skip retention after a forward wall-clock jump."""
        self._stopping = asyncio.Event()
        self._last_retention_ms: int | None = None
        self.extra_tasks: list[TickTask] = []
        self._repeats = RepeatLimiter()
        self._failures = RepeatLimiter()  # ticks that fail, a fresh one after each recovery
        self._failed_ticks = 0  # in a row, up to the last tick
        self.last_tick_monotonic: float | None = None
        self.last_progress_monotonic: float | None = None
        """When a retention batch last committed: a long prune is progress, not a hang."""
        self.ticks = 0
        """Completed ticks (tests and health checks count them)."""
        self.looping = False
        """Whether :meth:`run` has started (a stepped ticker is not judged by ``/healthz``)."""
        self.wake_by: list[Callable[[], int | None]] = []
        """Tick tasks with due times of their own (the cron scheduler) say here by when
        (unix ms; None: no need) a quiet tick loop must tick for them."""
        self.quiet_until: float | None = None
        """Monotonic time a quiet sleep ends (None while ticking every interval)."""
        self.woke_monotonic: float | None = None
        """When the last quiet sleep ended: life, like a tick (the tick it woke for may wait
        for the write lock a while, and the tick before may be a quiet sleep ago)."""

    async def tick(self) -> None:
        """One pass of every tick task."""
        now = self._clock.now_ms()
        # Until this tick has gone through, it counts as having found work: a tick that fails
        # (a locked or full database, a bug) is followed by a tick, never by a quiet sleep.
        self._found_work = True
        jump_ms = self._wall_clock_jump(now)
        healthy = dict(self._healthy_leases()) if self._healthy_leases is not None else {}
        lease_until = now + int(self.settings.lease_s * 1000)

        def maintain(
            conn: sqlite3.Connection, tx: WriteTx
        ) -> tuple[int, list[sqlite3.Row], list[str], int | None]:
            if jump_ms < 0:
                shift_pending_retries(conn, tx, by_ms=jump_ms, now=now)
            if healthy:
                # Leases are wall-clock instants: renew the ones this process is renewing in
                # time by the monotonic clock, so a wall-clock jump does not expire them. Only
                # those the recovery below would take; the renewal loop keeps the rest.
                renew_leases(conn, tx, running=healthy, until=lease_until, expiring_before=now)
            promoted = promote_due(conn, tx, now=now)
            lost = recover_running(
                conn,
                tx,
                now=now,
                expired_only=True,
                policy_for=self._registry.retry_policy,
                reason="the attempt's lease expired (the runner stalled or died)",
            )
            stuck = resolve_stuck_blocked(conn, tx, now=now)
            return promoted, lost, stuck, next_maintenance_due_ms(conn)

        promoted, lost, stuck, self._next_due_ms = await self._store.write(maintain)
        found_work = bool(promoted or lost or stuck)
        for job_id in stuck:
            log.warning(
                "dependency safety net settled blocked job %s whose parents had all ended;"
                " this means a promotion was missed elsewhere",
                job_id,
            )
        log_lost(lost, "its lease expired")
        if found_work and self._after_change is not None:
            self._after_change()
        due = self._last_retention_ms is None or (
            now - self._last_retention_ms >= self.settings.retention_interval_s * 1000
        )
        if due and not self._retention_held():
            self._last_retention_ms = now
            await self.prune(now=now)
        for task in self.extra_tasks:
            try:
                await task(now)
            except EdgeJobsError as exc:
                self._repeats.warning(log, "tick task failed: %s", exc)
        self._found_work = found_work
        self.ticks += 1
        self.last_tick_monotonic = self._clock.monotonic()

    def quiet_sleep_s(self) -> float | None:
        """After a tick: how long the loop may sleep because nothing can need a tick sooner
        (None: tick again after one interval). Called right after :meth:`tick`."""
        if self._changes is None:
            return None
        changes, seen = self._changes(), self._changes_seen
        self._changes_seen = changes
        if (
            seen is None  # the first tick: start-up wrote
            or changes != seen
            or self._found_work
            or (self._busy is not None and self._busy())
        ):
            return None
        sleep_s = QUIET_MAX_S
        now = self._clock.now_ms()
        dues = [self._next_due_ms, *(due_by() for due_by in self.wake_by)]
        for due in dues:
            if due is not None:
                sleep_s = min(sleep_s, (due - now) / 1000)
        if self._last_retention_ms is not None and not self._retention_held():
            retention_due = self._last_retention_ms + self.settings.retention_interval_s * 1000
            sleep_s = min(sleep_s, (retention_due - now) / 1000)
        return sleep_s if sleep_s > self.settings.interval_s else None

    def _retention_held(self) -> bool:
        """Whether a forward wall-clock jump holds retention back now."""
        held_until = self.retention_held_until
        return held_until is not None and self._clock.monotonic() < held_until

    def poke(self) -> None:
        """Something was written: a quiet sleep ends one interval after the last tick (cheap
        enough to call after every commit)."""
        if self.quiet_until is not None:
            self._poked.set()

    async def _sleep(self, quiet_s: float | None) -> None:
        interval = self.settings.interval_s
        if quiet_s is not None:
            loop = asyncio.get_running_loop()
            ends_at = loop.time() + quiet_s
            self.quiet_until = self._clock.monotonic() + quiet_s
            try:
                while not self._stopping.is_set():
                    self._poked.clear()
                    try:
                        async with asyncio.timeout_at(ends_at):
                            await self._poked.wait()
                    except TimeoutError:
                        return
                    # A commit that changed nothing (an empty write) does not end the sleep.
                    assert self._changes is not None
                    if self._changes() != self._changes_seen:
                        break
            finally:
                self.woke_monotonic = self._clock.monotonic()
                self.quiet_until = None
            since_tick = self._clock.monotonic() - (self.last_tick_monotonic or 0.0)
            interval = max(0.0, interval - since_tick)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), timeout=interval)

    def _wall_clock_jump(self, now: int) -> int:
        """How far the wall clock jumped since the last tick against the monotonic clock
        (ms; 0 when it did not), warning about jumps and holding retention after forward ones.

        Why hold retention: ``finished_at`` is wall-clock time, so after a jump forward of a
        year every job looks a year older and one pass would delete young jobs. Retention
        waits one retention period (by the monotonic clock) instead: by then every job that
        finished before the jump really is that old. ``edgejobs prune`` still works.
        """
        monotonic = self._clock.monotonic()
        last_wall, last_monotonic = self._last_wall_ms, self._last_monotonic
        self._last_wall_ms, self._last_monotonic = now, monotonic
        if last_wall is None:
            return 0
        drift_ms = (now - last_wall) - round((monotonic - last_monotonic) * 1000)
        threshold_ms = 1000 * max(CLOCK_JUMP_MIN_S, 2 * self.settings.interval_s)
        if abs(drift_ms) <= threshold_ms:
            return 0
        if drift_ms > 0:
            hold_ms = self.settings.retention_days * 86_400_000 * RETENTION_HOLD_FRACTION
            if drift_ms > max(threshold_ms, hold_ms):
                self.retention_held_until = monotonic + self.settings.retention_days * 86_400
                log.warning(
                    "the wall clock jumped forward by %.0f s: retention is held for %g days so"
                    " that no job is deleted for looking older than it is",
                    drift_ms / 1000,
                    self.settings.retention_days,
                )
            else:
                log.warning("the wall clock jumped forward by %.0f s", drift_ms / 1000)
        else:
            self._last_retention_ms = now
            log.warning(
                "the wall clock jumped back by %.0f s: pending retries are moved back as much",
                -drift_ms / 1000,
            )
        return drift_ms

    async def prune(
        self, *, now: int | None = None, older_than_days: float | None = None
    ) -> PruneReport:
        """Delete terminal jobs older than the retention period (``older_than_days = 0``: every
        terminal job), one batch per transaction, with their attempts and events; the
        dashboard sessions that have expired; the kept job counts that are 0; and the
        rate-limit windows that have ended."""
        now = self._clock.now_ms() if now is None else now
        days = self.settings.retention_days if older_than_days is None else older_than_days
        cutoff = now - int(days * 86_400_000)
        batch = self.settings.retention_batch
        report = PruneReport()
        made_room = False  # the WAL was checkpointed after a full disk, and nothing written since
        pacer = BatchPacer(self._store)  # other processes write between the batches too
        while True:
            try:
                deleted = await pacer.write(partial(delete_old_jobs, cutoff_ms=cutoff, batch=batch))
            except StorageFull:
                # A nearly full disk, when pruning matters most. Deletes need room in the WAL,
                # which grows batch after batch until a checkpoint lets it be reused (or
                # empties it): checkpoint and go on; smaller batches when even an emptied WAL
                # had no room for one.
                if made_room:
                    if batch == 1:
                        raise
                    batch = max(1, batch // 4)
                if self._make_room is None or not await self._make_room():
                    raise
                made_room = True
                continue
            made_room = False
            report.jobs += deleted.jobs
            report.events += deleted.events
            report.batches += 1
            self.last_progress_monotonic = self._clock.monotonic()
            if deleted.jobs < batch:
                break
        report.events += await self._trim_events(now)  # the event log's own retention
        # Logins only sweep expired sessions when someone logs in: a dashboard nobody opens
        # again would keep its rows for good.
        report.sessions = await self._store.write(partial(delete_expired_sessions, now=now))
        # The counts of what retention just deleted (and of every org and job type that holds
        # no job any more) are 0 now: their rows go too, or they would pile up for good.
        report.counts = await delete_in_batches(
            self._store, partial(delete_zero_counts, batch=batch), batch
        )
        # Likewise the rate-limit windows of (org, job type) pairs that stopped submitting.
        report.rate_windows = await delete_in_batches(
            self._store, partial(delete_ended_windows, now=now, batch=batch), batch
        )
        self.last_progress_monotonic = self._clock.monotonic()
        if report.jobs:
            log.info("retention deleted %d jobs and %d events", report.jobs, report.events)
        return report

    async def run(self) -> None:
        """Tick until :meth:`stop`."""
        self.looping = True
        while not self._stopping.is_set():
            try:
                await self.tick()
            except Exception as exc:
                self._tick_failed(exc)
            else:
                self._tick_succeeded()
            await self._sleep(self.quiet_sleep_s())

    def _tick_failed(self, exc: Exception) -> None:
        """Log a failed tick; the same failure again at most once a minute, with its count.

        A failing tick is followed by another one interval later, so a lasting cause (no
        memory left, a bug hit on every tick) wrote a whole traceback per tick; a locked or
        full database (an EdgeJobsError) is said without one.
        """
        self._failed_ticks += 1
        if isinstance(exc, EdgeJobsError):  # a locked or full database: no traceback
            self._failures.warning(log, "tick failed: %s", exc)
            return
        what = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        self._failures.error(log, "tick failed: %s", what, exc_info=exc)

    def _tick_succeeded(self) -> None:
        """After failed ticks: say that ticks go through again, and start afresh (the next
        failure is logged in full at once)."""
        if not self._failed_ticks:
            return
        log.info("ticks go through again after %d failed tick(s)", self._failed_ticks)
        self._failed_ticks = 0
        self._failures = RepeatLimiter()

    def stop(self) -> None:
        """Make :meth:`run` return after the current tick."""
        self._stopping.set()
        self._poked.set()
