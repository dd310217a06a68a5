"""Rate limits of submissions per (org, job type), counted in the submission's transaction."""

from __future__ import annotations

import collections
import dataclasses
import sqlite3
from collections.abc import Iterable, Sequence

from edgejobs.errors import RateLimited
from edgejobs.store.db import WriteTx


@dataclasses.dataclass(frozen=True, slots=True)
class RateTake:
    """``count`` submissions of ``job_type`` by ``org`` against ``allowed`` per window."""

    org: str
    job_type: str
    allowed: int
    window_ms: int
    count: int


def written_share(takes: Sequence[RateTake], written: Iterable[tuple[str, str]]) -> list[RateTake]:
    """``takes`` counting only the jobs a submission wrote, given as their (org, job type):
    a deduplicated one (the existing job handed back, nothing written) takes nothing, so a
    client that resends a submission after a lost answer gets its job, not a 429."""
    if not takes:
        return []
    counts = collections.Counter(written)
    share = [dataclasses.replace(take, count=counts[(take.org, take.job_type)]) for take in takes]
    return [take for take in share if take.count > 0]


def take_rates(conn: sqlite3.Connection, takes: Sequence[RateTake], now: int) -> None:
    """Count ``takes`` in their fixed windows (aligned to multiples of the window), or raise
    :class:`~edgejobs.errors.RateLimited` with the seconds until the window ends.

    Runs in the submission's savepoint: a refused or failed submission takes nothing. A
    window other than the current one (it ended, the limit changed, the wall clock went back)
    counts as empty.
    """
    for take in takes:
        start = now - now % take.window_ms
        row = conn.execute(
            "SELECT window_start, used FROM rate_windows WHERE org = ? AND job_type = ?",
            (take.org, take.job_type),
        ).fetchone()
        used = int(row[1]) if row is not None and row[0] == start else 0
        if used + take.count > take.allowed:
            retry_after = max(1, -(-(start + take.window_ms - now) // 1000))
            raise RateLimited(
                f"org {take.org} may submit {take.allowed} {take.job_type} jobs per"
                f" {take.window_ms / 1000:g} s; try again later",
                retry_after_s=retry_after,
            )
        conn.execute(
            "INSERT INTO rate_windows (org, job_type, window_start, used) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (org, job_type) DO UPDATE SET window_start = excluded.window_start,"
            " used = excluded.used",
            (take.org, take.job_type, start, used + take.count),
        )


LONGEST_WINDOW_MS = 86_400_000
"""The longest window a ``rate_limit`` can have (``N/day``): a row whose window started at
least this long ago has ended, whatever the limit it was counted against."""

# An ended window counts as empty (take_rates compares its start with the current one), so
# its row only takes room: left in place, the table would keep a row for every org that ever
# submitted a rate-limited job type.
_DELETE_ENDED = (
    "DELETE FROM rate_windows WHERE (org, job_type) IN ("
    " SELECT org, job_type FROM rate_windows WHERE window_start <= :cutoff LIMIT :batch)"
)


def delete_ended_windows(conn: sqlite3.Connection, tx: WriteTx, *, now: int, batch: int) -> int:
    """Delete up to ``batch`` rate-limit windows that ended by ``now``; return how many.

    Only windows older than :data:`LONGEST_WINDOW_MS` are certain to have ended (the row does
    not say how long its window was); a clock set back deletes less, never a current window.
    """
    return conn.execute(_DELETE_ENDED, {"cutoff": now - LONGEST_WINDOW_MS, "batch": batch}).rowcount


__all__ = [
    "LONGEST_WINDOW_MS",
    "RateTake",
    "delete_ended_windows",
    "take_rates",
    "written_share",
]
