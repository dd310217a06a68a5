"""Shared helpers of the chaos suite: runner subprocesses, the side table of handler effects,
and the invariants every run must end with (imported as ``chaos_support``)."""

from __future__ import annotations

import asyncio
import collections
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from contextlib import closing
from pathlib import Path
from typing import Any

from ej_testkit import count_drift, poll_until

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
LONG = os.environ.get("EDGEJOBS_LONG") == "1"
"""Whether the long versions run (500 chaos rounds, every crash point, 10 s locks)."""

TERMINAL = ("completed", "failed", "timed_out", "dead_letter", "canceled")

JOB_TYPES = """
[[job_types]]
name = "c.fast"
handler = "chaos_handlers:work"
timeout_s = 10
max_retries = 2

[[job_types]]
name = "c.slow"
handler = "chaos_handlers:work"
timeout_s = 10
max_retries = 4

[[job_types]]
name = "c.flaky"
handler = "chaos_handlers:work"
timeout_s = 10
max_retries = 3

[[job_types]]
name = "c.fail"
handler = "chaos_handlers:work"
timeout_s = 10
max_retries = 1

[[job_types]]
name = "c.sync"
handler = "chaos_handlers:sync_work"
timeout_s = 10
max_retries = 3
"""


def config_text(
    *,
    lease_s: float = 1.5,
    tick_interval_s: float = 0.2,
    workers: int = 4,
    retention: str = "",
    extra: str = "",
    busy_timeout_ms: int | None = None,
) -> str:
    """A runner config for the suite: short leases, ticks and retry delays."""
    busy = f"busy_timeout_ms = {busy_timeout_ms}\n" if busy_timeout_ms is not None else ""
    return (
        f'[database]\npath = "jobs.db"\n{busy}\n'
        f"[runner]\nworkers = {workers}\ntick_interval_s = {tick_interval_s}\n"
        f"lease_s = {lease_s}\nshutdown_grace_s = 1\n\n"
        "[retry]\nbase_delay_s = 0.05\nmax_delay_s = 0.2\njitter = false\n\n"
        "[progress]\nmin_interval_ms = 50\n\n"
        f"{retention}\n{JOB_TYPES}\n{extra}"
    )


def setup_folder(folder: Path, text: str) -> Path:
    """Write the config and create the effects table; return the config path."""
    config = folder / "edgejobs.toml"
    config.write_text(text, encoding="utf-8")
    with closing(sqlite3.connect(str(folder / "effects.db"), isolation_level=None)) as conn:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(
            "CREATE TABLE IF NOT EXISTS effects (job_id TEXT NOT NULL, attempt INTEGER NOT NULL,"
            " event TEXT NOT NULL, detail TEXT, pid INTEGER NOT NULL, at_ms INTEGER NOT NULL)"
        )
    return config


def chaos_env(folder: Path, **extra: str) -> dict[str, str]:
    """Environment of a runner subprocess: handlers importable, effects recorded in
    ``folder``, no stray ``EDGEJOBS_*`` variables from the calling shell."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEJOBS_")}
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), str(REPO)])
    env["PYTHONUNBUFFERED"] = "1"
    env["CHAOS_EFFECTS"] = str(folder / "effects.db")
    env["CHAOS_DB"] = str(folder / "jobs.db")
    env.update(extra)
    return env


def edgejobs_cmd(*args: str) -> list[str]:
    """``python -m edgejobs ARGS``."""
    return [sys.executable, "-m", "edgejobs", *args]


class Worker:
    """An ``edgejobs worker`` subprocess logging to a file in its folder (with
    ``new_session``, in a process group of its own, for :meth:`signal_group`)."""

    def __init__(self, config: Path, name: str, *, new_session: bool = False, **env: str) -> None:
        self.log = config.parent / f"{name}.log"
        self._log_file = self.log.open("ab")
        self.proc = subprocess.Popen(
            edgejobs_cmd("worker", "--config", str(config)),
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            env=chaos_env(config.parent, **env),
            cwd=config.parent,
            start_new_session=new_session,
        )

    def signal_group(self, sig: signal.Signals) -> None:
        """Send ``sig`` to the worker's process group, as a terminal's Ctrl-C or a service
        manager's stop does (needs ``new_session``)."""
        if self.alive():
            os.killpg(self.proc.pid, sig)

    def alive(self) -> bool:
        """Whether the process still runs."""
        return self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no cleanup of any kind."""
        if self.alive():
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        self._log_file.close()

    def terminate(self, timeout: float = 30) -> int:
        """SIGTERM and wait for a graceful exit; the exit status."""
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=timeout)
        self._log_file.close()
        return code

    def wait(self, timeout: float) -> int:
        """Wait for the process to end by itself; its exit status."""
        code = self.proc.wait(timeout=timeout)
        self._log_file.close()
        return code

    def output(self) -> str:
        """What the worker logged so far."""
        return self.log.read_text(errors="replace")

    def started(self) -> bool:
        """Whether the runner finished starting (its signal handlers are installed)."""
        return "worker running on" in self.output()

    async def stop(self, timeout: float = 30) -> int:
        """SIGTERM once the runner has started, without blocking the event loop; the exit
        status (0 for a graceful exit)."""
        await wait_for(self.started, timeout, "worker start", self)
        return await asyncio.to_thread(self.terminate, timeout)

    async def ended(self, timeout: float = 30) -> int:
        """Wait (without blocking the event loop) for the process to end by itself."""
        return await asyncio.to_thread(self.wait, timeout)

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.alive():
            self.proc.kill()
            self.proc.wait(timeout=30)
        self._log_file.close()


def query(path: Path, sql: str, params: Any = ()) -> list[dict[str, Any]]:
    """Rows of a read on a connection of our own (another process's view)."""
    with closing(sqlite3.connect(str(path), timeout=30)) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute(sql, params).fetchall()]


def unfinished(db: Path, ids: list[str]) -> list[str]:
    """Ids among ``ids`` that are missing or not terminal yet."""
    found = {
        r["id"]: r["status"]
        for r in query(
            db,
            "SELECT id, status FROM jobs WHERE id IN (SELECT value FROM json_each(?))",
            (json.dumps(ids),),
        )
    }
    return [i for i in ids if found.get(i) not in TERMINAL]


async def wait_until_finished(
    db: Path, ids: list[str], worker: Worker, *, stall_s: float = 60, interval: float = 0.5
) -> None:
    """Wait until every job of ``ids`` is terminal, for as long as jobs keep finishing.

    The backlog a long chaos run leaves behind takes minutes of real handler time, so a fixed
    deadline would fail a healthy run; what must not happen is a stall: ``stall_s`` without
    one more job finishing fails with the jobs that are left and the worker's log.
    """
    left = unfinished(db, ids)
    progress_at = time.monotonic()
    while left:
        if not worker.alive():
            raise AssertionError(f"worker exited with {worker.proc.returncode}\n{worker.output()}")
        if time.monotonic() - progress_at > stall_s:
            statuses = query(
                db,
                "SELECT status, count(*) AS n FROM jobs WHERE id IN (SELECT value FROM json_each(?))"
                " GROUP BY status",
                (json.dumps(left),),
            )
            raise AssertionError(
                f"{len(left)} jobs not finished and none finished for {stall_s} s: "
                f"{[(r['status'], r['n']) for r in statuses]}\n{worker.output()[-4000:]}"
            )
        await asyncio.sleep(interval)
        now_left = unfinished(db, left)
        if len(now_left) < len(left):
            progress_at = time.monotonic()
        left = now_left


async def wait_for(
    predicate: Callable[[], bool],
    timeout: float,
    what: str,
    worker: Worker | None = None,
    interval: float = 0.1,
) -> None:
    """Poll the database-backed ``predicate`` until it holds (AssertionError after
    ``timeout``, with the worker's log; also when the worker died meanwhile)."""

    def message() -> str:
        log = worker.output()[-4000:] if worker is not None else ""
        return f"{what}: not within {timeout} s\n{log}"

    def check() -> None:
        if worker is not None and not worker.alive():
            raise AssertionError(f"worker exited with {worker.proc.returncode}\n{worker.output()}")

    await poll_until(predicate, timeout=timeout, interval=interval, message=message, check=check)


def check_invariants(
    db: Path,
    effects: Path,
    acknowledged: list[str],
    *,
    max_retries: Mapping[str, int],
) -> dict[str, int]:
    """Assert SPEC §9 on a finished run; return counts for the report.

    * lost = 0: every acknowledged submission exists and is terminal;
    * no job completed twice: at most one ``completed`` attempt row per job, and a completed
      job's result is the one its completed attempt recorded as an effect;
    * no job ran more attempts than its policy allows (shutdown requeues excluded);
    * no child started before all its parents completed (attempt times, and the parents'
      statuses the handler itself saw at start);
    * ``PRAGMA integrity_check`` is ``ok``;
    * the kept job counts are those of the jobs table (they change in the same transactions).
    """
    problems: list[str] = []
    jobs = {
        r["id"]: r
        for r in query(
            db,
            "SELECT seq, id, job_type, status, result, finished_at FROM jobs"
            " WHERE id IN (SELECT value FROM json_each(?))",
            (json.dumps(acknowledged),),
        )
    }
    missing = [i for i in acknowledged if i not in jobs]
    if missing:
        problems.append(f"lost: {len(missing)} acknowledged jobs missing, e.g. {missing[:3]}")
    open_jobs = [i for i, r in jobs.items() if r["status"] not in TERMINAL]
    if open_jobs:
        problems.append(f"{len(open_jobs)} jobs not terminal, e.g. {open_jobs[:3]}")
    attempts: dict[int, list[dict[str, Any]]] = collections.defaultdict(list)
    for row in query(db, "SELECT * FROM attempts ORDER BY job_seq, number"):
        attempts[row["job_seq"]].append(row)
    effects_rows = query(effects, "SELECT * FROM effects")
    completed_effects: dict[tuple[str, int], str] = {}
    starts: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    reruns = 0
    per_job_completed: collections.Counter[str] = collections.Counter()
    for row in effects_rows:
        if row["event"] == "completed":
            completed_effects[(row["job_id"], row["attempt"])] = json.loads(row["detail"])
            per_job_completed[row["job_id"]] += 1
        elif row["event"] == "start":
            starts[row["job_id"]].append(row)
    reruns = sum(1 for n in per_job_completed.values() if n > 1)
    by_seq = {r["seq"]: r for r in jobs.values()}
    for job in jobs.values():
        rows = attempts.get(job["seq"], [])
        done = [a for a in rows if a["outcome"] == "completed"]
        if len(done) > 1:
            problems.append(f"{job['id']}: {len(done)} completed attempts")
        if job["status"] == "completed":
            if len(done) != 1:
                problems.append(f"{job['id']}: completed with {len(done)} completed attempts")
            else:
                result = json.loads(job["result"])
                nonce = completed_effects.get((job["id"], done[0]["number"]))
                if result.get("nonce") != nonce or result.get("attempt") != done[0]["number"]:
                    problems.append(f"{job['id']}: result {result} is not attempt {done[0]}")
        elif done:
            problems.append(f"{job['id']}: {job['status']} but has a completed attempt")
        counted = [a for a in rows if a["outcome"] != "canceled"]
        allowed = max_retries[job["job_type"]] + 1
        if len(counted) > allowed:
            problems.append(f"{job['id']}: {len(counted)} attempts, policy allows {allowed}")
        if any(a["outcome"] is None for a in rows) and job["status"] in TERMINAL:
            problems.append(f"{job['id']}: terminal with an unfinished attempt row")
    deps = query(
        db,
        "SELECT d.child_seq, d.parent_seq FROM job_deps d JOIN jobs c ON c.seq = d.child_seq",
    )
    parents_of: dict[int, list[int]] = collections.defaultdict(list)
    for dep in deps:
        parents_of[dep["child_seq"]].append(dep["parent_seq"])
    children_checked = 0
    for child_seq, parent_seqs in parents_of.items():
        child = by_seq.get(child_seq)
        rows = attempts.get(child_seq, [])
        if child is None or not rows:
            continue
        children_checked += 1
        parent_rows = [by_seq.get(p) for p in parent_seqs]
        if any(p is None for p in parent_rows):
            continue
        first_start = rows[0]["started_at"]
        for parent in parent_rows:
            assert parent is not None
            if parent["status"] != "completed" or parent["finished_at"] > first_start:
                problems.append(f"{child['id']} started before parent {parent['id']} completed")
        for start in starts.get(child["id"], []):
            seen = json.loads(start["detail"]) or {}
            wanted = {p["id"] for p in parent_rows if p is not None}
            if set(seen) != wanted or any(s != "completed" for s in seen.values()):
                problems.append(f"{child['id']} attempt {start['attempt']} saw parents {seen}")
    check = query(db, "PRAGMA integrity_check")
    if [r["integrity_check"] for r in check] != ["ok"]:
        problems.append(f"integrity_check: {check}")
    with closing(sqlite3.connect(str(db), timeout=30)) as conn:
        drift = count_drift(conn)
    if drift:
        problems.append(f"job counts (kept, counted): {drift}")
    assert not problems, "\n".join(problems[:30])
    statuses = collections.Counter(r["status"] for r in jobs.values())
    return {
        "jobs": len(jobs),
        "attempts": sum(len(attempts.get(r["seq"], [])) for r in jobs.values()),
        "lost_attempts": sum(
            1 for r in jobs.values() for a in attempts.get(r["seq"], []) if a["outcome"] == "lost"
        ),
        "re_executed_after_completion": reruns,
        "children_checked": children_checked,
        **{f"status_{k}": v for k, v in statuses.items()},
    }


MAX_RETRIES = {"c.fast": 2, "c.slow": 4, "c.flaky": 3, "c.fail": 1, "c.sync": 3}
"""``max_retries`` of the job types in :data:`JOB_TYPES`."""
