"""edgejobs as one more subject of the shared SQLite-queue bench (one JSON line on stdout).

Figures (issue "Performance"): end-to-end no-op jobs/s (50 concurrent submitters, one
``submit_many``, and the first with ``synchronous = "full"``), pickup latency on an idle
runner (submit → handler start) and ``ej.wait()`` latency, idle CPU, claim cost with
1,000,000 terminal jobs vs an empty table, and resident memory idle / with 100,000 queued.

Run through ``bench/run`` (which also runs the peers); alone:
``BENCH_SCALE=0.1 python bench/edgejobs_subject.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from edgejobs import EdgeJobs, JobSpec
from edgejobs.config import Config

HERE = Path(__file__).resolve().parent
PEERS = Path(os.environ.get("EDGEJOBS_PEER_BENCH", HERE.parent.parent / "shared" / "bench"))


def _config(path: Path, *, synchronous: str = "normal", workers: int = 16) -> Config:
    base = Config()
    return base.model_copy(
        update={
            "database": base.database.model_copy(update={"path": path, "synchronous": synchronous}),
            "runner": base.runner.model_copy(update={"workers": workers}),
            "limits": base.limits.model_copy(update={"max_batch": 1_000_000}),
        }
    )


def _app(path: Path, **kw: Any) -> EdgeJobs:
    ej = EdgeJobs(config=_config(path, **kw))
    ej.register("noop", _noop, dedup=False)
    return ej


async def _noop(ctx: Any, params: dict[str, Any]) -> None:
    return None


def _completion_counter(ej: EdgeJobs, n: int) -> asyncio.Event:
    """An event set once ``n`` jobs were committed as completed (counted from commits, so the
    measurement adds no query to the workload)."""
    done = asyncio.Event()
    seen = 0

    def count(tx: Any) -> None:
        nonlocal seen
        seen += sum(1 for status in tx.jobs_changed.values() if status == "completed")
        if seen >= n:
            done.set()

    ej.add_commit_listener(count)
    return done


def end_to_end(n: int, *, mode: str, synchronous: str = "normal") -> float:
    """Seconds from the first submit until all ``n`` no-op jobs completed."""

    async def main() -> float:
        with tempfile.TemporaryDirectory(prefix="bench-edgejobs-") as tmp:
            ej = _app(Path(tmp) / "e2e.db", synchronous=synchronous)
            async with ej:
                finished = _completion_counter(ej, n)
                start = time.perf_counter()
                if mode == "submit_many":
                    await ej.submit_many([JobSpec("noop", "bench", {"i": i}) for i in range(n)])
                else:
                    pending = list(range(n))

                    async def client() -> None:
                        while pending:
                            i = pending.pop()
                            await ej.submit("noop", org="bench", params={"i": i})

                    await asyncio.gather(*(client() for _ in range(50)))
                await finished.wait()
                return time.perf_counter() - start

    return asyncio.run(main())


PICKUP_GAP_S = 0.25
"""The pause before each pickup sample: the writer thread counts as idle only ``SETTLE_S``
(60 ms) after its last transaction, and an idle runner's pickup pays for cold caches and
wake-ups that a runner busy a few milliseconds earlier does not (20 ms gaps, as this bench
once used, measured 10-20 % faster). huey's own latency sample waits 50 ms."""


def pickup_latency(samples: int) -> dict[str, float]:
    """Idle runner: submit → handler start, and submit → ``wait()`` returns (ms)."""
    from edgejobs.store.db import SETTLE_S

    assert PICKUP_GAP_S >= 4 * SETTLE_S, "each sample must find the writer idle"

    async def main() -> dict[str, float]:
        started: dict[str, float] = {}

        async def mark(ctx: Any, params: dict[str, Any]) -> None:
            started[ctx.job_id] = time.perf_counter()

        with tempfile.TemporaryDirectory(prefix="bench-edgejobs-") as tmp:
            ej = EdgeJobs(config=_config(Path(tmp) / "lat.db"))
            ej.register("mark", mark, dedup=False)
            pickup: list[float] = []
            waited: list[float] = []
            async with ej:
                await asyncio.sleep(1.5)  # let start-up work (migrations, first tick) settle
                for _ in range(samples):
                    await asyncio.sleep(PICKUP_GAP_S)  # the runner goes idle between samples
                    t0 = time.perf_counter()
                    job = await ej.submit("mark", org="bench")
                    await ej.wait(job.id, timeout=10)
                    t1 = time.perf_counter()
                    pickup.append((started[job.id] - t0) * 1000)
                    waited.append((t1 - t0) * 1000)
            q = statistics.quantiles
            return {
                "pickup_p50": statistics.median(pickup),
                "pickup_p99": q(pickup, n=100)[98],
                "wait_p50": statistics.median(waited),
                "wait_p99": q(waited, n=100)[98],
            }

    return asyncio.run(main())


def claim_cost(claims: int, history: int) -> float:
    """Claims per second with ``history`` terminal jobs in the table (one claim per tx)."""
    from edgejobs.store.claim import ClaimLimits, claim_ready
    from edgejobs.store.db import WriteTx, connect_writer
    from edgejobs.store.store import Store

    with tempfile.TemporaryDirectory(prefix="bench-edgejobs-") as tmp:
        store = Store(Path(tmp) / "claim.db")
        store.prepare()
        conn = connect_writer(store.path, store.pragmas)
        rows = [
            (f"H{i:025d}", "bench", "noop", "completed", 2, "{}", 3, 0, 0, 0, 0)
            for i in range(history)
        ]
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(
            "INSERT INTO jobs (id, org, job_type, status, priority, params, max_retries, run_at,"
            " created_at, updated_at, finished_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            rows,
        )
        conn.executemany(
            "INSERT INTO jobs (id, org, job_type, status, priority, params, max_retries, run_at,"
            " created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?)",
            [(f"Q{i:025d}", "bench", "noop", "queued", 2, "{}", 3, 0, 0, 0) for i in range(claims)],
        )
        conn.execute("COMMIT")
        conn.execute("ANALYZE")
        limits = ClaimLimits(types=frozenset({"noop"}))
        start = time.perf_counter()
        for _ in range(claims):
            conn.execute("BEGIN IMMEDIATE")
            claim_ready(conn, WriteTx(), now=1, slots=1, lease_ms=30_000, limits=limits)
            conn.execute("COMMIT")
        elapsed = time.perf_counter() - start
        conn.close()
        return claims / elapsed


def write_plan_floor(n: int, *, batch: int = 16) -> float:
    """Seconds for the engine's own writes alone: ``n`` jobs inserted in one transaction, then
    claimed ``batch`` at a time and completed in the next transaction, as the pool does with
    ``workers = batch`` (attempt rows, event rows and all), by the store's own functions
    called in a plain loop on one thread: no event loop, no writer thread, no handler.

    The end-to-end figures cannot beat it; their ratio to it is what the engine adds.
    """
    from edgejobs.store.claim import ClaimLimits, claim_ready
    from edgejobs.store.db import WriteTx, connect_writer
    from edgejobs.store.jobs import NewJob, insert_jobs
    from edgejobs.store.store import Store
    from edgejobs.store.transitions import complete_attempts

    with tempfile.TemporaryDirectory(prefix="bench-edgejobs-") as tmp:
        store = Store(Path(tmp) / "floor.db")
        store.prepare()
        conn = connect_writer(store.path, store.pragmas)
        now = int(time.time() * 1000)
        jobs = [NewJob("bench", "noop", json.dumps({"i": i}), 2, None, 3, None) for i in range(n)]
        limits = ClaimLimits(types=frozenset({"noop"}))
        start = time.perf_counter()
        tx = WriteTx()
        conn.execute("BEGIN IMMEDIATE")
        insert_jobs(conn, tx, jobs=jobs, now=now)
        tx.flush(conn)
        conn.execute("COMMIT")
        running: list[Any] = []
        done = 0
        while done < n:
            tx = WriteTx()
            conn.execute("BEGIN IMMEDIATE")
            items = [(row["seq"], row["attempts"], "null") for row in running]
            done += len(complete_attempts(conn, tx, items=items, now=now))
            running = claim_ready(conn, tx, now=now, slots=batch, lease_ms=30_000, limits=limits)
            tx.flush(conn)
            conn.execute("COMMIT")
        elapsed = time.perf_counter() - start
        conn.close()
        return elapsed


_RSS_CHILD = r"""
import asyncio, sys
from pathlib import Path
sys.path.insert(0, {here!r})
from edgejobs_subject import _app, _config
from edgejobs import EdgeJobs, JobSpec
async def main():
    ej = _app(Path({db!r}))
    await ej.open()
    n = {queued}
    for start in range(0, n, 10000):
        await ej.submit_many(
            [JobSpec("noop", "bench", {{"i": i}}) for i in range(start, min(n, start + 10000))]
        )
    await ej.close()
    # The measured runner knows no job type, so the queue stays full while it idles.
    runner = EdgeJobs(config=_config(Path({db!r})))
    async with runner:
        await asyncio.sleep(1.0)
        with open("/proc/self/status") as f:
            rss_kib = [line for line in f if line.startswith("VmRSS")][0].split()[1]
        print(int(rss_kib) / 1024)
asyncio.run(main())
"""


def _fresh_process(call: str) -> Any:
    """Run ``edgejobs_subject.<call>`` in a new interpreter and return its JSON result."""
    code = (
        f"import json, sys; sys.path.insert(0, {str(HERE)!r}); import edgejobs_subject as s; "
        f"print(json.dumps(s.{call}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


_IDLE_CHILD = r"""
import asyncio, sys
from pathlib import Path
sys.path.insert(0, {here!r})
from edgejobs_subject import _app
async def main():
    async with _app(Path({db!r})):
        print("ready", flush=True)
        await asyncio.sleep(3600)  # killed by the parent
asyncio.run(main())
"""

IDLE_SETTLE_S = 5.0
IDLE_WINDOW_S = 95.0
"""Three of the 30 s periods at which an idle runner still looks once (the tick loop's
longest sleep, the writer's safety-net look for other processes' commits): a window shorter
than that could read 0.00 % by missing them."""


def _process_cpu_s(pid: int) -> float:
    """CPU seconds of every thread of ``pid`` (Linux schedstat: nanoseconds, where the
    clock-tick counters of /proc/PID/stat would round 10 ms at a time)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            total += int((task / "schedstat").read_text().split()[0])
    return total / 1e9


def idle_cpu() -> float:
    """% of one core an idle runner (empty queue) uses, read from outside the process.

    Why from outside: a measurement inside the runner wakes its event loop at least once
    itself, and on a small virtual machine one wake-up after seconds of sleep costs ~10-15 ms
    of CPU, ~0.4 % of a 3 s window on its own. The shared bench reads huey's consumer the
    same way, from another thread. The runner first gets ``IDLE_SETTLE_S`` for its start-up
    ticks and checkpoint.
    """
    with tempfile.TemporaryDirectory(prefix="bench-edgejobs-") as tmp:
        code = _IDLE_CHILD.format(here=str(HERE), db=str(Path(tmp) / "idle.db"))
        child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        try:
            assert child.stdout is not None
            if child.stdout.readline().strip() != "ready":
                raise RuntimeError("the idle runner did not start")
            time.sleep(IDLE_SETTLE_S)
            cpu0, wall0 = _process_cpu_s(child.pid), time.perf_counter()
            time.sleep(IDLE_WINDOW_S)
            return (_process_cpu_s(child.pid) - cpu0) / (time.perf_counter() - wall0) * 100
        finally:
            child.kill()
            child.wait()


def resident_mb(queued: int) -> float:
    """Resident memory (MiB) of a runner process, idle, with ``queued`` jobs waiting."""
    with tempfile.TemporaryDirectory(prefix="bench-edgejobs-") as tmp:
        code = _RSS_CHILD.format(here=str(HERE), db=str(Path(tmp) / "rss.db"), queued=queued)
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        )
        return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    import edgejobs

    # The shared harness (Report, scaled, REPEATS) is needed for the report only: the figures'
    # functions above run without it (bench/ab.py calls them one by one).
    sys.path.insert(0, str(PEERS))
    import benchlib

    report = benchlib.Report("edgejobs", edgejobs_version=edgejobs.__version__)
    n = benchlib.scaled(20_000, 100)
    cond = "edgejobs, WAL, workers=16, async no-op handler, attempt log + event log on"
    report.rate(
        "e2e_submit_50_normal",
        "jobs/s",
        lambda k: end_to_end(k, mode="concurrent"),
        n,
        f"{cond}, synchronous=NORMAL, 50 coroutines each awaiting one submit at a time",
    )
    report.rate(
        "e2e_submit_many_normal",
        "jobs/s",
        lambda k: end_to_end(k, mode="submit_many"),
        n,
        f"{cond}, synchronous=NORMAL, one submit_many of all N",
    )
    report.rate(
        "e2e_submit_50_full",
        "jobs/s",
        lambda k: end_to_end(k, mode="concurrent", synchronous="full"),
        n,
        f"{cond}, synchronous=FULL, 50 coroutines each awaiting one submit at a time",
    )
    report.rate(
        "write_plan_floor",
        "jobs/s",
        write_plan_floor,
        n,
        "the store's writes for each job (insert, claim 16 per transaction, complete) called"
        " in a plain loop on one thread: no event loop, writer thread or handler",
    )
    samples = benchlib.scaled(300, 10)
    # Each repetition in a fresh process: an idle runner's cost, not the aftermath of the
    # throughput runs above in this one.
    runs = [_fresh_process(f"pickup_latency({samples})") for _ in range(benchlib.REPEATS)]
    for key, unit, text in (
        ("pickup_p50", "ms", "idle runner, submit() → handler starts"),
        ("pickup_p99", "ms", "idle runner, submit() → handler starts"),
        ("wait_p50", "ms", "idle runner, submit() → ej.wait() returns"),
        ("wait_p99", "ms", "idle runner, submit() → ej.wait() returns"),
    ):
        report.add(key, unit, [r[key] for r in runs], n=samples, conditions=text)
    report.add(
        "idle_cpu",
        "% of one core",
        [idle_cpu()],  # one long window (see IDLE_WINDOW_S) rather than several short ones
        conditions=f"runner process (all threads), empty queue, over {IDLE_WINDOW_S:g} s from"
        f" {IDLE_SETTLE_S:g} s after start, read from /proc by the bench process",
    )
    claims = benchlib.scaled(20_000, 100)
    history = benchlib.scaled(1_000_000, 1000)
    # Alternated in pairs, so that the machine's drift over the minutes falls on both sides.
    empty: list[float] = []
    full: list[float] = []
    for _ in range(benchlib.REPEATS):
        empty.append(claim_cost(claims, 0))
        full.append(claim_cost(claims, history))
    report.add("claim_empty", "claims/s", empty, n=claims, conditions="1 claim per tx, no history")
    report.add(
        "claim_1M",
        "claims/s",
        full,
        n=claims,
        conditions=f"1 claim per tx, {history:,} terminal jobs in the table",
    )
    report.add(
        "claim_cost_ratio_1M_vs_empty",
        "ratio",
        [e / f for e, f in zip(empty, full, strict=True)],
        n=claims,
        conditions="time per claim with history / without (target <= 1.5)",
    )
    report.add("rss_idle", "MiB", [resident_mb(0)], conditions="runner process, empty database")
    queued = benchlib.scaled(100_000, 1000)
    report.add(
        "rss_100k_queued",
        "MiB",
        [resident_mb(queued)],
        conditions=f"runner process, {queued:,} jobs queued (of a type it has no handler"
        " for, so they stay queued; submitted by the same process before the runner started)",
    )
    report.emit()


if __name__ == "__main__":
    main()
