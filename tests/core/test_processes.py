"""Real processes: a runner killed with SIGKILL and restarted, one runner per database,
submissions from another process, and configuration errors at the command line."""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import stat
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from core_support import (
    Worker,
    cli_env,
    db_attempts,
    edgejobs_cmd,
    pid_alive,
    rows,
    run_cli,
    write_config,
)
from ej_testkit import poll_until

from edgejobs import EdgeJobs, RunnerAlreadyActive, Status

CRASH_CONFIG = """
[database]
path = "jobs.db"

[runner]
workers = 4
tick_interval_s = 0.2
shutdown_grace_s = 1

[retry]
base_delay_s = 0
max_delay_s = 0
jitter = false

[[job_types]]
name = "sleepy"
handler = "core_handlers:sleepy"
timeout_s = 60
max_retries = 3
"""


def _statuses(db: Path, ids: list[str]) -> list[str]:
    found = {
        r["id"]: r["status"]
        for r in rows(
            db,
            "SELECT id, status FROM jobs WHERE id IN (SELECT value FROM json_each(?))",
            (json.dumps(ids),),
        )
    }
    return [found.get(i, "missing") for i in ids]


async def _until(
    predicate: Callable[[], bool], timeout: float, what: str, worker: Worker | None = None
) -> None:
    def message() -> str:
        log = worker.output() if worker is not None else ""
        return f"{what} not within {timeout} s\n{log}"

    def check() -> None:
        if worker is not None and worker.proc.poll() is not None:
            raise AssertionError(f"worker exited with {worker.proc.returncode}\n{worker.output()}")

    await poll_until(predicate, timeout=timeout, interval=0.05, message=message, check=check)


async def test_sigkilled_runner_loses_attempts_and_the_next_one_finishes_them(
    tmp_path: Path,
) -> None:
    config = write_config(tmp_path, CRASH_CONFIG)
    db = tmp_path / "jobs.db"
    # Submit as a client (another process's view: no runner lock, no workers).
    client = EdgeJobs.from_config(config, environ={})
    ids = [
        (await client.submit("sleepy", org="acme", params={"seconds": 60, "n": n})).id
        for n in range(3)
    ]
    await client.close()

    with Worker(config, tmp_path / "worker1.log") as first:
        await _until(lambda: _statuses(db, ids) == ["running"] * 3, 20, "all running", first)
        first.kill()
    assert _statuses(db, ids) == ["running"] * 3  # nobody cleaned up after the kill

    with Worker(config, tmp_path / "worker2.log") as second:
        await _until(lambda: _statuses(db, ids) == ["completed"] * 3, 20, "all completed", second)
        assert second.terminate() == 0, second.output()
    for job_id in ids:
        attempts = db_attempts(db, job_id)
        assert [a["outcome"] for a in attempts] == ["lost", "completed"]
        assert attempts[0]["error_type"] == "Lost"
        assert "died" in attempts[0]["error_message"]
    assert rows(db, "SELECT count(*) AS n FROM jobs WHERE status = 'running'")[0]["n"] == 0


ORPHAN_CONFIG = """
[database]
path = "jobs.db"

[[job_types]]
name = "isolated"
handler = "core_handlers:sync_pid_sleep"
isolation = "process"
timeout_s = 120
max_retries = 0
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc")
async def test_a_process_handler_ends_when_its_runner_is_killed(tmp_path: Path) -> None:
    """A runner killed with SIGKILL cannot kill its handlers' child processes: they ran on
    past their timeout, beside the retry the next runner starts. The child ends itself, and
    takes what it started along (a subprocess of the handler's ran on)."""
    config = write_config(tmp_path, ORPHAN_CONFIG)
    pid_file = tmp_path / "child.pid"
    sleeper_file = tmp_path / "sleeper.pid"
    client = EdgeJobs.from_config(config, environ={})
    params = {"pid_file": str(pid_file), "subprocess_file": str(sleeper_file)}
    await client.submit("isolated", org="acme", params=params)
    await client.close()
    with Worker(config, tmp_path / "worker.log") as worker:
        await _until(pid_file.exists, 30, "the handler's child started", worker)
        child = int(pid_file.read_text())
        sleeper = int(sleeper_file.read_text())
        assert pid_alive(child)
        assert pid_alive(sleeper)
        worker.kill()
    await _until(lambda: not pid_alive(child), 5, f"child {child} ended after its runner")
    await _until(lambda: not pid_alive(sleeper), 5, f"subprocess {sleeper} ended with the child")


async def test_second_runner_is_refused_in_process(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    first = EdgeJobs(database=path)
    second = EdgeJobs(database=path)
    await first.start(run_workers=False)
    try:
        with pytest.raises(RunnerAlreadyActive) as info:
            await second.start()
        assert "already running" in info.value.message
        assert not second.is_runner
    finally:
        await first.close()
    # Once the first stopped, the file is free again.
    await second.start(run_workers=False)
    assert second.is_runner
    await second.close()


async def test_a_second_runner_through_a_symlink_is_refused_too(tmp_path: Path) -> None:
    """The lock was named after the path as written: a runner on ``link.db -> jobs.db`` took
    the live runner's running jobs for a dead runner's and retried them beside it."""
    (tmp_path / "link.db").symlink_to(tmp_path / "jobs.db")
    first = EdgeJobs(database=tmp_path / "jobs.db")
    await first.start(run_workers=False)
    try:
        for other in (tmp_path / "link.db", tmp_path / "sub" / ".." / "jobs.db"):
            (tmp_path / "sub").mkdir(exist_ok=True)
            with pytest.raises(RunnerAlreadyActive):
                await EdgeJobs(database=other).start(run_workers=False)
    finally:
        await first.close()


def test_a_runner_starting_while_another_process_looks_for_one_starts(tmp_path: Path) -> None:
    """``runner_elsewhere`` (a CLI's look: is a runner there?) holds a shared lock on the lock
    file for an instant; a runner starting right then was refused as "already running (pid
    unknown)" — 995 of 32,653 starts in a loop beside such looks."""
    from edgejobs.runner.lock import RunnerLock, runner_elsewhere

    database = tmp_path / "jobs.db"
    lock = RunnerLock(database)
    lock.path.touch()
    look = os.open(lock.path, os.O_RDONLY)  # a look in progress (its shared lock, held)
    fcntl.flock(look, fcntl.LOCK_SH | fcntl.LOCK_NB)
    released = threading.Timer(0.05, lambda: fcntl.flock(look, fcntl.LOCK_UN))
    released.start()
    try:
        lock.acquire()
        assert runner_elsewhere(database) is None  # this process holds it
        lock.release()
    finally:
        released.join()
        os.close(look)


async def test_second_worker_process_exits_with_a_clear_message(tmp_path: Path) -> None:
    config = write_config(tmp_path, CRASH_CONFIG)
    with Worker(config, tmp_path / "worker.log") as first:
        lock = tmp_path / "jobs.db.runner.lock"
        await _until(lambda: lock.exists() and lock.read_text().strip() != "", 20, "lock", first)
        proc = await asyncio.create_subprocess_exec(
            *edgejobs_cmd("worker", "--config", str(config)),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=cli_env(),
        )
        out, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode not in (0, None)
        message = err.decode()
        assert "already running" in message and str(first.proc.pid) in message
        assert "Traceback" not in message
        assert first.proc.poll() is None  # the first one is unaffected
        assert first.terminate() == 0


async def test_submit_from_another_process_is_picked_up_within_a_second(tmp_path: Path) -> None:
    """The runner registered ``echo.code`` in code only; the CLI process still validates it
    (from the job types the runner declared) and the runner notices the insert at once."""
    db = tmp_path / "jobs.db"
    config = write_config(tmp_path, '[database]\npath = "jobs.db"\n')

    async def echo(ctx: object, params: dict[str, object]) -> dict[str, object]:
        return params

    runner = EdgeJobs(database=db)
    runner.register("echo.code", echo)
    async with runner:
        assert runner.is_runner
        for n in range(3):
            proc = await asyncio.create_subprocess_exec(
                *edgejobs_cmd(
                    "submit",
                    "echo.code",
                    "--org",
                    "acme",
                    "--params",
                    json.dumps({"n": n}),
                    "--config",
                    str(config),
                ),
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=cli_env(),
            )
            out, err = await asyncio.wait_for(proc.communicate(), 30)
            assert proc.returncode == 0, err.decode()
            job_id = out.decode().strip()
            job = await runner.wait(job_id, timeout=10)
            assert job.status is Status.COMPLETED and job.result == {"n": n}
            assert job.started_at is not None
            assert job.started_at - job.created_at <= 1000, job.started_at - job.created_at


ECHO_CONFIG = """
[database]
path = "jobs.db"

[[job_types]]
name = "echo"
handler = "core_handlers:echo"
"""


async def test_a_clients_wait_hears_a_runner_elsewhere_before_its_writer_settles(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client's writer does not watch the WAL while it settles after its own commit (its
    submit), and heard a runner's commits only at the end of that (60 ms): every ``wait()``
    on a job that ran in 3 ms took ~62 ms. It looks every few milliseconds meanwhile now.
    The settling time is stretched to 3 s here, so that the two cannot be mistaken."""
    import edgejobs.store.db as db_module

    config = write_config(tmp_path, ECHO_CONFIG)
    with Worker(config, tmp_path / "worker.log") as worker:
        client = EdgeJobs(database=tmp_path / "jobs.db")
        try:
            await client.open()  # the client's writer is idle (watching) before the stretch
            await _until(
                lambda: (tmp_path / "jobs.db.runner.lock").exists(), 30, "a runner", worker
            )
            await asyncio.sleep(0.2)  # the runner's start-up writes are done
            monkeypatch.setattr(db_module, "SETTLE_S", 3.0)
            for n in range(3):
                loop = asyncio.get_running_loop()
                started = loop.time()
                job = await client.submit("echo", org="acme", params={"n": n})
                done = await client.wait(job.id, timeout=30)
                assert done.status is Status.COMPLETED and done.result["params"] == {"n": n}
                assert loop.time() - started < 1.5, worker.output()
        finally:
            await client.close()
        assert worker.terminate() == 0


@pytest.mark.parametrize(
    ("text", "key", "command"),
    [
        ("[runner]\nwrokers = 3\n", "wrokers", ("worker",)),
        ('[runner]\nworkers = "8"\n', "workers", ("jobs", "list")),
    ],
)
def test_config_errors_exit_2_naming_the_key(
    tmp_path: Path, text: str, key: str, command: tuple[str, ...]
) -> None:
    """Through a real process: exit code 2, one line naming the key, no traceback (the full
    table of config errors runs in-process in test_cli.py)."""
    config = write_config(tmp_path, text)
    result = run_cli(*command, "--config", str(config))
    assert result.returncode == 2, result.stderr
    assert key in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_missing_config_file_is_an_error(tmp_path: Path) -> None:
    result = run_cli("jobs", "list", "--config", str(tmp_path / "nope.toml"))
    assert result.returncode == 2
    assert "not found" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("command", ["worker", "serve"])
@pytest.mark.parametrize("kind", ["not a database", "under a file", "a folder"])
def test_a_runner_that_cannot_open_its_database_says_so_in_one_line(
    tmp_path: Path, command: str, kind: str
) -> None:
    """``worker`` and ``serve`` printed a traceback here (the client commands already said
    "cannot open the database")."""
    (tmp_path / "junk.db").write_text("not a database, not at all: " * 10)
    (tmp_path / "plain").write_text("a file, not a folder")
    (tmp_path / "folder.db").mkdir()
    path = {"not a database": "junk.db", "under a file": "plain/x.db", "a folder": "folder.db"}
    config = write_config(tmp_path, f'[database]\npath = "{path[kind]}"\n')
    port = ("--port", "0") if command == "serve" else ()
    result = run_cli(command, *port, "--config", str(config))
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("edgejobs: cannot open the database"), result.stderr
    assert str(tmp_path / path[kind]) in last


def _nobody_can_take(lock: Path) -> bool:
    """Whether an unprivileged local user (uid 65534) can open ``lock`` and take its
    ``flock``, as a second runner would. Needs root, to become that user in a child."""
    pid = os.fork()
    if pid == 0:  # the child: drop to nobody, try, and report through the exit code only
        code = 1
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            fcntl.flock(os.open(lock, os.O_RDONLY), fcntl.LOCK_EX | fcntl.LOCK_NB)
            code = 0
        finally:
            os._exit(code)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0


async def test_another_local_user_cannot_take_the_runner_lock() -> None:
    """The lock file was 0644: any local user could open it read-only, take the ``flock``
    and so keep every runner of the database from starting."""
    if os.geteuid() != 0:
        pytest.skip("needs root, to act as another local user")
    old_umask = os.umask(0o022)
    # A folder other users may enter, as /var/lib/edgejobs (pytest's own is owner-only).
    with tempfile.TemporaryDirectory() as folder:
        Path(folder).chmod(0o755)
        db = Path(folder) / "jobs.db"
        lock = Path(folder) / "jobs.db.runner.lock"
        try:
            # Between two runs: the runner stopped (or has not started yet) and the lock is free.
            async with EdgeJobs(database=db):
                pass
            assert not _nobody_can_take(lock)
            lock.chmod(0o644)  # as an older edgejobs left it
            async with EdgeJobs(database=db):
                pass
            assert stat.S_IMODE(lock.stat().st_mode) == 0o600
            assert not _nobody_can_take(lock)
            lock.chmod(0o660)  # shared read-write with a group on purpose: kept
            async with EdgeJobs(database=db):
                assert stat.S_IMODE(lock.stat().st_mode) == 0o660
        finally:
            os.umask(old_umask)
