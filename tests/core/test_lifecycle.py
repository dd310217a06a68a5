"""An EdgeJobs' life: start, stop, start again; close for good."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from edgejobs import EdgeJobs, Status
from edgejobs.errors import EdgeJobsError, ShuttingDown


async def _double(ctx: Any, params: dict[str, Any]) -> int:
    return int(params["n"]) * 2


def _app(path: Path) -> EdgeJobs:
    ej = EdgeJobs(path)
    ej.register("double", _double)
    return ej


async def test_a_runner_stopped_and_started_again_takes_and_runs_jobs(tmp_path: Path) -> None:
    """``stop`` leaves the database open; a later ``start`` makes the instance the runner
    again. Submissions were refused for good after the first stop (ShuttingDown)."""
    ej = _app(tmp_path / "jobs.db")
    await ej.start()
    try:
        first = await ej.submit("double", org="acme", params={"n": 1})
        assert (await ej.wait(first.id, timeout=10)).result == 2
        await ej.stop()
        assert ej.stopping and not ej.is_runner
        with pytest.raises(ShuttingDown, match="this runner was stopped: start"):
            await ej.submit("double", org="acme", params={"n": 2})
        assert (await ej.get(first.id)).result == 2  # reads still work
        await ej.start()
        assert not ej.stopping and ej.is_runner
        again = await ej.submit("double", org="acme", params={"n": 3})
        done = await ej.wait(again.id, timeout=10)
        assert done.status is Status.COMPLETED and done.result == 6
    finally:
        await ej.close()


@pytest.mark.parametrize("runner", [True, False])
async def test_a_closed_instance_says_so_instead_of_failing_deep_inside(
    tmp_path: Path, runner: bool
) -> None:
    """Closing shuts the writer and reader threads down for good; opening again failed with
    "cannot schedule new futures after shutdown" (a runner) or worked on half-closed parts."""
    ej = _app(tmp_path / "jobs.db")
    if runner:
        await ej.start()
    job = await ej.submit("double", org="acme", params={"n": 1})
    await ej.close()
    attempts = {
        "start": ej.start,
        "open": ej.open,
        "submit": lambda: ej.submit("double", org="acme", params={"n": 2}),
        "get": lambda: ej.get(job.id),
    }
    for name, call in attempts.items():
        with pytest.raises(EdgeJobsError, match="closed") as caught:
            await call()
        assert not isinstance(caught.value, ShuttingDown), name
    await ej.close()  # closing twice is fine
    # The database is intact: a new instance opens it and finds the job.
    async with _app(tmp_path / "jobs.db") as fresh:
        assert (await fresh.wait(job.id, timeout=10)).result == 2
