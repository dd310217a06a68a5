"""The tick loop: every ``tick_interval_s`` it promotes due work, recovers expired leases,
runs the dependency safety net and, less often, retention. Each task is a plain coroutine
taking ``now`` (unix ms), so tests can call :meth:`Ticker.tick` with a fake clock."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import sqlite3
from collections.abc import Awaitable, Callable

from edgejobs.clock import Clock
from edgejobs.errors import EdgeJobsError
from edgejobs.runner.registry import Registry
from edgejobs.store import Store
from edgejobs.store.db import WriteTx
from edgejobs.store.retention import delete_old_events, delete_old_jobs, trim_events
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
    events_max: int = 10000
    events_max_age_s: float = 3600.0


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
        after_change: Callable[[], None] | None = None,
    ) -> None:
        self._store = store
        self._registry = registry
        self._clock = clock
        self.settings = settings
        self._after_change = after_change
        self._stopping = asyncio.Event()
        self._last_retention_ms: int | None = None
        self.extra_tasks: list[TickTask] = []
        self.last_tick_monotonic: float | None = None
        self.last_progress_monotonic: float | None = None
        """When a retention batch last committed: a long prune is progress, not a hang."""
        self.looping = False
        """Whether :meth:`run` has started (a stepped ticker is not judged by ``/healthz``)."""
        self.ticks = 0

    async def tick(self) -> None:
        """One pass of every tick task."""
        now = self._clock.now_ms()

        def maintain(conn: sqlite3.Connection, tx: WriteTx) -> tuple[int, int, list[str]]:
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
        if due:
            self._last_retention_ms = now
            await self.prune(now=now)
        for task in self.extra_tasks:
            try:
                await task(now)
            except EdgeJobsError as exc:
                log.warning("tick task failed: %s", exc)
        self.ticks += 1
        self.last_tick_monotonic = self._clock.monotonic()

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
        event_cutoff = now - int(self.settings.events_max_age_s * 1000)
        while True:
            deleted = await self._store.write(
                lambda conn, tx: (
                    delete_old_events(conn, tx, cutoff_ms=event_cutoff, batch=batch)
                    + trim_events(conn, tx, keep=self.settings.events_max, batch=batch)
                )
            )
            report.events += deleted
            self.last_progress_monotonic = self._clock.monotonic()
            if deleted < batch:
                break
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
