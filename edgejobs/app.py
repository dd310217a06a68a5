"""The :class:`EdgeJobs` facade: configuration, job types, submit/wait/cancel/retry, lifecycle.

Everything a user touches goes through here; the store holds the SQL, the runner runs
handlers, and the HTTP layer calls these same methods.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Never, TypeVar

from edgejobs import faults
from edgejobs.clock import Clock, SystemClock
from edgejobs.config import (
    Config,
    JobTypeConfig,
    check_job_type,
    check_not_in_memory,
    load_config,
    parse_rate_limit,
)
from edgejobs.errors import (
    ConfigError,
    EdgeJobsError,
    PayloadTooLarge,
    ShuttingDown,
    UnknownJobType,
    ValidationError,
)
from edgejobs.models import (
    LATEST_RUN_AT_S,
    MAX_DELAY_S,
    MAX_PAGE,
    RUN_AT_RANGE,
    TERMINAL,
    Attempt,
    Job,
    Priority,
    Status,
    is_valid_unicode,
    run_at_in_range,
)
from edgejobs.retry import RetryPolicy
from edgejobs.runner.context import AsyncHandler, SyncHandler
from edgejobs.runner.lock import RunnerLock
from edgejobs.runner.maintenance import Maintenance, MaintenanceSettings
from edgejobs.runner.pool import Pool, PoolSettings
from edgejobs.runner.registry import Handler, JobType, Registry
from edgejobs.runner.ticks import PruneReport, Ticker, TickSettings, log_lost
from edgejobs.runner.watchdog import LoopWatchdog
from edgejobs.store import Store, migrations
from edgejobs.store import events as event_store
from edgejobs.store import job_types as job_type_store
from edgejobs.store.audit import Actor, record_job_action
from edgejobs.store.claim import drop_pair_index, ensure_pair_index
from edgejobs.store.db import Pragmas, WriteTx
from edgejobs.store.jobs import (
    JobFilter,
    NewJob,
    SubmitOp,
    count_by_org,
    count_by_status,
    count_queued,
    dedup_hash,
    get_attempts,
    get_job,
    list_jobs,
    load_job,
    recount_jobs,
)
from edgejobs.store.maintenance import BackupGap, leave_backup_gap
from edgejobs.store.rates import RateTake
from edgejobs.store.rows import MAX_JSON_DEPTH, nested_too_deep, strict_dumps
from edgejobs.store.transitions import cancel_job, recover_running, retry_job

if TYPE_CHECKING:
    from starlette.applications import Starlette

log = logging.getLogger("edgejobs")

HandlerT = TypeVar("HandlerT", bound=AsyncHandler | SyncHandler)

_ORG_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")
MAX_DEPENDS_ON = 1000


def check_org(org: object) -> str:
    """An org name: 1-64 letters, digits, ``_``, ``.`` or ``-``."""
    if not isinstance(org, str) or not 1 <= len(org) <= 64 or not set(org) <= _ORG_CHARS:
        raise ValidationError(
            f"org must be 1-64 letters, digits, '_', '.' or '-', got {org!r}"[:200]
        )
    return org


def parse_time_ms(value: datetime | str | int | float) -> int:
    """A due time as unix milliseconds: an aware datetime, an ISO 8601 string with an offset,
    or unix seconds; from 1970-01-01T00:00:00Z to 9999-12-31T23:59:59Z whichever the form."""
    if isinstance(value, bool):
        raise ValidationError("run_at must be a time, not a boolean")
    if isinstance(value, int | float):
        if not 0 <= value <= LATEST_RUN_AT_S:  # (also refuses NaN)
            raise ValidationError(f"run_at must be unix seconds from 0 to {LATEST_RUN_AT_S}")
        return round(value * 1000)
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ValidationError(f"run_at {value!r} is not an ISO 8601 time") from None
    if not isinstance(value, datetime):
        raise ValidationError("run_at must be an ISO 8601 time with a UTC offset")
    if value.tzinfo is None:
        raise ValidationError("run_at needs a UTC offset (e.g. 2026-11-29T10:00:00Z)")
    if not run_at_in_range(value):  # the bounds of the unix seconds above
        raise ValidationError(f"run_at must be a time {RUN_AT_RANGE}")
    return round(value.timestamp() * 1000)


MAX_CANCEL_REASON = 500
"""Longest cancel reason (as over HTTP)."""


def _check_unicode(name: str, text: str) -> None:
    """Refuse text SQLite cannot store (a lone surrogate: a file name from ``os.listdir``)
    with a :class:`ValidationError` naming ``name``, not a bare UnicodeEncodeError."""
    if not is_valid_unicode(text):
        raise ValidationError(f"{name} holds text that is not valid Unicode (a lone surrogate)")


def _filter_time_ms(name: str, value: datetime | int | None) -> int | None:
    """A listing's time filter as unix milliseconds: an aware datetime, or an int of
    milliseconds (what the job objects' times are); anything else is a ValidationError — an
    ISO string or unix seconds had matched nothing, without a word."""
    if value is None:
        return None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValidationError(f"{name} needs a UTC offset (an aware datetime)")
        return round(value.timestamp() * 1000)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(
            f"{name} must be an aware datetime or unix milliseconds (an int),"
            f" got {type(value).__name__}"
        )
    return value


@dataclasses.dataclass(frozen=True, slots=True)
class JobSpec:
    """One job of a :meth:`EdgeJobs.submit_many` batch.

    ``depends_on`` may name existing job ids (str), earlier specs of the same batch (the
    :class:`JobSpec` itself) or their index in the batch (int).
    """

    job_type: str
    org: str
    params: Mapping[str, Any] | None = None
    priority: Priority | str | None = None
    depends_on: Sequence[str | int | JobSpec] = ()
    run_at: datetime | str | int | float | None = None
    delay_s: float | None = None
    dedup: bool | None = None
    dedup_key: str | None = None


def _parent_list(value: object) -> tuple[Any, ...]:
    """``depends_on`` as a tuple. A str is a sequence too: one job id was read a character at
    a time (``unknown parent job 0``), so a string or bytes is refused."""
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise ValidationError(f"depends_on must be a list of job ids, got {type(value).__name__}")
    return tuple(value)


@dataclasses.dataclass
class _CheckedNames:
    """The job types and orgs one batch has already checked: a batch of 20,000 jobs of one
    type for one org looks each up once, not once per job (the checks run on the event loop,
    before the writer can start the batch's transaction)."""

    job_types: dict[str, JobType] = dataclasses.field(default_factory=dict)
    orgs: set[str] = dataclasses.field(default_factory=set)


def _cannot_open(path: Path, exc: BaseException) -> EdgeJobsError:
    """One line for a database file that cannot be opened (the CLI prints it, exit 1)."""
    reason = str(exc)
    if isinstance(exc, OSError) and exc.strerror:
        reason = exc.strerror + (f" ({exc.filename})" if exc.filename else "")
    return EdgeJobsError(f"cannot open the database {path}: {reason}")


class EdgeJobs:
    """A job runner on one SQLite file.

    Use it as ``async with EdgeJobs(...) as ej:`` to run workers and ticks in this process, or
    call :meth:`open` alone to submit and inspect jobs without running any (a client).
    """

    def __init__(
        self,
        database: str | os.PathLike[str] | None = None,
        *,
        config: Config | None = None,
        clock: Clock | None = None,
        workers: int | None = None,
    ) -> None:
        config = config or Config()
        if database is not None:
            try:
                check_not_in_memory(database)
            except ValueError as exc:
                raise ConfigError(f"database: {exc}") from None
            config = config.model_copy(
                update={"database": config.database.model_copy(update={"path": Path(database)})}
            )
        if workers is not None:
            config = config.model_copy(
                update={"runner": config.runner.model_copy(update={"workers": workers})}
            )
        self.config = config
        self.clock: Clock = clock or SystemClock()
        self.registry = Registry()
        self.store = Store(
            config.database.path,
            Pragmas(
                synchronous=config.database.synchronous,
                busy_timeout_ms=config.database.busy_timeout_ms,
                journal_size_limit_bytes=config.database.journal_size_limit_bytes,
            ),
        )
        self.store.writer.add_commit_listener(self._on_commit)
        self.store.writer.add_foreign_listener(self._on_foreign_change)
        self._default_retry = RetryPolicy(
            config.retry.base_delay_s, config.retry.max_delay_s, config.retry.jitter
        )
        for declared in config.job_types:
            self.registry.add(self._job_type(declared, declared.handler))
        self.pool: Pool | None = None
        self.ticker: Ticker | None = None
        self._foreign_commits = 0
        self.watchdog = LoopWatchdog(
            lambda: self.pool.running_ids if self.pool else [], wait_busy=self._attempt_running
        )
        self.maintenance = Maintenance(self.store, MaintenanceSettings.from_config(config))
        self._lock: RunnerLock | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._waiters: dict[str, set[asyncio.Event]] = {}
        self._commit_listeners: list[Callable[[WriteTx], None]] = []
        self._foreign_listeners: list[Callable[[], None]] = []
        self._stored_types: dict[str, job_type_store.JobTypeState] = {}
        self._type_refresh: asyncio.Future[None] | None = None
        self._type_refresh_again = False
        self._stopping = False
        self._stop_task: asyncio.Task[None] | None = None
        self._close_task: asyncio.Task[None] | None = None
        self._opened = False
        self._closed = False
        self._open_lock = asyncio.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None  # the one it was opened in
        self.started_monotonic: float | None = None
        self.start_event_id: int | None = None
        """The newest event id when this runner started, before it recovered the jobs a dead
        runner left running (None: not started as a runner)."""

    # -- construction -----------------------------------------------------------------------

    @classmethod
    def from_config(
        cls,
        path: str | os.PathLike[str] | None = None,
        *,
        environ: Mapping[str, str] | None = None,
        overrides: Mapping[str, Any] | None = None,
        clock: Clock | None = None,
    ) -> EdgeJobs:
        """Build from ``edgejobs.toml`` (see :func:`edgejobs.config.load_config`)."""
        return cls(config=load_config(path, environ, overrides), clock=clock)

    def _retry_policy(self, base: float | None, maximum: float | None) -> RetryPolicy:
        return RetryPolicy(
            self._default_retry.base_delay_s if base is None else base,
            self._default_retry.max_delay_s if maximum is None else maximum,
            self._default_retry.jitter,
        )

    def register(
        self,
        name: str,
        handler: AsyncHandler | SyncHandler | str,
        *,
        timeout_s: float = 300.0,
        max_retries: int = 3,
        base_delay_s: float | None = None,
        max_delay_s: float | None = None,
        priority: Priority | str = Priority.NORMAL,
        concurrency: int | None = None,
        org_concurrency: int | None = None,
        rate_limit: str | None = None,
        dedup: bool = True,
        isolation: Literal["thread", "process"] = "thread",
        **unknown: Never,
    ) -> JobType:
        """Register a job type (a handler callable or an import path, plus its policy).

        An ``async def`` handler takes ``(ctx: JobContext, params: dict[str, Any])``, a plain
        ``def`` one ``(ctx: SyncJobContext, params: dict[str, Any])`` (see
        :class:`~edgejobs.AsyncHandler` and :class:`~edgejobs.SyncHandler`): a type checker
        refuses a handler whose context does not match how it runs.

        The policy follows the rules of a ``[[job_types]]`` table in ``edgejobs.toml`` (see
        :func:`edgejobs.config.check_job_type`): a wrong type, an impossible value or an
        unknown option is a :class:`~edgejobs.errors.ValidationError` naming it. (``unknown``
        only catches misspelled options, so that the error lists the valid ones.)
        """
        if name in self.registry:
            # A copy-pasted decorator, or a code type shadowing a configured one, ran the
            # wrong handler with no word; huey and dramatiq refuse a second registration too.
            where = (
                "in [[job_types]] of the configuration"
                if any(declared.name == name for declared in self.config.job_types)
                else "by an earlier register() or @job_type"
            )
            raise ValidationError(
                f"job type {name!r} is already registered ({where}): a name is registered once"
            )
        if not isinstance(handler, str) and not callable(handler):
            raise ValidationError(
                f"job type {name!r}: handler must be a callable or an import path"
                f' "package.module:function", got {type(handler).__name__}'
            )
        options: dict[str, Any] = {
            "timeout_s": timeout_s,
            "max_retries": max_retries,
            "base_delay_s": base_delay_s,
            "max_delay_s": max_delay_s,
            "priority": priority.value if isinstance(priority, Priority) else priority,
            "concurrency": concurrency,
            "org_concurrency": org_concurrency,
            "rate_limit": rate_limit,
            "dedup": dedup,
            "isolation": isolation,
            **unknown,
        }
        try:
            declared = check_job_type(
                name, handler if isinstance(handler, str) else None, options, self.config.retry
            )
        except ValueError as exc:
            raise ValidationError(f"job type {name!r}: {exc}") from None
        job_type = self._job_type(declared, handler)
        self.registry.add(job_type)
        return job_type

    def _job_type(self, declared: JobTypeConfig, handler: Handler | str) -> JobType:
        """A job type from its checked options (a ``[[job_types]]`` table or ``register``)."""
        return JobType(
            name=declared.name,
            handler_ref=handler,
            timeout_s=declared.timeout_s,
            max_retries=declared.max_retries,
            retry=self._retry_policy(declared.base_delay_s, declared.max_delay_s),
            priority=Priority(declared.priority),
            concurrency=declared.concurrency,
            org_concurrency=declared.org_concurrency,
            rate_limit=declared.rate_limit,
            dedup=declared.dedup,
            isolation=declared.isolation,
        )

    def job_type(self, name: str, **policy: Any) -> Callable[[HandlerT], HandlerT]:
        """Decorator form of :meth:`register` (the same options, checked the same way)."""

        def decorate(handler: HandlerT) -> HandlerT:
            self.register(name, handler, **policy)
            return handler

        return decorate

    # -- lifecycle ----------------------------------------------------------------------------

    async def open(self) -> None:
        """Open the database (creating and migrating it) without running any worker.

        An instance works in one event loop at a time. A client (not started) opened in a loop
        that has since ended or stopped moves to the running one, so that a module-level
        instance serves successive ``asyncio.run`` calls; a runner stays in the loop it was
        started in (:class:`~edgejobs.errors.EdgeJobsError` from any other).
        """
        self._refuse_if_closed()
        self._use_running_loop()
        if self._opened and not self._open_lock.locked():
            return
        # Concurrent first calls (e.g. a gather of submits on a fresh client) must open the
        # store once: each open would start another writer thread that close() never stops.
        async with self._open_lock:
            if self._opened:
                return
            try:
                await self.store.open()
            except (sqlite3.Error, OSError) as exc:  # not a database, a folder, unwritable
                raise _cannot_open(Path(self.config.database.path), exc) from None
            self._opened = True
            self.set_stored_types(await self.store.read(job_type_store.load_states))

    def _use_running_loop(self) -> None:
        """Bind this instance to the running event loop, or raise before anything is queued.

        The writer resolves every caller's future on the loop the store was opened in: from
        another loop a submission was committed and its caller then told it failed
        (``RuntimeError: ... attached to a different loop``).
        """
        loop = asyncio.get_running_loop()
        old = self._loop
        if old is loop:
            return
        if old is not None:
            if self.pool is not None:
                raise EdgeJobsError(
                    "this EdgeJobs is the runner in another event loop: use it there (a client,"
                    " an EdgeJobs that is not started, may be used from any one loop at a time)"
                )
            if old.is_running():
                raise EdgeJobsError(
                    "this EdgeJobs is in use in an event loop that still runs (in another"
                    " thread): use one EdgeJobs per event loop"
                )
            if self._commit_listeners or self._foreign_listeners:
                # An event broker, metrics or a progress display of that loop listens: their
                # events and tasks belong to it.
                raise EdgeJobsError(
                    "this EdgeJobs serves listeners of another event loop (an app, a progress"
                    " display): use one EdgeJobs per event loop"
                )
            if old.is_closed():
                # Waiters of a closed loop never wake; setting their events would fail.
                self._waiters.clear()
            self._open_lock = asyncio.Lock()  # the old one may be bound to the old loop
            self.maintenance.loop_changed()
            self._opened = False  # the next open() moves the store's writer to this loop
        self._loop = loop

    def _refuse_if_closed(self) -> None:
        # close() ends the writer and reader threads for good; without this, opening again
        # failed deep inside ("cannot schedule new futures after shutdown").
        if self._closed:
            raise EdgeJobsError(
                "this EdgeJobs is closed: create a new EdgeJobs to use the database again"
            )

    def set_stored_types(self, states: dict[str, job_type_store.JobTypeState]) -> None:
        """Take the job types' stored state (pause flags, overrides) as the one in force."""
        self._stored_types = states
        self._apply_stored_types()

    def _apply_stored_types(self) -> None:
        self.registry.paused = frozenset(
            name for name, state in self._stored_types.items() if state.paused
        )
        self.registry.overrides = {
            name: dict(state.overrides)
            for name, state in self._stored_types.items()
            if state.overrides
        }

    async def start(self, *, run_workers: bool = True) -> None:
        """Become the runner of this database: recover crashed work, then run workers and ticks.

        Raises :class:`~edgejobs.errors.RunnerAlreadyActive` when another process runs it.
        With ``run_workers=False`` nothing is claimed in the background (tests step the pool
        with :meth:`drain` or :class:`edgejobs.testing.Harness`).
        """
        self._refuse_if_closed()
        if self.pool is not None:
            self._use_running_loop()  # not started again from another loop: that is an error
            return
        self._import_handlers()
        path = Path(self.config.database.path)
        lock = RunnerLock(path)
        try:
            await asyncio.get_running_loop().run_in_executor(
                None, partial(lock.acquire, migrations.latest_version())
            )
        except OSError as exc:  # a folder that cannot be made, a read-only disk
            raise _cannot_open(path, exc) from None
        self._lock = lock
        try:
            await self.open()
            faults.install_crash_hook(self.store.writer)  # test-only; inert unless set
            now = self.clock.now_ms()
            policies = {t.name: t.policy() for t in self.registry}
            limited = any(self.registry.get(t.name).has_limits for t in self.registry)

            def declare(conn: sqlite3.Connection, tx: WriteTx) -> None:
                job_type_store.declare(conn, tx, policies=policies, now=now)
                # The limited claims' index costs every submit and claim: kept only while a
                # type has a limit, and built here (a scan of the table, ~1 s for a million
                # rows) rather than inside the first limited claim, which every write waits for.
                if limited:
                    ensure_pair_index(conn)
                else:
                    drop_pair_index(conn)

            await self.store.write(declare)
            # The wall clock, not self.clock: it measures the real time since a backup.
            wall_ms = int(time.time() * 1000)

            def recover(
                conn: sqlite3.Connection, tx: WriteTx
            ) -> tuple[BackupGap | None, list[sqlite3.Row]]:
                # Before anything writes an event: on a restored backup, past the original's ids.
                gap = leave_backup_gap(conn, tx, now_ms=wall_ms)
                # The event log's end before the recovery's own events: the metrics count
                # from here, so the attempts a crash lost show as outcome="lost".
                self.start_event_id = event_store.last_event_id(conn)
                return gap, recover_running(
                    conn,
                    tx,
                    now=now,
                    expired_only=False,
                    policy_for=self.registry.retry_policy,
                    reason="the runner process died while the attempt was running",
                )

            gap, recovered = await self.store.write(recover)
            if gap is not None:
                log.warning(
                    "this database was restored from a backup: new event ids start after %d"
                    " and new job seqs after %d, past what the original may have used since"
                    " the backup (SSE clients resuming across the restore get a reset)",
                    gap.event_id,
                    gap.job_seq,
                )
            # Schedules and audit retention; imported here because edgejobs.control imports
            # this module.
            from edgejobs.control import prepare_runner

            control_tasks = await prepare_runner(self, now)
        except BaseException:
            lock.release()
            self._lock = None
            raise
        log_lost(recovered, "a previous runner left it running")
        cfg = self.config
        self.pool = Pool(
            self.store,
            self.registry,
            self.clock,
            PoolSettings(
                workers=cfg.runner.workers,
                lease_s=cfg.runner.lease_s,
                progress_interval_ms=cfg.progress.min_interval_ms,
                max_result_bytes=cfg.limits.max_result_bytes,
            ),
        )
        self.ticker = Ticker(
            self.store,
            self.registry,
            self.clock,
            self._tick_settings(),
            trim_events=self.maintenance.trim_events,
            make_room=self.maintenance.make_room,
            after_change=self.pool.wake,
            healthy_leases=self.pool.healthy_leases,
            # Quiet sleeps follow the real clock: an injected clock (tests) moves by hand,
            # which a sleep until a due time would not see, so such a runner ticks every
            # interval.
            changes=self._changes if isinstance(self.clock, SystemClock) else None,
            busy=lambda: self.pool is not None and self.pool.running_count > 0,
        )
        self._stopping = False  # a runner stopped before and started again takes work again
        self.ticker.extra_tasks.extend(control_tasks)
        from edgejobs.control import scheduler_of

        scheduler = scheduler_of(self)
        if scheduler is not None:
            self.ticker.wake_by.append(scheduler.next_due_ms)  # cron times are due times too
        self.ticker.extra_tasks.extend(self.maintenance.tick_tasks())
        self.started_monotonic = self.clock.monotonic()
        if run_workers:
            self._start_workers()

    def _start_workers(self) -> None:
        """Begin claiming and ticking in the background: the last step of :meth:`start`, or
        of the command line's ``serve`` and ``worker`` once they know they will run (the port
        is bound, no signal came during the start)."""
        assert self.pool is not None and self.ticker is not None
        if self._tasks or self._stopping:
            return
        self._tasks = [
            asyncio.create_task(self.pool.run(), name="edgejobs-pool"),
            asyncio.create_task(self.pool.renew_leases_forever(), name="edgejobs-leases"),
            asyncio.create_task(self.ticker.run(), name="edgejobs-ticks"),
            asyncio.create_task(self.watchdog.run(), name="edgejobs-watchdog"),
        ]
        self.pool.wake()

    def _tick_settings(self) -> TickSettings:
        cfg = self.config
        return TickSettings(
            interval_s=cfg.runner.tick_interval_s,
            retention_days=cfg.retention.days,
            retention_interval_s=cfg.retention.interval_s,
            retention_batch=cfg.retention.batch_size,
            lease_s=cfg.runner.lease_s,
        )

    async def stop(self, grace_s: float | None = None) -> None:
        """Stop claiming, let running attempts finish for ``grace_s`` (default from config),
        requeue the rest, and stop the ticks. The database stays open.

        One stop runs at a time: a second call waits for the first, shortening its grace to
        its own ``grace_s`` if that ends sooner (``stop(grace_s=0)``: interrupt the running
        attempts now and requeue them, as a second Ctrl-C does), and a caller that is
        cancelled leaves the stop running to its end. Called from
        inside one of this runner's async handlers, it begins the stop and returns at once —
        the stop waits for that handler too, which could not end while it waited for the stop.
        """
        if self.pool is None:
            return
        self._use_running_loop()  # the runner's tasks run in the loop it was started in
        if self._stop_task is None:
            # At once, not when the task first runs: from this call on, submissions are
            # refused and nothing more is claimed.
            self._stopping = True
            if self.ticker is not None:
                self.ticker.stop()
            self.pool.stop_claiming()
            self._stop_task = self._background(self._stop(grace_s), "edgejobs-stop")
        elif grace_s is not None:
            self.pool.shorten_grace(grace_s)
        task = self._stop_task
        if self._inside_attempt():
            return
        await asyncio.shield(task)

    async def _stop(self, grace_s: float | None) -> None:
        try:
            assert self.pool is not None
            grace = self.config.runner.shutdown_grace_s if grace_s is None else grace_s
            await self.pool.stop(grace)
            for task in self._tasks:
                task.cancel()
            for task in self._tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            self._tasks = []
            self.pool = None
            if self._lock is not None:
                self._lock.release()
                self._lock = None
        finally:
            self._stop_task = None

    def _inside_attempt(self) -> bool:
        """Whether the running task is the task of one of this runner's attempts."""
        pool = self.pool
        if pool is None:
            return False
        current = asyncio.current_task()
        return current is not None and pool.is_attempt_task(current)

    def _background(self, work: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        """A task that may end with nobody awaiting it (a stop begun by a handler): its
        failure is logged rather than left to asyncio's "never retrieved" warning."""
        task = asyncio.get_running_loop().create_task(work, name=name)

        def done(task: asyncio.Task[None]) -> None:
            if not task.cancelled() and task.exception() is not None:
                log.error("%s failed", name, exc_info=task.exception())

        task.add_done_callback(done)
        return task

    async def close(self) -> None:
        """Stop the runner (if any) and close the database, for good: this instance cannot
        be opened again (a new :class:`EdgeJobs` on the same file can).

        Called from inside one of this runner's async handlers, it begins and returns at once
        (as :meth:`stop` does); the database closes once that handler's outcome is written.
        """
        if self._inside_attempt():
            if self._close_task is None:
                self._close_task = self._background(self._close(), "edgejobs-close")
            return
        await self._close()

    async def _close(self) -> None:
        await self.stop()
        self._closed = True
        self._opened = False
        refresh = self._type_refresh
        if refresh is not None and refresh.get_loop() is asyncio.get_running_loop():
            refresh.cancel()  # its read would go to a closed store
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await refresh
        await self.store.close()  # (also a store left open by a move to another loop)

    async def __aenter__(self) -> EdgeJobs:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def is_runner(self) -> bool:
        """Whether this instance runs workers (holds the runner lock)."""
        return self.pool is not None

    @property
    def stopping(self) -> bool:
        """Whether :meth:`stop` has begun."""
        return self._stopping

    def add_commit_listener(self, listener: Callable[[WriteTx], None]) -> None:
        """Call ``listener(tx)`` after each commit of this process (used by the event broker)."""
        self._commit_listeners.append(listener)

    def add_foreign_listener(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` when another process has committed to the database."""
        self._foreign_listeners.append(listener)

    async def _attempt_running(self) -> None:
        """Return once an attempt runs in this process (the watchdog waits for one)."""
        assert self.pool is not None  # the watchdog runs only beside the pool (see start)
        await self.pool.wait_busy()

    def _changes(self) -> int:
        """A count that moves with every row this process writes and every commit of
        another process (the tick loop sleeps while it stands still)."""
        return self.store.writer.rows_changed + self._foreign_commits

    def _on_commit(self, tx: WriteTx) -> None:
        if self.ticker is not None:
            self.ticker.poke()
        if self.pool is not None:
            self.pool.on_commit(tx)
        for job_id, status in tx.jobs_changed.items():
            if status in TERMINAL:
                for event in self._waiters.get(job_id, ()):
                    event.set()
            if status == Status.QUEUED and self.pool is not None:
                self.pool.wake()
        for listener in self._commit_listeners:
            listener(tx)

    def _on_foreign_change(self) -> None:
        self._foreign_commits += 1
        if self.ticker is not None:
            self.ticker.poke()
        for events in self._waiters.values():
            for event in events:
                event.set()
        if self.pool is not None:
            asyncio.ensure_future(self.pool.on_foreign_change())
        # Runner or client: a pause or an override from another process is in force here too
        # (a client that kept the state it read at open went on submitting with the old
        # priority, retries and rate limit).
        self._queue_type_refresh()
        for listener in self._foreign_listeners:
            listener()

    def _queue_type_refresh(self) -> None:
        """Read the job types' stored state again; one read at a time, and one more after it
        when other commits came while it was on its way (a busy runner's commits come in
        bursts: a client reads once per burst, not once per commit)."""
        if self._type_refresh is not None:
            self._type_refresh_again = True
            return
        self._type_refresh = asyncio.ensure_future(self._refresh_job_types())

    async def _refresh_job_types(self) -> None:
        try:
            self._type_refresh_again = True
            while self._type_refresh_again and not self._closed:
                self._type_refresh_again = False
                await self._refresh_job_types_once()
        finally:
            self._type_refresh = None

    async def _refresh_job_types_once(self) -> None:
        with contextlib.suppress(EdgeJobsError):
            states = await self.store.read(job_type_store.load_states)
            changed = states != self._stored_types
            self.set_stored_types(states)
            if changed and self.pool is not None:
                # The claim the same foreign commit woke may have run on the state read before
                # it (a resume, a raised limit seen too late) and found nothing; with jobs
                # ready and nothing else to wake it, the pool would sleep until some
                # unrelated commit.
                self.pool.wake()

    def _import_handlers(self) -> None:
        """Import every registered handler now: a typo in a ``module:function`` path is a
        configuration error at start (exit 2 from the CLI), not a failure of every job."""
        for job_type in self.registry:
            try:
                job_type.handler()
            except ConfigError as exc:
                raise ConfigError(f"job type {job_type.name!r}: {exc.message}") from exc
            except (Exception, SystemExit) as exc:
                # SystemExit too: a module with a script's top-level code (argparse, sys.exit)
                # ended the runner with that script's usage message, naming no handler.
                raise ConfigError(
                    f"job type {job_type.name!r}: importing handler {job_type.handler_path!r}"
                    f" raised {type(exc).__name__}: {exc}"
                    + (
                        " (the module exits when imported: keep a script's top-level code under"
                        ' `if __name__ == "__main__":`)'
                        if isinstance(exc, SystemExit)
                        else ""
                    )
                ) from exc

    # -- submitting ---------------------------------------------------------------------------

    def _job_type_for_submit(self, name: object) -> JobType:
        if not isinstance(name, str) or not name:
            raise ValidationError("job_type must be a non-empty string")
        if name in self.registry:
            return self.registry.get(name)
        stored = self._stored_types.get(name)
        if stored is not None and stored.policy:
            policy = stored.effective_policy
            return JobType(
                name=name,
                handler_ref="unknown:unknown",
                timeout_s=float(policy.get("timeout_s", 300)),
                max_retries=int(policy.get("max_retries", 3)),
                priority=Priority(policy.get("priority", "normal")),
                rate_limit=policy.get("rate_limit"),
                dedup=bool(policy.get("dedup", True)),
            )
        raise UnknownJobType(f"unknown job type {name!r}")

    def _new_job(
        self,
        spec: JobSpec,
        refs: Mapping[int, int],
        now: int,
        checked: _CheckedNames | None = None,
    ) -> NewJob:
        if checked is None:
            checked = _CheckedNames()
        name, org = spec.job_type, spec.org
        # (Only exact strs are looked up: anything else, unhashable included, is checked.)
        job_type = checked.job_types.get(name) if type(name) is str else None
        if job_type is None:
            job_type = self._job_type_for_submit(name)
            checked.job_types[job_type.name] = job_type
        if type(org) is not str or org not in checked.orgs:
            checked.orgs.add(check_org(org))
        params = {} if spec.params is None else spec.params
        # A plain dict (the common case) is encoded as it is; any other Mapping is copied into
        # one first (the encoder takes dicts only). The ABC check is the slow path only.
        if type(params) is not dict:
            if not isinstance(params, Mapping):
                raise ValidationError("params must be a JSON object")
            params = dict(params)
        try:
            params_json = strict_dumps(params)
            size = len(params_json.encode())
        except RecursionError:
            raise ValidationError(
                f"params are nested deeper than {MAX_JSON_DEPTH} levels (or contain themselves)"
            ) from None
        except UnicodeEncodeError:
            raise ValidationError(
                "params hold text that is not valid Unicode (a lone surrogate)"
            ) from None
        except (TypeError, ValueError) as exc:
            raise ValidationError(f"params are not JSON-serializable: {exc}") from None
        if nested_too_deep(params, params_json):
            raise ValidationError(f"params are nested deeper than {MAX_JSON_DEPTH} levels")
        limit = self.config.limits.max_params_bytes
        if size > limit:
            raise PayloadTooLarge(f"params are {size} bytes of JSON; the limit is {limit}")
        try:
            priority = Priority(spec.priority) if spec.priority is not None else job_type.priority
        except ValueError:
            raise ValidationError(
                f"priority must be one of critical, high, normal, low; got {spec.priority!r}"
            ) from None
        if spec.run_at is not None and spec.delay_s is not None:
            raise ValidationError("give run_at or delay_s, not both")
        run_at: int | None = None
        if spec.run_at is not None:
            run_at = parse_time_ms(spec.run_at)
        elif spec.delay_s is not None:
            if (
                isinstance(spec.delay_s, bool)
                or not isinstance(spec.delay_s, int | float)
                or not 0 <= spec.delay_s <= MAX_DELAY_S  # (also refuses NaN)
            ):
                raise ValidationError(f"delay_s must be a number from 0 to {MAX_DELAY_S:.0f}")
            run_at = now + round(spec.delay_s * 1000)
        deps = spec.depends_on
        parents = deps if type(deps) is tuple else _parent_list(deps)
        if len(parents) > MAX_DEPENDS_ON:
            raise ValidationError(f"depends_on holds at most {MAX_DEPENDS_ON} parents")
        depends_on: list[str | int] = []
        for ref in parents:
            if isinstance(ref, JobSpec):
                if id(ref) not in refs:
                    raise ValidationError(
                        "depends_on names a JobSpec that is not earlier in this batch"
                    )
                depends_on.append(refs[id(ref)])
            elif isinstance(ref, bool) or not isinstance(ref, str | int):
                raise ValidationError("depends_on must list job ids")
            else:
                depends_on.append(ref)
        use_dedup = job_type.dedup if spec.dedup is None else bool(spec.dedup)
        key = spec.dedup_key if spec.dedup_key is not None else params_json
        if spec.dedup_key is not None:
            if not isinstance(spec.dedup_key, str):
                raise ValidationError("dedup_key must be a string")
            _check_unicode("dedup_key", spec.dedup_key)
        return NewJob(
            org=org,
            job_type=job_type.name,
            params_json=params_json,
            priority_rank=priority.rank,
            run_at=run_at,
            max_retries=job_type.max_retries,
            dedup_hash=dedup_hash(org, job_type.name, key) if use_dedup else None,
            depends_on=tuple(depends_on),
        )

    def _rate_takes(self, specs: Sequence[NewJob]) -> list[RateTake]:
        """The batch's share of every rate limit it falls under, counted in the database by
        the insert's own transaction: across processes and restarts, and only if written."""
        counts: dict[tuple[str, str], int] = {}
        seen: set[str] = set()
        for job in specs:
            if job.dedup_hash is not None:
                if job.dedup_hash in seen:
                    continue  # equal to one earlier in the batch: written once at most
                seen.add(job.dedup_hash)
            counts[(job.org, job.job_type)] = counts.get((job.org, job.job_type), 0) + 1
        takes: list[RateTake] = []
        for (org, name), count in counts.items():
            limit = self._job_type_for_submit(name).rate_limit
            if not limit:
                continue
            allowed, window_s = parse_rate_limit(limit)
            if count > allowed:
                # No window would ever take it: a Retry-After would send the client round
                # forever.
                raise ValidationError(
                    f"a batch of {count} {name} jobs exceeds the type's rate limit of {allowed}"
                    f" per {window_s:g} s for one org; submit it in smaller batches"
                )
            takes.append(RateTake(org, name, allowed, int(window_s * 1000), count))
        return takes

    async def submit(
        self,
        job_type: str,
        *,
        org: str,
        params: Mapping[str, Any] | None = None,
        priority: Priority | str | None = None,
        depends_on: Sequence[str] = (),
        run_at: datetime | str | int | float | None = None,
        delay_s: float | None = None,
        dedup: bool | None = None,
        dedup_key: str | None = None,
    ) -> Job:
        """Submit one job; returns it as stored (``deduplicated`` when an equal one was pending)."""
        spec = JobSpec(
            job_type,
            org,
            params,
            priority,
            _parent_list(depends_on),
            run_at,
            delay_s,
            dedup,
            dedup_key,
        )
        return (await self.submit_many([spec]))[0]

    async def submit_many(self, specs: Iterable[JobSpec]) -> list[Job]:
        """Submit a batch in one transaction: all jobs are created, or none.

        A spec may depend on earlier specs of the batch, so a whole workflow graph is
        submitted atomically and cannot contain a cycle.
        """
        self._refuse_if_closed()
        if self._stopping:
            if self.pool is None:  # stop() has returned
                raise ShuttingDown(
                    "this runner was stopped: start() it again, or submit through a client"
                    " (an EdgeJobs that is not started)"
                )
            raise ShuttingDown("the runner is shutting down")
        await self.open()
        specs = list(specs)
        if len(specs) > self.config.limits.max_batch:
            raise ValidationError(f"a batch holds at most {self.config.limits.max_batch} jobs")
        now = self.clock.now_ms()
        refs: dict[int, int] = {}
        new_jobs: list[NewJob] = []
        checked = _CheckedNames()
        for index, spec in enumerate(specs):
            try:
                new_jobs.append(self._new_job(spec, refs, now, checked))
            except EdgeJobsError as exc:
                if len(specs) > 1:
                    exc.message = f"jobs[{index}]: {exc.message}"
                    exc.args = (exc.message,)
                raise
            refs[id(spec)] = index
        rates = self._rate_takes(new_jobs)
        written = self.store.writer.submit_nowait(SubmitOp(new_jobs, now, rates))
        if self.pool is not None and not self.pool.claim_behind():
            # The pool's claim is queued right behind this insert when no cycle is in
            # flight (then they share a transaction, which saves a whole commit of latency;
            # behind it, the claim sees the new rows only if they were written); otherwise
            # the pool claims once its cycle in flight is over.
            self.pool.wake()
        return await written

    # -- reading and acting -------------------------------------------------------------------

    async def get(self, job_id: str, *, org: str | None = None) -> Job:
        """One job (of ``org`` when given: another org's job is :class:`NotFound`)."""
        await self.open()
        now = self.clock.now_ms()
        return await self.store.read_point(lambda conn: get_job(conn, job_id, org, now))

    async def attempts(self, job_id: str, *, org: str | None = None) -> list[Attempt]:
        """The execution log of a job."""
        await self.open()
        return await self.store.read(lambda conn: get_attempts(conn, job_id, org))

    async def list_jobs(
        self,
        *,
        org: str | None = None,
        statuses: Sequence[Status | str] = (),
        job_type: str | None = None,
        priority: Priority | str | None = None,
        created_after: datetime | int | None = None,
        created_before: datetime | int | None = None,
        text: str | None = None,
        before_seq: int | None = None,
        limit: int = 50,
    ) -> tuple[list[Job], int | None]:
        """A page of jobs, newest first, and the cursor (a seq) of the next page (at most
        :data:`~edgejobs.models.MAX_PAGE` jobs a page; bad filters are a ValidationError).
        ``created_after``/``created_before``: an aware datetime or unix milliseconds."""
        after_ms = _filter_time_ms("created_after", created_after)
        before_ms = _filter_time_ms("created_before", created_before)
        if isinstance(statuses, str | bytes) or not isinstance(statuses, Iterable):
            # A str is a sequence too: "failed" was read as the statuses "f", "a", ...
            raise ValidationError(
                f"statuses must be a list of statuses, got {type(statuses).__name__}"
            )
        wanted: list[str] = []
        for status in statuses:
            try:
                wanted.append(Status(status).value)
            except ValueError:
                known = ", ".join(s.value for s in Status)
                raise ValidationError(f"statuses must be among {known}; got {status!r}") from None
        try:
            rank = Priority(priority).rank if priority is not None else None
        except ValueError:
            raise ValidationError(
                f"priority must be one of critical, high, normal, low; got {priority!r}"
            ) from None
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE:
            # As over HTTP: 0 or less returned nothing without a word, and a huge limit
            # read a whole org's history in one go.
            raise ValidationError(f"limit must be an integer from 1 to {MAX_PAGE}")
        await self.open()
        flt = JobFilter(
            org=org,
            statuses=tuple(wanted),
            job_type=job_type,
            priority_rank=rank,
            created_after=after_ms,
            created_before=before_ms,
            text=text,
            before_seq=before_seq,
            limit=limit,
        )
        now = self.clock.now_ms()
        return await self.store.read(lambda conn: list_jobs(conn, flt, now))

    async def cancel(
        self,
        job_id: str,
        *,
        org: str | None = None,
        reason: str | None = None,
        actor: Actor | None = None,
    ) -> Job:
        """Cancel a job that has not ended; a running handler is stopped (SPEC §2 rule 5).

        With an ``actor`` (an operator's token, or the CLI), the audit entry is written in the
        same transaction as the cancel.
        """
        if reason is not None:
            if not isinstance(reason, str) or len(reason) > MAX_CANCEL_REASON:
                raise ValidationError(
                    f"reason must be a string of at most {MAX_CANCEL_REASON} characters"
                )
            _check_unicode("reason", reason)
        await self.open()
        now = self.clock.now_ms()
        text = reason or "canceled by a user"

        def op(conn: sqlite3.Connection, tx: WriteTx) -> Job:
            row = cancel_job(conn, tx, job_id=job_id, org=org, now=now, reason=text)
            if actor is not None:
                record_job_action(conn, tx, actor, "cancel", row, now, {"reason": text})
            return load_job(conn, row, now)

        return await self.store.write(op)

    async def retry(
        self, job_id: str, *, org: str | None = None, actor: Actor | None = None
    ) -> Job:
        """Manually retry a failed, timed-out, dead-lettered or canceled job (audited like
        :meth:`cancel` when an ``actor`` is given)."""
        await self.open()
        now = self.clock.now_ms()

        def op(conn: sqlite3.Connection, tx: WriteTx) -> Job:
            row = retry_job(conn, tx, job_id=job_id, org=org, now=now)
            if actor is not None:
                record_job_action(conn, tx, actor, "retry", row, now)
            return load_job(conn, row, now)

        job = await self.store.write(op)
        if self.pool is not None:
            self.pool.wake()
        return job

    async def wait(
        self, job_id: str, *, timeout: float | None = None, org: str | None = None
    ) -> Job:
        """Wait until the job is terminal and return it (``TimeoutError`` after ``timeout``).

        Something must run the job meanwhile: workers of this instance or of another process.
        A runner started with ``start(run_workers=False)`` (as :class:`edgejobs.testing.Harness`
        starts it) runs nothing in the background, so waiting on it blocks forever (or until
        ``timeout``) unless the caller steps it concurrently: there, :meth:`drain`, then
        :meth:`get`.
        """
        await self.open()
        event = asyncio.Event()
        self._waiters.setdefault(job_id, set()).add(event)
        try:
            async with asyncio.timeout(timeout):
                while True:
                    event.clear()
                    job = await self.get(job_id, org=org)
                    if job.is_terminal:
                        return job
                    await event.wait()
        finally:
            waiters = self._waiters.get(job_id)
            if waiters is not None:
                waiters.discard(event)
                if not waiters:
                    del self._waiters[job_id]

    async def drain(self, *, timeout: float | None = None) -> None:
        """Run jobs until none is ready or running (retries and schedules not yet due wait).

        Raises :class:`~edgejobs.errors.ShuttingDown` when the runner stops meanwhile with
        jobs still ready: a stopping runner claims nothing, and returning would say "drained".
        """
        if self.pool is None:
            raise EdgeJobsError("drain() needs a running runner: use `async with ej:` or start()")
        self._use_running_loop()
        pool = self.pool
        async with asyncio.timeout(timeout):
            while True:
                started = await pool.claim_once()
                if pool.running_count or pool.running_ids:
                    await pool.wait_idle()
                    continue
                if started == 0:
                    break
        if self._stopping:
            left = await self.store.read(partial(count_queued, types=self._claimable_types()))
            if left:
                raise ShuttingDown(
                    f"the runner stopped before drain() was done: {left} job(s) still queued"
                )

    def _claimable_types(self) -> list[str]:
        return [t.name for t in self.registry if t.name not in self.registry.paused]

    async def stats(self, *, org: str | None = None) -> dict[str, Any]:
        """Counts by status and by job type (and by org for ``org=None``)."""
        await self.open()

        def read(conn: sqlite3.Connection) -> dict[str, Any]:
            by_type = count_by_status(conn, org)
            by_status: dict[str, int] = {status.value: 0 for status in Status}
            for counts in by_type.values():
                for status, count in counts.items():
                    by_status[status] = by_status.get(status, 0) + count
            result: dict[str, Any] = {"by_status": by_status, "by_type": by_type}
            if org is None:
                result["by_org"] = count_by_org(conn)
            return result

        return await self.store.read(read)

    async def recount(self) -> int:
        """Rebuild the kept job counts (what ``stats`` reads) from the jobs table; return how
        many were wrong. Every edgejobs write keeps them exact; this repairs a file changed by
        other means (see :func:`edgejobs.store.jobs.recount_jobs`). It counts every job in one
        write transaction: about 2 s of holding the write lock per million jobs."""
        await self.open()
        return await self.store.write(recount_jobs)

    async def prune(self, *, older_than_days: float | None = None) -> PruneReport:
        """Run retention now (``older_than_days=0``: every terminal job)."""
        await self.open()
        ticker = self.ticker or Ticker(
            self.store,
            self.registry,
            self.clock,
            self._tick_settings(),
            trim_events=self.maintenance.trim_events,
            make_room=self.maintenance.make_room,
        )
        report = await ticker.prune(older_than_days=older_than_days)
        # Give the freed pages back (the file shrinks) — also those an earlier prune could not
        # give back on a full disk, though this one deleted nothing.
        if report.jobs or report.events or (await self.maintenance.page_stats()).freelist_count:
            await self.maintenance.shrink()
        return report

    def asgi_app(self) -> Starlette:
        """The Starlette app (API, SSE, dashboard) bound to this instance."""
        from edgejobs.api.app import create_app

        app: Starlette = create_app(self)
        return app
