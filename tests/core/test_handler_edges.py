"""Handlers that end in odd ways end their attempt at once, with what happened.

Each of these once escaped the attempt's bookkeeping: the run ended with no outcome, so the
slot and the job were held until the deadline, and the job ended ``timed_out`` with a made-up
TimeoutError (five minutes later with the default ``timeout_s``).
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import edgejobs.runner.executor as executor
from edgejobs import EdgeJobs, Status
from edgejobs.clock import SystemClock
from edgejobs.testing import Harness

TIMEOUT_S = 30.0  # far longer than any of these tests may take


class Abort(BaseException):
    """A handler's own BaseException (not an Exception)."""


class Unprintable(Exception):
    def __str__(self) -> str:
        raise ValueError("no text for this one")


async def raises_base_exception(ctx: Any, params: dict[str, Any]) -> None:
    raise Abort("stop everything")


async def raises_generator_exit(ctx: Any, params: dict[str, Any]) -> None:
    raise GeneratorExit


async def raises_unprintable(ctx: Any, params: dict[str, Any]) -> None:
    raise Unprintable


async def returns_a_file_name_that_is_not_utf8(ctx: Any, params: dict[str, Any]) -> list[str]:
    return [b"caf\xe9.txt".decode("utf-8", "surrogateescape")]  # as os.listdir gives it


async def returns_a_deeply_nested_list(ctx: Any, params: dict[str, Any]) -> list[Any]:
    value: list[Any] = []
    for _ in range(100_000):
        value = [value]
    return value


async def returns_a_list_too_deep_to_read_back(ctx: Any, params: dict[str, Any]) -> list[Any]:
    # JSON encodes it here, but every read of the job decodes it again, from a deeper stack
    # (an HTTP request's): a few levels more and those reads raised RecursionError.
    value: list[Any] = []
    for _ in range(900):
        value = [value]
    return value


def sync_raises_stop_iteration(ctx: Any, params: dict[str, Any]) -> None:
    next(iter([]))  # a sync handler's StopIteration could not be set on the attempt's future


class AsyncCallable:
    """A handler object whose ``__call__`` is ``async def``."""

    async def __call__(self, ctx: Any, params: dict[str, Any]) -> str:
        return "ran"


async def blocks_the_loop_past_its_deadline(ctx: Any, params: dict[str, Any]) -> str:
    time.sleep(0.3)  # what a careless handler does: it blocks the event loop
    return "late"


async def _run_one(
    handler: Callable[..., Any] | str, *, timeout_s: float = TIMEOUT_S, isolation: str = "thread"
) -> Any:
    harness = Harness(clock=SystemClock())
    harness.ej.register(
        "edge", handler, timeout_s=timeout_s, max_retries=0, dedup=False, isolation=isolation
    )
    async with harness:
        job = await harness.submit("edge", org="acme")
        started = time.monotonic()
        await harness.drain(timeout=TIMEOUT_S / 2)
        elapsed = time.monotonic() - started
        return await harness.get(job.id), elapsed


@pytest.mark.parametrize(
    ("handler", "error_type", "message"),
    [
        (raises_base_exception, "Abort", "stop everything"),
        (raises_generator_exit, "GeneratorExit", ""),
        (raises_unprintable, "Unprintable", "<unprintable Unprintable"),
        (returns_a_file_name_that_is_not_utf8, "ResultNotSerializable", "not JSON"),
        (returns_a_deeply_nested_list, "ResultNotSerializable", "not JSON"),
        (returns_a_list_too_deep_to_read_back, "ResultNotSerializable", "nested deeper"),
        (sync_raises_stop_iteration, "RuntimeError", "StopIteration"),
    ],
)
async def test_the_attempt_fails_at_once_with_the_real_error(
    handler: Callable[..., Any], error_type: str, message: str
) -> None:
    job, elapsed = await _run_one(handler)
    assert job.status is Status.FAILED, job
    assert job.error is not None
    assert (job.error.type, message in job.error.message) == (error_type, True), job.error
    assert elapsed < TIMEOUT_S / 2


@pytest.mark.parametrize("handler", ["returns_a_set", "returns_a_lone_surrogate"])
async def test_a_result_that_is_not_json_fails_alike_in_a_thread_and_in_a_process(
    handler: str,
) -> None:
    """In a process, the child's failure to encode the value was reported as the handler's
    own exception (a set: ``TypeError``), or failed in the runner on receiving it (a file name
    that is not UTF-8: ``UnicodeEncodeError``, the attempt never written as such)."""
    errors = []
    for isolation in ("thread", "process"):
        job, _ = await _run_one(f"core_handlers:{handler}", isolation=isolation)
        assert job.status is Status.FAILED, (isolation, job)
        assert job.error is not None
        errors.append((job.error.type, job.error.message))
    assert errors[0][0] == "ResultNotSerializable"
    assert "not JSON" in errors[0][1]
    assert errors[1] == errors[0]


@pytest.mark.parametrize(
    ("handler", "isolation"),
    [
        ("core_handlers:async_raises_naming_a_file_that_is_not_utf8", "thread"),
        ("core_handlers:raises_naming_a_file_that_is_not_utf8", "thread"),
        ("core_handlers:raises_naming_a_file_that_is_not_utf8", "process"),
    ],
)
async def test_an_error_naming_a_file_that_is_not_utf8_is_stored_as_it_was_raised(
    handler: str, isolation: str
) -> None:
    """Its text could not be stored: the outcome was never written, the job stayed
    ``running`` until its lease expired and every attempt was recorded ``lost``; the real
    error was never kept. The undecodable byte is now stored as its escape."""
    job, _ = await _run_one(handler, isolation=isolation)
    assert job.status is Status.FAILED, job
    assert job.error is not None and job.error.type == "ValueError"
    assert job.error.message == "cannot parse caf\\udce9.txt"
    assert job.error.traceback is not None and "caf\\udce9.txt" in job.error.traceback


async def reports_progress_on_a_file_that_is_not_utf8(ctx: Any, params: dict[str, Any]) -> str:
    await ctx.progress(50, f"reading {os.fsdecode(b'caf' + bytes([0xE9]) + b'.txt')}")
    return "done"


async def test_a_progress_message_naming_a_file_that_is_not_utf8_is_stored() -> None:
    job, _ = await _run_one(reports_progress_on_a_file_that_is_not_utf8)
    assert job.status is Status.COMPLETED, job
    assert job.progress_message == "reading caf\\udce9.txt"


async def test_an_outcome_the_database_refuses_is_stored_as_a_failure_saying_so(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Should an outcome still hold what SQLite refuses (here: the error text as it was
    before it was made storable), the attempt fails with ``OutcomeNotStorable`` and the
    cause, instead of being forgotten with its job left ``running``."""
    monkeypatch.setattr(executor, "storable_text", lambda text: text)
    job, _ = await _run_one("core_handlers:raises_naming_a_file_that_is_not_utf8")
    assert job.status is Status.FAILED, job
    assert job.error is not None and job.error.type == "OutcomeNotStorable"
    assert "UnicodeEncodeError" in job.error.message and "surrogates" in job.error.message


async def test_an_object_with_an_async_call_is_awaited() -> None:
    """It was run in a thread: its coroutine was never awaited, its body never ran."""
    job, _ = await _run_one(AsyncCallable())
    assert (job.status, job.result) == (Status.COMPLETED, "ran")


async def test_an_async_handler_that_blocks_past_its_deadline_timed_out() -> None:
    """SPEC: timeouts hold for sync and async handlers alike. Blocking the event loop, it
    returned before the deadline's timer could run, and was recorded completed."""
    job, _ = await _run_one(blocks_the_loop_past_its_deadline, timeout_s=0.1)
    assert job.status is Status.TIMED_OUT, job
    assert job.result is None


def changes_directory(ctx: Any, params: dict[str, Any]) -> str:
    os.chdir(params["to"])  # the runner's whole process: threads share the working directory
    return os.getcwd()


async def test_a_handler_that_changes_directory_leaves_the_database_where_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a relative database path, connections opened after the change (a reader thread's
    first read, every checkpoint) opened or created a database in the handler's directory:
    a listing failed and the checkpoint emptied a new, empty WAL instead of the real one."""
    monkeypatch.chdir(tmp_path)  # (restored after the test)
    (tmp_path / "elsewhere").mkdir()
    ej = EdgeJobs(database="jobs.db")
    ej.register("wander", changes_directory, max_retries=0, dedup=False)
    async with ej:
        job = await ej.submit("wander", org="acme", params={"to": "elsewhere"})
        assert (await ej.wait(job.id, timeout=10)).status is Status.COMPLETED
        assert Path.cwd() == tmp_path / "elsewhere"
        pages = await asyncio.gather(*(ej.list_jobs(org="acme") for _ in range(4)))
        assert [len(jobs) for jobs, _ in pages] == [1] * 4
        await ej.maintenance.checkpoint(truncate=True)
    assert list((tmp_path / "elsewhere").iterdir()) == []


def sync_returns_rows(ctx: Any, params: dict[str, Any]) -> list[dict[str, int]]:
    return [{"row": n} for n in range(1000)]


def sync_fails_deep(ctx: Any, params: dict[str, Any]) -> None:
    def down(n: int) -> None:
        if n:
            down(n - 1)
        raise ValueError("at the bottom")

    down(200)


@pytest.mark.parametrize(
    ("handler", "status"),
    [(sync_returns_rows, Status.COMPLETED), (sync_fails_deep, Status.FAILED)],
)
async def test_a_sync_handlers_outcome_is_made_in_its_thread_not_on_the_event_loop(
    monkeypatch: pytest.MonkeyPatch, handler: Callable[..., Any], status: Status
) -> None:
    """A sync handler's value was encoded (and its traceback formatted) on the event loop
    after its thread ended: a handler returning 25 MB of rows stalled every other job, the
    API and the streams for seconds, and innocent async jobs timed out meanwhile."""
    made_on: list[str] = []
    for name in ("encode_result", "failure"):
        original = getattr(executor, name)

        def recording(*args: Any, _original: Any = original) -> Any:
            made_on.append(threading.current_thread().name)
            return _original(*args)

        monkeypatch.setattr(executor, name, recording)
    job, _ = await _run_one(handler)
    assert job.status is status, job
    assert made_on and all(name.startswith("edgejobs-job-") for name in made_on), made_on
