"""A database with little room left: a write that does not fit fails alone."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

from ops_support import make_app

from edgejobs import Job, StorageFull
from edgejobs.testing import FakeClock


async def test_a_submission_too_big_for_the_room_left_fails_alone(
    db_path: Path, clock: FakeClock
) -> None:
    """SQLite rolls the whole transaction back when a write meets a full file: written in one
    transaction with five small submissions, a 60 kB one that did not fit failed all six
    (and whatever else that commit carried). The others are written again without it."""
    ej = make_app(db_path, clock)
    await ej.start(run_workers=False)
    try:
        for n in range(50):  # room in the pages the file has, as a used database has
            await ej.submit("quick", org="acme", params={"warm": n})

        def leave_three_pages(conn: sqlite3.Connection, tx: Any) -> None:
            pages = conn.execute("PRAGMA page_count").fetchone()[0]
            conn.execute(f"PRAGMA max_page_count = {int(pages) + 3}")

        await ej.store.write(leave_three_pages)
        commits = ej.store.writer.commits
        results = await asyncio.gather(
            ej.submit("quick", org="acme", params={"big": "y" * 60_000}),
            *(ej.submit("quick", org="acme", params={"small": n}) for n in range(5)),
            return_exceptions=True,
        )
        assert isinstance(results[0], StorageFull), results[0]
        assert all(isinstance(result, Job) for result in results[1:]), results[1:]
        assert ej.store.writer.commits == commits + 1  # the six were one batch
        jobs, _ = await ej.list_jobs(org="acme", limit=100)
        assert sum(1 for job in jobs if "small" in job.params) == 5
        assert not any("big" in job.params for job in jobs)
        with_room = await ej.submit("quick", org="acme", params={"after": 1})
        assert with_room.status.value == "queued"
    finally:
        await ej.close()
