"""A watchdog for the event loop: says so in the log when something blocked it.

An async handler that calls blocking code (``time.sleep``, a synchronous HTTP client, a long
CPU loop) freezes every other job, lease renewal, tick and HTTP request of the process. Nothing
can interrupt it from inside the loop, but it can be seen afterwards: a task that sleeps a
fixed interval wakes up late by exactly as long as the loop was blocked. The warning names the
jobs that were running, so the culprit is among them. While no attempt runs, no handler can
block the loop: the watchdog then waits for one instead of waking an idle process.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger("edgejobs.runner")

INTERVAL_S = 1.0
"""How often the watchdog wakes. A stall of B seconds shows as a lag between B - INTERVAL_S and
B (the part that overlapped the sleep is not seen), so every stall of two seconds or more is
logged; waking more often would catch shorter ones, at an idle wake-up each (0.1–0.5 ms of CPU
on a small virtual machine)."""
THRESHOLD_S = 1.0


class LoopWatchdog:
    """Measures how late a periodic sleep wakes up and logs lags over ``threshold_s``."""

    def __init__(
        self,
        running: Callable[[], list[str]] | None = None,
        *,
        interval_s: float = INTERVAL_S,
        threshold_s: float = THRESHOLD_S,
        wait_busy: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._running = running
        self._wait_busy = wait_busy
        self.interval_s = interval_s
        self.threshold_s = threshold_s
        self.max_lag_s = 0.0
        """The longest lag seen (for tests and diagnostics)."""
        self.stalls = 0
        """How many lags over the threshold were logged."""

    def _jobs(self) -> list[str]:
        return list(self._running()) if self._running is not None else []

    async def run(self) -> None:
        """Watch until cancelled."""
        loop = asyncio.get_running_loop()
        while True:
            before = self._jobs()
            if not before and self._wait_busy is not None:
                await self._wait_busy()
                before = self._jobs()
            expected = loop.time() + self.interval_s
            await asyncio.sleep(self.interval_s)
            lag = loop.time() - expected
            self.max_lag_s = max(self.max_lag_s, lag)
            if lag >= self.threshold_s:
                self.stalls += 1
                # A job that started and blocked within the interval is still listed when
                # the watchdog wakes: its outcome is written only after the loop runs again.
                running = sorted(set(before) | set(self._jobs()))
                log.warning(
                    "the event loop was blocked for %.1f s (a handler ran blocking code in an"
                    " async function, e.g. time.sleep); jobs running then: %s",
                    lag,
                    ", ".join(running) or "none",
                )
