"""Other connections' commits are noticed by watching the WAL file (Linux), or by polling
``PRAGMA data_version`` where it cannot be watched; the runner claims what they submitted."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from ej_testkit import poll_until

from edgejobs import EdgeJobs, Job, Status
from edgejobs.config import Config, RunnerConfig
from edgejobs.store import db


async def echo(ctx: Any, params: dict[str, Any]) -> dict[str, Any]:
    return params


async def _submit_elsewhere_and_wait(path: Path, runner: EdgeJobs, *, when_armed: bool) -> None:
    # Another EdgeJobs on the same file is another connection: its commit is "foreign" to the
    # runner's writer, exactly like a CLI submit from another process.
    other = EdgeJobs(database=path)
    await other.open()
    try:
        for n in range(3):
            if when_armed:  # the runner's writer went idle: only the watch can wake it now
                await poll_until(
                    lambda: runner.store.writer.watch_armed,
                    timeout=10,
                    interval=0.005,
                    message="the runner's writer never went idle",
                )
            job = await other.submit("echo", org="acme", params={"n": n})
            await _echoed(runner, job, n)
    finally:
        await other.close()


async def _echoed(runner: EdgeJobs, job: Job, n: int) -> None:
    """``job`` (an echo of ``{"n": n}`` submitted elsewhere) is run and completed by ``runner``."""
    done = await runner.wait(job.id, timeout=15)
    assert done.status is Status.COMPLETED and done.result == {"n": n}


def _quiet_runner(path: Path) -> EdgeJobs:
    """A runner with no ticks (a tick's write would make the writer look as it settles)."""
    quiet = Config().model_copy(
        update={"runner": RunnerConfig(workers=2, tick_interval_s=3600, lease_s=3600)}
    )
    runner = EdgeJobs(database=path, config=quiet)
    runner.register("echo", echo)
    return runner


def _told_only_by_the_watch(path: Path, monkeypatch: pytest.MonkeyPatch) -> EdgeJobs:
    """A runner whose writer, once idle, looks by itself only every hour: only the watch can
    tell it about other connections' commits. No ticks either."""
    monkeypatch.setattr(db, "WATCHED_POLL_S", 3600.0)
    monkeypatch.setattr(db, "BUSY_POLL_S", 3600.0)
    return _quiet_runner(path)


def _watch_fired_by_hand(monkeypatch: pytest.MonkeyPatch) -> int:
    """The next writer to open gets a watch the test fires by writing to the returned pipe
    end (real commits write the WAL unannounced); writers opened later poll."""
    read_fd, write_fd = os.pipe()
    os.set_blocking(read_fd, False)
    watches = [db.WalWatch(read_fd)]
    monkeypatch.setattr(db, "open_watch", lambda path: watches.pop() if watches else None)
    return write_fd


async def _fire_and_see_it_looked(writer: db.Writer, write_fd: int) -> None:
    """Say "the WAL was written" once the writer is idle, and wait for its look."""
    await poll_until(lambda: writer.watch_armed, timeout=10, interval=0.005, message="not idle")
    looked = writer._checked_foreign_at
    os.write(write_fd, b"x")
    await poll_until(
        lambda: writer._checked_foreign_at > looked,
        timeout=10,
        interval=0.001,
        message="the writer never looked",
    )


@contextlib.asynccontextmanager
async def _runner_on_a_hand_fired_watch(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[EdgeJobs, EdgeJobs, int]]:
    """A started runner told of other connections' commits only by a watch the test fires
    (:func:`_watch_fired_by_hand`), another open instance on the same file (it polls), and the
    pipe end that fires the runner's watch."""
    write_fd = _watch_fired_by_hand(monkeypatch)
    runner = _told_only_by_the_watch(path, monkeypatch)
    other = EdgeJobs(database=path)
    try:
        async with runner:
            await other.open()
            yield runner, other, write_fd
    finally:
        await other.close()
        os.close(write_fd)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inotify is Linux's")
async def test_a_foreign_commit_is_noticed_through_the_watch_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "jobs.db"
    runner = _told_only_by_the_watch(path, monkeypatch)
    async with runner:
        assert runner.store.writer.watching
        await _submit_elsewhere_and_wait(path, runner, when_armed=True)


async def test_without_a_watch_the_writer_polls(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(db, "open_watch", lambda path: None)  # e.g. not Linux
    monkeypatch.setattr(db, "BUSY_POLL_S", 3600.0)
    path = tmp_path / "jobs.db"
    runner = EdgeJobs(database=path, workers=2)
    runner.register("echo", echo)
    async with runner:
        assert not runner.store.writer.watching
        await _submit_elsewhere_and_wait(path, runner, when_armed=False)


async def test_a_closed_store_stops_watching(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    ej = EdgeJobs(database=path)
    await ej.open()
    writer = ej.store.writer
    await ej.close()
    assert not writer.watching


async def test_a_commit_not_visible_yet_when_the_watch_fires_is_still_noticed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The watch fires as another process writes its WAL frames; the commit becomes visible a
    moment later, when its wal-index (shared memory: no notification) is updated. A look in
    between saw nothing, and nothing woke the runner again: a CLI submission waited seconds,
    up to the 30 s safety look. The writer looks again after short pauses."""
    async with _runner_on_a_hand_fired_watch(tmp_path / "jobs.db", monkeypatch) as started:
        runner, other, write_fd = started
        for n in range(3):
            await _fire_and_see_it_looked(runner.store.writer, write_fd)  # "the WAL was written"
            job = await other.submit("echo", org="acme", params={"n": n})  # ... then it is
            await _echoed(runner, job, n)


async def test_a_recheck_left_over_from_before_a_write_does_not_keep_the_watch_unarmed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A look the watch asked for that found nothing starts rechecks (up to 0.25 s apart). A
    write of this process's own in the middle left the rest of them standing: the first one
    replaced the settle timeout after the write, and the watch stayed unarmed until it ran out,
    so another process's commits went unheard that long — a job submitted from another process
    started ~250 ms late in one case of five. The write's own transaction came after any commit
    on its way: nothing is left to recheck after it."""
    # Rechecks so far apart that one left standing keeps the watch unarmed for the test's life.
    monkeypatch.setattr(db, "RECHECK_AFTER_S", (3600.0, 3600.0))
    async with _runner_on_a_hand_fired_watch(tmp_path / "jobs.db", monkeypatch) as started:
        runner, other, write_fd = started
        writer = runner.store.writer
        await _fire_and_see_it_looked(writer, write_fd)  # and no commit shows: rechecks
        mine = await runner.submit("echo", org="acme", params={"n": 0})  # a write of its own
        assert (await runner.wait(mine.id, timeout=15)).status is Status.COMPLETED
        await poll_until(
            lambda: writer.watch_armed,
            timeout=10,
            interval=0.005,
            message="the watch stayed unarmed after the write",
        )
        job = await other.submit("echo", org="acme", params={"n": 1})
        os.write(write_fd, b"x")  # its commit, told by the watch now armed
        await _echoed(runner, job, 1)


async def test_a_runner_hears_a_submit_from_elsewhere_while_its_writer_settles(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The watch is unarmed while the writer settles after its own commits (60 ms), and the
    runner looked for other processes' commits only at the end of that: a job submitted from
    another process just after the runner wrote started up to 60 ms late (p90 37 ms with a job
    every 100 ms). It looks every few milliseconds meanwhile now. The settling is stretched to
    3 s here, so that the two cannot be mistaken."""
    monkeypatch.setattr(db, "SETTLE_S", 3.0)
    monkeypatch.setattr(db, "WATCHED_POLL_S", 3600.0)  # no safety-net look either
    path = tmp_path / "jobs.db"
    runner = _quiet_runner(path)
    other = EdgeJobs(database=path)
    try:
        async with runner:
            await other.open()
            loop = asyncio.get_running_loop()
            for n in range(3):
                mine = await runner.submit("echo", org="acme", params={"n": -1})
                await runner.wait(mine.id, timeout=15)  # the runner's writer settles now
                started = loop.time()
                job = await other.submit("echo", org="acme", params={"n": n})
                await _echoed(runner, job, n)
                assert loop.time() - started < 1.5
    finally:
        await other.close()
