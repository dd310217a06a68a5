"""Repairs after the wall clock jumped backwards.

Retry times are stored as wall-clock instants (``next_retry_at``) computed as *now + delay*. If
the wall clock is set back by a day, every pending retry would wait a day longer than its
delay. The runner notices the jump (wall time moved back against the monotonic clock) and
moves pending retries back by the same amount, so each keeps the delay it had left.
Scheduled ``run_at`` times are not moved: they are instants a user chose.
"""

from __future__ import annotations

import sqlite3

from edgejobs.store.db import WriteTx


def shift_pending_retries(conn: sqlite3.Connection, tx: WriteTx, *, by_ms: int, now: int) -> int:
    """Add ``by_ms`` (negative after a backward jump) to the ``next_retry_at`` of every
    retrying job still waiting, never earlier than ``now``; return how many moved."""
    cur = conn.execute(
        "UPDATE jobs SET next_retry_at = max(?, next_retry_at + ?)"
        " WHERE status = 'retrying' AND next_retry_at > ?",
        (now, by_ms, now),
    )
    return cur.rowcount


__all__ = ["shift_pending_retries"]
