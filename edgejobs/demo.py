"""Demo job types and a trickle of demo jobs, for ``edgejobs serve --demo``.

A new user runs one command and sees work move in the dashboard at once: jobs that report
progress, one that fails once and then succeeds, one that ends in ``dead_letter``, and a small
dependency chain (fetch → transform → report) submitted as one batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import sqlite3
from typing import Any

from edgejobs.app import EdgeJobs, JobSpec
from edgejobs.errors import EdgeJobsError
from edgejobs.runner.context import JobContext
from edgejobs.store import tokens as token_store
from edgejobs.store.db import WriteTx

log = logging.getLogger("edgejobs.demo")

DEMO_ORG = "demo"
DEMO_TOKEN_NAME = "demo admin (serve --demo)"
TRICKLE_INTERVAL_S = 4.0


async def progress(ctx: JobContext, params: dict[str, Any]) -> dict[str, Any]:
    """Reports progress in ten steps over about ``seconds`` (default 10)."""
    seconds = float(params.get("seconds", 10))
    for step in range(1, 11):
        await asyncio.sleep(seconds / 10)
        await ctx.progress(step * 10, f"step {step} of 10")
    return {"steps": 10}


async def flaky(ctx: JobContext, params: dict[str, Any]) -> dict[str, Any]:
    """Fails on its first attempt, succeeds on the retry."""
    await asyncio.sleep(0.5)
    if ctx.attempt == 1:
        raise ConnectionError("the upstream service did not answer (first attempt always fails)")
    return {"attempt": ctx.attempt}


async def doomed(ctx: JobContext, params: dict[str, Any]) -> None:
    """Always fails: retried twice, then ``dead_letter``."""
    await asyncio.sleep(0.3)
    raise RuntimeError(f"this job always fails (attempt {ctx.attempt})")


async def fetch(ctx: JobContext, params: dict[str, Any]) -> dict[str, Any]:
    """First link of the chain: pretends to download some rows."""
    for percent in (25, 50, 75, 100):
        await asyncio.sleep(0.5)
        await ctx.progress(percent, "downloading")
    return {"rows": random.randint(100, 1000)}


async def transform(ctx: JobContext, params: dict[str, Any]) -> dict[str, Any]:
    """Second link: uses the parent's result."""
    rows = sum(int(result.get("rows", 0)) for result in ctx.parent_results.values())
    await asyncio.sleep(1.5)
    await ctx.progress(100, "transformed")
    return {"rows": rows, "clean": rows - rows // 10}


async def report(ctx: JobContext, params: dict[str, Any]) -> dict[str, Any]:
    """Last link: summarises."""
    clean = sum(int(result.get("clean", 0)) for result in ctx.parent_results.values())
    await asyncio.sleep(1.0)
    return {"summary": f"{clean} clean rows"}


def register(ej: EdgeJobs) -> None:
    """Register the demo job types on ``ej`` (with short retry delays so things move)."""
    ej.register("demo.progress", progress, timeout_s=60, max_retries=1, dedup=False)
    ej.register(
        "demo.flaky", flaky, timeout_s=30, max_retries=3, base_delay_s=2, max_delay_s=5, dedup=False
    )
    ej.register(
        "demo.doomed",
        doomed,
        timeout_s=30,
        max_retries=2,
        base_delay_s=1,
        max_delay_s=2,
        dedup=False,
    )
    ej.register("demo.chain.fetch", fetch, timeout_s=30, max_retries=1, base_delay_s=1, dedup=False)
    ej.register("demo.chain.transform", transform, timeout_s=30, max_retries=1, dedup=False)
    ej.register("demo.chain.report", report, timeout_s=30, max_retries=1, dedup=False)


async def create_token(ej: EdgeJobs) -> str:
    """A fresh admin token of the demo org; earlier demo tokens are revoked (they were
    printed on earlier starts and are not needed any more). Returns the secret."""
    now = ej.clock.now_ms()

    def op(conn: sqlite3.Connection, tx: WriteTx) -> token_store.NewToken:
        for info in token_store.list_tokens(conn):
            if info.name == DEMO_TOKEN_NAME and info.org == DEMO_ORG and info.active:
                token_store.revoke_token(conn, tx, token_id=info.id, now=now)
        return token_store.create_token(
            conn, tx, org=DEMO_ORG, role="admin", name=DEMO_TOKEN_NAME, now=now
        )

    new = await ej.store.write(op)
    return new.secret


def chain() -> list[JobSpec]:
    """fetch → transform → report, as one batch."""
    first = JobSpec("demo.chain.fetch", DEMO_ORG, {"source": f"s3://demo/{random.randint(1, 99)}"})
    second = JobSpec("demo.chain.transform", DEMO_ORG, {}, depends_on=(first,))
    third = JobSpec("demo.chain.report", DEMO_ORG, {}, depends_on=(second,))
    return [first, second, third]


def _round(number: int) -> list[JobSpec]:
    specs = [
        JobSpec("demo.progress", DEMO_ORG, {"seconds": random.choice((5, 8, 10, 12))}),
        JobSpec("demo.progress", DEMO_ORG, {"seconds": 10}, priority="high"),
    ]
    if number % 2 == 0:
        specs.append(JobSpec("demo.flaky", DEMO_ORG, {"round": number}))
    if number % 3 == 0:
        specs.extend(chain())
    if number % 5 == 0:
        specs.append(JobSpec("demo.doomed", DEMO_ORG, {"round": number}))
    return specs


async def trickle(ej: EdgeJobs, interval_s: float = TRICKLE_INTERVAL_S) -> None:
    """Submit a mix of demo jobs every few seconds until cancelled or shutting down."""
    number = 0
    while not ej.stopping:
        with contextlib.suppress(EdgeJobsError):
            await ej.submit_many(_round(number))
        number += 1
        await asyncio.sleep(interval_s)


async def seed(ej: EdgeJobs) -> None:
    """A first burst so the dashboard is busy from the first second."""
    with contextlib.suppress(EdgeJobsError):
        await ej.submit_many(
            [
                *_round(0),
                JobSpec("demo.doomed", DEMO_ORG, {"seed": True}),
                JobSpec("demo.flaky", DEMO_ORG, {"seed": True}),
            ]
        )
