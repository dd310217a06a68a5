"""The worker pool: claims ready jobs for free slots and runs each attempt to its final write.

Slots: ``workers`` attempts at once. A slot is held from the claim until the attempt's final
write is *queued* to the writer; the next claim is queued after it, so it runs after that write
in the same transaction or a later one, and the database never shows more than ``workers``
jobs running. Wake-ups are events, not polling: an in-process submit, a commit that freed a
slot, another process's commit (``PRAGMA data_version``), or the next due time.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import sqlite3
from collections import Counter
from collections.abc import Callable
from functools import partial
from typing import Any

from edgejobs.clock import Clock
from edgejobs.errors import DatabaseBusy, EdgeJobsError, StorageFull
from edgejobs.logs import RepeatLimiter, job_fields
from edgejobs.models import JobError, Outcome, Status, storable_text
from edgejobs.retry import RetryPolicy
from edgejobs.runner.context import BaseContext, JobContext, SyncJobContext
from edgejobs.runner.executor import AsyncRun, Deadlines, Execution, execute, failure
from edgejobs.runner.progress import ProgressCoalescer
from edgejobs.runner.registry import JobType, Registry, is_async_handler
from edgejobs.store import Store
from edgejobs.store.claim import ClaimLimits, claim_ready, parent_results, renew_leases
from edgejobs.store.db import WriteTx, run_in_savepoint
from edgejobs.store.jobs import eta_for_row, running_attempts
from edgejobs.store.rows import load_stored
from edgejobs.store.transitions import (
    complete_attempt,
    complete_attempts,
    fail_attempt,
    next_due_ms,
    requeue_interrupted,
    set_progress,
)

log = logging.getLogger("edgejobs.runner")

IN_FLIGHT_CYCLE_WAIT_S = 10.0
"""On stop, how long to wait for a claim cycle already queued to commit (it normally takes
milliseconds; the bound only keeps a stuck database from holding the shutdown)."""
OUTCOME_WRITE_WAIT_S = 10.0
"""How long a stop waits for the outcomes of its last attempts to be written (the database
may be locked by another process meanwhile); what is still unwritten then is said, by job."""


@dataclasses.dataclass(slots=True)
class PoolSettings:
    """The pool's knobs (from ``[runner]``, ``[progress]`` and ``[limits]``)."""

    workers: int = 8
    lease_s: float = 30.0
    progress_interval_ms: int = 250
    max_result_bytes: int = 1_048_576


@dataclasses.dataclass(slots=True)
class _Attempt:
    job_id: str
    seq: int
    number: int
    job_type: str
    org: str
    run: AsyncRun | None = None  # an async handler's run (the common case)
    abort: asyncio.Future[str] | None = None  # the other handlers' abort signal
    task: asyncio.Task[None] | None = None
    aborted_by: str | None = None  # "cancel" | "lost" | "shutdown"
    ended: bool = False  # the handler's part is over; its outcome may still await its write
    holds_slot: bool = True
    leased_at: float = 0.0  # monotonic time of the claim or the last lease renewal
    progress: ProgressCoalescer | None = None  # made at the first report (most jobs make none)


def _log_fields(attempt: _Attempt) -> dict[str, Any]:
    """``extra=`` of a log line about one attempt: job id, org, job type, attempt number."""
    return job_fields(attempt.job_id, attempt.org, attempt.job_type, attempt.number)


@dataclasses.dataclass(slots=True)
class _Finish:
    attempt: _Attempt
    execution: Execution
    policy: RetryPolicy


def _outcome_row(conn: sqlite3.Connection, tx: WriteTx, item: _Finish, now: int) -> Any:
    """Write one attempt's outcome (fenced); its row, or None when the attempt was abandoned."""
    attempt, execution = item.attempt, item.execution
    # Interrupted (by a shutdown, a cancel, a lost lease): requeued, fenced. A handler that ended
    # on its own before the interruption took hold is written as it ended, even if a shutdown
    # marked the attempt meanwhile (its result was on its way to the loop): not run again.
    if execution.outcome is Outcome.CANCELED:
        return requeue_interrupted(conn, tx, seq=attempt.seq, attempt=attempt.number, now=now)
    if execution.outcome is Outcome.COMPLETED:
        assert execution.result_json is not None
        return complete_attempt(
            conn,
            tx,
            seq=attempt.seq,
            attempt=attempt.number,
            result_json=execution.result_json,
            now=now,
        )
    assert execution.error is not None
    return fail_attempt(
        conn,
        tx,
        seq=attempt.seq,
        attempt=attempt.number,
        outcome=execution.outcome,
        error=execution.error,
        permanent=execution.permanent,
        now=now,
        policy=item.policy,
    )


def _log_outcome(item: _Finish, result: Any) -> None:
    """One line per attempt once its outcome is written: failures at INFO (operators look for
    them), the rest DEBUG; an outcome that could not be written at ERROR."""
    attempt, execution = item.attempt, item.execution
    if isinstance(result, BaseException):
        log.error(
            "could not record the outcome of job %s: %s",
            attempt.job_id,
            result,
            extra=_log_fields(attempt),
        )
    elif result is None:
        log.info(
            "late result of job %s attempt %d ignored",
            attempt.job_id,
            attempt.number,
            extra=_log_fields(attempt),
        )
    elif execution.outcome is Outcome.COMPLETED:
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "job %s attempt %d ended: completed",
                attempt.job_id,
                attempt.number,
                extra=_log_fields(attempt),
            )
    else:
        _log_unsuccessful(attempt, execution, result)


_GAVE_UP = frozenset({Status.FAILED.value, Status.TIMED_OUT.value, Status.DEAD_LETTER.value})


def _log_unsuccessful(attempt: _Attempt, execution: Execution, row: Any) -> None:
    """An attempt that did not complete, with what became of its job: at INFO while the job
    goes on (a retry), at WARNING with the handler's traceback when it has given up (so dead
    letters can be found in the log, each with its traceback once, not once per retry)."""
    status = row["status"] if isinstance(row, sqlite3.Row) and "status" in row.keys() else None
    gave_up = status in _GAVE_UP
    level = logging.WARNING if gave_up else logging.INFO
    if not log.isEnabledFor(level):
        return
    error = execution.error
    args = (
        attempt.job_id,
        attempt.number,
        execution.outcome.value,
        f" ({error.type}: {error.message})" if error else "",
        f"; the job is now {status}" if status else "",
    )
    # A record made here rather than by log.log(), to carry the stored traceback text.
    path, line, function, _ = log.findCaller()
    record = log.makeRecord(
        log.name,
        level,
        path,
        line,
        "job %s attempt %d ended: %s%s%s",
        args,
        None,
        function,
        extra=_log_fields(attempt),
    )
    if gave_up and error is not None and error.traceback:
        record.exc_text = error.traceback.rstrip("\n")  # shown under the line, like exc_info
    log.handle(record)


def _write_outcomes(
    conn: sqlite3.Connection, tx: WriteTx, finishes: list[_Finish], now: int
) -> list[Any]:
    """Write the outcomes of a cycle; per item, its row (None: abandoned) or its error.

    Completions, the common case, are written together by one UPDATE (in one savepoint);
    should that fail, each is written alone like every other outcome, each in its own
    savepoint, so one bad outcome still cannot undo the others.
    """
    written: dict[int, Any] = {}
    completions = [item for item in finishes if item.execution.outcome is Outcome.COMPLETED]
    if len(completions) > 1:
        items = [
            (item.attempt.seq, item.attempt.number, item.execution.result_json or "null")
            for item in completions
        ]
        ok, rows = run_in_savepoint(
            conn, tx, "outcome", lambda: complete_attempts(conn, tx, items=items, now=now)
        )
        if ok:
            written = {id(item): rows.get(item.attempt.seq) for item in completions}
        else:
            log.warning("writing completions together failed (%s); writing them one by one", rows)
    return [
        written[id(item)] if id(item) in written else _write_one_outcome(conn, tx, item, now)
        for item in finishes
    ]


def _write_one_outcome(conn: sqlite3.Connection, tx: WriteTx, item: _Finish, now: int) -> Any:
    """One outcome in its own savepoint; its row (None: abandoned) or its error.

    An outcome refused for what it holds (text SQLite cannot take, say), not for the state of
    the database, is written as a failure that says so: forgotten unwritten, its job stayed
    ``running`` with nothing running it until its lease expired, recorded ``lost`` on every
    attempt, and the real cause was never stored."""
    ok, result = run_in_savepoint(conn, tx, "outcome", partial(_outcome_row, conn, tx, item, now))
    if ok or isinstance(result, DatabaseBusy | sqlite3.OperationalError):
        return result
    if item.execution.outcome is Outcome.CANCELED:
        return result  # a requeue writes nothing of the handler's
    message = f"the attempt's outcome could not be stored ({type(result).__name__}: {result})"
    fallback = _Finish(
        item.attempt,
        Execution(Outcome.FAILED, error=JobError("OutcomeNotStorable", storable_text(message))),
        item.policy,
    )
    ok, row = run_in_savepoint(conn, tx, "outcome", partial(_outcome_row, conn, tx, fallback, now))
    return row if ok else result


@dataclasses.dataclass(frozen=True, slots=True)
class _Claimed:
    rows: list[sqlite3.Row]
    parents: dict[int, dict[str, Any]]
    next_due: int | None


@dataclasses.dataclass(frozen=True, slots=True)
class _CycleWrite:
    """A cycle's write, queued: the outcomes it writes, the slots it claims, and ``ended``:
    how many jobs it started once it committed (or why it failed)."""

    finishes: list[_Finish]
    free: int
    claim: bool
    ended: asyncio.Future[int]


def _cycle_failed(exc: Exception, repeats: RepeatLimiter) -> float:
    """Log a cycle that failed; the pause before the next try (s). A locked or full database
    is expected and said briefly (once a minute while it lasts: the cycle retries every half
    second); anything else is a bug and logged with its traceback."""
    if isinstance(exc, DatabaseBusy | StorageFull):
        repeats.warning(log, "database write failed, retrying shortly: %s", exc)
        return 0.5
    log.error("claim cycle failed", exc_info=exc)
    return 1.0


class Pool:
    """Bounded pool of attempts fed by claims from the store."""

    def __init__(
        self,
        store: Store,
        registry: Registry,
        clock: Clock,
        settings: PoolSettings,
        *,
        on_attempt_done: Callable[[str, Execution], None] | None = None,
    ) -> None:
        self._store = store
        self._registry = registry
        self._clock = clock
        self.settings = settings
        self._deadlines = Deadlines()  # the async runs' timeouts, on one timer
        self._repeats = RepeatLimiter()  # write failures that recur while the cause lasts
        self._attempts: dict[str, _Attempt] = {}
        self._occupied = 0
        self._per_type: Counter[str] = Counter()
        self._per_type_org: Counter[tuple[str, str]] = Counter()
        self._wake = asyncio.Event()
        # One cycle at a time: its write must be committed and its claims started before the
        # next cycle counts free slots. An event (cleared while a cycle is in flight) rather
        # than an asyncio.Lock, so that :meth:`claim_behind` can take it without awaiting.
        self._cycle_free = asyncio.Event()
        self._cycle_free.set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._busy = asyncio.Event()  # the inverse of _idle: periodic tasks wait for it
        self._stopping = False
        # When a stop's grace ends (loop time; +inf until a stop begins), and an event set
        # whenever shorten_grace moves it.
        self._grace_deadline = float("inf")
        self._grace_moved = asyncio.Event()
        self._next_due: int | None = None
        self._pending_writes: set[asyncio.Future[Any]] = set()
        self._finishes: list[_Finish] = []
        self._renew_pass_at = float("-inf")  # monotonic time of the last lease-renewal pass
        self._loop_running = False
        self._flush_task: asyncio.Task[None] | None = None
        # Aborts that arrived while a claim was in flight, for attempts not started yet.
        self._early_aborts: dict[tuple[str, int], str] = {}
        self._on_attempt_done = on_attempt_done

    # -- wake-ups -------------------------------------------------------------------------

    def wake(self) -> None:
        """Ask for a claim as soon as possible (a submit or a freed slot)."""
        self._wake.set()

    @property
    def running_count(self) -> int:
        """Attempts holding a slot now."""
        return self._occupied

    @property
    def cycle_in_flight(self) -> bool:
        """Whether a cycle's write is queued or its claims are being started now."""
        return not self._cycle_free.is_set()

    @property
    def running_ids(self) -> list[str]:
        """Ids of the jobs with an attempt in this process."""
        return list(self._attempts)

    def on_commit(self, tx: WriteTx) -> None:
        """After every commit: abort local attempts whose job another write ended."""
        if tx.canceled_running:
            for job_id, number in tx.canceled_running:
                self.abort(job_id, number, "cancel")
        for job_id, status in tx.jobs_changed.items():
            attempt = self._attempts.get(job_id)
            if (
                attempt is not None
                and attempt.holds_slot  # not our own final write
                and attempt.aborted_by is None
                and status in ("retrying", "dead_letter")
            ):
                if attempt.task is not None and not attempt.task.done():
                    # The lease expired and the tick loop recovered it: stop the stale attempt.
                    self.abort(job_id, attempt.number, "lost")

    async def on_foreign_change(self) -> None:
        """Another process committed: maybe a submit (claim) or a cancel of our job (abort)."""
        self.wake()
        ids = list(self._attempts)
        if not ids:
            return
        try:
            states = await self._store.read(lambda conn: running_attempts(conn, ids))
        except EdgeJobsError:
            return
        for job_id, (status, number) in states.items():
            attempt = self._attempts.get(job_id)
            if attempt is None or attempt.number > number:
                continue  # (our claim of a newer attempt is not in that read yet)
            if attempt.number < number:
                # Ended and the job claimed again since (a cancel then a retry from another
                # process): this attempt is no longer the job's, whatever the status says.
                self.abort(job_id, attempt.number, "lost")
            elif status == Status.CANCELED.value:
                self.abort(job_id, number, "cancel")
            elif status != Status.RUNNING.value:
                self.abort(job_id, number, "lost")

    def abort(self, job_id: str, number: int, reason: str) -> None:
        """Stop a local attempt (the database already says how it ended)."""
        attempt = self._attempts.get(job_id)
        if self.cycle_in_flight and (attempt is None or attempt.number < number):
            # The claim of this attempt may be committed but not started yet: its result comes
            # back after the listeners of a later commit (a cancel) ran. Stop it at its start.
            # (The job may still hold its previous attempt here: with no retry delay, one cycle
            # can write that attempt's failure and claim the job again.)
            self._early_aborts[(job_id, number)] = reason
            return
        if (
            attempt is None
            or attempt.number != number
            or attempt.aborted_by is not None
            or attempt.ended  # its outcome is written as it is (fenced if the job moved on)
        ):
            return
        attempt.aborted_by = reason
        if attempt.run is not None:
            attempt.run.abort()
        elif attempt.abort is not None and not attempt.abort.done():
            attempt.abort.set_result(reason)

    # -- claiming -------------------------------------------------------------------------

    def _limits(self) -> ClaimLimits:
        types: set[str] = set()
        type_free: dict[str, int] = {}
        org_limit: dict[str, int] = {}
        for declared in self._registry:
            if declared.name in self._registry.paused:
                continue
            job_type = self._registry.get(declared.name)
            types.add(job_type.name)
            if job_type.concurrency is not None:
                type_free[job_type.name] = job_type.concurrency - self._per_type[job_type.name]
            if job_type.org_concurrency is not None:
                org_limit[job_type.name] = job_type.org_concurrency
        return ClaimLimits(
            types=frozenset(types),
            type_free=type_free,
            org_limit=org_limit,
            running_per_org=dict(self._per_type_org) if org_limit else {},
        )

    async def claim_once(self) -> int:
        """Record buffered outcomes and claim for every free slot now; return how many started."""
        return await self.cycle(claim=True)

    async def cycle(self, *, claim: bool = True) -> int:
        """One write: the outcomes finished attempts left in the buffer, then a claim.

        Outcomes go first in the same operation, so the slots they free are claimed again in
        the very same transaction; the database never shows more than ``workers`` running.
        """
        while self.cycle_in_flight:
            await self._cycle_free.wait()
        self._cycle_free.clear()
        try:
            write = self._queue_cycle(claim)
        except BaseException:
            self._cycle_free.set()
            raise
        if write is None:
            self._cycle_free.set()
            return 0
        return await self._finish_cycle(write)  # the write's end ends the cycle

    def claim_behind(self) -> bool:
        """Queue a claim cycle now, right behind the write just queued (a local submit), so
        that both share one transaction: the handler of a job submitted to an idle runner
        starts one commit after the submit, not two. Returns False, having done nothing, when
        a cycle is in flight or the pool is stepped by hand (then :meth:`wake` it), or when
        the cycle could not be queued: that is logged, and never fails the caller's submit."""
        if self.cycle_in_flight or self._stopping or not self._loop_running:
            return False
        self._cycle_free.clear()
        try:
            write = self._queue_cycle(claim=True)
        except Exception:
            self._cycle_free.set()
            log.exception("could not queue a claim behind a submit; the pool claims later")
            return False
        if write is None:  # no free slot: a slot that frees wakes the pool anyway
            self._cycle_free.set()
            return True
        # Nobody waits for it: its end starts what it claimed, and should it fail, logs that
        # and wakes the pool's loop, which retries (and waits if it fails too).
        write.ended.cancel()
        return True

    def _queue_cycle(self, claim: bool) -> _CycleWrite | None:
        """Queue the write of one cycle (None: nothing to write). Synchronous, so a caller can
        queue it right behind a write of its own."""
        finishes, self._finishes = self._finishes, []
        free = self.settings.workers - self._occupied if claim and not self._stopping else 0
        if not finishes and free <= 0:
            return None
        now = self._clock.now_ms()
        lease_ms = int(self.settings.lease_s * 1000)
        limits = self._limits() if free > 0 else ClaimLimits()

        def op(conn: sqlite3.Connection, tx: WriteTx) -> tuple[list[Any], _Claimed]:
            written = _write_outcomes(conn, tx, finishes, now)
            if free <= 0:
                return written, _Claimed([], {}, None)
            rows = claim_ready(conn, tx, now=now, slots=free, lease_ms=lease_ms, limits=limits)
            parents = parent_results(conn, [r["seq"] for r in rows]) if rows else {}
            due = next_due_ms(conn) if len(rows) < free else None
            return written, _Claimed(rows, parents, due)

        try:
            future = self._store.writer.submit_nowait(op, first=True)
        except BaseException:
            self._finishes[:0] = finishes
            raise
        write = _CycleWrite(finishes, free, claim, future.get_loop().create_future())
        future.add_done_callback(partial(self._end_cycle, write))
        return write

    async def _finish_cycle(self, write: _CycleWrite) -> int:
        """Wait until the cycle's write committed; how many jobs it claimed (started in the
        same turn, their handlers' first steps still to come: see :meth:`_end_cycle`)."""
        return await write.ended

    def _end_cycle(self, write: _CycleWrite, future: asyncio.Future[Any]) -> None:
        """As the cycle's write ends: forget the outcomes it wrote and start the jobs it
        claimed (or, when it failed, keep the outcomes for the next try); then the cycle is
        over, and another may be queued.

        A callback of the write itself, not the work of whoever waits for it: the write
        commits whether or not its caller still waits. A caller cancelled meanwhile (a
        ``drain(timeout=...)`` that ran out, a stepped runner under a test's timeout) had left
        the claimed jobs ``running`` with nothing running them until their leases expired,
        each spending a retry — with none left, dead-lettered without ever having run. (Run
        as a callback it starts the handlers in the turn right after the commit, as the
        awaiting task did, and tells that task first.)
        """
        abandoned = write.ended.done()  # the caller stopped waiting: nobody else will retry
        try:
            if future.cancelled():  # nothing cancels it (callers wait on ``ended``); still
                raise asyncio.CancelledError
            written, claimed = future.result()
        except BaseException as exc:
            self._finishes[:0] = write.finishes  # keep the outcomes; they are written on retry
            self._cycle_free.set()
            if not abandoned:
                if isinstance(exc, asyncio.CancelledError):
                    write.ended.cancel()
                else:
                    write.ended.set_exception(exc)
                return
            if isinstance(exc, Exception):
                _cycle_failed(exc, self._repeats)
            self._wake.set()  # the pool's loop writes them again
            if self._finishes:
                self._schedule_flush()  # or, stepped by hand, a flush on the next turn
            return
        try:
            self._apply_cycle(write, written, claimed)
        except Exception as exc:
            if write.ended.done():
                log.exception("could not finish a claim cycle")
            else:
                write.ended.set_exception(exc)
        finally:
            self._cycle_free.set()

    def _apply_cycle(self, write: _CycleWrite, written: list[Any], claimed: _Claimed) -> None:
        """Forget the cycle's written outcomes and start the jobs it claimed."""
        for item, result in zip(write.finishes, written, strict=True):
            _log_outcome(item, result)
            self._forget(item.attempt)
        if write.claim:
            self._next_due = claimed.next_due
        if not write.ended.done():
            # Told before the jobs start: the waiter goes on before their handlers' first
            # steps, as it did when it started them itself (a stepped runner's caller may
            # still act, move a fake clock say, before any handler ran).
            write.ended.set_result(len(claimed.rows))
        for row in claimed.rows:
            self._start(row, claimed.parents.get(row["seq"], {}))
            early = self._early_aborts.pop((row["id"], row["attempts"]), None)
            if early is not None:
                self.abort(row["id"], row["attempts"], early)
        self._early_aborts.clear()
        if claimed.rows and len(claimed.rows) == write.free:
            self._wake.set()  # there may be more ready jobs

    async def run(self) -> None:
        """The claim loop; returns once :meth:`stop` was called and every outcome is written."""
        self._loop_running = True
        try:
            while not (self._stopping and not self._attempts and not self._finishes):
                timeout = None
                if self._next_due is not None:
                    timeout = max(0.0, (self._next_due - self._clock.now_ms()) / 1000)
                if not self._wake.is_set():
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(timeout):
                            await self._wake.wait()
                self._wake.clear()
                if self._occupied >= self.settings.workers and not self._finishes:
                    continue
                try:
                    await self.cycle()
                except Exception as exc:
                    await asyncio.sleep(_cycle_failed(exc, self._repeats))
                    self._wake.set()
        finally:
            self._loop_running = False

    def _schedule_flush(self) -> None:
        """Without the background loop (a stepped runner), write outcomes on the next turn."""
        if self._loop_running or self._flush_task is not None:
            return

        async def flush() -> None:
            delay = 0.05
            try:
                while self._finishes:
                    try:
                        await self.cycle(claim=False)
                    except (DatabaseBusy, StorageFull) as exc:
                        if not self._store.is_open:
                            return  # closed after a bounded stop: said by stop() itself
                        self._repeats.warning(
                            log, "database write failed, retrying shortly: %s", exc
                        )
                        await asyncio.sleep(delay)
                        delay = min(delay * 2, 2.0)
                    except EdgeJobsError:
                        if self._store.is_open:
                            raise
                        return  # the store closed while the write waited (see stop())
            finally:
                self._flush_task = None

        self._flush_task = asyncio.get_running_loop().create_task(flush())

    # -- attempts -------------------------------------------------------------------------

    def _start(self, row: sqlite3.Row, parent_results: dict[str, Any]) -> None:
        attempt = _Attempt(
            job_id=row["id"],
            seq=row["seq"],
            number=row["attempts"],
            job_type=row["job_type"],
            org=row["org"],
        )
        previous = self._attempts.get(attempt.job_id)
        if previous is not None and previous.number < attempt.number:
            # The job's earlier attempt here was ended by another process's write and the job
            # claimed again before this process heard of it (a cancel then a retry from the
            # command line): stop it, or it would run on beside the new one, out of reach.
            self.abort(previous.job_id, previous.number, "lost")
        self._attempts[attempt.job_id] = attempt
        self._occupied += 1
        self._per_type[attempt.job_type] += 1
        self._per_type_org[(attempt.job_type, attempt.org)] += 1
        self._idle.clear()
        self._busy.set()
        attempt.leased_at = self._clock.monotonic()
        try:
            self._begin(attempt, load_stored(row["params"]), parent_results)
        except Exception:
            self._bookkeeping_failed(attempt)

    def _bookkeeping_failed(self, attempt: _Attempt) -> None:
        # A bug of ours, not of the handler: say so and drop the attempt; its lease expires and
        # the tick recovers the job (attempt outcome ``lost``).
        log.exception(
            "attempt of job %s crashed the runner's bookkeeping",
            attempt.job_id,
            extra=_log_fields(attempt),
        )
        self._forget(attempt)

    def _begin(self, attempt: _Attempt, params: dict[str, Any], parents: dict[str, Any]) -> None:
        """Start the handler: an async one as one task (:class:`AsyncRun`), any other through
        :func:`execute` in a task of its own. Either way :meth:`_ended` gets the outcome."""
        job_type = self._registry.get(attempt.job_type)
        common: dict[str, Any] = {
            "job_id": attempt.job_id,
            "org": attempt.org,
            "job_type": attempt.job_type,
            "attempt": attempt.number,
            "parent_results": parents,
            "sink": partial(self._report_progress, attempt),
        }
        on_end = partial(self._ended, attempt, job_type.retry)
        if job_type.isolation != "process":
            try:
                handler = job_type.handler()
            except Exception as exc:  # an import that fails: the attempt fails, clearly
                on_end(failure(exc))
                return
            if is_async_handler(handler):
                attempt.run = AsyncRun(
                    handler,
                    JobContext(**common),
                    params,
                    timeout_s=job_type.timeout_s,
                    max_result_bytes=self.settings.max_result_bytes,
                    on_end=on_end,
                    deadlines=self._deadlines,
                )
                attempt.task = attempt.run.task
                return
        loop = asyncio.get_running_loop()
        attempt.abort = loop.create_future()
        ctx = SyncJobContext(loop=loop, **common)
        attempt.task = loop.create_task(
            self._execute(attempt, job_type, ctx, params, on_end),
            name=f"edgejobs-attempt-{attempt.job_id}",
        )

    async def _execute(
        self,
        attempt: _Attempt,
        job_type: JobType,
        ctx: BaseContext,
        params: dict[str, Any],
        on_end: Callable[[Execution], None],
    ) -> None:
        assert attempt.abort is not None
        try:
            execution = await execute(
                job_type,
                ctx,
                params,
                abort=attempt.abort,
                max_result_bytes=self.settings.max_result_bytes,
            )
        except asyncio.CancelledError:
            # The pool itself is being torn down: requeue rather than lose the attempt.
            attempt.aborted_by = attempt.aborted_by or "shutdown"
            on_end(Execution(Outcome.CANCELED))
            raise
        except Exception as exc:
            # The handler could not even be started (no thread or process to be had: a pid or
            # file-descriptor limit). Without an outcome the slot and the lease would be held
            # forever; as a failed attempt the job is retried later like any other failure.
            log.error(
                "could not start the handler of job %s: %r",
                attempt.job_id,
                exc,
                extra=_log_fields(attempt),
            )
            on_end(failure(exc))
            return
        on_end(execution)

    def _release_slot(self, attempt: _Attempt) -> None:
        if not attempt.holds_slot:
            return
        attempt.holds_slot = False
        self._occupied -= 1
        self._per_type[attempt.job_type] -= 1
        self._per_type_org[(attempt.job_type, attempt.org)] -= 1
        if not self._per_type_org[(attempt.job_type, attempt.org)]:
            del self._per_type_org[(attempt.job_type, attempt.org)]
        self._wake.set()

    def _forget(self, attempt: _Attempt) -> None:
        self._release_slot(attempt)
        if self._attempts.get(attempt.job_id) is attempt:
            del self._attempts[attempt.job_id]
        # The attempt, its run, context, progress coalescer and outcome callback refer to each
        # other in a cycle; cutting it here lets reference counting free them at once instead
        # of leaving ~16 objects per job to the cyclic collector (~9 % of a drain's time).
        attempt.run = None
        attempt.task = None
        attempt.progress = None
        if not self._attempts:
            self._idle.set()
            self._busy.clear()

    def _report_progress(self, attempt: _Attempt, percent: float, message: str | None) -> None:
        if attempt.ended:
            # A report after the handler's end (a sync handler past its timeout, a context
            # kept by the handler) is dropped: its last report was flushed before the outcome.
            return
        coalescer = attempt.progress
        if coalescer is None:
            coalescer = attempt.progress = ProgressCoalescer(
                self.settings.progress_interval_ms,
                self._clock,
                partial(self._write_progress, attempt),
            )
        coalescer.report(percent, message)

    def _write_progress(self, attempt: _Attempt, percent: float, message: str | None) -> None:
        now = self._clock.now_ms()

        def op(conn: sqlite3.Connection, tx: WriteTx) -> bool:
            return set_progress(
                conn,
                tx,
                seq=attempt.seq,
                attempt=attempt.number,
                progress=percent,
                message=message,
                now=now,
                eta_for=lambda row: eta_for_row(conn, row, now),
            )

        future = self._store.writer.submit_nowait(op)
        self._pending_writes.add(future)
        future.add_done_callback(self._progress_written)

    def _progress_written(self, future: asyncio.Future[Any]) -> None:
        self._pending_writes.discard(future)
        if not future.cancelled() and future.exception() is not None:
            self._repeats.warning(log, "progress write failed: %s", future.exception())

    def _ended(
        self,
        attempt: _Attempt,
        policy: RetryPolicy,
        execution: Execution,
    ) -> None:
        """The handler's part of an attempt is over: hand its outcome to the next cycle.

        The slot is free from now on (the claim of that same cycle may reuse it); the attempt
        is forgotten once its outcome is committed (:meth:`cycle`).
        """
        try:
            attempt.ended = True
            if attempt.progress is not None:
                attempt.progress.flush()
            if self._on_attempt_done is not None:
                self._on_attempt_done(attempt.job_id, execution)
            if attempt.aborted_by in ("cancel", "lost"):
                self._forget(attempt)  # the database already recorded how this attempt ended
                return
            self._finishes.append(_Finish(attempt, execution, policy))
            self._release_slot(attempt)
            self._schedule_flush()
        except Exception:
            self._bookkeeping_failed(attempt)

    # -- leases and shutdown ------------------------------------------------------------------

    async def renew_leases_forever(self) -> None:
        """Extend the leases of running attempts every third of ``lease_s``."""
        interval = self.settings.lease_s / 3
        while not self._stopping:
            if not self._attempts:
                # Nothing to renew: wait for an attempt rather than wake an idle process.
                await self._busy.wait()
                self._renew_pass_at = self._clock.monotonic()
            await asyncio.sleep(interval)
            self._renew_pass_at = self._clock.monotonic()
            live = [a for a in self._attempts.values() if a.aborted_by is None]
            if not live:
                continue
            until = self._clock.now_ms() + int(self.settings.lease_s * 1000)
            renewed_at = self._clock.monotonic()
            running = {a.seq: a.number for a in live}
            try:
                await self._store.write(partial(renew_leases, running=running, until=until))
            except EdgeJobsError as exc:
                self._repeats.warning(log, "lease renewal failed: %s", exc)
            else:
                for attempt in live:
                    attempt.leased_at = renewed_at

    def healthy_leases(self) -> dict[int, int]:
        """Attempts (seq → attempt number) whose lease this process renewed less than
        ``lease_s`` ago by the monotonic clock.

        The database stores lease expiry as wall-clock time, so a wall-clock jump forward
        makes every lease look expired at once; by the monotonic clock these attempts are
        healthy, and the tick renews them before it looks for expired leases. While the renewal
        loop keeps running (the event loop is alive), every attempt this process still tracks is
        healthy, even if its renewals failed because another process held the database lock:
        its handler is running here, or its outcome waits in memory to be written. Only a
        stalled loop (no renewal pass for ``lease_s``) lets stale attempts be recovered.
        """
        now = self._clock.monotonic()
        loop_alive = now - self._renew_pass_at < self.settings.lease_s
        return {
            a.seq: a.number
            for a in self._attempts.values()
            if a.aborted_by is None and (loop_alive or now - a.leased_at < self.settings.lease_s)
        }

    def is_attempt_task(self, task: asyncio.Task[Any]) -> bool:
        """Whether ``task`` runs one of this pool's attempts (an async handler's task)."""
        return any(attempt.task is task for attempt in self._attempts.values())

    async def wait_idle(self) -> None:
        """Return when no attempt is running in this process."""
        await self._idle.wait()

    async def wait_busy(self) -> None:
        """Return when an attempt is running in this process."""
        await self._busy.wait()

    def stop_claiming(self) -> None:
        """Claim nothing more (the first step of :meth:`stop`)."""
        self._stopping = True
        self._wake.set()

    def shorten_grace(self, grace_s: float) -> None:
        """End a stop's grace ``grace_s`` from now unless it ends sooner (0: interrupt the
        running attempts now; they are requeued like at the end of the grace)."""
        loop = asyncio.get_running_loop()
        self._grace_deadline = min(self._grace_deadline, loop.time() + max(0.0, grace_s))
        self._grace_moved.set()

    async def _within_grace(
        self, running: set[asyncio.Task[Any]], grace_s: float
    ) -> set[asyncio.Task[Any]]:
        """Wait until the ``running`` tasks end or the grace is over; those still running."""
        loop = asyncio.get_running_loop()
        self.shorten_grace(grace_s)
        while running:
            remaining = self._grace_deadline - loop.time()
            if remaining <= 0:
                break
            self._grace_moved.clear()
            moved = loop.create_task(self._grace_moved.wait())
            try:
                done, _ = await asyncio.wait(
                    {*running, moved}, timeout=remaining, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                moved.cancel()
            running -= done
        return running

    async def stop(self, grace_s: float) -> None:
        """Stop claiming; let running attempts finish for ``grace_s``; requeue the rest."""
        self.stop_claiming()
        # A cycle queued before the stop may be claiming right now. Let it commit and start
        # what it claimed, so those attempts get the grace and are requeued like the others:
        # cut off midway, its jobs would stay `running` until their leases expired, and a
        # retry would be spent on each of them.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(IN_FLIGHT_CYCLE_WAIT_S):
                while self.cycle_in_flight:
                    await self._cycle_free.wait()
        running = {a.task: a for a in self._attempts.values() if a.task is not None and not a.ended}
        if running:
            pending = await self._within_grace(set(running), grace_s)
            if pending:
                log.warning("shutdown grace over: interrupting %d attempts", len(pending))
                # An async handler's run ends at the abort (its task is abandoned); the others
                # end when their execution sees it.
                others = [task for task in pending if running[task].run is None]
                for attempt in list(self._attempts.values()):
                    self.abort(attempt.job_id, attempt.number, "shutdown")
                if others:
                    await asyncio.wait(others, timeout=10)
        if self._attempts:
            # Outcomes are forgotten once written: wait for those writes (bounded).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(OUTCOME_WRITE_WAIT_S):
                    await self._idle.wait()
        if self._pending_writes:
            await asyncio.wait(list(self._pending_writes), timeout=5)
        if self._attempts:
            # The outcomes could not be written in time (the database stayed locked by another
            # process, or full): say which jobs stay `running`, as nothing else will.
            log.warning(
                "stopping without writing the outcome of %d attempt(s) (the database stayed"
                " locked or full): jobs %s stay running, and the next start recovers them as"
                " lost attempts",
                len(self._attempts),
                ", ".join(sorted(self._attempts)[:20]),
            )
