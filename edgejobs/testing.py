"""A test kit for your own test suites: a fake clock, a temporary database and a stepped runner.

Handlers are ordinary functions, so most of their logic is best tested by calling them. What
this module adds is a way to test how your jobs behave *inside* edgejobs (retries, timeouts,
dependencies, deduplication, schedules) quickly and deterministically:

* :class:`FakeClock` replaces the wall clock: retries and schedules become due when the test
  says so (:meth:`FakeClock.advance`), never by sleeping. A due retry or delayed job runs at
  the next :meth:`Harness.drain`; a due schedule fires only at :meth:`Harness.tick`.
* :func:`temporary_database` gives a fresh database file in a temporary folder (WAL needs a
  real file; an in-memory database would behave differently).
* :class:`Harness` runs an :class:`~edgejobs.EdgeJobs` on such a file with a fake clock and
  *no* background workers: the test steps it with :meth:`Harness.run_once`,
  :meth:`Harness.drain`, :meth:`Harness.tick` and :meth:`Harness.advance`.

Example (with pytest and pytest-asyncio)::

    from edgejobs import Status
    from edgejobs.testing import Harness

    from myapp.jobs import ej          # your EdgeJobs with its job types


    async def test_a_failing_report_is_retried() -> None:
        async with Harness(ej) as h:    # same job types, temporary database, fake clock
            job = await h.submit("reports.build", org="acme", params={"month": "bad"})
            await h.drain()             # runs everything that is ready, then returns
            assert (await h.get(job.id)).status is Status.RETRYING
            h.advance(3600)             # past the backoff delay, without sleeping
            await h.drain()             # the retry is due now and runs
            assert (await h.get(job.id)).attempts == 2

Job types can also be registered on the harness itself, before or after entering it::

    h = Harness()
    @h.ej.job_type("echo", max_retries=0)
    async def echo(ctx, params):
        return params

Timeouts are real durations (a handler's timeout is measured by the event loop, not by the
fake clock), so give test job types short timeouts.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from edgejobs.app import EdgeJobs
from edgejobs.clock import Clock
from edgejobs.config import Config
from edgejobs.errors import EdgeJobsError
from edgejobs.models import Attempt, Job, Priority
from edgejobs.runner.pool import Pool

__all__ = ["DEFAULT_START", "FakeClock", "Harness", "temporary_database"]

DEFAULT_START = datetime.fromisoformat("2026-01-01T00:00:00+00:00")
"""Where a :class:`FakeClock` starts unless told otherwise (a fixed time: tests repeat)."""


class FakeClock:
    """A :class:`~edgejobs.clock.Clock` that only moves when the test moves it.

    Wall-clock time starts at ``start`` (an aware datetime or unix milliseconds; default
    :data:`DEFAULT_START`). :meth:`advance` moves wall-clock and monotonic time together;
    :meth:`set` jumps the wall clock (monotonic time follows forward jumps only, because a
    monotonic clock never goes back).
    """

    def __init__(self, start: datetime | int | None = None) -> None:
        self._now_ms = _to_ms(DEFAULT_START if start is None else start)
        self._monotonic = 1000.0

    def now_ms(self) -> int:
        """Wall-clock time as integer unix milliseconds."""
        return self._now_ms

    def monotonic(self) -> float:
        """Monotonic seconds."""
        return self._monotonic

    def now(self) -> datetime:
        """Wall-clock time as an aware UTC datetime."""
        return datetime.fromtimestamp(self._now_ms / 1000, tz=DEFAULT_START.tzinfo)

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds`` (fractions allowed)."""
        if seconds < 0:
            raise ValueError("a clock only advances; use set() to jump back")
        self._now_ms += round(seconds * 1000)
        self._monotonic += seconds

    def set(self, when: datetime | int) -> None:
        """Jump the wall clock to ``when`` (an aware datetime or unix milliseconds)."""
        target = _to_ms(when)
        if target > self._now_ms:
            self._monotonic += (target - self._now_ms) / 1000
        self._now_ms = target


def _to_ms(value: datetime | int) -> int:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("use an aware datetime (with a UTC offset)")
        return round(value.timestamp() * 1000)
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError("expected an aware datetime or integer unix milliseconds")
    return value


@contextlib.contextmanager
def temporary_database(name: str = "edgejobs.db") -> Iterator[Path]:
    """A path for a fresh database file in a new temporary folder, removed afterwards.

    The file itself is created when an :class:`~edgejobs.EdgeJobs` opens it. As a pytest
    fixture::

        @pytest.fixture
        def database():
            with temporary_database() as path:
                yield path

    (pytest's own ``tmp_path / "jobs.db"`` works just as well.)
    """
    folder = tempfile.mkdtemp(prefix="edgejobs-test-")
    try:
        yield Path(folder) / name
    finally:
        shutil.rmtree(folder, ignore_errors=True)


class Harness:
    """An :class:`~edgejobs.EdgeJobs` on a temporary database with a :class:`FakeClock`,
    started without background workers, for stepping through jobs in tests.

    ``app``: copy the job types (and configuration) of your own instance; ``config``: use
    this configuration instead of the defaults (its database path is replaced);
    ``database``: a file to use instead of a temporary one; ``clock``: another clock (e.g.
    :class:`~edgejobs.clock.SystemClock` for tests about real timeouts); ``workers``: the
    number of slots; ``shutdown_grace_s``: how long leaving the harness lets running
    attempts finish before interrupting them (default 0: tests should not wait).

    The instance is available as :attr:`ej` before the harness is entered, so job types can
    be registered on it; entering opens the database and becomes its runner.

    Nothing runs unless the test steps it, so ``await h.ej.wait(job.id)`` blocks forever (or
    until its ``timeout``): run the job with :meth:`drain` (or :meth:`run_once`), then read it
    with :meth:`get`.
    """

    def __init__(
        self,
        app: EdgeJobs | None = None,
        *,
        config: Config | None = None,
        database: str | os.PathLike[str] | None = None,
        clock: Clock | None = None,
        workers: int | None = None,
        shutdown_grace_s: float = 0.0,
    ) -> None:
        self._tempdir: contextlib.ExitStack | None = None
        if database is None:
            stack = contextlib.ExitStack()
            database = stack.enter_context(temporary_database())
            self._tempdir = stack
        self.path = Path(database)
        """The database file."""
        self.clock: Clock = clock if clock is not None else FakeClock()
        """The clock the instance reads (a :class:`FakeClock` unless one was given, also
        available typed as one: :attr:`fake_clock`)."""
        base = config if config is not None else (app.config if app is not None else None)
        self.ej = EdgeJobs(self.path, config=base, clock=self.clock, workers=workers)
        """The :class:`~edgejobs.EdgeJobs` under test."""
        if app is not None:
            for job_type in app.registry:
                self.ej.registry.add(job_type)
        self.shutdown_grace_s = shutdown_grace_s

    @property
    def fake_clock(self) -> FakeClock:
        """:attr:`clock` typed as the :class:`FakeClock` it is by default, for moving it
        without a cast (``h.fake_clock.set(...)``); :class:`~edgejobs.errors.EdgeJobsError`
        when the harness was given another clock."""
        if not isinstance(self.clock, FakeClock):
            raise EdgeJobsError(
                f"the harness was given a {type(self.clock).__name__}, not a FakeClock:"
                " fake_clock is only for the default clock"
            )
        return self.clock

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> Harness:
        """Open the database and become its runner, with no background tasks."""
        try:
            await self.ej.start(run_workers=False)
        except BaseException:
            self._cleanup()
            raise
        return self

    async def close(self) -> None:
        """Interrupt what still runs (after ``shutdown_grace_s``), close, delete the temp file."""
        try:
            await self.ej.stop(grace_s=self.shutdown_grace_s)
            await self.ej.close()
        finally:
            self._cleanup()

    def _cleanup(self) -> None:
        if self._tempdir is not None:
            self._tempdir.close()
            self._tempdir = None

    async def __aenter__(self) -> Harness:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- stepping ---------------------------------------------------------------------------

    def _pool(self) -> Pool:
        if self.ej.pool is None or self.ej.ticker is None:
            raise EdgeJobsError("the harness is not started: use `async with Harness(...)`")
        return self.ej.pool

    async def run_once(self) -> int:
        """Claim ready jobs for the free slots, wait until those attempts have ended (their
        outcome written), and return how many started."""
        pool = self._pool()
        started = await pool.claim_once()
        if started:
            await pool.wait_idle()
        return started

    async def drain(self, *, timeout: float | None = 60.0) -> None:
        """Run jobs until none is ready or running (what is not due yet keeps waiting)."""
        self._pool()
        await self.ej.drain(timeout=timeout)

    async def tick(self) -> None:
        """One pass of the tick loop: due retries and schedules, expired leases, the
        dependency safety net and (when due) retention."""
        self._pool()
        assert self.ej.ticker is not None
        await self.ej.ticker.tick()

    def advance(self, seconds: float) -> None:
        """Move the fake clock forward. Retries and delayed (``run_at``/``delay_s``) jobs that
        are now due run at the next :meth:`drain` or :meth:`run_once`; a due schedule fires,
        and an expired lease is recovered, only at the next :meth:`tick`."""
        if not isinstance(self.clock, FakeClock):
            raise EdgeJobsError("advance() needs the harness's FakeClock")
        self.clock.advance(seconds)

    # -- shortcuts --------------------------------------------------------------------------

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
        """Same as :meth:`EdgeJobs.submit <edgejobs.EdgeJobs.submit>`."""
        return await self.ej.submit(
            job_type,
            org=org,
            params=params,
            priority=priority,
            depends_on=depends_on,
            run_at=run_at,
            delay_s=delay_s,
            dedup=dedup,
            dedup_key=dedup_key,
        )

    async def get(self, job_id: str) -> Job:
        """The job as stored now."""
        return await self.ej.get(job_id)

    async def attempts(self, job_id: str) -> list[Attempt]:
        """The job's execution log."""
        return await self.ej.attempts(job_id)
