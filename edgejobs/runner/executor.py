"""Running one attempt of a handler, with a timeout that never relies on signals.

* async handlers run as one task per attempt (:class:`AsyncRun`, the hot path: no helper task
  or future); at the deadline the task is cancelled and abandoned (a handler that swallows
  the cancellation cannot hold the slot);
* sync handlers run in a fresh daemon thread; at the deadline the thread is abandoned (it
  sees ``ctx.cancelled``) and the slot is freed;
* ``isolation = "process"`` runs the handler (an async one under an event loop of its own) in a
  spawned child process, in a process group of its own, that is killed at the deadline with
  every process it started. The runner alone ends that child: it ignores SIGINT and SIGTERM,
  so a service manager signalling every process of the service (or a Ctrl-C) stops the runner
  gracefully instead of failing the attempt; the runner kills the child's whole group at the
  deadline, at the end of a shutdown's grace, and as its interpreter exits.

Whatever happens, :func:`execute` returns an :class:`Execution` (and :class:`AsyncRun` hands
one to its callback); neither raises for a handler's behaviour.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import dataclasses
import json
import logging
import multiprocessing
import os
import signal
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from multiprocessing import resource_tracker
from multiprocessing.connection import Connection
from multiprocessing.connection import wait as wait_for_any
from typing import Any

from edgejobs.errors import PermanentError
from edgejobs.logs import job_fields
from edgejobs.models import JobError, Outcome, storable_text
from edgejobs.runner.context import BaseContext, JobContext, SyncJobContext
from edgejobs.runner.registry import JobType, import_handler, is_async_handler
from edgejobs.store.rows import MAX_JSON_DEPTH, dumps, nested_too_deep

log = logging.getLogger("edgejobs.runner")

MAX_MESSAGE = 2000
MAX_TRACEBACK = 20000


@dataclasses.dataclass(frozen=True, slots=True)
class Execution:
    """How one attempt ended, ready to be written."""

    outcome: Outcome
    result_json: str | None = None
    error: JobError | None = None
    permanent: bool = False


class HandlerExit(Exception):
    """A handler raised SystemExit or KeyboardInterrupt; contained so the runner survives."""


def _text_of(exc: BaseException) -> str:
    # A handler's exception may fail to print itself (its __str__ raises); describing it must
    # not fail too, or the attempt would end without an outcome.
    try:
        return str(exc)
    except Exception as broken:
        return f"<unprintable {type(exc).__name__}: str() raised {type(broken).__name__}>"


def _traceback_of(exc: BaseException) -> str:
    try:
        text = "".join(traceback.format_exception(exc))
    except Exception:  # the same, for the traceback's last line
        text = "".join(traceback.format_tb(exc.__traceback__)) + f"{type(exc).__name__}\n"
    return text[-MAX_TRACEBACK:]


def error_from(exc: BaseException) -> JobError:
    """A :class:`JobError` (type, message, traceback) from an exception, each storable; never
    raises."""
    if isinstance(exc, HandlerExit) and exc.__cause__ is not None:
        cause = exc.__cause__
        name = storable_text(type(cause).__name__)
        return JobError(
            type=name,
            message=storable_text(
                f"handler raised {name}({_text_of(cause)}); the runner contained it"
            )[:MAX_MESSAGE],
            traceback=storable_text(_traceback_of(cause)),
        )
    return JobError(
        type=storable_text(type(exc).__name__),
        message=storable_text(_text_of(exc))[:MAX_MESSAGE],
        traceback=storable_text(_traceback_of(exc)),
    )


_COMPLETED_WITHOUT_RESULT = Execution(Outcome.COMPLETED, result_json="null")
"""What most handlers return, ``None``, encoded once (an Execution is immutable)."""


def encode_result(value: Any, max_bytes: int) -> Execution:
    """The completed execution, or a failed one when the result cannot be stored; never
    raises."""
    if value is None:
        return _COMPLETED_WITHOUT_RESULT
    try:
        text = dumps(value)
        size = len(text.encode())  # a lone surrogate (a file name from os.listdir) fails here
    except (TypeError, ValueError, RecursionError) as exc:  # (UnicodeEncodeError: a ValueError)
        return _unstorable(
            "ResultNotSerializable",
            f"the handler returned a value that is not JSON: {_text_of(exc)}"[:MAX_MESSAGE],
        )
    except MemoryError:
        # A result whose JSON does not fit in the memory the process may use (its limit, its
        # cgroup's) is too large, whatever max_bytes says. Raised on, it escaped an async
        # handler's run, whose attempt then held its slot until its timeout and ended
        # timed_out; a sync handler's was logged as a handler that could not start.
        return _unstorable(
            "ResultTooLarge",
            "the handler returned a value whose JSON does not fit in the memory this"
            f" process may use; the limit is {max_bytes} bytes",
        )
    if nested_too_deep(value, text):
        return _unstorable(
            "ResultNotSerializable",
            "the handler returned a value that is not JSON this runner stores: it is nested"
            f" deeper than {MAX_JSON_DEPTH} levels",
        )
    if size > max_bytes:
        return _unstorable(
            "ResultTooLarge", f"the handler returned {size} bytes of JSON; the limit is {max_bytes}"
        )
    return Execution(Outcome.COMPLETED, result_json=text)


def _unstorable(error_type: str, message: str) -> Execution:
    """A failed attempt whose handler returned a result that cannot be stored."""
    return Execution(Outcome.FAILED, error=JobError(error_type, message))


def failure(exc: BaseException) -> Execution:
    """A failed execution from the exception a handler raised (permanent for PermanentError)."""
    return Execution(
        Outcome.FAILED, error=error_from(exc), permanent=isinstance(exc, PermanentError)
    )


def _consume(task: asyncio.Future[Any]) -> None:
    # An abandoned handler may still fail later; read its exception so asyncio does not warn.
    if not task.cancelled():
        task.exception()


def _contained(exc: SystemExit | KeyboardInterrupt) -> HandlerExit:
    """What a handler's SystemExit or KeyboardInterrupt becomes, so the runner survives it."""
    wrapped = HandlerExit()
    wrapped.__cause__ = exc
    return wrapped


async def _race(
    work: asyncio.Future[Any], abort: asyncio.Future[str], timeout_s: float
) -> tuple[str, Any]:
    """Wait for the work, an abort or the deadline; ("done"|"abort"|"timeout", value).

    Built from callbacks on one future rather than ``asyncio.wait`` on helper tasks: this
    runs once per attempt, and on the hot path those extra tasks cost more than the job.
    """
    loop = asyncio.get_running_loop()
    outcome: asyncio.Future[str] = loop.create_future()

    def settle(state: str) -> None:
        if not outcome.done():
            outcome.set_result(state)

    def on_work(_: asyncio.Future[Any]) -> None:
        settle("done")

    def on_abort(_: asyncio.Future[str]) -> None:
        settle("abort")

    if work.done():
        return "done", work
    work.add_done_callback(on_work)
    abort.add_done_callback(on_abort)
    timer = loop.call_later(timeout_s, settle, "timeout")
    try:
        state = await outcome
    except asyncio.CancelledError:
        work.cancel()
        work.add_done_callback(_consume)
        raise
    finally:
        timer.cancel()
        abort.remove_done_callback(on_abort)
        work.remove_done_callback(on_work)
    if state == "done":
        return "done", work
    work.add_done_callback(_consume)
    return state, None


class Deadlines:
    """The deadlines of a pool's async runs, on ONE event-loop timer armed for the earliest.

    A timer per attempt (``call_later``, then its ``cancel``) cost ~5 µs of the event loop's
    time per job: the handles are pure Python, and cancelled ones stay in the loop's heap until
    it is rebuilt. Runs with equal timeouts end their deadlines in the order they started, so
    each timeout value keeps its runs in a deque, in deadline order; an ended run is dropped
    when it reaches the front (or by a compaction, should one long run hold many ended ones
    behind it). With no run left the timer is cancelled: an idle loop is not woken.
    """

    __slots__ = ("_live", "_queues", "_timer", "_timer_at")

    def __init__(self) -> None:
        self._queues: dict[float, deque[AsyncRun]] = {}
        self._live = 0  # runs added and not ended
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = float("inf")

    def add(self, run: AsyncRun) -> None:
        """Watch ``run``'s deadline (it was just started, on the running loop)."""
        queue = self._queues.get(run._timeout_s)
        if queue is None:
            queue = self._queues[run._timeout_s] = deque()
        else:
            while queue and queue[0]._ended:
                queue.popleft()
            if len(queue) > 2 * self._live + 64:
                queue = self._queues[run._timeout_s] = deque(r for r in queue if not r._ended)
        queue.append(run)
        self._live += 1
        if run._deadline < self._timer_at:
            self._arm(run._deadline)

    def ended(self) -> None:
        """One watched run ended (once per run)."""
        self._live -= 1
        if not self._live:
            self._queues.clear()
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
                self._timer_at = float("inf")

    def _arm(self, deadline: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_at(deadline, self._fire)
        self._timer_at = deadline

    def _fire(self) -> None:
        self._timer = None
        self._timer_at = float("inf")
        loop = asyncio.get_running_loop()
        now = loop.time()
        while True:  # expire what is due, earliest deadline first, then arm for the next
            first: deque[AsyncRun] | None = None
            for queue in self._queues.values():
                while queue and queue[0]._ended:
                    queue.popleft()
                if queue and (first is None or queue[0]._deadline < first[0]._deadline):
                    first = queue
            if first is None:
                return
            if first[0]._deadline > now:
                self._arm(first[0]._deadline)
                return
            run = first.popleft()
            try:
                run._expire()
            except Exception as exc:  # as a timer of its own would have: said, the rest go on
                loop.call_exception_handler(
                    {"message": "an attempt's deadline failed", "exception": exc}
                )


class AsyncRun:
    """One attempt of an async handler, run as ONE task with its deadline on a timer.

    The common case and the hot path: a task per attempt, no helper task or future. The run
    ends at the first of: the handler returns or raises, the deadline passes, :meth:`abort`.
    ``on_end`` is called exactly once with the :class:`Execution`, from the task or from the
    timer, never later than that moment: at the deadline or on an abort the task is
    cancelled and abandoned, so a handler that swallows the cancellation cannot hold the
    slot, and whatever it returns or raises afterwards is ignored.
    """

    __slots__ = (
        "_ctx",
        "_deadline",
        "_deadlines",
        "_ended",
        "_max_result_bytes",
        "_on_end",
        "_timeout_s",
        "task",
    )

    def __init__(
        self,
        handler: Any,
        ctx: BaseContext,
        params: dict[str, Any],
        *,
        timeout_s: float,
        max_result_bytes: int,
        on_end: Callable[[Execution], None],
        deadlines: Deadlines,
    ) -> None:
        loop = asyncio.get_running_loop()
        self._ctx = ctx
        self._ended = False
        self._max_result_bytes = max_result_bytes
        self._on_end = on_end
        self._timeout_s = timeout_s
        self._deadline = loop.time() + timeout_s
        self._deadlines = deadlines
        deadlines.add(self)
        self.task: asyncio.Task[None] = loop.create_task(
            self._run(handler, params), name=f"edgejobs-attempt-{ctx.job_id}"
        )
        """The task running the handler (abandoned once the run ended otherwise)."""

    async def _run(self, handler: Any, params: dict[str, Any]) -> None:
        try:
            value = await handler(self._ctx, params)
        except asyncio.CancelledError:
            if self._ended:
                raise  # our own deadline or abort: already reported
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                # Someone else cancelled the task (the event loop is being torn down): report
                # it so that the attempt is requeued, not lost.
                self._end(Execution(Outcome.CANCELED))
                raise
            # The handler itself let a CancelledError out (it awaited something cancelled).
            self._end(
                Execution(
                    Outcome.FAILED, error=JobError("CancelledError", "the handler was cancelled")
                )
            )
        except (SystemExit, KeyboardInterrupt) as exc:
            self._end_in_time(failure(_contained(exc)))
        except BaseException as exc:  # also GeneratorExit and a handler's own BaseException
            self._end_in_time(failure(exc))
        else:
            if not self._ended:
                self._end_in_time(encode_result(value, self._max_result_bytes))

    def _end_in_time(self, execution: Execution) -> None:
        # A handler that blocked the event loop past its deadline (time.sleep in an async
        # def) returns before the deadline's timer can run: it timed out all the same, as a
        # sync handler would have.
        if not self._ended and asyncio.get_running_loop().time() >= self._deadline:
            execution = _timed_out(self._timeout_s)
        self._end(execution)

    def _end(self, execution: Execution) -> None:
        if self._ended:
            return  # already ended by the deadline or an abort: a late outcome is ignored
        self._ended = True
        self._deadlines.ended()
        self._on_end(execution)

    def _stop(self, execution: Execution) -> None:
        if self._ended:
            return
        self._ctx._cancel()
        self._end(execution)
        self.task.cancel()
        # A handler that catches the cancellation runs on, abandoned: looked at once it had
        # time to clean up (its ``finally`` may await), then counted and said, as a sync
        # handler's thread is.
        self.task.get_loop().call_later(
            ABANDON_CHECK_S, _check_abandoned, self.task, self._ctx, execution.outcome
        )

    def _expire(self) -> None:
        self._stop(_timed_out(self._timeout_s))

    def abort(self) -> None:
        """End the run now as canceled (the job was canceled, its lease lost, or the runner is
        shutting down) and cancel the handler's task."""
        self._stop(Execution(Outcome.CANCELED))


def _timed_out(timeout_s: float) -> Execution:
    return Execution(
        Outcome.TIMED_OUT,
        error=JobError("TimeoutError", f"the attempt exceeded its timeout of {timeout_s:g} s"),
    )


async def execute(
    job_type: JobType,
    ctx: BaseContext,
    params: dict[str, Any],
    *,
    abort: asyncio.Future[str],
    max_result_bytes: int,
) -> Execution:
    """Run one attempt of a sync handler (in a thread) or of a process-isolated one and say how
    it ended. (An async handler runs as an :class:`AsyncRun` instead.)"""
    timeout = job_type.timeout_s
    try:
        handler = job_type.handler()
    except Exception as exc:
        return failure(exc)
    if job_type.isolation == "process":
        return await _execute_in_process(job_type, ctx, params, abort, max_result_bytes, timeout)
    work, thread = _start_thread(handler, ctx, params, max_result_bytes)
    state, finished = await _race(work, abort, timeout)
    if state == "done":
        execution: Execution = finished.result()
        return execution
    ctx._cancel()
    work.cancel()
    # A handler that checks ctx.cancelled (as it should) returns soon after: its thread is
    # looked at once it had time to, as an async handler's task is, so only one that ignores
    # the flag is counted and warned about.
    asyncio.get_running_loop().call_later(
        ABANDON_CHECK_S, _check_abandoned_thread, thread, ctx, state == "abort"
    )
    if state == "abort":
        return Execution(Outcome.CANCELED)
    return _timed_out(timeout)


_abandoned: set[threading.Thread] = set()
"""Threads of sync handlers still running when their attempt ended (see :func:`abandoned_threads`)."""

ABANDON_CHECK_S = 1.0
"""How long a handler may take to end after its attempt was timed out or cancelled (an async
task's ``finally`` clauses, a sync handler's next look at ``ctx.cancelled``) before it counts
as abandoned."""

_abandoned_tasks: set[asyncio.Task[Any]] = set()
"""Tasks of async handlers still running after their attempt ended (see :func:`abandoned_tasks`)."""


def abandoned_tasks() -> int:
    """How many tasks of async handlers still run after their attempt ended: the handler
    caught the cancellation sent at its deadline (or cancel) and went on. Each holds no slot,
    but its memory and its share of the event loop until it returns."""
    return len(_abandoned_tasks)


def _check_abandoned(task: asyncio.Task[Any], ctx: BaseContext, outcome: Outcome) -> None:
    if task.done():
        return
    _abandoned_tasks.add(task)
    task.add_done_callback(_abandoned_tasks.discard)
    log.warning(
        "job %s: its async handler still runs %g s after the attempt ended (%s): it caught"
        " the cancellation; it is abandoned until it returns (it can check ctx.cancelled);"
        " %d abandoned handler task(s) now run in this process",
        ctx.job_id,
        ABANDON_CHECK_S,
        "timed out" if outcome is Outcome.TIMED_OUT else "interrupted",
        abandoned_tasks(),
        extra=job_fields(ctx.job_id, ctx.org, ctx.job_type, ctx.attempt),
    )


def _check_abandoned_thread(thread: threading.Thread, ctx: BaseContext, interrupted: bool) -> None:
    if not thread.is_alive():
        return
    _abandoned.add(thread)
    log.warning(
        "job %s: its handler's thread still runs %g s after the attempt ended (%s); it is"
        " abandoned until the handler returns (it can check ctx.cancelled); %d abandoned"
        " handler thread(s) now run in this process",
        ctx.job_id,
        ABANDON_CHECK_S,
        "interrupted" if interrupted else "timed out",
        abandoned_threads(),
        extra=job_fields(ctx.job_id, ctx.org, ctx.job_type, ctx.attempt),
    )


def abandoned_threads() -> int:
    """How many threads of sync handlers still run after their attempt ended (a handler that
    ignored its timeout or cancel). Each holds no slot, but its thread, memory and CPU until
    the handler returns; nothing else counted them, so a pile of them went unseen."""
    for thread in [t for t in list(_abandoned) if not t.is_alive()]:
        _abandoned.discard(thread)
    return len(_abandoned)


def _start_thread(
    handler: Any, ctx: BaseContext, params: dict[str, Any], max_result_bytes: int
) -> tuple[asyncio.Future[Execution], threading.Thread]:
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Execution] = loop.create_future()

    def settle(execution: Execution) -> None:
        if not future.done():
            future.set_result(execution)

    def run() -> None:
        # The outcome is made here, in the handler's thread, as a process child makes it:
        # encoding a big result (or formatting a deep traceback) on the event loop stalled
        # every other job, the API and the streams for seconds.
        try:
            try:
                value = handler(ctx, params)
            except (SystemExit, KeyboardInterrupt) as exc:
                execution = failure(_contained(exc))
            except StopIteration as exc:  # (next() on an empty iterator) as an async one says
                wrapped = RuntimeError("the handler raised StopIteration")
                wrapped.__cause__ = exc
                execution = failure(wrapped)
            except BaseException as exc:
                execution = failure(exc)
            else:
                execution = encode_result(value, max_result_bytes)
        except BaseException as exc:  # a bug of ours while making the outcome
            execution = failure(exc)
        _call(loop, settle, execution)

    thread = threading.Thread(target=run, name=f"edgejobs-job-{ctx.job_id}", daemon=True)
    thread.start()
    return future, thread


def _call(loop: asyncio.AbstractEventLoop, fn: Any, *args: Any) -> None:
    try:
        loop.call_soon_threadsafe(fn, *args)
    except RuntimeError:
        pass  # the loop closed while an abandoned handler was still running


# -- process isolation --------------------------------------------------------------------


class _ChildContext(SyncJobContext):
    """The sync context inside the child process: progress goes through the pipe."""


CHILD_EXIT_GRACE_S = 1.0
"""How long a handler's child process may take to exit once it sent its outcome; then it is
killed (the outcome stands)."""

PARENT_WATCH_S = 0.2
"""How often a handler's child process looks whether the runner that started it is alive."""


_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
_CHILDREN: set[multiprocessing.process.BaseProcess] = set()
"""The handler processes alive in this process (killed at interpreter exit, see below)."""


def _start_child(process: multiprocessing.process.BaseProcess) -> None:
    """Start a handler's process with SIGINT and SIGTERM blocked in it from its first
    instruction (the mask is inherited through ``exec``): one sent to every process of the
    service while the child's interpreter starts would otherwise end it before it can ignore
    them (:func:`_own_the_signals`)."""
    # Started here first: the first ``start()`` of a spawn context starts multiprocessing's
    # resource tracker, which unblocks both signals once it is launched, whatever the mask
    # was, so the runner's first handler process started with them unblocked.
    resource_tracker.ensure_running()
    old = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        process.start()
        _CHILDREN.add(process)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


@atexit.register
def _kill_children_at_exit() -> None:
    # Registered after multiprocessing's own exit hook, so it runs before it: that hook would
    # end daemonic children with SIGTERM, which these ignore, and then wait for them forever.
    for process in list(_CHILDREN):
        with contextlib.suppress(Exception):
            _kill_group(process)


def _exit_with_parent(parent_pid: int) -> None:
    """In the child: end this process as soon as the runner that started it is gone.

    A runner killed with SIGKILL cannot kill its children: they ran on past their timeout,
    beside the retry that the next runner starts for the same job. The parent's death is
    seen as a new parent pid (the orphan is adopted); a thread watches for it.
    """

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(PARENT_WATCH_S)
        # No cleanup: the attempt belongs to nobody now. The whole group, so that what the
        # handler started (a subprocess, a fork) ends with it.
        with contextlib.suppress(OSError):
            os.killpg(0, signal.SIGKILL)
        os._exit(1)

    threading.Thread(target=watch, name="edgejobs-parent-watch", daemon=True).start()


def _ignore_stop_signal(signum: int, frame: Any) -> None:
    """In the child: SIGINT and SIGTERM are the runner's to handle, not the handler's.

    A function, not ``SIG_IGN``: a caught signal is reset to its default by ``exec``, so the
    handler's own subprocesses still stop on SIGTERM and Ctrl-C as usual (and a process the
    handler forks gets the defaults back at once, see :func:`_default_stop_signals`).
    """


def _default_stop_signals() -> None:
    """In a process the handler forked: SIGINT and SIGTERM act as they do by default."""
    with contextlib.suppress(ValueError, OSError):
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGHUP, signal.SIG_DFL)


def _own_the_signals() -> None:
    """In the child, first thing: a session (and process group) of its own, and SIGINT and
    SIGTERM ignored.

    The session comes before any of the handler's code runs: the kill at the end of the
    attempt (:func:`_kill_group`) reaches every process the handler started, and a Ctrl-C in
    the runner's terminal (SIGINT to its foreground group) no longer reaches the handler, which
    failed the attempt with KeyboardInterrupt instead of letting the runner's shutdown
    interrupt it and requeue the job. A service manager signals every process of the service,
    whatever its group (systemd's default ``KillMode=control-group``): ignoring both signals,
    the child gets the runner's grace like any handler instead of dying (ProcessDied, a retry
    spent). The runner started this process with both signals blocked (:func:`_start_child`);
    one that came before this point is pending, and taken by the ignoring handler on
    unblocking.
    """
    os.setsid()
    for sig in _STOP_SIGNALS:
        signal.signal(sig, _ignore_stop_signal)
    os.register_at_fork(after_in_child=_default_stop_signals)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)


def _child_main(
    handler_path: str,
    info: dict[str, Any],
    params_json: str,
    conn: Connection,
    parent_pid: int,
    max_result_bytes: int,
) -> None:
    """Entry point of the child process (imports the handler by path)."""
    _own_the_signals()  # before the watch thread starts: it inherits the signal mask
    _exit_with_parent(parent_pid)
    # One message at a time on the pipe: the handler's own threads may report progress while
    # its result is sent, and a message longer than the pipe's atomic write (4 KiB) had
    # another spliced into it, so the runner could not read the result (the attempt then
    # timed out).
    sending = threading.Lock()

    def send(message: tuple[Any, ...]) -> None:
        with sending:
            if not conn.closed:  # a thread reporting after the outcome was sent
                conn.send(message)

    # The child started: what failed before this (the spawn's import of the runner's main
    # module again, say) is told apart from a handler that died.
    send(("started",))

    def send_progress(percent: float, message: str | None) -> None:
        send(("progress", percent, message))

    class _Loopless:
        def call_soon_threadsafe(self, fn: Any, *args: Any) -> None:
            fn(*args)

    ctx = _ChildContext(loop=_Loopless(), sink=send_progress, **info)  # type: ignore[arg-type]
    try:
        handler = import_handler(handler_path)
        params = json.loads(params_json)
        if is_async_handler(handler):
            # An async handler runs under an event loop of the child's own. Called like a
            # sync one, it returned its coroutine unawaited and every attempt failed with a
            # ResultNotSerializable that named no cause.
            value = asyncio.run(handler(JobContext(sink=send_progress, **info), params))
        else:
            value = handler(ctx, params)
        # Encoded as in a thread (encode_result): a value that is not JSON, or JSON that is
        # not storable text, is the handler's ResultNotSerializable, not an exception the
        # handler raised (a TypeError) nor one of the runner's on receiving it.
        execution = encode_result(value, max_result_bytes)
        if execution.error is None:
            send(("result", execution.result_json))
        else:
            error = execution.error
            send(("error", error.type, error.message, error.traceback, False))
    except BaseException as exc:
        error = error_from(exc)
        try:
            send(
                (
                    "error",
                    error.type,
                    error.message,
                    error.traceback,
                    isinstance(exc, PermanentError),
                )
            )
        except Exception:
            pass
    finally:
        with sending:
            conn.close()


def _kill_group(process: multiprocessing.process.BaseProcess) -> None:
    """SIGKILL a handler's child process and every process in its group (what it started)."""
    if process.pid is not None:
        # (ESRCH: the child has not made its group yet, or the group is gone already.)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
    if process.is_alive():
        process.kill()


def _end_of(process: multiprocessing.process.BaseProcess) -> int:
    """A descriptor that becomes readable when the child process ends.

    A pidfd where the system has them: the process's sentinel is a pipe whose other end the
    child holds, and a process it forked inherits that end, so the sentinel is not readable
    before that one ends as well.
    """
    assert process.pid is not None
    try:
        return os.pidfd_open(process.pid)
    except (AttributeError, OSError):  # not Linux, or older than 5.3
        return process.sentinel


async def _execute_in_process(
    job_type: JobType,
    ctx: BaseContext,
    params: dict[str, Any],
    abort: asyncio.Future[str],
    max_result_bytes: int,
    timeout: float,
) -> Execution:
    loop = asyncio.get_running_loop()
    mp = multiprocessing.get_context("spawn")  # never fork a process that holds connections
    receiver, sender = mp.Pipe(duplex=False)
    info = {
        "job_id": ctx.job_id,
        "org": ctx.org,
        "job_type": ctx.job_type,
        "attempt": ctx.attempt,
        "parent_results": ctx.parent_results,
    }
    process = mp.Process(
        target=_child_main,
        args=(job_type.handler_path, info, dumps(params), sender, os.getpid(), max_result_bytes),
        name=f"edgejobs-job-{ctx.job_id}",
        daemon=True,
    )
    await loop.run_in_executor(None, _start_child, process)
    sender.close()
    ended = _end_of(process)
    future: asyncio.Future[Any] = loop.create_future()

    def settle(value: Any) -> None:
        if not future.done():
            future.set_result(value)

    exited: asyncio.Future[None] = loop.create_future()

    def child_exited() -> None:
        if not exited.done():
            exited.set_result(None)

    started = False

    def pump() -> None:
        nonlocal started
        final: Any = None
        try:
            while True:
                # The child's end too, not only the pipe's: a process the handler forked holds
                # the pipe open after the child died, and the death went unseen (the attempt
                # held its slot and timed out, a TimeoutError instead of ProcessDied).
                if receiver not in wait_for_any([receiver, ended]):
                    break  # the child ended and nothing more is to be read
                message = receiver.recv()
                if message[0] == "progress":
                    _call(loop, ctx._sink, message[1], message[2])
                elif message[0] == "started":
                    started = True
                else:
                    final = message
                    break
        except (EOFError, OSError):
            pass
        except Exception as exc:
            # A message that cannot be read (nothing the child sends should ever be): the
            # attempt fails now, saying so, instead of this thread dying unseen and the attempt
            # holding its slot until its deadline with the child process never reaped.
            final = (
                "error",
                "ProcessProtocolError",
                f"a message from the handler's process could not be read: {exc!r}",
                None,
                False,
            )
        finally:
            if ended != process.sentinel:
                os.close(ended)
        if final is not None:
            # The handler returned or raised: that is the outcome, whether the child then exits
            # or not (a thread of the handler's that is not a daemon keeps it alive, and the
            # result it had sent was lost to the deadline as a TimeoutError).
            _call(loop, settle, (final, None))
        process.join()
        _CHILDREN.discard(process)
        _call(loop, settle, (final, process.exitcode))
        _call(loop, child_exited)

    try:
        # Inside the try: a pump thread that cannot start must not leave the child behind.
        try:
            threading.Thread(target=pump, name=f"edgejobs-pipe-{ctx.job_id}", daemon=True).start()
        except BaseException:
            if ended != process.sentinel:
                os.close(ended)  # the pump closes it, once it runs
            raise
        state, finished = await _race(future, abort, timeout)
        if state == "done" and not exited.done():
            # A moment to exit by itself (output flushed, exit handlers run) before the kill.
            await asyncio.wait([exited], timeout=CHILD_EXIT_GRACE_S)
    finally:
        # Whatever ended the attempt, nothing the handler started outlives it: a subprocess
        # left running after the handler returned, or one still running at the deadline, a
        # cancel or a shutdown (killing the child alone left those behind).
        _kill_group(process)
    if state != "done":
        ctx._cancel()
        return Execution(Outcome.CANCELED) if state == "abort" else _timed_out(timeout)
    final, exitcode = finished.result()
    if final is None:
        if started:
            message = f"the handler's process exited with code {exitcode} before returning"
        else:
            message = (
                f"the handler's process exited with code {exitcode} while starting, before the"
                " handler ran (its output on the runner's stderr says why). The child process"
                " imports the runner's main module again: a script that runs a runner needs its"
                ' top-level code under `if __name__ == "__main__":`'
            )
        return Execution(Outcome.FAILED, error=JobError("ProcessDied", message))
    if final[0] == "result":  # JSON within the size limit (the child checked)
        return Execution(Outcome.COMPLETED, result_json=final[1])
    _, etype, message, tb, permanent = final
    error = JobError(storable_text(etype), storable_text(message), tb and storable_text(tb))
    return Execution(Outcome.FAILED, error=error, permanent=permanent)


__all__ = [
    "AsyncRun",
    "Deadlines",
    "Execution",
    "JobContext",
    "SyncJobContext",
    "execute",
    "failure",
]
