"""Keeping an unattended database small and healthy: WAL checkpoints, vacuum after
retention, storage sizes and the health check.

Tick tasks (run by :class:`~edgejobs.runner.ticks.Ticker` after retention):

* **events**: every minute, trim the event log to its replay window (``[events]``), in
  batches: on a busy box the hourly retention run alone would let it grow by an hour's events;
* **vacuum**: once retention has freed a sizeable part of the file, give the free pages back
  to the file system in bounded steps (``vacuum_step_pages`` per write transaction, at most
  ``vacuum_steps_per_tick`` per tick), so claims never wait behind a long vacuum;
* **checkpoint**: SQLite's own auto-checkpoint (PASSIVE, every 1000 pages) keeps a busy WAL
  bounded as long as no reader holds an old snapshot. On top of that, a PASSIVE checkpoint
  runs every tick while the WAL holds frames; once it reports every frame copied back (no
  reader needs an older snapshot) and nothing was written since the previous tick, a
  TRUNCATE empties the WAL file. TRUNCATE has a short busy timeout: when the database is in
  use it reports ``busy`` and the next tick tries again, so it never stalls the writer.

No SQL here: the statements live in :mod:`edgejobs.store.maintenance` and
:mod:`edgejobs.store.retention`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgejobs.errors import DatabaseBusy, StorageFull, out_of_resources
from edgejobs.logs import RepeatLimiter
from edgejobs.runner.executor import abandoned_tasks, abandoned_threads
from edgejobs.runner.pacing import BatchPacer, delete_in_batches
from edgejobs.store import Store
from edgejobs.store.db import WriteTx
from edgejobs.store.maintenance import (
    Checkpoint,
    FileSizes,
    PageStats,
    checkpoint,
    file_sizes,
    open_checkpointer,
    page_stats,
    vacuum_step,
)
from edgejobs.store.retention import delete_old_events
from edgejobs.store.retention import trim_events as trim_old_events

if TYPE_CHECKING:
    from edgejobs.app import EdgeJobs
    from edgejobs.config import Config
    from edgejobs.runner.ticks import TickTask

log = logging.getLogger("edgejobs.maintenance")

MIB = 1024 * 1024
VACUUM_LOOK_MS = 60_000
"""The longest the vacuum tick task goes without looking at the free pages."""


@dataclasses.dataclass(frozen=True, slots=True)
class MaintenanceSettings:
    """Knobs of checkpoints, vacuum and the health check."""

    tick_interval_s: float = 1.0
    journal_size_limit_bytes: int = 64 * MIB
    vacuum_step_pages: int = 1024
    """Pages given back per write transaction (4 MiB with 4 KiB pages: a few milliseconds)."""
    vacuum_steps_per_tick: int = 8
    vacuum_min_free_bytes: int = 8 * MIB
    vacuum_min_free_ratio: float = 0.2
    """The tick vacuums only when free pages exceed both bounds: small free lists are reused
    by new rows, and vacuuming them would only move pages back and forth."""
    checkpoint_busy_timeout_ms: int = 50
    wal_warning_factor: int = 4
    """Warn once when the WAL grows past this many times ``journal_size_limit``."""
    health_tick_factor: float = 3.0
    """``/healthz`` answers 503 when the last tick is older than this many tick intervals."""
    events_trim_interval_s: float = 60.0
    events_keep: int = 10000
    events_max_age_s: float = 3600.0
    batch_size: int = 500

    @classmethod
    def from_config(cls, config: Config) -> MaintenanceSettings:
        """The settings that follow from ``edgejobs.toml``."""
        return cls(
            tick_interval_s=config.runner.tick_interval_s,
            journal_size_limit_bytes=config.database.journal_size_limit_bytes,
            events_keep=config.events.replay_max_events,
            events_max_age_s=config.events.replay_max_age_s,
            batch_size=config.retention.batch_size,
        )


@dataclasses.dataclass(frozen=True, slots=True)
class ShrinkReport:
    """What :meth:`Maintenance.shrink` gave back."""

    vacuumed_pages: int
    bytes_before: int
    bytes_after: int
    checkpoint: Checkpoint | None


class Maintenance:
    """Checkpoints, vacuum and storage figures for one store."""

    def __init__(self, store: Store, settings: MaintenanceSettings) -> None:
        self._store = store
        self.settings = settings
        self._lock = asyncio.Lock()
        self._previous_log_frames: int | None = None
        self._wal_warned = False
        self._repeats = RepeatLimiter()  # a checkpoint failing every tick (a full disk)
        self.last_checkpoint: Checkpoint | None = None
        """The most recent checkpoint this process ran (None before the first)."""
        self.last_page_stats: PageStats | None = None
        """Page figures as of the last vacuum check (for metrics without a query)."""
        self.checkpoints: dict[tuple[str, str], int] = {}
        """Checkpoints run, by (mode, "complete" | "partial" | "busy")."""
        self.vacuumed_pages_total = 0
        self._events_trimmed_at: int | None = None
        self._vacuum_looked: tuple[int, int] | None = None  # (rows changed, tick time in ms)
        self._vacuum_blocked_at: int | None = None  # tick time the disk was too full (ms)
        self.checkpointing_since: float | None = None
        """``time.monotonic()`` when the checkpoint running now began (None: none runs). A tick
        copying a large WAL back (after a long reader let it grow) is busy, not stalled."""
        self.vacuum_blocked = False
        """Whether the last vacuum stopped because the disk was too full for one more step."""
        self.write_probe = WriteProbe(store)
        """The health check's write probe (see :class:`WriteProbe`)."""

    def loop_changed(self) -> None:
        """Start afresh in another event loop (a client moved on to the next one): an asyncio
        lock that was ever waited for is bound to the loop it was waited in."""
        self._lock = asyncio.Lock()

    def tick_tasks(self) -> list[TickTask]:
        """The tasks to append to :attr:`Ticker.extra_tasks`, in order."""
        return [self.events_task, self.vacuum_task, self.checkpoint_task]

    # -- the event log ------------------------------------------------------------------------

    async def trim_events(self, now_ms: int) -> int:
        """Delete events beyond the replay window, one batch per write; return how many."""
        settings = self.settings
        cutoff = now_ms - int(settings.events_max_age_s * 1000)
        batch = settings.batch_size

        def op(conn: sqlite3.Connection, tx: WriteTx) -> int:
            return delete_old_events(conn, tx, cutoff_ms=cutoff, batch=batch) + trim_old_events(
                conn, tx, keep=settings.events_keep, batch=batch
            )

        # Noted here, not in the tick task: a prune that trims (retention, `edgejobs prune`)
        # counts too, so the tick task does not trim again right after it.
        self._events_trimmed_at = now_ms
        return await delete_in_batches(self._store, op, batch)

    async def events_task(self, now_ms: int) -> None:
        """Tick task: trim the event log every ``events_trim_interval_s``."""
        last = self._events_trimmed_at
        if last is not None and now_ms - last < self.settings.events_trim_interval_s * 1000:
            return
        await self.trim_events(now_ms)

    # -- sizes --------------------------------------------------------------------------------

    def file_sizes(self) -> FileSizes:
        """Bytes on disk of the database and its WAL (two ``stat`` calls)."""
        return file_sizes(self._store.path)

    async def page_stats(self) -> PageStats:
        """Page size, page count and free pages, read in one snapshot."""
        stats = await self._store.read(page_stats)
        self.last_page_stats = stats
        return stats

    # -- checkpoints ------------------------------------------------------------------------

    async def checkpoint(self, *, truncate: bool | None = None) -> Checkpoint:
        """PASSIVE checkpoint, then TRUNCATE when it was complete and ``truncate`` allows.

        ``truncate=None`` truncates only when the database was idle since the previous call
        (the WAL holds as many frames as then); ``True`` whenever nothing reads old frames.
        """
        async with self._lock:
            results = await self._checkpoint_in_thread(truncate)
        for result in results:
            self._count(result)
        self.last_checkpoint = results[-1]
        return results[-1]

    async def _checkpoint_in_thread(self, truncate: bool | None) -> list[Checkpoint]:
        """Run :meth:`_checkpoint_sync` in a thread, noting while it runs (:attr:`checkpointing_since`)."""
        self.checkpointing_since = time.monotonic()
        try:
            return await asyncio.to_thread(self._checkpoint_sync, truncate)
        finally:
            self.checkpointing_since = None

    def _checkpoint_sync(self, truncate: bool | None) -> list[Checkpoint]:
        conn = open_checkpointer(
            self._store.path,
            self._store.pragmas,
            busy_timeout_ms=self.settings.checkpoint_busy_timeout_ms,
        )
        try:
            passive = checkpoint(conn, "PASSIVE")
            idle = passive.log_frames == self._previous_log_frames
            self._previous_log_frames = passive.log_frames
            if not passive.complete or not (truncate or (truncate is None and idle)):
                return [passive]
            # Nobody needs an old snapshot and nothing was written since the last look:
            # empty the file. Busy (a read or write just began) is fine: next tick.
            truncated = checkpoint(conn, "TRUNCATE")
            if truncated.complete:
                self._previous_log_frames = 0
            return [passive, truncated]
        finally:
            conn.close()

    async def make_room(self) -> bool:
        """After a write failed on a full disk: checkpoint, and empty the WAL file when nobody
        reads an old snapshot, so the next write reuses its space. Whether it is reusable."""
        async with self._lock:
            return await self._make_room()

    async def _make_room(self) -> bool:
        """:meth:`make_room`, the lock held."""
        try:
            results = await self._checkpoint_in_thread(True)
        except sqlite3.Error as exc:
            log.warning("WAL checkpoint on a full disk failed: %s", exc)
            return False
        for result in results:
            self._count(result)
        self.last_checkpoint = results[-1]
        # A complete PASSIVE checkpoint is enough: the next write starts the WAL over.
        return results[0].complete

    def _count(self, result: Checkpoint) -> None:
        outcome = "busy" if result.busy else ("complete" if result.complete else "partial")
        key = (result.mode.lower(), outcome)
        self.checkpoints[key] = self.checkpoints.get(key, 0) + 1

    async def checkpoint_task(self, now_ms: int) -> None:
        """Tick task: checkpoint while the WAL holds frames; warn when readers keep it large."""
        wal = self.file_sizes().wal_bytes
        if wal == 0:
            self._previous_log_frames = None
            return
        try:
            result = await self.checkpoint()
        except sqlite3.Error as exc:
            # SQLite's "unable to open database file" reads like a missing or damaged
            # database; with no descriptor left for the checkpoint's connection, say that.
            shortage = out_of_resources(exc)
            reason = exc if shortage is None else f"this process is out of {shortage.what}"
            self._repeats.warning(log, "WAL checkpoint failed: %s", reason)
            return
        wal = self.file_sizes().wal_bytes
        limit = max(self.settings.journal_size_limit_bytes, 1 * MIB)
        if wal > self.settings.wal_warning_factor * limit and not result.complete:
            if not self._wal_warned:
                self._wal_warned = True
                log.warning(
                    "the WAL file is %.1f MiB and only %d of its %d frames could be checkpointed:"
                    " a reader is holding an old snapshot (a long request, a backup, or another"
                    " process with an open transaction)",
                    wal / MIB,
                    result.checkpointed_frames,
                    result.log_frames,
                )
        elif self._wal_warned and wal <= limit:
            self._wal_warned = False
            log.info("the WAL file is back to %.1f MiB", wal / MIB)

    # -- vacuum -----------------------------------------------------------------------------

    async def vacuum(self, *, max_steps: int | None = None) -> int:
        """Give free pages back in steps of ``vacuum_step_pages``, one write per step.

        Stops when the free list is empty or after ``max_steps`` steps; returns pages freed.
        Each step is a separate write, so claims and outcomes commit in between.
        """
        step = self.settings.vacuum_step_pages
        total = 0
        steps = 0
        self.vacuum_blocked = False
        pacer = BatchPacer(self._store)  # other processes write between the steps too
        async with self._lock:
            while max_steps is None or steps < max_steps:
                try:
                    freed = await pacer.write(partial(vacuum_step, max_pages=step))
                except StorageFull:
                    # Every page a step moves goes through the WAL: on a nearly full disk a
                    # step of vacuum_step_pages (4 MiB) does not fit, and every step failed —
                    # the space deleted never came back, and an explicit prune failed after
                    # deleting everything. Make room and go on with smaller steps; when one
                    # page does not fit, stop (the free pages are reused by new rows).
                    if step == 1 or not await self._make_room():
                        self.vacuum_blocked = True
                        log.warning(
                            "the disk is too full to give free pages back now (%d pages given"
                            " back); new rows reuse them, and the vacuum tries again later",
                            total,
                        )
                        break
                    step = max(1, step // 8)
                    continue
                total += freed
                steps += 1
                if freed < step:
                    break
        self.vacuumed_pages_total += total
        return total

    def needs_vacuum(self, stats: PageStats) -> bool:
        """Whether the free list is large enough to be worth giving back."""
        return (
            stats.free_bytes >= self.settings.vacuum_min_free_bytes
            and stats.freelist_count >= self.settings.vacuum_min_free_ratio * stats.page_count
        )

    async def vacuum_task(self, now_ms: int) -> None:
        """Tick task: after retention freed a sizeable part of the file, vacuum a bounded part.

        Free pages come from deletes. While this process wrote nothing since the last look, the
        look is skipped for up to ``VACUUM_LOOK_MS`` (another process's deletes are seen then):
        on an idle runner it was a read every tick, three thread wake-ups a second.
        """
        changed = self._store.writer.rows_changed
        last = self._vacuum_looked
        # A clock that went back (negative age) counts as due.
        if last is not None and last[0] == changed and 0 <= now_ms - last[1] < VACUUM_LOOK_MS:
            return
        blocked = self._vacuum_blocked_at
        if blocked is not None and 0 <= now_ms - blocked < VACUUM_LOOK_MS:
            return  # the disk was too full: not every tick (each failed write is a 503)
        stats = await self.page_stats()
        self._vacuum_looked = (changed, now_ms)
        if self.needs_vacuum(stats):
            self._vacuum_looked = None  # bounded steps: look again at the next tick
            pages = await self.vacuum(max_steps=self.settings.vacuum_steps_per_tick)
            self._vacuum_blocked_at = now_ms if self.vacuum_blocked else None
            log.debug("vacuum gave %.1f MiB back to the file system", pages * stats.page_size / MIB)

    async def shrink(self) -> ShrinkReport:
        """After an explicit prune: vacuum every free page (in steps), then checkpoint so the
        file itself shrinks."""
        before = self.file_sizes()
        pages = await self.vacuum()
        result: Checkpoint | None = None
        try:
            result = await self.checkpoint(truncate=True)
        except sqlite3.Error as exc:
            log.warning("WAL checkpoint after vacuum failed: %s", exc)
        after = self.file_sizes()
        return ShrinkReport(
            vacuumed_pages=pages,
            bytes_before=before.database_bytes + before.wal_bytes,
            bytes_after=after.database_bytes + after.wal_bytes,
            checkpoint=result,
        )


# -- health -----------------------------------------------------------------------------------

CHECKPOINT_HEALTH_GRACE_S = 600.0
"""How long a tick may be inside one WAL checkpoint before ``/healthz`` calls the tick loop
stalled: copying a WAL of gigabytes back takes seconds (1.5 GB: ~4.5 s on a fast disk, each
second a 503 that a liveness probe would answer with a restart); a hung one is still said."""

HEALTH_DB_TIMEOUT_S = 2.0
"""How long ``/healthz`` waits for its database query before answering 503."""
HEALTH_WRITE_WAIT_S = 0.2
"""How long ``/healthz`` waits for its write probe before answering from the previous one."""


def free_disk_bytes(folder: Path) -> int | None:
    """Bytes this process may still write on the file system holding ``folder`` (root may use
    the blocks reserved for it); None when the system cannot say."""
    try:
        fs = os.statvfs(folder)
        root = os.geteuid() == 0
    except (OSError, AttributeError):  # no statvfs or geteuid (Windows), a folder gone
        return None
    blocks = fs.f_bfree if root else fs.f_bavail
    return blocks * fs.f_frsize


def _probe_writes(path: Path) -> Callable[[sqlite3.Connection, WriteTx], StorageFull | None]:
    """The write probe's operation: can this transaction write, and has the file room to grow?

    Returns why it has no room (None: it has); raises when it cannot write at all.
    """

    def op(conn: sqlite3.Connection, tx: WriteTx) -> StorageFull | None:
        # A write that matches no row: on a file SQLite opened read-only it fails with
        # SQLITE_READONLY (BEGIN IMMEDIATE and an empty COMMIT succeed there); elsewhere it
        # changes nothing, so the COMMIT still writes no WAL frame and wakes nobody.
        conn.execute("DELETE FROM backup_copy WHERE 0")
        # An empty COMMIT also succeeds on a full disk: ask whether a new page could be had.
        # The file's own limit (max_page_count) first, unless it has free pages to reuse.
        stats = page_stats(conn)
        limit = conn.execute("PRAGMA max_page_count").fetchone()[0]
        if stats.page_count >= limit and stats.freelist_count == 0:
            return StorageFull(
                f"the database file is full: it holds {stats.page_count} pages, its max_page_count"
            )
        free = free_disk_bytes(path.parent)
        if free is not None and free < stats.page_size:
            return StorageFull(
                f"the disk is full: {free} bytes left on the file system of the database"
            )
        return None

    return op


class WriteProbe:
    """A write transaction that changes nothing, run when ``/healthz`` is asked: can a write
    take the lock, and could it be written?

    An idle runner writes nothing for up to a quiet tick sleep, so another process holding
    the write lock (a ``sqlite3`` shell left in ``BEGIN IMMEDIATE``, a long backup or vacuum)
    went unnoticed: ``/healthz`` answered 200 while every submission waited the busy timeout
    and failed. The probe goes through the writer like a submission, so it fails exactly when
    one would: after the busy timeout. In its transaction it also runs a ``DELETE`` that
    matches no row (refused on a file SQLite opened read-only) and asks whether the database
    can grow by a page (its ``max_page_count``, the free space of its file system): an empty
    COMMIT succeeds on a read-only file and on a full disk alike. It runs only when
    ``/healthz`` is asked (an idle runner gets no wake-up of its own), one at a time; on a
    busy runner it joins the writer's next transaction. Its COMMIT changes nothing: no WAL
    frame, no wake-up of other processes.
    """

    def __init__(self, store: Store) -> None:
        self._store = store
        self._pending: asyncio.Task[None] | None = None
        self.failure: tuple[float, DatabaseBusy | StorageFull] | None = None
        """When (``time.monotonic()``) and why the last finished probe found that a write
        could not be made (the lock, a read-only file, no room); None when it could."""

    async def check(self, wait_s: float) -> tuple[float, DatabaseBusy | StorageFull] | None:
        """Start a probe unless one is on its way, wait up to ``wait_s`` for it, and return
        the outcome of the last one that finished (a failure; None: a write could be made)."""
        pending = self._pending
        if (
            pending is None
            or pending.done()
            or pending.get_loop() is not asyncio.get_running_loop()
        ):
            pending = self._pending = asyncio.get_running_loop().create_task(self._probe())
        # Shielded: a probe still waiting for the lock goes on after this answer; its outcome
        # is the next answer's (it fails only after the busy timeout, longer than a probe
        # of the health check may wait).
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(pending), wait_s)
        return self.failure

    async def _probe(self) -> None:
        try:
            no_room = await self._store.write(_probe_writes(self._store.path))
        except (DatabaseBusy, StorageFull) as exc:  # a lock held elsewhere, a read-only file
            self.failure = (time.monotonic(), exc)
        except Exception:
            # Not a lock held elsewhere (a closed store, no descriptor left): the health
            # check's read and the writes that fail report those; the last outcome stands.
            return
        else:
            self.failure = None if no_room is None else (time.monotonic(), no_room)


def tick_age_s(ej: EdgeJobs) -> float | None:
    """Seconds since the tick loop last showed life (a finished tick, a retention batch, the
    end of a quiet sleep; a quiet sleep counts as life until its planned end, see
    :mod:`edgejobs.runner.ticks`),
    counted from the runner's start before the first tick; None when this process runs no
    tick loop (not a runner, or a runner stepped by tests)."""
    ticker = ej.ticker
    if ticker is None or not ticker.looping:
        return None
    marks = [
        ticker.last_tick_monotonic,
        ticker.last_progress_monotonic,
        ticker.woke_monotonic,
        ej.started_monotonic,
    ]
    if ticker.quiet_until is not None:
        # A planned quiet sleep is life until its end, as if it were one interval long.
        marks.append(ticker.quiet_until - ticker.settings.interval_s)
    seen = [mark for mark in marks if mark is not None]
    if not seen:
        return None
    return max(0.0, ej.clock.monotonic() - max(seen))


@dataclasses.dataclass(frozen=True, slots=True)
class RunnerHealth:
    """What :func:`runner_health` found: reasons to answer 503 (none: healthy) and figures."""

    reasons: tuple[str, ...]
    details: dict[str, Any]

    @property
    def ok(self) -> bool:
        """No reason to be unhealthy."""
        return not self.reasons


def runner_health(ej: EdgeJobs, settings: MaintenanceSettings | None = None) -> RunnerHealth:
    """The runner's half of the health check (the database query is the other half).

    Unhealthy while shutting down, or when this process is the runner and its tick loop has
    not shown life for ``health_tick_factor`` × ``tick_interval_s`` (a hung tick task, a
    blocked event loop). Details: database and WAL file sizes, the last tick's age, the
    attempts running in this process and the handlers still running after their attempt ended
    (abandoned threads of sync handlers, tasks of async ones).
    """
    settings = settings or ej.maintenance.settings
    reasons: list[str] = []
    sizes = file_sizes(ej.store.path)
    age = tick_age_s(ej)
    limit = settings.health_tick_factor * settings.tick_interval_s
    details: dict[str, Any] = {
        "database_bytes": sizes.database_bytes,
        "wal_bytes": sizes.wal_bytes,
        "last_tick_age_s": None if age is None else round(age, 3),
        "tick_limit_s": limit,
    }
    if ej.pool is not None:
        details["running_here"] = ej.pool.running_count
        # Not a reason for a 503 (the runner works on), but the figure to watch for handlers
        # that ignore their timeout: each of these threads still runs, holding no slot.
        details["abandoned_threads"] = abandoned_threads()
        details["abandoned_tasks"] = abandoned_tasks()
    since = ej.maintenance.checkpointing_since
    checkpointing = None if since is None else time.monotonic() - since
    if checkpointing is not None:
        details["checkpointing_s"] = round(checkpointing, 3)
    if ej.stopping:
        reasons.append("the runner is shutting down")
    elif age is not None and age > limit:
        if checkpointing is None or checkpointing > CHECKPOINT_HEALTH_GRACE_S:
            reasons.append(f"the tick loop has not run for {age:.1f} s (limit {limit:g} s)")
    return RunnerHealth(reasons=tuple(reasons), details=details)


def extend_health(ej: EdgeJobs, body: dict[str, Any]) -> None:
    """Add the runner's check to a ``/healthz`` body: figures into ``details``, and
    ``reasons`` (every reason for a 503, empty when healthy); a stalled tick loop makes the
    body ``unavailable`` with ``runner: "stalled"``."""
    check = runner_health(ej)
    body.setdefault("details", {}).update(check.details)
    reasons: list[str] = []
    if body.get("database", "ok") != "ok":
        reasons.append(f"the database check failed: {body['database']}")
    reasons.extend(check.reasons)
    if not check.ok:
        body["status"] = "unavailable"
        if not ej.stopping:
            body["runner"] = "stalled"
    body["reasons"] = reasons


# -- metrics ----------------------------------------------------------------------------------


class StorageCollector:
    """A Prometheus collector of storage and tick figures, read at scrape time (no org labels).

    Register it once on the app's own registry; point :attr:`ej` at the app while it runs.
    """

    def __init__(self, ej: EdgeJobs | None = None) -> None:
        self.ej = ej

    def describe(self) -> list[Any]:
        """Nothing up front: the names depend on whether an app is attached."""
        return []

    def collect(self) -> Iterable[Any]:
        """Gauges of file sizes and tick age; counters of checkpoints and vacuumed pages."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        ej = self.ej
        if ej is None:
            return
        sizes = file_sizes(ej.store.path)
        yield GaugeMetricFamily(
            "edgejobs_database_size_bytes",
            "Size of the SQLite database file",
            value=sizes.database_bytes,
        )
        yield GaugeMetricFamily(
            "edgejobs_wal_size_bytes",
            "Size of the SQLite write-ahead log file",
            value=sizes.wal_bytes,
        )
        maintenance = ej.maintenance
        stats = maintenance.last_page_stats
        if stats is not None:
            yield GaugeMetricFamily(
                "edgejobs_database_free_bytes",
                "Bytes of free pages in the database file, as of the last vacuum check",
                value=stats.free_bytes,
            )
        age = tick_age_s(ej)
        if age is not None:
            yield GaugeMetricFamily(
                "edgejobs_tick_age_seconds",
                "Seconds since the tick loop last showed life",
                value=age,
            )
        if ej.pool is not None:
            yield GaugeMetricFamily(
                "edgejobs_abandoned_threads",
                "Threads of sync handlers still running after their attempt ended",
                value=abandoned_threads(),
            )
            yield GaugeMetricFamily(
                "edgejobs_abandoned_tasks",
                "Tasks of async handlers still running after their attempt ended",
                value=abandoned_tasks(),
            )
        checkpoints = CounterMetricFamily(
            "edgejobs_wal_checkpoints",
            "WAL checkpoints run by this process, by mode and outcome",
            labels=["mode", "outcome"],
        )
        for (mode, outcome), count in sorted(maintenance.checkpoints.items()):
            checkpoints.add_metric([mode, outcome], count)
        yield checkpoints
        yield CounterMetricFamily(
            "edgejobs_vacuumed_pages",
            "Free pages given back to the file system by this process",
            value=maintenance.vacuumed_pages_total,
        )
