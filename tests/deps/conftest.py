"""Fixtures for the dependency tests: a fake clock, a stepped runner and scripted handlers.

Handlers here never finish on their own: each attempt waits on a gate the test opens with
:meth:`Script.complete` or :meth:`Script.fail`, so a test decides exactly when a parent ends
relative to a child's submission, a claim or a tick.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from ej_testkit import count_drift

from edgejobs import EdgeJobs, PermanentError
from edgejobs.config import Config, RetryConfig, RunnerConfig
from edgejobs.runner.context import JobContext
from edgejobs.testing import FakeClock

TERMINAL = ("completed", "failed", "timed_out", "dead_letter", "canceled")
UNSUCCESSFUL = ("failed", "timed_out", "dead_letter", "canceled")


class Script:
    """Scripted handlers: every attempt waits for the test to say how it ends.

    At the start of each attempt the handler reads its parents' statuses through a separate
    read transaction and records a violation if any parent is not ``completed`` — the check
    "no job ever starts before all its parents completed", made from inside the job.
    """

    def __init__(self, ej: EdgeJobs) -> None:
        self.ej = ej
        self.gates: dict[str, asyncio.Future[str]] = {}
        self.started: list[tuple[str, int]] = []
        self.parent_results: dict[tuple[str, int], dict[str, Any]] = {}
        self.violations: list[str] = []
        self.on_start: Callable[[str, int, dict[str, Any]], None] | None = None

    async def handler(self, ctx: JobContext, params: dict[str, Any]) -> Any:
        """The handler of every scripted job type."""
        parents = await self.ej.store.read(lambda conn: parent_statuses(conn, ctx.job_id))
        not_done = {pid: st for pid, st in parents.items() if st != "completed"}
        if not_done:
            self.violations.append(f"{ctx.job_id} started while parents were {not_done}")
        if set(ctx.parent_results) != set(parents):
            self.violations.append(
                f"{ctx.job_id}: parent_results {sorted(ctx.parent_results)} != parents"
                f" {sorted(parents)}"
            )
        if self.on_start is not None:
            self.on_start(ctx.job_id, ctx.attempt, dict(ctx.parent_results))
        self.started.append((ctx.job_id, ctx.attempt))
        self.parent_results[(ctx.job_id, ctx.attempt)] = dict(ctx.parent_results)
        gate: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.gates[ctx.job_id] = gate
        try:
            outcome = await gate
        finally:
            if self.gates.get(ctx.job_id) is gate:
                del self.gates[ctx.job_id]
        if outcome == "fail":
            raise RuntimeError(f"scripted failure of {ctx.job_id}")
        if outcome == "permanent":
            raise PermanentError(f"scripted permanent failure of {ctx.job_id}")
        return {"job": ctx.job_id, "attempt": ctx.attempt, **params}

    def waiting(self) -> list[str]:
        """Jobs whose attempt waits on its gate now."""
        return [job_id for job_id, gate in self.gates.items() if not gate.done()]

    async def settle(self, timeout: float = 10.0) -> None:
        """Wait until every attempt of the pool waits on its gate, or has been forgotten."""
        pool = self.ej.pool
        assert pool is not None
        async with asyncio.timeout(timeout):
            while True:
                pending = set(self.waiting())
                if all(job_id in pending for job_id in pool.running_ids):
                    return
                await asyncio.sleep(0.001)

    async def claim(self) -> int:
        """One claim for the free slots, then wait until the claimed handlers wait."""
        assert self.ej.pool is not None
        started = await self.ej.pool.claim_once()
        await self.settle()
        return started

    async def finish(self, job_id: str, outcome: str = "complete") -> None:
        """End the waiting attempt of ``job_id`` and wait until its outcome is committed."""
        self.gates[job_id].set_result(outcome)
        await self.settle()

    async def complete(self, job_id: str) -> None:
        """Let the attempt of ``job_id`` return successfully."""
        await self.finish(job_id, "complete")

    async def fail(self, job_id: str, *, permanent: bool = False) -> None:
        """Let the attempt of ``job_id`` raise."""
        await self.finish(job_id, "permanent" if permanent else "fail")


def parent_statuses(conn: sqlite3.Connection, job_id: str) -> dict[str, str]:
    """{parent id: status} of one job, read straight from the tables."""
    return {
        row[0]: row[1]
        for row in conn.execute(
            "SELECT p.id, p.status FROM jobs c JOIN job_deps d ON d.child_seq = c.seq"
            " JOIN jobs p ON p.seq = d.parent_seq WHERE c.id = ?",
            (job_id,),
        )
    }


def graph_violations(conn: sqlite3.Connection) -> list[str]:
    """Every way the stored dependency graph breaks SPEC §2.3 right now.

    * a child that left ``blocked`` (and was not canceled) has only completed parents — a
      child can leave ``blocked`` only when all parents completed, and completed is final;
    * a ``blocked`` job has no unsuccessful parent, has a parent still on its way (else it is
      an orphan), and its ``pending_parents`` counter equals its parents not yet completed;
    * every child of an unsuccessful parent is ``canceled``.
    """
    problems: list[str] = []
    rows = conn.execute(
        "SELECT c.id AS child, c.status AS cstatus, c.pending_parents AS pending,"
        " c.started_at AS cstarted, p.id AS parent, p.status AS pstatus,"
        " p.finished_at AS pfinished"
        " FROM job_deps d JOIN jobs c ON c.seq = d.child_seq JOIN jobs p ON p.seq = d.parent_seq"
    ).fetchall()
    by_child: dict[str, list[sqlite3.Row]] = {}
    for row in rows:
        by_child.setdefault(row["child"], []).append(row)
        if row["pstatus"] in UNSUCCESSFUL and row["cstatus"] != "canceled":
            problems.append(
                f"child {row['child']} is {row['cstatus']} but parent {row['parent']}"
                f" is {row['pstatus']}"
            )
    for child, edges in by_child.items():
        status = edges[0]["cstatus"]
        statuses = [e["pstatus"] for e in edges]
        if status not in ("blocked", "canceled"):
            if any(s != "completed" for s in statuses):
                problems.append(f"child {child} is {status} with parents {statuses}")
        if status == "blocked":
            if all(s in TERMINAL for s in statuses):
                problems.append(f"orphan: {child} is blocked but its parents are {statuses}")
            not_completed = sum(1 for s in statuses if s != "completed")
            if edges[0]["pending"] != not_completed:
                problems.append(
                    f"{child}: pending_parents {edges[0]['pending']} but {not_completed}"
                    f" parents not completed ({statuses})"
                )
    # A job without parent rows cannot wait for anything.
    for row in conn.execute(
        "SELECT id FROM jobs j WHERE status = 'blocked'"
        " AND NOT EXISTS (SELECT 1 FROM job_deps d WHERE d.child_seq = j.seq)"
    ):
        problems.append(f"orphan: {row[0]} is blocked without parents")
    # Attempts never start before a parent finished.
    for row in conn.execute(
        "SELECT c.id, a.number, a.started_at, p.id, p.finished_at FROM attempts a"
        " JOIN jobs c ON c.seq = a.job_seq JOIN job_deps d ON d.child_seq = c.seq"
        " JOIN jobs p ON p.seq = d.parent_seq"
        " WHERE p.finished_at IS NULL OR a.started_at < p.finished_at"
    ):
        # A parent retried after the child's attempt has no finished_at; that is legal only
        # if the parent completed before (then it could not have been retried), so flag all.
        problems.append(
            f"attempt {row[1]} of {row[0]} started at {row[2]} before parent {row[3]}"
            f" finished ({row[4]})"
        )
    return problems


class CommitWatch:
    """Checks :func:`graph_violations`, and that the kept job counts are those of the jobs
    table (``ej_testkit.count_drift``), right after every commit of the writer.

    The check runs on the writer thread between the COMMIT and the next transaction, through
    its own connection, so it sees exactly the state each commit produced — not a later one.
    """

    def __init__(self, ej: EdgeJobs) -> None:
        self.ej = ej
        self.violations: list[str] = []
        self.commits = 0
        self._conn: sqlite3.Connection | None = None
        self.snapshots: list[Callable[[sqlite3.Connection], None]] = []
        ej.store.writer.fault_hook = self._hook

    def _hook(self, stage: str, number: int) -> None:
        if stage != "after_commit":
            return
        # Never raise here: an exception would stop the writer thread.
        try:
            if self._conn is None:
                self._conn = sqlite3.connect(str(self.ej.store.path), check_same_thread=False)
                self._conn.row_factory = sqlite3.Row
            self.commits += 1
            self.violations.extend(f"commit {number}: {p}" for p in graph_violations(self._conn))
            drift = count_drift(self._conn)
            if drift:
                self.violations.append(f"commit {number}: job counts (kept, counted): {drift}")
            for snapshot in self.snapshots:
                snapshot(self._conn)
        except Exception as exc:  # pragma: no cover - reported by the test
            self.violations.append(f"commit watch failed: {exc!r}")

    def close(self) -> None:
        """Stop watching and close the connection."""
        self.ej.store.writer.fault_hook = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def build(path: Path, clock: FakeClock, *, workers: int = 4, lease_s: float = 30.0) -> EdgeJobs:
    """An EdgeJobs on ``path`` with the scripted job types (not started)."""
    config = Config(
        runner=RunnerConfig(workers=workers, lease_s=lease_s),
        retry=RetryConfig(base_delay_s=1.0, max_delay_s=8.0, jitter=False),
    )
    return EdgeJobs(database=path, config=config, clock=clock)


@dataclasses.dataclass
class Harness:
    """A started runner with scripted handlers and a commit watch."""

    ej: EdgeJobs
    clock: FakeClock
    script: Script
    watch: CommitWatch

    async def read(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        """Run ``fn`` in a read snapshot."""
        return await self.ej.store.read(fn)

    async def status(self, job_id: str) -> str:
        """The stored status of a job."""
        return (await self.ej.get(job_id)).status.value

    async def tick(self, seconds: float = 0.0) -> None:
        """Advance the fake clock, then run one tick."""
        self.clock.advance(seconds)
        assert self.ej.ticker is not None
        await self.ej.ticker.tick()
        await self.script.settle()


async def start_harness(
    path: Path, *, workers: int = 4, lease_s: float = 30.0, clock: FakeClock | None = None
) -> Harness:
    """Build, register the scripted types, start without background workers, watch commits."""
    clock = clock or FakeClock()
    ej = build(path, clock, workers=workers, lease_s=lease_s)
    script = Script(ej)
    ej.register("step", script.handler, max_retries=0, dedup=False)
    ej.register("flaky", script.handler, max_retries=1, dedup=False)
    watch = CommitWatch(ej)
    await ej.start(run_workers=False)
    return Harness(ej, clock, script, watch)


async def stop_harness(harness: Harness) -> None:
    """Stop at once (waiting attempts are interrupted) and close."""
    await harness.ej.stop(grace_s=0)
    await harness.ej.close()
    harness.watch.close()


@pytest.fixture
async def h(tmp_path: Path, clock: FakeClock) -> AsyncIterator[Harness]:
    """A started, stepped runner with scripted handlers; fails the test on any graph violation
    seen after any commit, or on any start of a job before its parents completed."""
    harness = await start_harness(tmp_path / "deps.db", clock=clock)
    try:
        yield harness
    finally:
        await stop_harness(harness)
    assert harness.watch.violations == []
    assert harness.script.violations == []
