"""The chaos loop: a real ``edgejobs worker`` runs a mixed workload and is SIGKILLed at a random
moment, round after round, while another process keeps submitting; at the end every
acknowledged job is terminal and the invariants of SPEC §9 hold. Its graceful twin stops the
worker with SIGTERM or SIGINT instead (to the runner, or to its whole process group), and
then nothing may be left running and no attempt may be lost.

20 rounds by default (10 graceful ones); ``EDGEJOBS_LONG=1`` runs 500 (100).
``EDGEJOBS_CHAOS_SEED`` replays a run.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import random
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from chaos_support import (
    LONG,
    MAX_RETRIES,
    Worker,
    check_invariants,
    config_text,
    query,
    setup_folder,
    wait_for,
    wait_until_finished,
)
from ej_testkit import unexpected_tracebacks

from edgejobs import EdgeJobs
from edgejobs.app import JobSpec
from edgejobs.workflows import Workflow

ROUNDS = 500 if LONG else 20
GRACEFUL_ROUNDS = 100 if LONG else 10


def _one_job(rng: random.Random, n: int) -> tuple[str, dict[str, Any]]:
    kind = rng.choices(
        ["c.fast", "c.slow", "c.flaky", "c.fail", "c.sync"], weights=[5, 3, 3, 1, 2]
    )[0]
    params: dict[str, Any] = {"n": n}
    if kind == "c.slow":
        params.update(mode="slow", seconds=round(rng.uniform(0.2, 1.5), 2))
    elif kind == "c.flaky":
        params.update(mode="flaky", fail_attempts=rng.randint(1, 2))
    elif kind == "c.fail":
        params.update(mode="fail")
    elif kind == "c.sync":
        params.update(seconds=round(rng.uniform(0.1, 0.6), 2))
    return kind, params


async def _submit_some(client: EdgeJobs, rng: random.Random, counter: list[int]) -> list[str]:
    """One submission of a random shape; the ids it acknowledged."""
    counter[0] += 1
    n = counter[0]
    shape = rng.random()
    if shape < 0.6:
        kind, params = _one_job(rng, n)
        return [(await client.submit(kind, org="acme", params=params, dedup=False)).id]
    if shape < 0.85:
        # A chain and a fan-in through submit_many, all or nothing.
        specs: list[JobSpec] = []
        for i in range(rng.randint(2, 4)):
            kind, params = _one_job(rng, n * 100 + i)
            after = [specs[-1]] if specs else []
            if len(specs) >= 2 and rng.random() < 0.5:
                after.append(specs[0])
            specs.append(JobSpec(kind, "acme", params, depends_on=after, dedup=False))
        return [job.id for job in await client.submit_many(specs)]
    flow = Workflow("acme")
    first = flow.add("c.fast", params={"n": n, "step": "extract"}, name="extract", dedup=False)
    mids = [
        flow.add("c.sync", params={"n": n, "part": p, "seconds": 0.1}, after=first, dedup=False)
        for p in range(2)
    ]
    flow.add(
        "c.slow",
        params={"n": n, "mode": "slow", "seconds": 0.3},
        after=mids,
        name="load",
        dedup=False,
    )
    jobs = await flow.submit(client)
    return [job.id for job in jobs.values()]


async def _keep_submitting(
    client: EdgeJobs, rng: random.Random, acknowledged: list[str], stop: asyncio.Event
) -> None:
    counter = [0]
    while not stop.is_set():
        acknowledged.extend(await _submit_some(client, rng, counter))
        await asyncio.sleep(rng.uniform(0.02, 0.15))


@dataclasses.dataclass
class _Busy:
    """A runner's database while another process keeps submitting to it."""

    seed: int
    rng: random.Random
    config: Path
    db: Path
    effects: Path
    acknowledged: list[str]


@contextlib.asynccontextmanager
async def _submitting(tmp_path: Path) -> AsyncIterator[_Busy]:
    """Keep a client submitting while the body runs its rounds; then let a final worker run
    every acknowledged job to its end (20 rounds leave a backlog of seconds, 500 one of
    minutes: handlers sleep for real; it waits while jobs keep finishing, fails on a stall)."""
    seed = int(os.environ.get("EDGEJOBS_CHAOS_SEED", random.randrange(1 << 30)))
    config = setup_folder(tmp_path, config_text())
    busy = _Busy(
        seed, random.Random(seed), config, tmp_path / "jobs.db", tmp_path / "effects.db", []
    )
    client = EdgeJobs.from_config(config, environ={})
    await client.open()
    stop = asyncio.Event()
    submitter = asyncio.create_task(_keep_submitting(client, busy.rng, busy.acknowledged, stop))
    try:
        yield busy
        stop.set()
        await submitter
        with Worker(config, "final") as final:
            await wait_until_finished(busy.db, busy.acknowledged, final)
            assert await final.stop() == 0, final.output()[-4000:]
    finally:
        stop.set()
        if not submitter.done():
            submitter.cancel()
        await client.close()


@pytest.mark.slow
@pytest.mark.timeout(3600 if LONG else 150)
async def test_sigkill_rounds_lose_nothing_and_complete_nothing_twice(tmp_path: Path) -> None:
    kills_while_running = 0
    async with _submitting(tmp_path) as busy:
        for round_no in range(ROUNDS):
            with Worker(busy.config, f"worker{round_no}") as worker:
                # Random moment: often before the runner even finished starting, often mid-job.
                await asyncio.sleep(busy.rng.uniform(0.2, 1.3))
                assert worker.alive(), worker.output()
                running = query_running(busy.db)
                kills_while_running += running > 0
                worker.kill()
    report = check_invariants(busy.db, busy.effects, busy.acknowledged, max_retries=MAX_RETRIES)
    print(f"seed={busy.seed} rounds={ROUNDS} kills_while_running={kills_while_running} {report}")
    assert report["jobs"] == len(busy.acknowledged) > ROUNDS
    assert kills_while_running > 0  # the kills did hit running work
    assert report["lost_attempts"] > 0


def query_running(db: Path) -> int:
    """How many jobs the database shows running now."""
    return int(query(db, "SELECT count(*) AS n FROM jobs WHERE status = 'running'")[0]["n"])


@pytest.mark.slow
@pytest.mark.timeout(3600 if LONG else 150)
async def test_graceful_stop_rounds_leave_nothing_running_and_lose_no_attempt(
    tmp_path: Path,
) -> None:
    """SIGTERM or SIGINT at a random moment of a busy runner, to it or to its whole process
    group: each time it exits 0, leaving no job ``running`` and no attempt unfinished; jobs
    interrupted after the grace are requeued (``canceled``, not counted), never ``lost``."""
    stops_while_running = 0
    async with _submitting(tmp_path) as busy:
        for round_no in range(GRACEFUL_ROUNDS):
            with Worker(busy.config, f"worker{round_no}", new_session=True) as worker:
                await wait_for(worker.started, 30, "worker start", worker)
                await asyncio.sleep(busy.rng.uniform(0.0, 1.5))
                stops_while_running += query_running(busy.db) > 0
                sig = busy.rng.choice([signal.SIGTERM, signal.SIGINT])
                if busy.rng.random() < 0.5:
                    worker.signal_group(sig)
                else:
                    worker.proc.send_signal(sig)
                code = await worker.ended(timeout=30)
                assert code == 0, f"round {round_no} ({sig.name}): {worker.output()[-4000:]}"
                # (A job that gave up is logged with its handler's traceback: expected.)
                assert not unexpected_tracebacks(worker.output()), worker.output()[-4000:]
            left = query(
                busy.db,
                "SELECT (SELECT count(*) FROM jobs WHERE status = 'running') AS running,"
                " (SELECT count(*) FROM attempts WHERE outcome IS NULL) AS open_attempts",
            )[0]
            assert left == {"running": 0, "open_attempts": 0}, f"round {round_no}: {left}"
    report = check_invariants(busy.db, busy.effects, busy.acknowledged, max_retries=MAX_RETRIES)
    print(
        f"seed={busy.seed} rounds={GRACEFUL_ROUNDS} stops_while_running={stops_while_running}"
        f" {report}"
    )
    assert report["lost_attempts"] == 0
    assert stops_while_running > 0  # the stops did hit running work
