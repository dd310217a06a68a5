"""Process-isolated handlers (``isolation = "process"``) that start processes of their own or
misbehave around their child process: whatever ends the attempt, nothing they started is left
running, and the attempt says what happened."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from pathlib import Path

import pytest
from core_support import PYTHON, Worker, cli_env, db_attempts, pid_alive, rows, write_config
from ej_testkit import poll_until

from edgejobs import EdgeJobs, Status

pytestmark = pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc")


async def _pid_in(path: Path) -> int:
    await poll_until(path.exists, timeout=30, interval=0.02, message=f"no {path.name}")
    return int(path.read_text())


async def _ended(pid: int) -> None:
    await poll_until(lambda: not pid_alive(pid), timeout=5, interval=0.02, message=f"{pid} runs")


def _runner(tmp_path: Path, handler: str) -> EdgeJobs:
    ej = EdgeJobs(tmp_path / "jobs.db", workers=2)
    ej.register("iso", handler, isolation="process", timeout_s=60, max_retries=0, dedup=False)
    return ej


async def test_a_cancel_kills_the_subprocesses_of_the_handler(tmp_path: Path) -> None:
    """Only the child process was killed: a subprocess it had started ran on, out of reach."""
    ej = _runner(tmp_path, "core_handlers:sync_pid_sleep")
    params = {"pid_file": str(tmp_path / "child"), "subprocess_file": str(tmp_path / "sleeper")}
    async with ej:
        job = await ej.submit("iso", org="acme", params=params)
        await _pid_in(tmp_path / "child")
        sleeper = int((tmp_path / "sleeper").read_text())
        assert pid_alive(sleeper)
        await ej.cancel(job.id)
        assert (await ej.wait(job.id, timeout=10)).status is Status.CANCELED
    await _ended(sleeper)


async def test_a_subprocess_left_running_by_a_handler_ends_with_its_attempt(
    tmp_path: Path,
) -> None:
    ej = _runner(tmp_path, "core_handlers:starts_a_subprocess_and_returns")
    async with ej:
        job = await ej.submit("iso", org="acme", params={"subprocess_file": str(tmp_path / "s")})
        done = await ej.wait(job.id, timeout=30)
        assert (done.status, done.result) == (Status.COMPLETED, "returned")
        sleeper = await _pid_in(tmp_path / "s")
        await _ended(sleeper)


async def test_a_child_that_dies_is_seen_at_once_though_its_fork_holds_the_pipe(
    tmp_path: Path,
) -> None:
    """The runner read the pipe until its end: a forked process kept it open, so the death went
    unseen until the deadline (300 s by default), the slot held all along, and the attempt
    ended ``timed_out`` instead of saying the process died."""
    ej = _runner(tmp_path, "core_handlers:forks_and_dies")
    async with ej:
        job = await ej.submit("iso", org="acme", params={"fork_file": str(tmp_path / "f")})
        done = await ej.wait(job.id, timeout=20)  # the deadline is 60 s
        assert done.status is Status.FAILED, done
        assert done.error is not None
        assert (done.error.type, "code 3" in done.error.message) == ("ProcessDied", True)
        await _ended(await _pid_in(tmp_path / "f"))


async def test_a_result_stands_though_the_child_cannot_exit(tmp_path: Path) -> None:
    """The runner waited for the child's exit before taking the result it had sent: a thread
    of the handler's that is not a daemon kept the process alive, and at the deadline the
    returned value was lost, the attempt ``timed_out``."""
    ej = EdgeJobs(tmp_path / "jobs.db", workers=2)
    ej.register(
        "iso",
        "core_handlers:returns_leaving_a_thread",
        isolation="process",
        timeout_s=10,
        max_retries=0,
        dedup=False,
    )
    async with ej:
        job = await ej.submit("iso", org="acme", params={"pid_file": str(tmp_path / "c")})
        done = await ej.wait(job.id, timeout=30)
        assert (done.status, done.result) == (Status.COMPLETED, "returned"), done
        await _ended(await _pid_in(tmp_path / "c"))  # killed after a moment's grace


@pytest.mark.parametrize("kb", [12, 100])
async def test_a_big_result_sent_while_a_thread_reports_progress_arrives_whole(
    tmp_path: Path, kb: int
) -> None:
    """The child's threads wrote to the pipe at once: a progress report spliced into a result
    longer than the pipe's atomic write, the runner's reading thread died of the garbled
    message, and the attempt held its slot until it ``timed_out``, its result lost."""
    ej = _runner(tmp_path, "core_handlers:big_result_while_a_thread_reports")
    async with ej:
        for _ in range(3):
            job = await ej.submit("iso", org="acme", params={"kb": kb})
            done = await ej.wait(job.id, timeout=60)
            assert done.status is Status.COMPLETED, done.error
            assert done.result == {"blob": "x" * (kb * 1024)}


async def test_an_async_handler_runs_in_the_child_under_its_own_event_loop(
    tmp_path: Path,
) -> None:
    """It was called like a sync handler: its coroutine came back unawaited, and every attempt
    failed with ``ResultNotSerializable`` (a coroutine is not JSON)."""
    ej = _runner(tmp_path, "core_handlers:async_reports_its_pid")
    async with ej:
        job = await ej.submit("iso", org="acme")
        done = await ej.wait(job.id, timeout=30)
    assert done.status is Status.COMPLETED, done.error
    assert isinstance(done.result, int) and done.result != os.getpid()
    assert done.progress_message == "half"  # the awaited report went through the pipe


UNGUARDED_SCRIPT = """
import asyncio
from edgejobs import EdgeJobs

ej = EdgeJobs(database="jobs.db")

@ej.job_type("build", isolation="process", max_retries=0)
def build(ctx, params):
    return "built"

async def main():
    async with ej:
        job = await ej.submit("build", org="acme")
        job = await ej.wait(job.id, timeout=60)
        print("ERROR:", job.error.type, job.error.message)

asyncio.run(main())  # no `if __name__ == "__main__":`
"""


async def test_a_child_that_fails_before_the_handler_runs_says_why(tmp_path: Path) -> None:
    """A script that runs a runner runs again in the child (multiprocessing's spawn imports
    the main module): unguarded, the child failed as a second runner and the attempt only
    said the process ``exited with code 1 before returning``."""
    (tmp_path / "script.py").write_text(UNGUARDED_SCRIPT, encoding="utf-8")
    done = await asyncio.to_thread(
        subprocess.run,
        [PYTHON, "script.py"],
        cwd=tmp_path,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    line = [x for x in done.stdout.splitlines() if x.startswith("ERROR:")]
    assert line, done.stdout + done.stderr
    assert "ProcessDied" in line[0]
    assert "while starting" in line[0]
    assert 'if __name__ == "__main__":' in line[0]


CTRL_C_CONFIG = """
[database]
path = "jobs.db"

[runner]
shutdown_grace_s = 1

[[job_types]]
name = "isolated"
handler = "core_handlers:sync_pid_sleep"
isolation = "process"
timeout_s = 60
max_retries = 0
"""


FIRST_CHILD_MASK = """
import multiprocessing, sys

from edgejobs.runner.executor import _start_child


def blocked(conn):  # what the child's first instruction finds blocked
    status = open("/proc/self/status").read()
    conn.send(int(status.split("SigBlk:")[1].split()[0], 16))


if __name__ == "__main__":
    mp = multiprocessing.get_context("spawn")
    masks = []
    for _ in range(2):
        receiver, sender = mp.Pipe(duplex=False)
        process = mp.Process(target=blocked, args=(sender,))
        _start_child(process)
        sender.close()
        masks.append(receiver.recv())
        process.join()
    print(*masks)
"""


def test_even_the_first_handler_process_starts_with_sigint_and_sigterm_blocked(
    tmp_path: Path,
) -> None:
    """The first handler process of a runner started with SIGINT and SIGTERM unblocked:
    multiprocessing starts its resource tracker in that first start and unblocks both signals
    afterwards, so a stop signalled to every process of the service while that child's
    interpreter started killed it (``ProcessDied``, a retry spent) instead of giving it the
    grace. Checked in a fresh interpreter, where no tracker runs yet."""
    script = tmp_path / "mask.py"
    script.write_text(FIRST_CHILD_MASK)
    done = subprocess.run(
        [PYTHON, str(script)], env=cli_env(), capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    stop_signals = (1 << (signal.SIGINT - 1)) | (1 << (signal.SIGTERM - 1))
    first, second = (int(mask) for mask in done.stdout.split())
    assert first & stop_signals == stop_signals, hex(first)
    assert second & stop_signals == stop_signals, hex(second)


async def test_ctrl_c_in_the_runners_terminal_requeues_a_process_handler(tmp_path: Path) -> None:
    """Ctrl-C sends SIGINT to the terminal's whole foreground group: the handler's child got it
    too, raised KeyboardInterrupt and its attempt ended ``failed`` (here, with no retries left,
    the job for good) before the runner's own shutdown could interrupt it and requeue it."""
    config = write_config(tmp_path, CTRL_C_CONFIG)
    client = EdgeJobs.from_config(config, environ={})
    job = await client.submit("isolated", org="acme", params={"pid_file": str(tmp_path / "c")})
    await client.close()
    with Worker(config, tmp_path / "worker.log", new_session=True) as worker:
        child = await _pid_in(tmp_path / "c")
        worker.signal_group(signal.SIGINT)  # Ctrl-C in its terminal
        assert worker.proc.wait(timeout=30) == 0, worker.output()
    await _ended(child)
    db = tmp_path / "jobs.db"
    assert rows(db, "SELECT status FROM jobs")[0]["status"] == "queued"
    (attempt,) = db_attempts(db, job.id)
    assert (attempt["outcome"], attempt["error_type"]) == ("canceled", "Shutdown"), attempt
