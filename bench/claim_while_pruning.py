"""Claim latency while retention deletes a large backlog (a benchmark, not a test).

Fills a fresh database with ``--rows`` old finished jobs (1,000,000 by default, one attempt
each), then feeds a steady stream of no-op jobs to a running pool twice: once idle (the
baseline) and once while ``EdgeJobs.prune()`` deletes the backlog in ``--batch``-row
transactions and vacuums the file. A job's latency is the time from just before its
``submit`` to its handler's first line, so it includes the claim waiting for the writer.

    python bench/claim_while_pruning.py                 # 1,000,000 rows (about a minute)
    python bench/claim_while_pruning.py --rows 100000   # quicker

Meanwhile another process takes the write lock every 50 ms (what a CLI ``submit`` or a client
app does), waiting in SQLite's busy handler as every process but the runner does.

Prints one table; the interesting lines are p99 during pruning against the baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import edgejobs.runner.maintenance as maintenance_module  # timed below
import edgejobs.runner.ticks as ticks_module
from edgejobs import EdgeJobs
from edgejobs.config import Config

DAY_MS = 86_400_000
FEED_INTERVAL_S = 0.002  # one job every 2 ms: ~500 jobs/s, well under capacity
OTHER_WRITE_INTERVAL_S = 0.05  # another process's write every 50 ms


def fill(path: Path, rows: int, finished_at: int) -> float:
    """Insert ``rows`` finished jobs and their attempts with executemany; return seconds."""
    started = time.perf_counter()
    pad = "x" * 100
    with closing(sqlite3.connect(str(path), isolation_level=None)) as conn:
        for first in range(1, rows + 1, 100_000):
            last = min(rows, first + 99_999)
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(
                "INSERT INTO jobs (seq, id, org, job_type, status, priority, params, result,"
                " attempts, max_retries, run_at, created_at, started_at, finished_at,"
                " updated_at) VALUES (?, ?, ?, 'noop', 'completed', 2, ?, '{}', 1, 3, ?, ?, ?,"
                " ?, ?)",
                (
                    (s, f"old-{s:09d}", f"org{s % 10}", f'{{"n":{s},"p":"{pad}"}}')
                    + (finished_at,) * 5
                    for s in range(first, last + 1)
                ),
            )
            conn.executemany(
                "INSERT INTO attempts (job_seq, number, started_at, finished_at, outcome)"
                " VALUES (?, 1, ?, ?, 'completed')",
                ((s, finished_at, finished_at) for s in range(first, last + 1)),
            )
            conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return time.perf_counter() - started


def timed(target: Callable[..., int], into: list[float]) -> Callable[..., int]:
    """``target`` with its duration (ms, on the writer thread) appended to ``into``."""

    def run(*args: Any, **kwargs: Any) -> int:
        started = time.perf_counter()
        try:
            return target(*args, **kwargs)
        finally:
            into.append((time.perf_counter() - started) * 1000)

    return run


class Feeder:
    """Submits one no-op job every ``FEED_INTERVAL_S`` until stopped."""

    def __init__(self, ej: EdgeJobs) -> None:
        self.ej = ej
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.submitted = 0

    async def _run(self) -> None:
        while not self._stop.is_set():
            await self.ej.submit("noop", org="bench", params={"t0": time.monotonic()})
            self.submitted += 1
            await asyncio.sleep(FEED_INTERVAL_S)

    def start(self) -> None:
        """Begin submitting."""
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        """Stop submitting and wait for the last submit."""
        self._stop.set()
        if self._task is not None:
            await self._task


OTHER_WRITER = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=float(sys.argv[2]))
while True:
    if sys.stdin.readline() != "go\\n":  # one write per line the parent sends
        break
    started = time.perf_counter()
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError:
        print("busy", flush=True)
        continue
    waited_ms = (time.perf_counter() - started) * 1000
    conn.execute("COMMIT")
    print(f"{waited_ms:.3f}", flush=True)
"""
"""A writer in another process (a CLI ``submit``, a client app): how long it waits for the
write lock, in SQLite's busy handler as every process but the runner does."""


class OtherProcessWriter:
    """Takes the write lock from another process every ``OTHER_WRITE_INTERVAL_S``."""

    def __init__(self, path: Path, busy_timeout_s: float) -> None:
        self._process = subprocess.Popen(
            [sys.executable, "-c", OTHER_WRITER, str(path), str(busy_timeout_s)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.waits: list[float] = []
        self.busy = 0  # gave up after the busy timeout: a submit that failed
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def _write_once(self) -> None:
        assert self._process.stdin is not None and self._process.stdout is not None
        self._process.stdin.write("go\n")
        self._process.stdin.flush()
        answer = self._process.stdout.readline().strip()
        if answer == "busy":
            self.busy += 1
        else:
            self.waits.append(float(answer))

    async def _run(self) -> None:
        while not self._stop.is_set():
            await asyncio.to_thread(self._write_once)
            await asyncio.sleep(OTHER_WRITE_INTERVAL_S)

    def start(self) -> None:
        """Begin writing."""
        self._stop.clear()
        self._task = asyncio.create_task(self._run())

    async def pause(self) -> list[float]:
        """Stop writing; the waits so far (ms), which are then forgotten."""
        self._stop.set()
        if self._task is not None:
            await self._task
        waits, self.waits = self.waits, []
        return waits

    def close(self) -> None:
        """End the other process."""
        assert self._process.stdin is not None
        self._process.stdin.close()
        self._process.wait(timeout=10)


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values`` (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def row(name: str, values: list[float]) -> str:
    """One table row: count, p50, p99 and max of ``values`` (ms)."""
    if not values:
        return f"| {name} | 0 | - | - | - | - |"
    return (
        f"| {name} | {len(values):,} | {statistics.median(values):.2f} |"
        f" {percentile(values, 0.99):.2f} | {max(values):.2f} | ms |"
    )


async def bench(folder: Path, rows: int, batch: int, workers: int, baseline_s: float) -> None:
    """Fill, measure the baseline, prune while measuring, print the table."""
    path = folder / "bench.db"
    config = Config.model_validate(
        {
            "database": {"path": str(path)},
            "runner": {"workers": workers},
            "retention": {"days": 30, "batch_size": batch},
        },
        strict=False,
    )
    ej = EdgeJobs(config=config)
    latencies: list[float] = []

    @ej.job_type("noop", dedup=False, max_retries=0)
    async def noop(ctx: Any, params: dict[str, Any]) -> None:
        latencies.append((time.monotonic() - params["t0"]) * 1000)

    await ej.open()
    fill_s = fill(path, rows, ej.clock.now_ms() - 40 * DAY_MS)
    size_before = path.stat().st_size
    batches: list[float] = []
    steps: list[float] = []
    ticks_module.delete_old_jobs = timed(ticks_module.delete_old_jobs, batches)  # type: ignore[assignment]
    maintenance_module.vacuum_step = timed(maintenance_module.vacuum_step, steps)  # type: ignore[assignment]

    await ej.start(run_workers=False)  # the pool runs below; retention only when we say so
    assert ej.pool is not None
    pool = asyncio.create_task(ej.pool.run())
    feeder = Feeder(ej)
    other = OtherProcessWriter(path, config.database.busy_timeout_ms / 1000)
    feeder.start()
    other.start()
    await asyncio.sleep(baseline_s)
    baseline, latencies[:] = list(latencies), []
    other_baseline = await other.pause()
    other.start()
    started = time.perf_counter()
    report = await ej.prune()
    prune_s = time.perf_counter() - started
    during = list(latencies)
    other_during = await other.pause()
    other.close()
    await feeder.stop()
    await ej.drain(timeout=60)
    await ej.maintenance.checkpoint(truncate=True)
    size_after = path.stat().st_size
    await ej.stop(grace_s=5)
    pool.cancel()
    await ej.close()

    mib = 1024 * 1024
    print(
        f"edgejobs claim latency while pruning: {rows:,} old jobs, batch {batch},"
        f" {workers} workers, a job every {FEED_INTERVAL_S * 1000:g} ms; SQLite"
        f" {sqlite3.sqlite_version}, Python {sys.version.split()[0]}"
    )
    print(
        f"fill: {fill_s:.1f} s; prune: {report.jobs:,} jobs in {report.batches:,} batches,"
        f" {prune_s:.1f} s with vacuum ({report.jobs / max(prune_s, 1e-9):,.0f} jobs/s);"
        f" file {size_before / mib:.1f} MiB -> {size_after / mib:.1f} MiB"
    )
    print()
    print("| measure | count | p50 | p99 | max | unit |")
    print("|---|---:|---:|---:|---:|---|")
    print(row("submit -> start, idle (baseline)", baseline))
    print(row("submit -> start, while pruning", during))
    print(row("another process's write waits, idle (baseline)", other_baseline))
    print(row("another process's write waits, while pruning", other_during))
    print(row("one prune batch (write lock held)", batches))
    print(row("one vacuum step (write lock held)", steps))
    if other.busy:
        print(f"another process's writes that gave up after the busy timeout: {other.busy}")


def main() -> None:
    """Parse the arguments and run the benchmark in a temporary folder."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=500, help="[retention] batch_size")
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--baseline-s", type=float, default=3.0)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="edgejobs-bench-"))
    try:
        asyncio.run(bench(folder, args.rows, args.batch, args.workers, args.baseline_s))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
