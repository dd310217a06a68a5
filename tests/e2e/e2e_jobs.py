"""Job types of the dashboard's end-to-end tests, imported by the ``edgejobs serve`` subprocess
(their module path is in the generated config; this folder is on its ``PYTHONPATH``).

The test process controls the handlers through files in the folder named by the
``EDGEJOBS_E2E_GATES`` environment variable, named after the job id, so job params stay the
realistic data the screenshots show:

- ``<job id>.release`` lets a held job finish;
- ``<job id>.step<N>`` lets a stepped job report step N's progress;
- ``<job id>.fixed`` makes a failing job succeed on its next attempt.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from edgejobs import JobContext

POLL_S = 0.03


def _gate(ctx: JobContext, suffix: str) -> Path:
    return Path(os.environ["EDGEJOBS_E2E_GATES"]) / f"{ctx.job_id}.{suffix}"


async def _wait_for(path: Path) -> None:
    # A file is the simplest signal one process can give another; the poll is cheap.
    while not path.exists():
        await asyncio.sleep(POLL_S)


async def quick(ctx: JobContext, params: dict[str, Any]) -> dict[str, Any]:
    """Finishes at once with a small result."""
    return {"ok": True, "items": len(params)}


async def held(ctx: JobContext, params: dict[str, Any]) -> dict[str, Any]:
    """Runs until the test releases it."""
    await ctx.progress(10, "waiting for the upstream export")
    await _wait_for(_gate(ctx, "release"))
    return {"released": True}


async def stepped(ctx: JobContext, params: dict[str, Any]) -> dict[str, Any]:
    """Reports progress in ``steps`` steps (default 4), each one released by the test."""
    steps = int(params.get("steps", 4))
    for step in range(1, steps + 1):
        await _wait_for(_gate(ctx, f"step{step}"))
        await ctx.progress(step * 100 / steps, f"section {step} of {steps}")
    return {"sections": steps, "pages": 12 * steps}


async def broken(ctx: JobContext, params: dict[str, Any]) -> dict[str, Any]:
    """Raises (with a traceback) until the test marks the job fixed; the error names the
    ``endpoint`` param when there is one."""
    if _gate(ctx, "fixed").exists():
        return {"delivered": True, "attempt": ctx.attempt}
    endpoint = params.get("endpoint", "upstream")
    raise ConnectionError(f"{endpoint} answered 502 Bad Gateway (attempt {ctx.attempt})")
