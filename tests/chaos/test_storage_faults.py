"""A full disk and a database locked by another process, against a live runner and its API.

Disk full is simulated with ``PRAGMA max_page_count`` on the runner's own write connection
(the limit is per connection; the runner holds the only one that writes here), and for the
command line with the test-only ``EDGEJOBS_TEST_MAX_PAGE_COUNT`` variable.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
from chaos_support import (
    LONG,
    chaos_env,
    check_invariants,
    config_text,
    edgejobs_cmd,
    query,
    setup_folder,
    wait_for,
)
from ej_testkit import asgi_client

from edgejobs import DatabaseReadOnly, EdgeJobs, StorageFull
from edgejobs.faults import PAGES_VAR
from edgejobs.store import migrations, tokens
from edgejobs.store.store import Store

BIG_TYPE = """
[[job_types]]
name = "c.big"
handler = "chaos_handlers:big_result"
timeout_s = 60
max_retries = 0
"""
LOCK_S = 10.0 if LONG else 4.0
BIG_PARAMS = {"pad": "p" * 40_000}
"""Params large enough to need new (overflow) pages: a full database cannot take them."""


class Live:
    """A runner with background workers, an ASGI client and an operator token."""

    def __init__(self, ej: EdgeJobs, client: httpx.AsyncClient, token: str) -> None:
        self.ej = ej
        self.client = client
        self.headers = {"Authorization": f"Bearer {token}"}
        self.acknowledged: list[str] = []

    async def post_job(self, job_type: str, params: dict[str, Any]) -> httpx.Response:
        response = await self.client.post(
            "/api/v1/jobs",
            json={"job_type": job_type, "org": "acme", "params": params, "dedup": False},
            headers=self.headers,
        )
        if response.status_code == 201:
            self.acknowledged.append(response.json()["id"])
        return response

    async def set_page_limit(self, pages: int) -> int:
        """Set ``max_page_count`` on the writer's connection; retried while the batch it
        shares fails (the pragma itself applies at once, even when the batch rolls back)."""

        def op(conn: Any, tx: Any) -> int:
            return int(conn.execute(f"PRAGMA max_page_count = {int(pages)}").fetchone()[0])

        for _ in range(50):
            with contextlib.suppress(StorageFull):
                return await self.ej.store.write(op)
            await asyncio.sleep(0.05)
        raise AssertionError("could not change max_page_count")


async def _operator_token(ej: EdgeJobs) -> str:
    """The secret of a new operator token of acme."""
    new = await ej.store.write(
        partial(tokens.create_token, org="acme", role="operator", name="ops", now=ej.clock.now_ms())
    )
    return new.secret


@contextlib.asynccontextmanager
async def live_runner(
    folder: Path, monkeypatch: pytest.MonkeyPatch, **config: Any
) -> AsyncIterator[Live]:
    path = setup_folder(folder, config_text(extra=BIG_TYPE, **config))
    monkeypatch.setenv("CHAOS_EFFECTS", str(folder / "effects.db"))
    monkeypatch.setenv("CHAOS_DB", str(folder / "jobs.db"))
    ej = EdgeJobs.from_config(path, environ={})
    await ej.start()
    secret = await _operator_token(ej)
    async with asgi_client(ej.asgi_app()) as client:
        live = Live(ej, client, secret)
        try:
            yield live
        finally:
            await ej.close()


def _status(db: Path, job_id: str) -> str:
    return str(query(db, "SELECT status FROM jobs WHERE id = ?", (job_id,))[0]["status"])


async def test_disk_full_refuses_submits_keeps_outcomes_and_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "jobs.db"
    gate = tmp_path / "gate"
    async with live_runner(tmp_path, monkeypatch) as live:
        running = await live.post_job("c.big", {"gate": str(gate), "bytes": 30_000})
        assert running.status_code == 201
        job_id = running.json()["id"]
        await wait_for(lambda: _status(db, job_id) == "running", 20, "running")

        await live.set_page_limit(1)  # SQLite keeps the current size: nothing can grow
        refused = await live.post_job("c.fast", BIG_PARAMS)
        assert refused.status_code == 507, refused.text
        assert refused.json()["error"]["code"] == "storage_full"
        with pytest.raises(StorageFull):
            await live.ej.submit("c.fast", org="acme", params=BIG_PARAMS, dedup=False)

        gate.touch()  # the handler returns a 30 kB result that cannot be written now
        await wait_for(
            lambda: any("database write failed" in r.getMessage() for r in caplog.records),
            20,
            "the failed outcome write logged",
        )
        assert _status(db, job_id) == "running"  # not lost, not failed: waiting for space
        assert any("database write failed" in r.getMessage() for r in caplog.records)

        await live.set_page_limit(1_073_741_823)
        await wait_for(lambda: _status(db, job_id) == "completed", 20, "outcome written")
        result = json.loads(
            query(db, "SELECT result FROM jobs WHERE id = ?", (job_id,))[0]["result"]
        )
        assert len(result["blob"]) == 30_000

        accepted = await live.post_job("c.fast", BIG_PARAMS)
        assert accepted.status_code == 201, accepted.text
        await wait_for(lambda: _status(db, accepted.json()["id"]) == "completed", 20, "runs again")
    report = check_invariants(
        db, tmp_path / "effects.db", live.acknowledged, max_retries={"c.big": 0, "c.fast": 2}
    )
    assert report["status_completed"] == 2 == len(live.acknowledged)


def _cli(folder: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        edgejobs_cmd(*args),
        capture_output=True,
        text=True,
        env=chaos_env(folder, **env),
        timeout=60,
        check=False,
    )


def _the_one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    """A failed command's stderr: exactly one line, no traceback."""
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


def test_cli_submit_on_a_full_database_prints_one_clear_line(tmp_path: Path) -> None:
    config = setup_folder(tmp_path, config_text())
    asyncio.run(_create_db(config))
    params = json.dumps(BIG_PARAMS)
    args = ("submit", "c.fast", "--org", "acme", "--params", params, "--config", str(config))
    proc = _cli(tmp_path, *args, **{PAGES_VAR: "1"})
    assert "full" in _the_one_error_line(proc)
    assert query(tmp_path / "jobs.db", "SELECT count(*) AS n FROM jobs")[0]["n"] == 0
    assert query(tmp_path / "jobs.db", "PRAGMA integrity_check")[0]["integrity_check"] == "ok"


def test_a_migration_that_meets_a_full_disk_says_so_and_leaves_no_half_schema(
    tmp_path: Path,
) -> None:
    config = setup_folder(tmp_path, config_text())
    # Room for the empty file, not for the first migration's tables (`submit` may create
    # the database; `stats` would refuse a missing one).
    args = ("submit", "c.fast", "--org", "acme", "--config", str(config))
    first = _cli(tmp_path, *args, **{PAGES_VAR: "3"})
    line = _the_one_error_line(first)
    assert "full" in line and "rollback" not in line, line
    db = tmp_path / "jobs.db"
    assert query(db, "PRAGMA user_version")[0]["user_version"] == 0
    assert query(db, "SELECT count(*) AS n FROM sqlite_master")[0]["n"] == 0
    # With room again, the same command migrates the file and answers.
    again = _cli(tmp_path, "stats", "--config", str(config))
    assert again.returncode == 0, again.stderr


def test_a_migration_whose_transaction_sqlite_rolled_back_reports_the_full_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "jobs.db"
    Store(path).prepare()
    shipped = migrations.available()
    # A later migration that writes many rows one statement at a time: when the disk fills
    # midway, SQLite rolls the whole transaction back itself, before edgejobs can.
    bulky = (
        "CREATE TABLE bulky (b BLOB);\n" + "INSERT INTO bulky VALUES (randomblob(3000));\n" * 500
    )
    monkeypatch.setattr(
        migrations, "available", lambda: [*shipped, (len(shipped) + 1, "bulky", bulky)]
    )
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn:
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count = {pages + 20}")
        with pytest.raises(sqlite3.OperationalError, match="full"):
            migrations.migrate(conn)
        assert not conn.in_transaction
        assert migrations.current_version(conn) == len(shipped)
        assert (
            conn.execute("SELECT count(*) FROM sqlite_master WHERE name = 'bulky'").fetchone()[0]
            == 0
        )


async def _create_db(config: Path) -> str:
    """Create the database of ``config``; returns the secret of an operator token of acme."""
    ej = EdgeJobs.from_config(config, environ={})
    await ej.start(run_workers=False)
    try:
        return await _operator_token(ej)
    finally:
        await ej.close()


LOCKER = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
conn.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
conn.execute("COMMIT")
"""


@pytest.mark.timeout(120)
async def test_a_locked_database_answers_503_and_the_runner_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "jobs.db"
    gate = tmp_path / "gate"
    async with live_runner(tmp_path, monkeypatch, busy_timeout_ms=500) as live:
        first = await live.post_job("c.big", {"gate": str(gate), "bytes": 10})
        job_id = first.json()["id"]
        await wait_for(lambda: _status(db, job_id) == "running", 20, "running")
        locker = await asyncio.create_subprocess_exec(
            sys.executable, "-c", LOCKER, str(db), str(LOCK_S), stdout=asyncio.subprocess.PIPE
        )
        assert locker.stdout is not None
        assert (await locker.stdout.readline()).strip() == b"locked"
        try:
            gate.touch()  # the outcome arrives while the lock is held
            busy = await live.post_job("c.fast", {"n": 1})
            assert busy.status_code == 503, busy.text
            assert busy.json()["error"]["code"] == "database_busy"
            assert int(busy.headers["Retry-After"]) >= 1
            # Reads still work in WAL mode while another process writes.
            seen = await live.client.get(f"/api/v1/jobs/{job_id}", headers=live.headers)
            assert seen.status_code == 200
            assert locker.returncode is None  # the lock really was held throughout
        finally:
            await locker.wait()
        await wait_for(lambda: _status(db, job_id) == "completed", 20, "outcome written")
        after = await live.post_job("c.fast", {"n": 2})
        assert after.status_code == 201
        await wait_for(lambda: _status(db, after.json()["id"]) == "completed", 20, "resumed")
        assert live.ej.pool is not None and all(not t.done() for t in live.ej._tasks)
    report = check_invariants(
        db, tmp_path / "effects.db", live.acknowledged, max_retries={"c.big": 0, "c.fast": 2}
    )
    assert report["status_completed"] == 2


@contextlib.contextmanager
def _read_only(path: Path) -> Iterator[None]:
    """Make ``path`` read-only for this process, honestly: root ignores permission bits, so
    as root the file gets the immutable flag (skipped where the file system has none)."""
    if os.geteuid() != 0:
        path.chmod(0o444)
        try:
            yield
        finally:
            path.chmod(0o600)
        return
    if shutil.which("chattr") is None:
        pytest.skip("root ignores permission bits and chattr is not installed")
    made = subprocess.run(["chattr", "+i", str(path)], capture_output=True, check=False)
    if made.returncode != 0:
        pytest.skip(f"cannot make {path} immutable here: {made.stderr.decode().strip()}")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


def test_cli_on_a_read_only_database_says_so_in_one_line_and_still_reads(
    tmp_path: Path,
) -> None:
    config = setup_folder(tmp_path, config_text())
    asyncio.run(_create_db(config))
    with _read_only(tmp_path / "jobs.db"):
        submit = _cli(tmp_path, "submit", "c.fast", "--org", "acme", "--config", str(config))
        assert "cannot be written" in _the_one_error_line(submit)
        worker = _cli(tmp_path, "worker", "--config", str(config))
        assert "cannot be written" in _the_one_error_line(worker)
        stats = _cli(tmp_path, "stats", "--config", str(config))
        assert stats.returncode == 0, stats.stderr
    assert query(tmp_path / "jobs.db", "SELECT count(*) AS n FROM jobs")[0]["n"] == 0


async def test_a_read_only_database_refuses_submits_with_503_not_500(tmp_path: Path) -> None:
    config = setup_folder(tmp_path, config_text())
    secret = await _create_db(config)
    with _read_only(tmp_path / "jobs.db"):
        ej = EdgeJobs.from_config(config, environ={})
        await ej.open()
        try:
            with pytest.raises(DatabaseReadOnly):
                await ej.submit("c.fast", org="acme", params={})
            async with asgi_client(ej.asgi_app()) as c:
                refused = await c.post(
                    "/api/v1/jobs",
                    json={"job_type": "c.fast", "org": "acme"},
                    headers={"Authorization": f"Bearer {secret}"},
                )
        finally:
            await ej.close()
    assert refused.status_code == 503, refused.text
    assert refused.json()["error"]["code"] == "database_read_only"
    assert int(refused.headers["Retry-After"]) >= 1


async def test_healthz_on_a_read_only_database_is_503_before_any_write_fails(
    tmp_path: Path,
) -> None:
    """BEGIN IMMEDIATE and an empty COMMIT succeed on a file SQLite opened read-only: the
    health check's probe must notice anyway, and not by writing anything."""
    config = setup_folder(tmp_path, config_text())
    await _create_db(config)
    with _read_only(tmp_path / "jobs.db"):
        ej = EdgeJobs.from_config(config, environ={})
        await ej.open()
        try:
            async with asgi_client(ej.asgi_app()) as c:
                response = await c.get("/healthz")
        finally:
            await ej.close()
    assert response.status_code == 503, response.text
    assert response.json()["database"].startswith("database_read_only: "), response.text
