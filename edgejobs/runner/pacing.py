"""Pauses between the batches of a long delete, so that other processes can write meanwhile.

Retention, event trimming and the vacuum each run as many short write transactions (one batch
each), so that this process's own claims and outcomes commit in between: its writer queues them
behind the current batch. Another process's writer (a CLI ``submit``, a client app, ``edgejobs
prune`` beside a runner) does not queue: it waits in SQLite's busy handler, which sleeps 1, 2,
5 … up to 100 ms between tries and gets the write lock only if it is free at one of those
instants. Batches back to back left it free for microseconds at a time, so such a writer
waited seconds (4 s measured for a submit during the retention of a million jobs, near the
5 s busy timeout after which it fails). A pause after each batch, as long as the batch was
(at least :data:`BATCH_PAUSE_MIN_S`, at most :data:`BATCH_PAUSE_MAX_S`), leaves the lock free
at least half the time: such a writer gets in within a try or two, and a long delete takes
at most about twice as long.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from edgejobs.store import Store
    from edgejobs.store.db import WriteOp

__all__ = ["BATCH_PAUSE_MAX_S", "BATCH_PAUSE_MIN_S", "BatchPacer", "delete_in_batches"]

T = TypeVar("T")

BATCH_PAUSE_MIN_S = 0.01
"""The least pause after a batch: a batch of a few milliseconds still leaves the write lock
free for longer than SQLite's first busy-handler sleeps."""

BATCH_PAUSE_MAX_S = 0.1
"""The longest pause after a batch: SQLite's longest busy-handler sleep, so a slow batch (a
busy disk) does not slow the delete further than needed."""


class BatchPacer:
    """Writes the batches of one long delete to ``store`` with a pause between them.

    ``await pacer.write(op)`` pauses as long as the previous batch took (bounded), then runs
    ``op`` in the store's next transaction: the first batch starts at once, and the last one
    is followed by no pause.
    """

    def __init__(self, store: Store) -> None:
        self._store = store
        self._last_batch_s: float | None = None

    async def write(self, op: WriteOp[T]) -> T:
        """Pause if a batch came before, then write ``op`` and time it."""
        if self._last_batch_s is not None:
            await asyncio.sleep(min(BATCH_PAUSE_MAX_S, max(BATCH_PAUSE_MIN_S, self._last_batch_s)))
        started = time.monotonic()
        try:
            return await self._store.write(op)
        finally:
            self._last_batch_s = time.monotonic() - started


async def delete_in_batches(store: Store, delete: WriteOp[int], batch: int) -> int:
    """Write ``delete`` (an op that removes up to ``batch`` rows) one paced transaction at a
    time until a batch comes back short; how many rows went in all."""
    pacer = BatchPacer(store)
    total = 0
    while True:
        deleted = await pacer.write(delete)
        total += deleted
        if deleted < batch:
            return total
