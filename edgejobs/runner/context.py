"""What a handler sees: :class:`JobContext` (async handlers) and :class:`SyncJobContext`, and
the handler signatures that go with them (:class:`AsyncHandler`, :class:`SyncHandler`)."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol, TypeAlias

from edgejobs.errors import ValidationError
from edgejobs.models import storable_text

ProgressSink = Callable[[float, "str | None"], None]


def check_progress(percent: float, message: str | None) -> tuple[float, str | None]:
    """Validate a progress report: a number within 0–100 and an optional short message."""
    if isinstance(percent, bool) or not isinstance(percent, int | float) or math.isnan(percent):
        raise ValidationError(f"progress must be a number from 0 to 100, got {percent!r}")
    if not 0 <= percent <= 100:
        raise ValidationError(f"progress must be from 0 to 100, got {percent}")
    if message is not None:
        message = storable_text(str(message))[:1000]  # a file name that is not UTF-8, say
    return float(percent), message


class BaseContext:
    """Fields shared by both contexts."""

    def __init__(
        self,
        *,
        job_id: str,
        org: str,
        job_type: str,
        attempt: int,
        parent_results: dict[str, Any],
        sink: ProgressSink,
    ) -> None:
        self.job_id = job_id
        """The job's id."""
        self.org = org
        """The org the job belongs to (as stored)."""
        self.job_type = job_type
        """The job type's name."""
        self.attempt = attempt
        """1 for the first attempt, 2 for the first retry, and so on."""
        self.parent_results = parent_results
        """Results of the jobs this one depends on, by parent id."""
        self._sink = sink
        # A plain flag: set once by the runner, read by the handler's thread; assigning a bool
        # is atomic, and a threading.Event per attempt costs more than a no-op job.
        self._cancelled = False

    @property
    def cancelled(self) -> bool:
        """True once the job was canceled or timed out; long sync handlers should check it."""
        return self._cancelled

    def _cancel(self) -> None:
        self._cancelled = True


class JobContext(BaseContext):
    """The context passed to async handlers."""

    async def progress(self, percent: float, message: str | None = None) -> None:
        """Report progress (0–100). Writes are coalesced; the last report always lands."""
        percent, message = check_progress(percent, message)
        self._sink(percent, message)


class SyncJobContext(BaseContext):
    """The context passed to sync handlers (they run in a worker thread)."""

    def __init__(self, *, loop: asyncio.AbstractEventLoop, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._loop = loop

    def progress(self, percent: float, message: str | None = None) -> None:
        """Report progress (0–100) from the handler's thread; never blocks on the database."""
        percent, message = check_progress(percent, message)
        self._loop.call_soon_threadsafe(self._sink, percent, message)


JobResult: TypeAlias = Mapping[Any, Any] | list[Any] | tuple[Any, ...] | str | int | float | None
"""What a handler may return: a value JSON can encode (a dict, also a TypedDict, a list, a
string, a number or None), stored as the job's result. Any other value fails the attempt."""


class AsyncHandler(Protocol):
    """An ``async def handler(ctx, params)``: it runs in the event loop with a :class:`JobContext`,
    whose ``progress`` must be awaited."""

    def __call__(self, ctx: JobContext, params: dict[str, Any], /) -> Awaitable[JobResult]: ...


class SyncHandler(Protocol):
    """A plain ``def handler(ctx, params)``: it runs in a worker thread (or a child process) with
    a :class:`SyncJobContext`, whose ``progress`` is a plain call.

    The result type is what tells it from an :class:`AsyncHandler`: an ``async def`` that
    declares a :class:`SyncJobContext` returns a coroutine, which is not a :data:`JobResult`, so
    it is refused; it would run with a :class:`JobContext` and call ``progress`` without
    awaiting it, and the report would be lost.
    """

    def __call__(self, ctx: SyncJobContext, params: dict[str, Any], /) -> JobResult: ...
