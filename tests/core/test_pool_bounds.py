"""N workers hammered with thousands of jobs and concurrent claimers: never more than N
running (seen by the handlers and by another connection to the database), and each job
claimed exactly once per attempt."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from core_support import connect, count_status, illegal_moves, rows, wait_until

from edgejobs import EdgeJobs, JobSpec
from edgejobs.config import Config, RunnerConfig

WORKERS = 4
JOBS = 2000


class Watch:
    """Counts running handlers in this process and, from a thread with its own connection,
    jobs the database shows ``running``; remembers the highest of each."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.now = 0
        self.max_in_handlers = 0
        self.max_in_database = 0
        self.samples = 0
        self.calls: Counter[tuple[str, int]] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        conn = connect(self.path)
        try:
            while not self._stop.is_set():
                try:
                    running = conn.execute(
                        "SELECT count(*) FROM jobs WHERE status = 'running'"
                    ).fetchone()[0]
                except sqlite3.OperationalError:
                    continue
                self.max_in_database = max(self.max_in_database, running)
                self.samples += 1
                time.sleep(0.0005)
        finally:
            conn.close()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def check_database(self, conn: sqlite3.Connection) -> None:
        running = conn.execute("SELECT count(*) FROM jobs WHERE status = 'running'").fetchone()[0]
        self.max_in_database = max(self.max_in_database, running)


async def test_never_more_than_n_running_and_one_claim_per_attempt(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    ej = EdgeJobs(config=Config(runner=RunnerConfig(workers=WORKERS)), database=path)
    watch = Watch(path)
    check: sqlite3.Connection | None = None  # opened once the database exists

    async def handler(ctx: Any, params: dict[str, Any]) -> dict[str, int]:
        watch.calls[(ctx.job_id, ctx.attempt)] += 1
        watch.now += 1
        watch.max_in_handlers = max(watch.max_in_handlers, watch.now)
        try:
            if params["n"] % 7 == 0 and check is not None:
                watch.check_database(check)
            for _ in range(params["n"] % 3):
                await asyncio.sleep(0)
            if params["n"] % 50 == 1 and ctx.attempt == 1:
                raise RuntimeError("fails once, then retried")  # a second attempt
            return {"n": params["n"]}
        finally:
            watch.now -= 1

    def sync_handler(ctx: Any, params: dict[str, Any]) -> dict[str, int]:
        watch.calls[(ctx.job_id, ctx.attempt)] += 1
        return {"n": params["n"]}

    ej.register("hammer", handler, max_retries=1, base_delay_s=0, max_delay_s=0)
    ej.register("hammer.sync", sync_handler)
    await ej.open()
    check = connect(path)
    watch.start()
    try:
        await ej.start()
        assert ej.pool is not None
        pool = ej.pool
        stop_claimers = asyncio.Event()

        async def claimer() -> None:
            # Extra claims racing the background loop, each for whatever slots look free.
            while not stop_claimers.is_set():
                await pool.claim_once()
                await asyncio.sleep(0)

        claimers = [asyncio.create_task(claimer()) for _ in range(3)]
        batch = 250
        for start in range(0, JOBS, batch):
            specs = [
                JobSpec("hammer.sync" if n % 10 == 0 else "hammer", "acme", {"n": n})
                for n in range(start, start + batch)
            ]
            await ej.submit_many(specs)
            await asyncio.sleep(0)
        await wait_until(lambda: count_status(path, "completed") == JOBS, timeout=60, interval=0.05)
        stop_claimers.set()
        await asyncio.gather(*claimers)
    finally:
        watch.stop()
        await ej.close()
        if check is not None:
            check.close()

    assert watch.samples > 0
    assert 1 <= watch.max_in_handlers <= WORKERS
    assert 1 <= watch.max_in_database <= WORKERS, watch.max_in_database

    jobs = rows(path, "SELECT seq, id, status, attempts FROM jobs")
    assert len(jobs) == JOBS and all(j["status"] == "completed" for j in jobs)
    attempts = rows(path, "SELECT job_seq, number, outcome FROM attempts ORDER BY job_seq, number")
    by_job: dict[int, list[dict[str, Any]]] = {}
    for a in attempts:
        by_job.setdefault(a["job_seq"], []).append(a)
    for job in jobs:
        mine = by_job[job["seq"]]
        # One attempt row per claim, numbered 1..attempts, and the handler ran once for each.
        assert [a["number"] for a in mine] == list(range(1, job["attempts"] + 1))
        assert mine[-1]["outcome"] == "completed"
        for a in mine:
            assert watch.calls[(job["id"], a["number"])] == 1
    assert sum(1 for j in jobs if j["attempts"] == 2) == len(
        [n for n in range(JOBS) if n % 50 == 1]
    )
    assert sum(watch.calls.values()) == len(attempts)
    assert not illegal_moves(path)
