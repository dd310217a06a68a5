"""Helpers of the operations tests (imported as ``ops_support``; see conftest.py)."""

from __future__ import annotations

import asyncio
import collections
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

from edgejobs import EdgeJobs
from edgejobs.clock import Clock
from edgejobs.config import Config

DAY_MS = 86_400_000

TERMINAL = ("completed", "failed", "timed_out", "dead_letter", "canceled")


def make_config(path: Path, **sections: dict[str, Any]) -> Config:
    """A configuration on ``path`` with some sections overridden (never reads a file)."""
    data: dict[str, Any] = {"database": {"path": str(path)}}
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return Config.model_validate(data, strict=False)


def make_app(path: Path, clock: Clock | None = None, **sections: dict[str, Any]) -> EdgeJobs:
    """An :class:`EdgeJobs` with a quick job type, ``quick``."""
    ej = EdgeJobs(config=make_config(path, **sections), clock=clock)

    @ej.job_type("quick", dedup=False, max_retries=0)
    async def quick(ctx: Any, params: dict[str, Any]) -> dict[str, Any]:
        return {"n": params.get("n")}

    return ej


def connect(path: Path) -> sqlite3.Connection:
    """A connection of our own (what another process would see)."""
    conn = sqlite3.connect(str(path), isolation_level=None, timeout=30)
    conn.row_factory = sqlite3.Row
    return conn


def insert_jobs(
    path: Path,
    count: int,
    *,
    prefix: str,
    status: str,
    created_at: int,
    finished_at: int | None,
    run_at: int | None = None,
    next_retry_at: int | None = None,
    params_bytes: int = 120,
) -> list[int]:
    """Insert ``count`` jobs (and one attempt each) straight into the file; return their seqs.

    One transaction and ``executemany``: 100,000 rows take about a second, where submitting
    them through the API would take a minute.
    """
    padding = "x" * params_bytes
    with closing(connect(path)) as conn:
        conn.execute("BEGIN IMMEDIATE")
        start = int(conn.execute("SELECT coalesce(max(seq), 0) FROM jobs").fetchone()[0]) + 1
        seqs = list(range(start, start + count))
        conn.executemany(
            "INSERT INTO jobs (seq, id, org, job_type, status, priority, params, result,"
            " attempts, max_retries, run_at, next_retry_at, created_at, started_at,"
            " finished_at, updated_at)"
            " VALUES (?, ?, ?, 'quick', ?, 2, ?, ?, 1, 3, ?, ?, ?, ?, ?, ?)",
            (
                (
                    seq,
                    f"{prefix}-{seq:09d}",
                    f"org{seq % 7}",
                    status,
                    f'{{"n":{seq},"pad":"{padding}"}}',
                    '{"ok":true}' if status == "completed" else None,
                    run_at if run_at is not None else created_at,
                    next_retry_at,
                    created_at,
                    created_at,
                    finished_at,
                    finished_at if finished_at is not None else created_at,
                )
                for seq in seqs
            ),
        )
        if finished_at is not None:
            conn.executemany(
                "INSERT INTO attempts (job_seq, number, started_at, finished_at, outcome)"
                " VALUES (?, 1, ?, ?, ?)",
                (
                    (seq, created_at, finished_at, status if status != "dead_letter" else "failed")
                    for seq in seqs
                ),
            )
        # Counted as the engine's own writes count them (edgejobs.store.db.WriteTx.count).
        per_org = collections.Counter(f"org{seq % 7}" for seq in seqs)
        conn.executemany(
            "INSERT INTO job_counts (org, job_type, status, n) VALUES (?, 'quick', ?, ?)"
            " ON CONFLICT (org, job_type, status) DO UPDATE SET n = n + excluded.n",
            [(org, status, n) for org, n in per_org.items()],
        )
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return seqs


def add_dependency(path: Path, child_seq: int, parent_seq: int) -> None:
    """Record ``child`` depends on ``parent`` straight in the file."""
    with closing(connect(path)) as conn:
        conn.execute(
            "INSERT INTO job_deps (child_seq, parent_seq) VALUES (?, ?)", (child_seq, parent_seq)
        )


def existing_ids(path: Path, ids: list[str]) -> set[str]:
    """Which of ``ids`` still have a row."""
    found: set[str] = set()
    with closing(connect(path)) as conn:
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            found.update(
                row[0] for row in conn.execute(f"SELECT id FROM jobs WHERE id IN ({marks})", chunk)
            )
    return found


def scalar(path: Path, sql: str, *params: Any) -> Any:
    """The first column of the first row of ``sql``."""
    with closing(connect(path)) as conn:
        return conn.execute(sql, params).fetchone()[0]


@contextmanager
def snapshot_reader(path: Path) -> Iterator[sqlite3.Connection]:
    """A connection holding a read transaction (a snapshot) until the block ends."""
    conn = connect(path)
    try:
        conn.execute("BEGIN")
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()  # the snapshot begins
        yield conn
        conn.execute("COMMIT")
    finally:
        conn.close()


class WriteTrace:
    """Records, in one ordered list, when each write operation was queued and when it ran.

    Instruments the store's writer of ``ej`` (it is not replaced: every operation still runs
    on the real writer thread, in the real transactions). An operation's ``kind`` is set by
    whatever it calls (see :meth:`mark`), or ``claim`` when it moved a job to ``running``.
    """

    def __init__(self, ej: EdgeJobs) -> None:
        self.entries: list[tuple[str, int, str]] = []
        self._next = 0
        self._local = threading.local()
        writer = ej.store.writer
        submit, submit_nowait = writer.submit, writer.submit_nowait

        def wrap(op: Callable[..., Any]) -> Callable[..., Any]:
            if getattr(op, "traced", False):  # submit() may delegate to submit_nowait()
                return op
            number = self._next
            self._next += 1
            self.entries.append(("queued", number, ""))

            def run(conn: sqlite3.Connection, tx: Any) -> Any:
                self._local.kind = ""
                running_before = sum(1 for s in tx.jobs_changed.values() if s == "running")
                result = op(conn, tx)
                kind = self._local.kind
                if not kind and sum(1 for s in tx.jobs_changed.values() if s == "running") > (
                    running_before
                ):
                    kind = "claim"
                self.entries.append(("ran", number, kind))
                return result

            run.traced = True  # type: ignore[attr-defined]
            return run

        async def traced_submit(op: Callable[..., Any]) -> Any:
            return await submit(wrap(op))

        def traced_submit_nowait(op: Callable[..., Any], **kwargs: Any) -> asyncio.Future[Any]:
            return submit_nowait(wrap(op), **kwargs)

        writer.submit = traced_submit  # type: ignore[method-assign]
        writer.submit_nowait = traced_submit_nowait  # type: ignore[method-assign]

    def mark(self, kind: str) -> None:
        """Called from inside an operation (on the writer thread): name its kind."""
        self._local.kind = kind

    def runs(self) -> list[tuple[int, int, str]]:
        """(position, operation number, kind) of every operation that ran, in order."""
        return [(i, n, k) for i, (what, n, k) in enumerate(self.entries) if what == "ran"]

    def waits(self, kinds: set[str]) -> list[int]:
        """For every claim: how many operations of ``kinds`` ran while it was queued."""
        queued_at = {n: i for i, (what, n, _) in enumerate(self.entries) if what == "queued"}
        long_runs = [i for i, _, k in self.runs() if k in kinds]
        result = []
        for position, number, kind in self.runs():
            if kind != "claim":
                continue
            start = queued_at[number]
            result.append(sum(1 for i in long_runs if start < i < position))
        return result
