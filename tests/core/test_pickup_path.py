"""The path of a job submitted to an idle runner: its claim shares the submit's transaction,
and ``get`` / ``wait`` read on the event-loop thread (through the read pool when SQLite is
busy there). Real runner, real writer thread, real database file."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest

from edgejobs import EdgeJobs, Status
from edgejobs.errors import NotFound
from edgejobs.store.jobs import get_job


async def echo(ctx: Any, params: dict[str, Any]) -> dict[str, Any]:
    return params


async def test_get_reads_on_the_loop_and_goes_through_the_pool_when_busy_there(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ej = EdgeJobs(database=db_path)
    ej.register("echo", echo, dedup=False)
    await ej.open()  # not a runner: the job stays queued
    try:
        job_id = (await ej.submit("echo", org="acme")).id
        point = ej.store.point_reader

        # SQLite refusing the point read as busy (its first read raises it): not done, and
        # the snapshot is closed, so the connection is ready for the next read.
        def locked(conn: sqlite3.Connection) -> None:
            conn.execute("SELECT count(*) FROM jobs").fetchone()
            raise sqlite3.OperationalError("database is locked")

        assert point.try_run(locked) == (False, None)
        now = ej.clock.now_ms()
        done, job = point.try_run(lambda conn: get_job(conn, job_id, None, now))
        assert done and job is not None and job.id == job_id

        # Then ``get`` asks a reader thread instead, and answers the same.
        on_loop = threading.get_ident()
        threads: list[int] = []

        def busy_here(fn: Any) -> tuple[bool, None]:
            return False, None

        def read_on_pool(conn: sqlite3.Connection) -> None:
            threads.append(threading.get_ident())

        monkeypatch.setattr(point, "try_run", busy_here)
        await ej.store.read_point(read_on_pool)
        assert threads and threads[0] != on_loop
        assert (await ej.get(job_id, org="acme")).status is Status.QUEUED
        with pytest.raises(NotFound):
            await ej.get(job_id, org="other")
        monkeypatch.undo()

        # On the loop thread: the same answers, another org's job a NotFound.
        threads.clear()
        await ej.store.read_point(read_on_pool)
        assert threads == [on_loop]
        assert (await ej.get(job_id, org="acme")).status is Status.QUEUED
        with pytest.raises(NotFound):
            await ej.get(job_id, org="other")
    finally:
        await ej.close()
