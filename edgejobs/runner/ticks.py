"""The tick loop: every ``tick_interval_s`` it promotes due work, recovers expired leases,
runs the dependency safety net and, less often, retention. Each task is a plain coroutine
taking ``now`` (unix ms), so tests can call :meth:`Ticker.tick` with a fake clock."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import sqlite3
from collections.abc import Awaitable, Callable, Mapping

from edgejobs.clock import Clock
from edgejobs.errors import EdgeJobsError
from edgejobs.runner.registry import Registry
from edgejobs.store import Store
from edgejobs.store.claim import renew_leases
from edgejobs.store.clock_skew import shift_pending_retries
from edgejobs.store.db import WriteTx
from edgejobs.store.retention import delete_old_jobs
from edgejobs.store.transitions import promote_due, recover_running, resolve_stuck_blocked

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


@dataclasses.dataclass(slots=True)
class PruneReport:
    """What one retention run deleted."""

    jobs: int = 0
    events: int = 0
    batches: int = 0


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
        after_change: Callable[[], None] | None = None,
        healthy_leases: Callable[[], Mapping[int, int]] | None = None,
    ) -> None:
        self._store = store
        self._registry = registry
        self._clock = clock
        self.settings = settings
        self._trim_events = trim_events
        self._after_change = after_change
        self._healthy_leases = healthy_leases
        self._last_wall_ms: int | None = None
        self._last_monotonic = 0.0
        self.retention_held_until: float | None = None
        """Monotonic time until which ticks skip retention after a forward wall-clock jump."""
        self._stopping = asyncio.Event()
        self._last_retention_ms: int | None = None
        self.extra_tasks: list[TickTask] = []
        self.last_tick_monotonic: float | None = None
        self.last_progress_monotonic: float | None = None
        """When a retention batch last committed: a long prune is progress, not a hang."""
        self.ticks = 0
        """Completed ticks (tests and health checks count them)."""
        self.looping = False
        """Whether :meth:`run` has started (a stepped ticker is not judged by ``/healthz``)."""

    async def tick(self) -> None:
        """One pass of every tick task."""
        now = self._clock.now_ms()
        jump_ms = self._wall_clock_jump(now)
        healthy = dict(self._healthy_leases()) if self._healthy_leases is not None else {}
        lease_until = now + int(self.settings.lease_s * 1000)

        def maintain(conn: sqlite3.Connection, tx: WriteTx) -> tuple[int, int, list[str]]:
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
            return promoted, len(lost), stuck

        promoted, lost, stuck = await self._store.write(maintain)
        for job_id in stuck:
            log.warning(
                "dependency safety net settled blocked job %s whose parents had all ended;"
                " this means a promotion was missed elsewhere",
                job_id,
            )
        if lost:
            log.warning("recovered %d running jobs whose lease expired", lost)
        if (promoted or lost or stuck) and self._after_change is not None:
            self._after_change()
        due = self._last_retention_ms is None or (
            now - self._last_retention_ms >= self.settings.retention_interval_s * 1000
        )
        held = self.retention_held_until is not None and (
            self._clock.monotonic() < self.retention_held_until
        )
        if due and not held:
            self._last_retention_ms = now
            await self.prune(now=now)
        for task in self.extra_tasks:
            try:
                await task(now)
            except EdgeJobsError as exc:
                log.warning("tick task failed: %s", exc)
        self.ticks += 1
        self.last_tick_monotonic = self._clock.monotonic()

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
        """Delete terminal jobs older than the retention period, one batch per transaction."""
        now = self._clock.now_ms() if now is None else now
        days = self.settings.retention_days if older_than_days is None else older_than_days
        cutoff = now - int(days * 86_400_000)
        batch = self.settings.retention_batch
        report = PruneReport()
        while True:
            deleted = await self._store.write(
                lambda conn, tx: delete_old_jobs(conn, tx, cutoff_ms=cutoff, batch=batch)
            )
            report.jobs += deleted
            report.batches += 1
            self.last_progress_monotonic = self._clock.monotonic()
            if deleted < batch:
                break
        report.events = await self._trim_events(now)  # the event log's own retention
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
            except EdgeJobsError as exc:
                log.warning("tick failed: %s", exc)
            except Exception:
                log.exception("tick failed")
            try:
                await asyncio.wait_for(self._stopping.wait(), timeout=self.settings.interval_s)
            except TimeoutError:
                pass

    def stop(self) -> None:
        """Make :meth:`run` return after the current tick."""
        self._stopping.set()
