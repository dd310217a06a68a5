"""Prometheus metrics, in a registry of their own per app (never the global one).

Where the numbers come from:

* ``edgejobs_jobs{job_type,status}``: a collector that reads the counts from the store at
  each scrape (so they are right whichever process changed the jobs).
* ``edgejobs_submissions_total``, ``edgejobs_attempts_total{job_type,outcome}``,
  ``edgejobs_attempt_duration_seconds`` and ``edgejobs_queue_wait_seconds``: computed from
  the event log, which every process appends to in the transaction of each status change. A
  tail task reads the new ``job`` events shortly after each commit (and before each scrape),
  joined to the attempt each event names, so an outcome is the attempt's recorded outcome
  (``completed``, ``failed``, ``timed_out``, ``canceled``, ``lost``) and a duration is the
  attempt's own ``finished_at - started_at``. Counting starts when the runner starts (the
  ``lost`` attempts its start-up recovery records included), or when the app starts for an
  app that is no runner. Queue
  wait is the time from a job's ``queued`` event to its ``running`` event, for jobs that
  became ready while the app was up.

No metric has an org label: metrics are shared by every tenant (SPEC §9).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Iterator
from functools import partial
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from edgejobs.errors import EdgeJobsError
from edgejobs.models import Status
from edgejobs.runner.maintenance import StorageCollector
from edgejobs.store import events as event_store
from edgejobs.store import stats as stats_store
from edgejobs.store.jobs import count_by_status

if TYPE_CHECKING:
    from edgejobs.app import EdgeJobs
    from edgejobs.store.db import WriteTx

log = logging.getLogger("edgejobs.api")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
_ENDED = frozenset({"completed", "failed", "timed_out", "dead_letter", "retrying", "canceled"})
_MAX_TRACKED = 100_000
_TAIL_INTERVAL_S = 0.5


class JobCountsCollector(Collector):
    """``edgejobs_jobs{job_type,status}`` from the snapshot taken just before each scrape.

    Every status of every job type is a series, 0 included: a series that vanished when its
    count reached 0 would read as "no data" in a graph, and an alert on
    ``edgejobs_jobs{status="running"} == 0`` could never fire. Bounded all the same: job
    types (registered or holding jobs) × the ten statuses.
    """

    def __init__(self) -> None:
        self.counts: dict[str, dict[str, int]] = {}
        self.job_types: frozenset[str] = frozenset()
        """Registered job types, shown with zeros before they hold any job."""

    def collect(self) -> Iterator[Metric]:
        """Yield the gauge family."""
        family = GaugeMetricFamily(
            "edgejobs_jobs",
            "Jobs in the database by job type and status",
            labels=["job_type", "status"],
        )
        for job_type in sorted(self.job_types | self.counts.keys()):
            counts = self.counts.get(job_type, {})
            for status in sorted(Status):
                family.add_metric([job_type, status.value], counts.get(status.value, 0))
        yield family


class Metrics:
    """The app's metrics: a private registry, the collectors and the event-log tail."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.jobs = JobCountsCollector()
        self.registry.register(self.jobs)
        self.storage = StorageCollector()  # database/WAL sizes, tick age, checkpoints
        self.registry.register(self.storage)
        self.submissions = Counter(
            "edgejobs_submissions",
            "Jobs created (deduplicated submissions excluded)",
            ["job_type"],
            registry=self.registry,
        )
        self.attempts = Counter(
            "edgejobs_attempts",
            "Attempts ended, by outcome",
            ["job_type", "outcome"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "edgejobs_attempt_duration_seconds",
            "Run time of ended attempts",
            ["job_type"],
            buckets=_DURATION_BUCKETS,
            registry=self.registry,
        )
        self.queue_wait = Histogram(
            "edgejobs_queue_wait_seconds",
            "Time from ready (queued) to running",
            ["job_type"],
            buckets=_DURATION_BUCKETS,
            registry=self.registry,
        )
        self._ej: EdgeJobs | None = None
        self._last_event = 0
        self._queued_at: collections.OrderedDict[str, int] = collections.OrderedDict()
        self._dirty = asyncio.Event()
        self._tail_lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    async def start(self, ej: EdgeJobs) -> None:
        """Begin counting from now: remember the newest event, follow commits."""
        self._ej = ej
        self.storage.ej = ej
        # From the runner's start when this app runs the runner: its recovery of the jobs a
        # dead runner left running wrote their `lost` attempts before the app started.
        if ej.start_event_id is not None:
            self._last_event = ej.start_event_id
        else:
            self._last_event = await ej.store.read(event_store.last_event_id)
        ej.add_commit_listener(self._on_commit)
        ej.add_foreign_listener(self._dirty.set)
        self._task = asyncio.create_task(self._follow(), name="edgejobs-metrics-tail")

    async def ensure_started(self, ej: EdgeJobs) -> None:
        """:meth:`start`, unless the app's lifespan did (for an app mounted without it, as a
        client of a runner in another process)."""
        if self._ej is None:
            await self.start(ej)

    async def stop(self) -> None:
        """Stop following the event log."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._ej = None
        self.storage.ej = None

    def _on_commit(self, tx: WriteTx) -> None:
        if tx.events:
            self._dirty.set()

    async def _follow(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            try:
                await self.tail()
            except EdgeJobsError as exc:
                log.warning("metrics: could not read the event log: %s", exc)
            # At most two reads a second, however busy the writer is.
            await asyncio.sleep(_TAIL_INTERVAL_S)

    async def tail(self) -> None:
        """Account for every ``job`` event since the last call."""
        ej = self._ej
        if ej is None:
            return
        async with self._tail_lock:
            while True:
                batch = await ej.store.read(
                    partial(stats_store.activity_since, after_id=self._last_event)
                )
                for item in batch:
                    self._account(item)
                    self._last_event = item.event_id
                if len(batch) < stats_store.ACTIVITY_BATCH:
                    return

    def _account(self, item: stats_store.Activity) -> None:
        job_type = item.job_type
        if item.created:
            self.submissions.labels(job_type).inc()
        if item.status == "queued":
            self._queued_at[item.job_id] = item.at
            self._queued_at.move_to_end(item.job_id)
            while len(self._queued_at) > _MAX_TRACKED:
                self._queued_at.popitem(last=False)
        elif item.status == "running":
            ready = self._queued_at.pop(item.job_id, None)
            started = item.attempt_started_at if item.attempt_started_at is not None else item.at
            if ready is not None:
                self.queue_wait.labels(job_type).observe(max(0, started - ready) / 1000)
        elif item.status in _ENDED:
            self._queued_at.pop(item.job_id, None)
            # Only the event written with the attempt's end counts it (a cancel of a queued
            # job names the previous attempt, which ended earlier).
            if (
                item.attempt_outcome is not None
                and item.attempt_finished_at == item.at
                and item.attempt_started_at is not None
            ):
                self.attempts.labels(job_type, item.attempt_outcome).inc()
                self.duration.labels(job_type).observe(
                    max(0, item.attempt_finished_at - item.attempt_started_at) / 1000
                )

    async def render(self, ej: EdgeJobs) -> bytes:
        """The Prometheus text: fresh counts and every event up to now."""
        self.jobs.counts = await ej.store.read(lambda conn: count_by_status(conn, None))
        self.jobs.job_types = frozenset(job_type.name for job_type in ej.registry)
        await self.tail()
        return generate_latest(self.registry)
