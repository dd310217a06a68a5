"""Retention on a working runner (SPEC §4 ``[retention]``): batches, what is kept, vacuum."""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from functools import partial
from pathlib import Path

import pytest
from ej_testkit import count_drift, vm_steps
from ops_support import (
    DAY_MS,
    WriteTrace,
    add_dependency,
    connect,
    existing_ids,
    insert_jobs,
    make_app,
    scalar,
)

import edgejobs.runner.maintenance as maintenance_module
import edgejobs.runner.ticks as ticks_module
from edgejobs.runner.ticks import PruneReport
from edgejobs.store import tokens
from edgejobs.store.maintenance import file_sizes
from edgejobs.store.migrations import migrate
from edgejobs.store.retention import delete_old_events
from edgejobs.store.store import Store
from edgejobs.testing import FakeClock

OLD_JOBS = 100_000
BATCH = 500


def ids(prefix: str, seqs: list[int]) -> list[str]:
    return [f"{prefix}-{seq:09d}" for seq in seqs]


async def test_pruning_100k_old_jobs_in_batches_while_the_runner_keeps_claiming(
    db_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    ej = make_app(
        db_path, clock, runner={"workers": 4}, retention={"days": 30, "batch_size": BATCH}
    )
    await ej.open()
    now = clock.now_ms()
    old = now - 40 * DAY_MS
    # The jobs retention must delete, and every kind it must keep.
    insert_jobs(
        db_path, OLD_JOBS, prefix="old", status="completed", created_at=old, finished_at=old
    )
    young = ids(
        "young",
        insert_jobs(
            db_path,
            50,
            prefix="young",
            status="failed",
            created_at=now - DAY_MS,
            finished_at=now - DAY_MS,
        ),
    )
    waiting = ids(
        "waiting",
        insert_jobs(
            db_path,
            20,
            prefix="waiting",
            status="scheduled",
            created_at=old,
            finished_at=None,
            run_at=now + 365 * DAY_MS,
        ),
    )
    retrying = ids(
        "retrying",
        insert_jobs(
            db_path,
            20,
            prefix="retrying",
            status="retrying",
            created_at=old,
            finished_at=None,
            next_retry_at=now + 365 * DAY_MS,
        ),
    )
    # An old finished parent whose child still waits (for a second, future parent) stays.
    parent = insert_jobs(
        db_path, 1, prefix="parent", status="completed", created_at=old, finished_at=old
    )
    child = insert_jobs(
        db_path, 1, prefix="child", status="blocked", created_at=old, finished_at=None
    )
    add_dependency(db_path, child[0], parent[0])
    add_dependency(
        db_path, child[0], scalar(db_path, "SELECT seq FROM jobs WHERE id = ?", waiting[0])
    )
    keep = young + waiting + retrying + ids("parent", parent) + ids("child", child)
    size_before = file_sizes(db_path).database_bytes

    trace = WriteTrace(ej)
    real_delete = ticks_module.delete_old_jobs
    real_vacuum = maintenance_module.vacuum_step

    def traced_delete(conn, tx, **kwargs):  # type: ignore[no-untyped-def]
        trace.mark("prune")
        return real_delete(conn, tx, **kwargs)

    def traced_vacuum(conn, tx, **kwargs):  # type: ignore[no-untyped-def]
        trace.mark("vacuum")
        return real_vacuum(conn, tx, **kwargs)

    monkeypatch.setattr(ticks_module, "delete_old_jobs", traced_delete)
    monkeypatch.setattr(maintenance_module, "vacuum_step", traced_vacuum)

    # The pool claims in the background; the tick loop does not run (the test prunes).
    await ej.start(run_workers=False)
    assert ej.pool is not None
    pool_task = asyncio.create_task(ej.pool.run())
    submitted: list[str] = []
    stop = asyncio.Event()
    flowing = asyncio.Event()  # set once new work is being submitted and claimed

    async def feed() -> None:
        n = 0
        while not stop.is_set():
            for _ in range(5):
                job = await ej.submit("quick", org="acme", params={"n": n})
                submitted.append(job.id)
                n += 1
            if n >= 20:
                flowing.set()
            await asyncio.sleep(0.002)

    feeder = asyncio.create_task(feed())
    try:
        await asyncio.wait_for(flowing.wait(), timeout=10)
        report = await ej.prune()
    finally:
        stop.set()
        await feeder
    await ej.drain(timeout=30)
    await ej.stop(grace_s=5)
    pool_task.cancel()

    # Everything old and finished went, in batches of at most `batch_size`, one per commit.
    assert report.jobs == OLD_JOBS
    runs = trace.runs()
    prunes = [position for position, _, kind in runs if kind == "prune"]
    assert len(prunes) == report.batches >= OLD_JOBS // BATCH
    assert scalar(db_path, "SELECT count(*) FROM jobs WHERE id LIKE 'old-%'") == 0
    assert (
        scalar(
            db_path,
            "SELECT count(*) FROM attempts a LEFT JOIN jobs j ON j.seq = a.job_seq"
            " WHERE j.seq IS NULL",
        )
        == 0
    )

    # The runner kept claiming throughout: no claim waited behind more than one prune batch
    # (or vacuum step), and claims committed between the batches all along the prune.
    waits = trace.waits({"prune", "vacuum"})
    assert waits and max(waits) <= 1, f"a claim waited for {max(waits)} batches"
    claims = [position for position, _, kind in runs if kind == "claim"]
    gaps_with_claims = sum(
        1 for a, b in zip(prunes, prunes[1:], strict=False) if any(a < c < b for c in claims)
    )
    assert gaps_with_claims >= len(prunes) // 4, (gaps_with_claims, len(prunes))
    tenth = len(prunes) // 10
    for start in range(0, len(prunes) - tenth, tenth):  # no stretch of 10 % without claims
        window = (prunes[start], prunes[start + tenth])
        assert any(window[0] < c < window[1] for c in claims), f"no claim in batches {start}+"
    assert any(kind == "vacuum" for _, _, kind in runs)

    # Nothing young, waiting, or needed by a waiting child was deleted; every new job ran.
    assert existing_ids(db_path, keep) == set(keep)
    assert existing_ids(db_path, submitted) == set(submitted)
    assert scalar(
        db_path,
        f"SELECT count(*) FROM jobs WHERE status = 'completed' AND id IN"
        f" ({','.join('?' * len(submitted))})",
        *submitted,
    ) == len(submitted)
    # The kept job counts lost exactly the deleted jobs, claimed and completed the new ones.
    with closing(connect(db_path)) as conn:
        assert count_drift(conn) == {}

    # The freed pages went back to the file system: the file shrank.
    await ej.maintenance.checkpoint(truncate=True)
    await ej.close()
    size_after = file_sizes(db_path).database_bytes
    assert size_after < size_before * 0.3, (size_before, size_after)
    assert scalar(db_path, "PRAGMA freelist_count") < 1024


async def test_prune_now_with_zero_days_deletes_every_terminal_job_and_keeps_open_ones(
    db_path: Path, clock: FakeClock
) -> None:
    """Every terminal job, also one that ended this very millisecond (a fake clock that did
    not move: what users' own test suites do), and its events with it (SPEC §4)."""
    ej = make_app(db_path, clock)
    async with ej:
        done = await ej.submit("quick", org="acme", params={"n": 1})
        await ej.drain()
        later = await ej.submit("quick", org="acme", params={"n": 2}, delay_s=3600)
        report = await ej.prune(older_than_days=0)
        counts = (await ej.stats(org="acme"))["by_status"]
    assert report.jobs == 1
    assert report.events == 3  # queued, running, completed
    assert existing_ids(db_path, [done.id, later.id]) == {later.id}
    assert scalar(db_path, "SELECT count(*) FROM events WHERE job_id = ?", done.id) == 0
    assert scalar(db_path, "SELECT count(*) FROM events WHERE job_id = ?", later.id) == 1
    assert counts["completed"] == 0 and counts["scheduled"] == 1
    with closing(connect(db_path)) as conn:
        assert count_drift(conn) == {}


async def test_another_process_can_write_between_the_batches_of_a_long_prune(
    db_path: Path, clock: FakeClock
) -> None:
    """Batches back to back left the write lock free for microseconds at a time. A writer in
    another process waits in SQLite's busy handler (sleeps of 1, 2, 5 … 100 ms) and gets in only
    if the lock is free when it looks: a submit waited 4 s during the retention of a million
    jobs, near the 5 s busy timeout. Now each batch is followed by a pause: a writer that only
    tries when it finds the lock free, without waiting at all, gets in between the batches."""
    batches = 30
    ej = make_app(db_path, clock, retention={"days": 30, "batch_size": 50})
    await ej.open()
    old = clock.now_ms() - 40 * DAY_MS
    insert_jobs(
        db_path, 50 * batches, prefix="old", status="completed", created_at=old, finished_at=old
    )
    spans: list[tuple[float, float]] = []  # each batch's time inside its transaction
    got_in: list[float] = []  # when the other writer held the lock
    real = ticks_module.delete_old_jobs

    def traced(conn: sqlite3.Connection, tx: object, **kwargs: int) -> object:
        began = time.monotonic()
        try:
            return real(conn, tx, **kwargs)  # type: ignore[arg-type]
        finally:
            spans.append((began, time.monotonic()))

    done = threading.Event()

    def other_process_writer() -> None:
        with closing(sqlite3.connect(str(db_path), isolation_level=None, timeout=0)) as conn:
            while not done.is_set():
                try:
                    conn.execute("BEGIN IMMEDIATE")
                except sqlite3.OperationalError:  # locked: the prune holds it
                    time.sleep(0.0005)
                    continue
                got_in.append(time.monotonic())
                conn.execute("COMMIT")
                time.sleep(0.0005)

    prober = threading.Thread(target=other_process_writer, daemon=True)
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(ticks_module, "delete_old_jobs", traced)
            prober.start()
            report = await ej.prune()
    finally:
        done.set()
        prober.join(timeout=10)
        await ej.close()
    assert report.jobs == 50 * batches
    gaps = list(zip((end for _, end in spans), (began for began, _ in spans[1:]), strict=False))
    assert len(gaps) == batches  # the last, short batch found nothing left
    reached = sum(any(end < at < began for at in got_in) for end, began in gaps)
    # Every gap, bar a scheduling hiccup or two on a loaded machine.
    assert reached >= len(gaps) - 3, (reached, len(gaps))


async def test_retention_deletes_expired_dashboard_sessions(
    db_path: Path, clock: FakeClock
) -> None:
    """Logins sweep expired sessions, but a dashboard nobody signs in to again would keep its
    rows for good: retention deletes them too, and only them."""
    ej = make_app(db_path, clock)
    async with ej:
        token = await ej.store.write(
            partial(tokens.create_token, org="acme", role="viewer", name="d", now=clock.now_ms())
        )
        for ttl_ms in (1_000, 1_000, 3_600_000):
            await ej.store.write(
                partial(
                    tokens.create_session, token_id=token.info.id, ttl_ms=ttl_ms, now=clock.now_ms()
                )
            )
        clock.advance(2)
        report = await ej.prune()
    assert report.sessions == 2
    assert scalar(db_path, "SELECT count(*) FROM sessions") == 1
    assert (
        scalar(db_path, "SELECT count(*) FROM sessions WHERE expires_at > ?", clock.now_ms()) == 1
    )


async def test_the_seqs_of_pruned_jobs_are_never_handed_out_again(
    db_path: Path, clock: FakeClock
) -> None:
    """A seq names its job in every fenced write ("attempt N of seq S"), so it must name one
    job forever. Pruning every job, the newest included, used to hand the pruned seqs to the
    next jobs (SQLite's max(seq) + 1): a late write meant for a pruned job could then land on
    a new one. Also across a restart, and for jobs inserted one by one (with parents)."""
    ej = make_app(db_path, clock)
    async with ej:
        for n in range(3):
            await ej.submit("quick", org="acme", params={"n": n})
        await ej.drain()
        pruned = scalar(db_path, "SELECT max(seq) FROM jobs")
        clock.advance(1)
        assert (await ej.prune(older_than_days=0)).jobs == 3
        assert scalar(db_path, "SELECT count(*) FROM jobs") == 0
        plain = await ej.submit("quick", org="acme", params={"n": 3})
        await ej.drain()
    plain_seq = scalar(db_path, "SELECT seq FROM jobs WHERE id = ?", plain.id)
    assert plain_seq == pruned + 1
    reopened = make_app(db_path, clock)
    async with reopened:
        clock.advance(1)
        assert (await reopened.prune(older_than_days=0)).jobs == 1
        parent = await reopened.submit("quick", org="acme", params={"n": 4})
        child = await reopened.submit("quick", org="acme", params={"n": 5}, depends_on=[parent.id])
        await reopened.drain()
    seqs = [scalar(db_path, "SELECT seq FROM jobs WHERE id = ?", job.id) for job in (parent, child)]
    assert seqs == [plain_seq + 1, plain_seq + 2]


def test_the_migration_starts_the_seq_floor_at_the_highest_seq_a_file_holds(
    db_path: Path,
) -> None:
    Store(db_path).prepare()
    insert_jobs(db_path, 5, prefix="old", status="completed", created_at=0, finished_at=0)
    with closing(connect(db_path)) as conn:
        conn.execute("DROP TABLE job_seq_floor")  # the file as version 6 kept it
        conn.execute("DROP TABLE rate_windows")
        conn.execute("DROP TABLE backup_copy")
        conn.execute("DROP INDEX jobs_unsuccessful")
        conn.execute("PRAGMA user_version = 6")
        assert migrate(conn) >= 7
        assert [tuple(row) for row in conn.execute("SELECT one, seq FROM job_seq_floor")] == [
            (1, 5)
        ]


async def test_the_tick_vacuums_a_large_free_list_in_bounded_steps(
    db_path: Path, clock: FakeClock
) -> None:
    ej = make_app(db_path, clock, retention={"days": 30, "interval_s": 3600})
    await ej.open()
    old = clock.now_ms() - 40 * DAY_MS
    insert_jobs(db_path, 20_000, prefix="old", status="completed", created_at=old, finished_at=old)
    await ej.start(run_workers=False)  # the tick runs when the test calls it
    assert ej.ticker is not None
    ej.maintenance.settings = maintenance_settings = type(ej.maintenance.settings)(
        vacuum_step_pages=64, vacuum_steps_per_tick=4, vacuum_min_free_bytes=1024 * 1024
    )
    await ej.ticker.tick()  # retention is due at the first tick: it deletes, then vacuums
    step_cap = maintenance_settings.vacuum_step_pages * maintenance_settings.vacuum_steps_per_tick
    first = ej.maintenance.vacuumed_pages_total
    assert 0 < first <= step_cap  # bounded per tick ...
    for _ in range(200):
        before = ej.maintenance.vacuumed_pages_total
        await ej.ticker.tick()
        if ej.maintenance.vacuumed_pages_total == before:
            break
    stats = await ej.maintenance.page_stats()
    assert not ej.maintenance.needs_vacuum(stats)  # ... and continued until small
    assert ej.maintenance.vacuumed_pages_total > step_cap
    await ej.close()


async def test_the_event_log_is_trimmed_to_its_replay_window_every_minute(
    db_path: Path, clock: FakeClock
) -> None:
    ej = make_app(db_path, clock, events={"replay_max_events": 100}, retention={"batch_size": 50})
    await ej.start(run_workers=False)
    assert ej.ticker is not None
    try:
        await ej.ticker.tick()  # the first tick also runs retention; the next ones do not
        for n in range(200):
            await ej.submit("quick", org="acme", params={"n": n})
        await ej.drain()
        events = scalar(db_path, "SELECT count(*) FROM events")
        assert events >= 600  # queued, running, completed
        clock.advance(30)
        await ej.ticker.tick()  # not a minute yet
        assert scalar(db_path, "SELECT count(*) FROM events") == events
        clock.advance(31)
        await ej.ticker.tick()
        assert scalar(db_path, "SELECT count(*) FROM events") == 100
        newest = scalar(db_path, "SELECT max(id) FROM events")
        assert scalar(db_path, "SELECT min(id) FROM events") == newest - 99
    finally:
        await ej.close()


async def test_an_idle_tick_does_not_look_at_the_free_pages_again(
    db_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Free pages come from deletes: while nothing was written, the vacuum task skips its read
    (on an idle runner it was a read per tick); after a write it looks again."""
    ej = make_app(db_path, clock)
    ej.register("work", _noop_handler)
    await ej.start(run_workers=False)
    assert ej.ticker is not None
    looks = 0
    page_stats = ej.maintenance.page_stats

    async def counted() -> object:
        nonlocal looks
        looks += 1
        return await page_stats()

    monkeypatch.setattr(ej.maintenance, "page_stats", counted)
    try:
        await ej.ticker.tick()
        first = looks
        assert first == 1
        for _ in range(5):
            clock.advance(1)
            await ej.ticker.tick()
        assert looks == first  # nothing written: no look
        await ej.submit("work", org="acme")
        clock.advance(1)
        await ej.ticker.tick()
        assert looks == first + 1  # a write: look again
        clock.advance(maintenance_module.VACUUM_LOOK_MS / 1000 - 1)
        await ej.ticker.tick()
        assert looks == first + 1  # not yet a minute since that look
        clock.advance(1)
        await ej.ticker.tick()
        assert looks == first + 2  # at least once a minute (other processes' deletes)
    finally:
        await ej.close()


async def _noop_handler(ctx: object, params: dict[str, object]) -> None:
    return None


def _event_log(path: Path, created_at: list[int]) -> sqlite3.Connection:
    """A migrated database whose event log holds one event per ``created_at``, in id order."""
    conn = connect(path)
    with conn:  # one transaction (the connection autocommits otherwise)
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT INTO events (org, job_id, kind, data, created_at)"
            " VALUES ('acme', 'j', 'job', '{}', ?)",
            [(at,) for at in created_at],
        )
    return conn


def test_expired_events_go_oldest_first_and_only_as_a_prefix_of_the_log(
    db_path: Path, clock: FakeClock
) -> None:
    Store(db_path).prepare()
    now = clock.now_ms()
    old, young = now - 2 * DAY_MS, now
    # Ids 1-3 old, 4 young (a clock that was set back), 5-6 old again, 7 young.
    with closing(_event_log(db_path, [old, old, old, young, old, old, young])) as conn:
        deleted = delete_old_events(conn, None, cutoff_ms=now - DAY_MS, batch=100)  # type: ignore[arg-type]
        left = [row[0] for row in conn.execute("SELECT id FROM events ORDER BY id")]
    # Deleting 5 and 6 before 4 would let a client that saw 3 believe it missed nothing.
    assert deleted == 3
    assert left == [4, 5, 6, 7]


def test_looking_for_expired_events_reads_one_batch_however_long_the_log(
    tmp_path: Path, clock: FakeClock
) -> None:
    """The trim deletes in batches and looks for expired events before each: that look once
    walked the whole log whenever nothing had expired, so a long log took quadratic work."""
    steps = {}
    for size in (1_000, 50_000):
        path = tmp_path / f"log-{size}.db"
        Store(path).prepare()
        now = clock.now_ms()
        with closing(_event_log(path, [now] * size)) as conn:
            look = partial(delete_old_events, conn, None, cutoff_ms=now - DAY_MS, batch=500)
            steps[size] = vm_steps(conn, look)
            assert conn.execute("SELECT count(*) FROM events").fetchone()[0] == size
    assert steps[50_000] <= steps[1_000] + 2, steps


@contextmanager
def small_disk(folder: Path, size: str) -> Iterator[Path]:
    """A real file system of ``size`` at ``folder`` (a tmpfs: needs root)."""
    folder.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip("mounting a small tmpfs needs root")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def fill_up(folder: Path, leave: int) -> None:
    """Take all the free space of ``folder``'s file system but ``leave`` bytes."""
    stat = os.statvfs(folder)
    with open(folder / "filler", "wb") as filler:
        filler.write(b"\0" * (stat.f_bavail * stat.f_frsize - leave))


async def test_prune_on_a_nearly_full_disk_deletes_everything_and_gives_the_space_back(
    db_path: Path, tmp_path: Path
) -> None:
    """Pruning is what an operator reaches for when the disk fills up. Deletes need room in
    the WAL, which grew batch after batch into the last free bytes: the prune stopped at the
    first full write, the file as large as before."""
    with small_disk(tmp_path / "disk", "4m") as disk:
        database, before, report = await _prune_old_jobs_on_a_full_disk(
            db_path, disk, jobs=6000, params_bytes=120, leave=300 * 1024
        )
        assert report.jobs == 6000
        assert scalar(database, "SELECT count(*) FROM jobs") == 0
        assert database.stat().st_size < before / 4


async def _prune_old_jobs_on_a_full_disk(
    db_path: Path, disk: Path, *, jobs: int, params_bytes: int, leave: int
) -> tuple[Path, int, PruneReport]:
    """``jobs`` old finished jobs in a database copied onto ``disk``, the disk then filled but
    ``leave`` bytes, and ``edgejobs prune``'s work done on it: (the copy, its size before, the
    prune's report)."""
    ej = make_app(db_path)
    await ej.open()
    await ej.close()
    insert_jobs(
        db_path,
        jobs,
        prefix="old",
        status="completed",
        created_at=1,
        finished_at=1,
        params_bytes=params_bytes,
    )
    database = disk / "jobs.db"
    shutil.copyfile(db_path, database)
    before = database.stat().st_size
    fill_up(disk, leave)
    ej = make_app(database)
    await ej.open()
    try:
        return database, before, await ej.prune(older_than_days=0)
    finally:
        await ej.close()


async def test_on_a_disk_too_full_for_a_vacuum_step_prune_gives_the_space_back_in_smaller_ones(
    db_path: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Each vacuum step moves up to 4 MiB of pages through the WAL: with less room than that,
    every step failed, so the deleted space never came back, ``prune`` failed ("the disk is
    full: nothing was written") after deleting everything, and a second prune, deleting
    nothing, did not vacuum at all. Steps now shrink to what fits, after making room."""
    with small_disk(tmp_path / "disk", "32m") as disk:
        database, before, report = await _prune_old_jobs_on_a_full_disk(
            db_path, disk, jobs=20_000, params_bytes=400, leave=1024 * 1024
        )
        assert before > 8 * 1024 * 1024  # more than two 4 MiB steps of pages to give back
        assert report.jobs == 20_000
        assert database.stat().st_size < before / 4
        assert "the disk is too full" not in caplog.text  # smaller steps did fit


async def test_retention_deletes_the_kept_counts_that_went_back_to_zero(
    db_path: Path, clock: FakeClock
) -> None:
    """Every (org, job type, status) a job passed through left a row in ``job_counts``; once
    retention had deleted an org's jobs, its rows stayed at 0 for good, so the table grew with
    every org that ever submitted (and the claim of a limited type reads it). Retention deletes
    the zero rows — in batches — and keeps the others exact."""
    ej = make_app(db_path, clock, retention={"batch_size": 4})
    async with ej:
        for n in range(10):
            await ej.submit("quick", org=f"tenant{n}", params={"n": n})
        waiting = await ej.submit("quick", org="stays", params={"n": 0}, delay_s=3600)
        await ej.drain()
        assert scalar(db_path, "SELECT count(*) FROM job_counts WHERE n = 0") > 0
        report = await ej.prune(older_than_days=0)
        counts = (await ej.stats())["by_status"]
    assert report.jobs == 10
    assert scalar(db_path, "SELECT count(*) FROM job_counts WHERE n = 0") == 0
    assert report.counts > 4  # more than one batch
    with closing(connect(db_path)) as conn:
        rows = [tuple(row) for row in conn.execute("SELECT org, status, n FROM job_counts")]
    assert rows == [("stays", "scheduled", 1)]
    assert counts["scheduled"] == 1 and counts["completed"] == 0
    assert existing_ids(db_path, [waiting.id]) == {waiting.id}
    with closing(connect(db_path)) as conn:
        assert count_drift(conn) == {}
