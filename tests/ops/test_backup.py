"""``edgejobs backup PATH``: an online, consistent, verified copy; restore as documented."""

from __future__ import annotations

import asyncio
import errno
import os
import resource
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import pytest
from ops_support import DAY_MS, connect, insert_jobs, make_app

from edgejobs import EdgeJobs
from edgejobs.broker import get_broker
from edgejobs.cli import main
from edgejobs.store.db import Pragmas
from edgejobs.store.maintenance import BackupError, backup_database
from edgejobs.store.store import Store
from edgejobs.testing import FakeClock


def copy_ids(path: Path) -> set[str]:
    with closing(connect(path)) as conn:
        return {row[0] for row in conn.execute("SELECT id FROM jobs")}


def check_copy(path: Path) -> None:
    """The copy is intact and internally consistent (no half-written transaction)."""
    with closing(connect(path)) as conn:
        assert [r[0] for r in conn.execute("PRAGMA integrity_check")] == ["ok"]
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        # A job is never `completed` without its attempt: both are written in one transaction.
        orphans = conn.execute(
            "SELECT count(*) FROM jobs j WHERE status = 'completed'"
            " AND NOT EXISTS (SELECT 1 FROM attempts a WHERE a.job_seq = j.seq)"
        ).fetchone()[0]
        assert orphans == 0


def restore(backup: Path, database: Path) -> None:
    """Restore as docs/operations.md says: (runner stopped,) file replaced, -wal/-shm removed."""
    database.parent.mkdir(exist_ok=True)
    shutil.copyfile(backup, database)
    for suffix in ("-wal", "-shm"):
        Path(f"{database}{suffix}").unlink(missing_ok=True)


class Workload:
    """Submits quick jobs without pause while the pool runs them; remembers what committed."""

    def __init__(self, ej: EdgeJobs) -> None:
        self.ej = ej
        self.committed: list[str] = []
        self._stop = asyncio.Event()
        self._started = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            job = await self.ej.submit("quick", org="acme", params={"n": n})
            self.committed.append(job.id)  # submit returns after COMMIT
            if len(self.committed) >= 20:
                self._started.set()
            n += 1
            await asyncio.sleep(0.001)

    async def __aenter__(self) -> Workload:
        self._task = asyncio.create_task(self._run())
        await self._started.wait()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._task is not None
        await self._task


async def test_a_backup_during_a_running_workload_holds_every_job_committed_before_it(
    db_path: Path, clock: FakeClock, tmp_path: Path
) -> None:
    ej = make_app(db_path, clock, runner={"workers": 4})
    await ej.open()
    old = clock.now_ms() - DAY_MS
    insert_jobs(db_path, 50_000, prefix="old", status="completed", created_at=old, finished_at=old)
    target = tmp_path / "backups" / "copy.db"
    target.parent.mkdir()
    async with ej, Workload(ej) as work:
        before = list(work.committed)
        commits = ej.store.writer.commits
        result = await asyncio.to_thread(backup_database, db_path, target, ej.store.pragmas)
        # The runner kept committing while the copy was being written.
        assert ej.store.writer.commits > commits
    check_copy(target)
    ids = copy_ids(target)
    assert set(before) <= ids
    assert result.jobs == len(ids) >= 50_000 + len(before)
    assert result.bytes == target.stat().st_size
    # The copy is a snapshot: it misses what committed after it began.
    assert len(ids) < 50_000 + len(work.committed)
    assert not list(target.parent.glob("*.partial"))


async def test_the_backup_command_works_from_another_process_and_never_overwrites(
    db_path: Path, tmp_path: Path, restore_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "edgejobs.toml"
    config.write_text(f'[database]\npath = "{db_path.name}"\n', encoding="utf-8")
    ej = make_app(db_path, runner={"workers": 2})
    target = tmp_path / "copy.db"
    async with ej, Workload(ej) as work:
        before = list(work.committed)
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "edgejobs",
            "backup",
            str(target),
            "--config",
            str(config),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, "EDGEJOBS_CONFIG": ""},
        )
        out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    check_copy(target)
    ids = copy_ids(target)
    assert set(before) <= ids
    assert f"{len(ids)} jobs" in out.decode()
    assert "integrity ok" in out.decode()

    # A second backup to the same path is refused; the first copy stays as it was.
    stamp = target.stat().st_mtime_ns, target.stat().st_size
    capsys.readouterr()
    assert main(["backup", str(target), "--config", str(config)]) == 1
    assert "already exists" in capsys.readouterr().err
    assert (target.stat().st_mtime_ns, target.stat().st_size) == stamp
    with pytest.raises(BackupError, match="no database"):
        backup_database(tmp_path / "missing.db", tmp_path / "other.db", ej.store.pragmas)
    assert not (tmp_path / "missing.db").exists()


@pytest.mark.parametrize("suffix", ["-wal", "-shm", "-journal"])
async def test_a_backup_under_the_name_of_the_databases_own_journal_is_refused(
    tmp_path: Path, suffix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """``edgejobs backup jobs.db-wal`` (the database stopped, so no such file yet) said "wrote
    ..., integrity ok"; the next open took the copy for the database's WAL and deleted it."""
    path = tmp_path / "jobs.db"
    ej = make_app(path)
    async with ej:
        await ej.submit("quick", org="acme", params={"n": 1})
        await ej.drain()
    config = tmp_path / "edgejobs.toml"
    config.write_text(f'[database]\npath = "{path.name}"\n')
    for name in (f"jobs.db{suffix}", f"sub/../jobs.db{suffix}"):
        (tmp_path / "sub").mkdir(exist_ok=True)
        assert main(["backup", str(tmp_path / name), "--config", str(config)]) == 1
        assert "journal or shared-memory file" in capsys.readouterr().err
    assert not any(p.name.startswith("jobs.db-") for p in tmp_path.iterdir())
    # A name that only looks alike is a backup like any other.
    assert main(["backup", str(tmp_path / f"jobs{suffix}.db"), "--config", str(config)]) == 0
    check_copy(tmp_path / f"jobs{suffix}.db")


async def test_a_restored_backup_runs_like_the_original(
    db_path: Path, clock: FakeClock, tmp_path: Path
) -> None:
    ej = make_app(db_path, clock)
    async with ej:
        done = await ej.submit("quick", org="acme", params={"n": 1})
        await ej.drain()
        waiting = await ej.submit("quick", org="acme", params={"n": 2}, delay_s=60)
        backup_database(db_path, tmp_path / "copy.db", ej.store.pragmas)
    restored = tmp_path / "restored" / "jobs.db"
    restore(tmp_path / "copy.db", restored)
    again = make_app(restored, clock)
    async with again:
        assert (await again.get(done.id)).status == "completed"
        clock.advance(61)
        assert again.ticker is not None
        await again.ticker.tick()
        await again.drain()
        assert (await again.get(waiting.id)).status == "completed"


def test_a_backup_of_a_restored_copy_that_no_runner_started_yet_works(
    db_path: Path, tmp_path: Path
) -> None:
    """The copy carries its backup mark until a runner's first start; a backup of it (a
    nightly backup while the restored runner is still stopped) failed with "UNIQUE constraint
    failed: backup_copy.one". The older mark stays: its gap covers the newer copy too."""
    Store(db_path).prepare()
    first, second = tmp_path / "first.db", tmp_path / "second.db"
    backup_database(db_path, first, Pragmas())
    with closing(connect(first)) as conn:
        taken = conn.execute("SELECT taken_at FROM backup_copy").fetchone()[0]
    backup_database(first, second, Pragmas())
    with closing(connect(second)) as conn:
        assert [tuple(row) for row in conn.execute("SELECT taken_at FROM backup_copy")] == [
            (taken,)
        ]


def _small_files() -> None:
    """In the child: no file may grow past 1 MB (a full disk for the copy, not for the
    source, which the backup only reads); the write then fails instead of killing it."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1_000_000, 1_000_000))


async def test_a_backup_that_meets_a_full_disk_fails_with_one_line_and_leaves_nothing(
    db_path: Path, tmp_path: Path
) -> None:
    ej = make_app(db_path)
    await ej.open()
    await ej.close()
    insert_jobs(db_path, 20_000, prefix="old", status="completed", created_at=1, finished_at=1)
    config = tmp_path / "edgejobs.toml"
    config.write_text(f'[database]\npath = "{db_path.name}"\n', encoding="utf-8")
    backups = tmp_path / "backups"
    backups.mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "edgejobs", "backup", str(backups / "copy.db")],
        env={**os.environ, "EDGEJOBS_CONFIG": str(config)},
        preexec_fn=_small_files,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert proc.stderr.startswith("edgejobs: could not copy the database")
    assert "Traceback" not in proc.stderr
    # Neither the copy nor the rollback journal SQLite wrote next to it is left behind.
    assert list(backups.iterdir()) == []


def test_a_failed_backup_reports_its_cause_even_when_the_cleanup_fails_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a read-only file system removing the temporary copy fails as well (EROFS, not
    ENOENT): the command must still say why the backup failed, not show a traceback."""
    source = tmp_path / "jobs.db"
    source.write_bytes(b"not a database" * 100)
    read_only = tmp_path / "ro"
    read_only.mkdir()
    real_unlink = Path.unlink

    def unlink(self: Path, missing_ok: bool = False) -> None:
        if self.parent == read_only:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))
        real_unlink(self, missing_ok)

    monkeypatch.setattr(Path, "unlink", unlink)
    with pytest.raises(BackupError, match="database"):
        backup_database(source, read_only / "copy.db", Pragmas())


def event_ids(path: Path) -> list[int]:
    with closing(connect(path)) as conn:
        return [row[0] for row in conn.execute("SELECT id FROM events ORDER BY id")]


async def first_replayed(ej: EdgeJobs, last_event_id: int) -> list[str]:
    """What a client resuming at ``last_event_id`` is sent before it goes live (kinds)."""
    broker = get_broker(ej)
    await broker.ensure_started()
    newest = event_ids(ej.store.path)[-1]
    await poll(lambda: broker.last_id >= newest, "the broker to tail the newest event")
    subscriber = broker.subscribe(org="acme")
    try:
        return [event.kind async for event in broker.backlog(subscriber, last_event_id)]
    finally:
        broker.unsubscribe(subscriber)


async def poll(condition: Callable[[], bool], what: str) -> None:
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


async def test_a_restored_backup_never_reuses_the_event_ids_and_seqs_the_original_issued(
    db_path: Path, tmp_path: Path
) -> None:
    """Event ids and seqs the original handed out after the backup are not handed out again
    by the restored copy: an SSE client that saw them gets a reset instead of silently
    missing the restored system's first events."""
    ej = make_app(db_path)
    async with ej:
        for n in range(2):
            await ej.wait((await ej.submit("quick", org="acme", params={"n": n})).id, timeout=10)
        backup_database(db_path, tmp_path / "copy.db", ej.store.pragmas)
        # The original goes on after the backup; a client follows it to its newest event.
        for n in range(2):
            await ej.wait((await ej.submit("quick", org="acme", params={"n": n})).id, timeout=10)
    seen = event_ids(db_path)[-1]
    with closing(connect(db_path)) as conn:
        original_seqs = {row[0] for row in conn.execute("SELECT seq FROM jobs")}

    restored = tmp_path / "restored" / "jobs.db"
    restore(tmp_path / "copy.db", restored)
    again = make_app(restored)
    async with again:
        # Enough new events to pass the client's id, had the counter gone on from the copy.
        for n in range(4):
            job = await again.submit("quick", org="acme", params={"n": n})
            await again.wait(job.id, timeout=10)
        assert await first_replayed(again, seen) == ["reset"]
        # A client that resumes after the restore is replayed as usual.
        assert await first_replayed(again, event_ids(restored)[-3]) == ["job", "job"]
    with closing(connect(restored)) as conn:
        new = conn.execute("SELECT seq FROM jobs ORDER BY seq DESC LIMIT 4").fetchall()
        assert not original_seqs & {row[0] for row in new}
        assert min(row[0] for row in new) > max(original_seqs)
        assert conn.execute("SELECT count(*) FROM backup_copy").fetchone()[0] == 0
    assert min(event_ids(restored)[-1:]) > seen
