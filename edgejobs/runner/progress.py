"""Per-job coalescing of progress reports to at most one write per ``min_interval_ms``."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from edgejobs.clock import Clock

Flush = Callable[[float, "str | None"], None]


class ProgressCoalescer:
    """Keeps the latest report and writes it at most once per interval.

    The first report writes at once; later ones within the interval replace each other and
    the last is written when the interval ends; :meth:`flush` writes a pending report now
    (the runner calls it before the attempt's final write, so the last report is never lost).
    """

    def __init__(self, interval_ms: int, clock: Clock, write: Flush) -> None:
        self._interval_s = interval_ms / 1000
        self._clock = clock
        self._write = write
        self._last_write: float | None = None
        self._pending: tuple[float, str | None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False
        self.writes = 0

    def report(self, percent: float, message: str | None) -> None:
        """Take a report; write it now or when the interval allows."""
        if self._closed:
            return
        now = self._clock.monotonic()
        if self._last_write is None or now - self._last_write >= self._interval_s:
            self._pending = None
            self._emit(percent, message, now)
            return
        self._pending = (percent, message)
        if self._timer is None:
            delay = self._interval_s - (now - self._last_write)
            self._timer = asyncio.get_running_loop().call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self._pending is not None and not self._closed:
            percent, message = self._pending
            self._pending = None
            self._emit(percent, message, self._clock.monotonic())

    def _emit(self, percent: float, message: str | None, now: float) -> None:
        self._last_write = now
        self.writes += 1
        self._write(percent, message)

    def flush(self) -> None:
        """Write a pending report now, then accept no more."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._pending is not None and not self._closed:
            percent, message = self._pending
            self._pending = None
            self._emit(percent, message, self._clock.monotonic())
        self._closed = True
