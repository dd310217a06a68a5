"""WAL hygiene: checkpoints when idle, TRUNCATE only when nothing reads, a bounded WAL file."""

from __future__ import annotations

import logging
import stat
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import pytest
from ops_support import connect, make_app, scalar, snapshot_reader

from edgejobs import EdgeJobs
from edgejobs.app import JobSpec
from edgejobs.errors import EdgeJobsError
from edgejobs.store.maintenance import checkpoint, file_sizes
from edgejobs.testing import FakeClock

LIMIT = 256 * 1024
PAD = "p" * 1500


async def submit_many(ej: EdgeJobs, count: int, start: int = 0) -> None:
    """``count`` jobs with 1.5 KB of params each, in batches of 500."""
    for first in range(start, start + count, 500):
        await ej.submit_many(
            [
                JobSpec("quick", "acme", {"n": n, "pad": PAD})
                for n in range(first, min(first + 500, start + count))
            ]
        )


async def test_a_reader_holding_a_snapshot_stops_the_checkpoint_until_it_ends(
    db_path: Path, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    ej = make_app(db_path, clock, database={"journal_size_limit_bytes": LIMIT})
    await ej.start(run_workers=False)
    assert ej.ticker is not None
    caplog.set_level(logging.INFO, logger="edgejobs.maintenance")
    try:
        with snapshot_reader(db_path) as reader:
            await submit_many(ej, 3000)
            for _ in range(2):
                await ej.ticker.tick()
                blocked = ej.maintenance.last_checkpoint
                assert blocked is not None and blocked.mode == "PASSIVE"
                assert not blocked.complete
                assert blocked.checkpointed_frames < blocked.log_frames
                assert file_sizes(db_path).wal_bytes > 4 * 1024 * 1024
            # The snapshot still reads what it saw at its start.
            assert reader.execute("SELECT count(*) FROM jobs").fetchone()[0] == 0
        assert "a reader is holding an old snapshot" in caplog.text
        # The reader is gone: the next ticks copy everything back and empty the file.
        for _ in range(2):
            await ej.ticker.tick()
        done = ej.maintenance.last_checkpoint
        assert done is not None and done.mode == "TRUNCATE" and done.complete
        assert file_sizes(db_path).wal_bytes <= LIMIT
        assert "the WAL file is back to" in caplog.text
    finally:
        await ej.close()
    assert scalar(db_path, "SELECT count(*) FROM jobs") == 3000


async def test_an_idle_database_gets_its_wal_emptied_and_a_busy_one_passive_checkpoints(
    db_path: Path, clock: FakeClock
) -> None:
    ej = make_app(db_path, clock, database={"journal_size_limit_bytes": LIMIT})
    await ej.start(run_workers=False)
    assert ej.ticker is not None
    try:
        await submit_many(ej, 200)
        await ej.ticker.tick()  # writes since the last look: copy back, keep the file
        first = ej.maintenance.last_checkpoint
        assert first is not None and first.mode == "PASSIVE" and first.complete
        assert file_sizes(db_path).wal_bytes > 0
        await submit_many(ej, 200, start=200)
        await ej.ticker.tick()  # still busy
        assert ej.maintenance.last_checkpoint.mode == "PASSIVE"  # type: ignore[union-attr]
        await ej.ticker.tick()  # nothing written for a tick: idle, nobody reads old frames
        last = ej.maintenance.last_checkpoint
        assert last is not None and last.mode == "TRUNCATE" and last.complete
        assert file_sizes(db_path).wal_bytes == 0
        await ej.ticker.tick()  # an empty WAL needs nothing at all
        assert ej.maintenance.last_checkpoint is last
        assert ej.maintenance.checkpoints[("truncate", "complete")] == 1
    finally:
        await ej.close()


def test_truncate_reports_busy_at_once_instead_of_waiting_for_a_reader(db_path: Path) -> None:
    with closing(connect(db_path)) as conn:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("CREATE TABLE t (x)")
        conn.execute("INSERT INTO t VALUES (1)")
        conn.execute("PRAGMA busy_timeout = 0")
        with snapshot_reader(db_path):
            result = checkpoint(conn, "TRUNCATE")
            assert result.busy and not result.complete
        assert checkpoint(conn, "TRUNCATE").complete
        conn.execute("BEGIN")
        with pytest.raises(EdgeJobsError, match="inside a transaction"):
            checkpoint(conn, "PASSIVE")
        conn.execute("ROLLBACK")
        with pytest.raises(ValueError):
            checkpoint(conn, "PASSIVE); DROP TABLE t; --")


async def test_a_new_database_can_give_pages_back(db_path: Path) -> None:
    ej = make_app(db_path)
    await ej.open()
    await ej.close()
    assert scalar(db_path, "PRAGMA auto_vacuum") == 2  # incremental
    assert scalar(db_path, "PRAGMA journal_mode") == "wal"


async def test_a_database_reached_through_a_symlink_gets_its_wal_measured_and_emptied(
    tmp_path: Path, clock: FakeClock
) -> None:
    """SQLite puts the WAL next to the file a symlink points to; edgejobs looked for it next
    to the link, found none, and so never checkpointed it (a WAL of 107 MB stayed after a
    reader ended), reported it as 0 bytes in /healthz and /metrics, and polled for other
    processes' commits instead of watching that file."""
    data = tmp_path / "data"
    data.mkdir()
    real = data / "edgejobs.db"
    first = make_app(real, clock)
    await first.open()
    await first.close()
    link = tmp_path / "edgejobs.db"
    link.symlink_to(real)
    ej = make_app(link, clock, database={"journal_size_limit_bytes": LIMIT})
    await ej.start(run_workers=False)
    assert ej.ticker is not None
    real_wal = data / "edgejobs.db-wal"
    try:
        assert ej.store.writer.watching  # the WAL file found, and watched
        await submit_many(ej, 400)
        assert real_wal.stat().st_size > 0
        assert not (tmp_path / "edgejobs.db-wal").exists()
        assert file_sizes(link).wal_bytes == real_wal.stat().st_size
        for _ in range(3):  # busy once, then idle: the WAL is copied back and emptied
            await ej.ticker.tick()
        last = ej.maintenance.last_checkpoint
        assert last is not None and last.mode == "TRUNCATE" and last.complete
        assert real_wal.stat().st_size == 0
    finally:
        await ej.close()


async def test_a_new_database_created_through_a_dangling_symlink_is_private(
    tmp_path: Path, clock: FakeClock
) -> None:
    """Through a symlink to a file not there yet, the private create refused the link (its
    O_EXCL) and SQLite created the file with the umask's 0644, readable by every local user."""
    data = tmp_path / "data"
    data.mkdir()
    link = tmp_path / "edgejobs.db"
    link.symlink_to(data / "edgejobs.db")
    ej = make_app(link, clock)
    await ej.open()
    await ej.close()
    assert stat.S_IMODE((data / "edgejobs.db").stat().st_mode) == 0o600


_OPEN_FRESH = (
    "import sys\n"
    "from pathlib import Path\n"
    "from edgejobs.store.store import Store\n"
    "Store(Path(sys.argv[1])).prepare()\n"
)


def test_two_processes_opening_a_fresh_database_at_once_both_succeed(tmp_path: Path) -> None:
    """A worker started and a ``submit`` run beside it both create the file and switch it to
    WAL; SQLite refused one of them at once, without waiting ("database is locked", exit 1),
    in about one pair in six. Repeated, since it is a race."""
    for round_ in range(20):
        path = tmp_path / f"fresh{round_}.db"
        both = [
            subprocess.Popen(
                [sys.executable, "-c", _OPEN_FRESH, str(path)],
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(2)
        ]
        for proc in both:
            _, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, (round_, err)
