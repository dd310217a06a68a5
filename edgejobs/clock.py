"""Time, in one place: the store and the runner read it only through a :class:`Clock`.

Wall-clock milliseconds go into the database (``run_at``, ``finished_at``, leases, retention);
the monotonic clock measures durations inside the process (timeouts), so a wall-clock jump
never fires or freezes a timeout. Tests inject :class:`edgejobs.testing.FakeClock`.
"""

from __future__ import annotations

import time
from typing import Protocol, runtime_checkable


@runtime_checkable
class Clock(Protocol):
    """Source of wall-clock and monotonic time."""

    def now_ms(self) -> int:
        """Wall-clock time as integer unix milliseconds."""
        ...

    def monotonic(self) -> float:
        """Monotonic seconds, for durations inside this process."""
        ...


class SystemClock:
    """The real clock."""

    def now_ms(self) -> int:
        """Wall-clock time as integer unix milliseconds."""
        return time.time_ns() // 1_000_000

    def monotonic(self) -> float:
        """Monotonic seconds."""
        return time.monotonic()
