"""Shared helpers of the core-engine tests (imported as ``core_support``; see conftest.py)."""

from __future__ import annotations

import asyncio
import collections
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager, closing
from pathlib import Path
from typing import Any

from ej_testkit import count_drift, poll_until

from edgejobs import EdgeJobs, Job, PermanentError, Status
from edgejobs.config import Config, RetryConfig, RunnerConfig
from edgejobs.models import ALLOWED_TRANSITIONS
from edgejobs.runner.context import JobContext
from edgejobs.runner.pool import Pool
from edgejobs.store.db import WriteOp
from edgejobs.store.rows import job_event_fields
from edgejobs.testing import FakeClock, Harness

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
PYTHON = sys.executable

BASE_DELAY_S = 10.0
MAX_DELAY_S = 100.0


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie nobody reaped has ended)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status


def connect(path: Path) -> sqlite3.Connection:
    """A connection of our own, independent of the store's (what another process sees)."""
    conn = sqlite3.connect(str(path), isolation_level=None, timeout=10)
    conn.row_factory = sqlite3.Row
    return conn


def db_job(path: Path, job_id: str) -> dict[str, Any]:
    """The job's row as committed in the database file."""
    with closing(connect(path)) as conn:
        row = conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
    assert row is not None, f"no row for {job_id}"
    return dict(row)


def db_attempts(path: Path, job_id: str) -> list[dict[str, Any]]:
    """The job's attempt rows, by number."""
    with closing(connect(path)) as conn:
        rows = conn.execute(
            "SELECT a.* FROM attempts a JOIN jobs j ON j.seq = a.job_seq WHERE j.id = ?"
            " ORDER BY a.number",
            (job_id,),
        ).fetchall()
    return [dict(r) for r in rows]


def count_status(path: Path, status: str) -> int:
    """How many jobs the database shows in ``status``."""
    with closing(connect(path)) as conn:
        return int(
            conn.execute("SELECT count(*) FROM jobs WHERE status = ?", (status,)).fetchone()[0]
        )


def illegal_moves(path: Path) -> list[str]:
    """Every consecutive pair of a job's ``job`` events that the state machine forbids, and
    every job whose events are missing or end in another status than its row.

    The event log is written in the transaction of every status change, so it is the
    complete history of each job's statuses (as long as retention has not trimmed it).
    """
    problems = []
    history: dict[str, list[str]] = collections.defaultdict(list)
    with closing(connect(path)) as conn:
        for row in conn.execute("SELECT job_id, data FROM events WHERE kind = 'job' ORDER BY id"):
            history[row["job_id"]].append(job_event_fields(row["data"])["status"])
        jobs = conn.execute("SELECT id, status FROM jobs").fetchall()
    for job in jobs:
        # Every job has a creation event, and its last event shows its current status.
        statuses = history.get(job["id"])
        if not statuses:
            problems.append(f"{job['id']}: no job events recorded")
        elif statuses[-1] != job["status"]:
            problems.append(f"{job['id']}: events end {statuses[-1]}, row says {job['status']}")
    for job_id, statuses in history.items():
        for before, after in zip(statuses, statuses[1:], strict=False):
            if Status(after) not in ALLOWED_TRANSITIONS[Status(before)]:
                problems.append(f"{job_id}: {before} -> {after} (history {statuses})")
    return problems


async def wait_until(
    predicate: Callable[[], bool], *, timeout: float = 10.0, interval: float = 0.01
) -> None:
    """Poll ``predicate`` until it holds (AssertionError after ``timeout`` seconds)."""
    await poll_until(
        predicate,
        timeout=timeout,
        interval=interval,
        message=f"condition not met within {timeout} s",
    )


# -- the standard job types on a stepped runner ---------------------------------------------------


def core_config(**runner: Any) -> Config:
    """Short, exact backoff (10 s doubling to 100 s, no jitter) and plenty of slots."""
    return Config(
        retry=RetryConfig(base_delay_s=BASE_DELAY_S, max_delay_s=MAX_DELAY_S, jitter=False),
        runner=RunnerConfig(**{"workers": 64, **runner}),
    )


class CoreKit:
    """A :class:`~edgejobs.testing.Harness` with the job types most tests use.

    ``t.work`` (one retry), ``t.once`` (no retry, 0.2 s timeout), ``t.last`` (no retry, 5 s
    timeout: a running attempt that is the last without racing a real deadline) and ``t.many``
    share one async handler whose behaviour the params choose: ``{"mode": "ok" | "fail" |
    "permanent" | "hang" | "gate", "gate": NAME}``. A gated attempt waits until ``kit.gates[NAME]`` is set.
    """

    def __init__(
        self, path: Path, clock: FakeClock, *, config: Config | None = None, **runner: Any
    ) -> None:
        self.path = path
        self.clock = clock
        config = config if config is not None else core_config(**runner)
        self.harness = Harness(database=path, clock=clock, config=config)
        self.ej: EdgeJobs = self.harness.ej
        self.gates: collections.defaultdict[str, asyncio.Event] = collections.defaultdict(
            asyncio.Event
        )
        self.calls: collections.Counter[str] = collections.Counter()
        self.ej.register("t.work", self._handler, timeout_s=5, max_retries=1)
        self.ej.register("t.once", self._handler, timeout_s=0.2, max_retries=0)
        self.ej.register("t.last", self._handler, timeout_s=5, max_retries=0)
        self.ej.register("t.many", self._handler, timeout_s=5, max_retries=6)
        self._started = False

    async def _handler(self, ctx: JobContext, params: dict[str, Any]) -> Any:
        self.calls[ctx.job_id] += 1
        mode = params.get("mode", "ok")
        if mode == "gate":
            await self.gates[params["gate"]].wait()
            mode = params.get("then", "ok")
        if mode == "fail":
            raise RuntimeError(f"boom on attempt {ctx.attempt}")
        if mode == "permanent":
            raise PermanentError("this cannot work")
        if mode == "hang":
            await asyncio.sleep(3600)
        return {"attempt": ctx.attempt}

    async def start(self) -> CoreKit:
        """Become the runner (no background tasks)."""
        await self.harness.start()
        self._started = True
        return self

    async def close(self) -> None:
        """Release every gate and close."""
        for gate in self.gates.values():
            gate.set()
        if self._started:
            await self.harness.close()

    @property
    def pool(self) -> Pool:
        """The runner's pool."""
        assert self.ej.pool is not None
        return self.ej.pool

    async def submit(self, job_type: str = "t.work", **kwargs: Any) -> Job:
        """Submit without deduplication (tests submit equal params many times)."""
        kwargs.setdefault("org", "acme")
        kwargs.setdefault("dedup", False)
        return await self.ej.submit(job_type, **kwargs)

    async def write(self, op: WriteOp[Any]) -> Any:
        """Run a store operation in the writer's transaction."""
        return await self.ej.store.write(op)

    def row(self, job_id: str) -> dict[str, Any]:
        """The job's committed row."""
        return db_job(self.path, job_id)

    def status(self, job_id: str) -> Status:
        """The job's committed status."""
        return Status(self.row(job_id)["status"])

    def attempt_rows(self, job_id: str) -> list[dict[str, Any]]:
        """The job's committed attempt rows."""
        return db_attempts(self.path, job_id)

    async def settle(self) -> None:
        """Let background attempt tasks and commit callbacks run."""
        for _ in range(5):
            await asyncio.sleep(0)
        if self.ej.pool is not None and self.ej.pool.running_count == 0:
            await self.ej.pool.wait_idle()


@asynccontextmanager
async def running_kit(path: Path, clock: FakeClock, **runner: Any) -> AsyncIterator[CoreKit]:
    """A started :class:`CoreKit` (``runner``: settings of ``[runner]``), closed after; fails
    the test if, at its end, the kept job counts are not those of the jobs table."""
    kit = await CoreKit(path, clock, **runner).start()
    try:
        yield kit
    finally:
        await kit.close()
    with closing(sqlite3.connect(path)) as conn:
        assert count_drift(conn) == {}


# -- subprocesses --------------------------------------------------------------------------------


def cli_env(**extra: str) -> dict[str, str]:
    """Environment for ``edgejobs`` subprocesses: helper modules importable, no stray config."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEJOBS_")}
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), str(REPO)])
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def edgejobs_cmd(*args: str) -> list[str]:
    """The command line of ``python -m edgejobs ARGS``."""
    return [PYTHON, "-m", "edgejobs", *args]


def run_cli(
    *args: str, cwd: Path | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m edgejobs ARGS`` to completion."""
    return subprocess.run(
        edgejobs_cmd(*args),
        capture_output=True,
        text=True,
        env=cli_env(),
        cwd=cwd,
        timeout=timeout,
        check=False,
    )


class Worker:
    """An ``edgejobs worker`` subprocess (stdout/stderr to a log file).

    ``new_session``: in a process group of its own, which :meth:`signal_group` signals as a
    terminal's Ctrl-C does (the runner and what stayed in its group alike).
    """

    def __init__(self, config: Path, log: Path, *, new_session: bool = False, **env: str) -> None:
        self.log = log
        self._log_file = log.open("ab")
        self.proc = subprocess.Popen(
            edgejobs_cmd("worker", "--config", str(config)),
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            env=cli_env(**env),
            cwd=config.parent,
            start_new_session=new_session,  # its own process group, as in a terminal
        )

    def signal_group(self, sig: signal.Signals) -> None:
        """Send ``sig`` to the worker's whole process group (needs ``new_session``)."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)

    def kill(self) -> None:
        """SIGKILL: no cleanup of any kind."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def terminate(self, timeout: float = 30) -> int:
        """SIGTERM and wait for a graceful exit."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=timeout)
        self._log_file.close()
        return code

    def output(self) -> str:
        """What the worker logged so far."""
        return self.log.read_text(errors="replace")

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self._log_file.close()


def write_config(folder: Path, text: str, name: str = "edgejobs.toml") -> Path:
    """Write a config file into ``folder``."""
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def rows(path: Path, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
    """Run a read query on a separate connection."""
    with closing(connect(path)) as conn:
        return [dict(r) for r in conn.execute(sql, params).fetchall()]
