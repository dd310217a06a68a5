"""Graceful stops: ``edgejobs worker`` on SIGTERM and SIGINT with every kind of handler running
(async, async ignoring its cancellation, threads, a process with a subprocess of its own, all
mid-progress), signals sent to the whole process group (a terminal's Ctrl-C) or to every
process of the service (a service manager's stop), a signal while the runner starts, a runner
whose interpreter exits with a handler's process running; ``stop()``/``close()`` called
from inside a handler, twice at once, or by a caller that is cancelled; a ``drain()`` that a
stop interrupts.

What a stop promises: no new claims; running attempts get ``[runner] shutdown_grace_s``; what
has not finished then is requeued without spending a retry (attempt outcome ``canceled``,
``Shutdown``); exit code 0 and no traceback; no handler process or subprocess of one left
behind; nothing left ``running``; the next runner takes the jobs at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from core_support import (
    PYTHON,
    Worker,
    cli_env,
    db_attempts,
    db_job,
    pid_alive,
    rows,
    write_config,
)
from ej_testkit import poll_until

from edgejobs import EdgeJobs, Outcome, ShuttingDown, Status
from edgejobs.config import Config, RunnerConfig

pytestmark = pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc")

SHUTDOWN_CONFIG = """
[database]
path = "jobs.db"

[runner]
workers = 8
tick_interval_s = 0.2
shutdown_grace_s = {grace}

[progress]
min_interval_ms = 50

[[job_types]]
name = "s.async"
handler = "core_handlers:until_stopped_async"
timeout_s = 600
max_retries = 0

[[job_types]]
name = "s.thread"
handler = "core_handlers:until_stopped_sync"
timeout_s = 600
max_retries = 0

[[job_types]]
name = "s.process"
handler = "core_handlers:until_stopped_sync"
isolation = "process"
timeout_s = 600
max_retries = 0

[[job_types]]
name = "s.slow_import"
handler = "core_slow_import:run"
"""

KINDS: dict[str, tuple[str, dict[str, Any]]] = {
    "async": ("s.async", {}),
    "stubborn": ("s.async", {"stubborn": True}),
    "thread": ("s.thread", {}),
    "polite": ("s.thread", {"polite": True}),
    "process": ("s.process", {"child": True}),
}
"""Every kind of running handler: name -> (job type, params). ``max_retries = 0`` everywhere,
so an attempt that counted would end the job ``failed`` instead of running it again."""


async def submit_every_kind(config: Path, pids: Path, **extra: Any) -> dict[str, str]:
    """Submit one job of each kind through a client; name -> job id."""
    client = EdgeJobs.from_config(config, environ={})
    try:
        return {
            name: (
                await client.submit(
                    job_type, org="acme", params={"name": name, "pids": str(pids), **p, **extra}
                )
            ).id
            for name, (job_type, p) in KINDS.items()
        }
    finally:
        await client.close()


async def until(predicate: Any, what: str, worker: Worker, timeout: float = 30) -> None:
    """Poll ``predicate``; fail with the worker's log (also if it exited meanwhile)."""

    def check() -> None:
        if worker.proc.poll() is not None:
            raise AssertionError(f"worker exited with {worker.proc.returncode}\n{worker.output()}")

    await poll_until(
        predicate,
        timeout=timeout,
        interval=0.05,
        message=lambda: f"{what}: not within {timeout} s\n{worker.output()[-4000:]}",
        check=check,
    )


def all_reporting_progress(db: Path, ids: dict[str, str]) -> bool:
    found = rows(
        db,
        "SELECT status, progress FROM jobs WHERE id IN (SELECT value FROM json_each(?))",
        (json.dumps(list(ids.values())),),
    )
    return len(found) == len(ids) and all(
        r["status"] == "running" and (r["progress"] or 0) > 0 for r in found
    )


async def until_all_mid_progress(db: Path, ids: dict[str, str], worker: Worker) -> None:
    """Wait until every job of ``ids`` runs and has reported progress."""
    await until(lambda: all_reporting_progress(db, ids), "all running, mid-progress", worker)


def handler_pids(pids: Path) -> list[int]:
    """The process-isolated handler's pid and the pid of the subprocess it started."""
    return [int((pids / name).read_text()) for name in ("process", "process.child")]


def pids_folder(tmp_path: Path) -> Path:
    """Where the handlers write their pids (core_handlers), made empty."""
    pids = tmp_path / "pids"
    pids.mkdir()
    return pids


def assert_none_left(pids: list[int]) -> None:
    """No handler process nor what it started outlives the stop (any left is killed, then the
    test fails)."""
    left = [pid for pid in pids if pid_alive(pid)]
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left


def assert_requeued_without_spending_a_retry(db: Path, ids: dict[str, str]) -> None:
    """Every job queued again, its one attempt ``canceled``/``Shutdown``; the file intact."""
    for name, job_id in ids.items():
        assert db_job(db, job_id)["status"] == "queued", name
        attempts = [(a["outcome"], a["error_type"]) for a in db_attempts(db, job_id)]
        assert attempts == [("canceled", "Shutdown")], (name, attempts)
    assert integrity(db) == ["ok"]


def integrity(db: Path) -> list[str]:
    return [r["integrity_check"] for r in rows(db, "PRAGMA integrity_check")]


async def exit_code(worker: Worker, timeout: float = 30) -> int:
    return await asyncio.to_thread(worker.proc.wait, timeout)


def send(worker: Worker, sig: signal.Signals, to: str, pids: Path) -> None:
    """``sig`` to the runner alone (``kill``, ``docker stop``), to its process group (a
    terminal's Ctrl-C) or to every process of the service, the handler's process and what it
    started included (systemd's default ``KillMode=control-group``)."""
    if to == "runner":
        worker.proc.send_signal(sig)
        return
    worker.signal_group(sig)
    if to == "every process":
        # The handler's process leads a group of its own (its subprocess is in it).
        with contextlib.suppress(ProcessLookupError):
            os.killpg(int((pids / "process").read_text()), sig)


@pytest.mark.parametrize(
    ("sig", "to"),
    [
        (signal.SIGTERM, "runner"),
        (signal.SIGINT, "group"),
        (signal.SIGTERM, "every process"),
        (signal.SIGHUP, "group"),
    ],
    ids=[
        "SIGTERM to the runner (kill, docker stop)",
        "SIGINT to the group (Ctrl-C)",
        "SIGTERM to every process (systemd stop)",
        "SIGHUP to the group (its terminal closed)",
    ],
)
async def test_a_stop_past_the_grace_requeues_every_kind_of_job_without_spending_a_retry(
    tmp_path: Path, sig: signal.Signals, to: str
) -> None:
    config = write_config(tmp_path, SHUTDOWN_CONFIG.format(grace=1))
    db, pids = tmp_path / "jobs.db", pids_folder(tmp_path)
    ids = await submit_every_kind(config, pids)
    with Worker(config, tmp_path / "first.log", new_session=True) as first:
        await until_all_mid_progress(db, ids, first)
        handler_processes = handler_pids(pids)
        assert all(pid_alive(pid) for pid in handler_processes)
        send(first, sig, to, pids)
        started = time.monotonic()
        code = await exit_code(first)
        took = time.monotonic() - started
        output = first.output()
    assert code == 0, output
    assert took < 8, output  # the grace, then at most 2 s for the task ignoring cancellation
    assert "Traceback" not in output, output
    # Nothing left behind: neither the handler's process nor the subprocess it started (which
    # a signal to the runner alone does not reach).
    assert_none_left(handler_processes)
    assert "shutdown grace over: interrupting" in output
    assert_requeued_without_spending_a_retry(db, ids)

    # The next runner takes them at once, and runs them again although no retry was allowed.
    with Worker(config, tmp_path / "second.log") as second:
        await until(
            lambda: all(db_job(db, i)["status"] == "completed" for i in ids.values()),
            "all completed by the next runner",
            second,
            timeout=20,
        )
        assert second.terminate() == 0, second.output()
    for job_id in ids.values():
        assert [a["outcome"] for a in db_attempts(db, job_id)] == ["canceled", "completed"]


@pytest.mark.parametrize(
    ("sig", "to"),
    [(signal.SIGINT, "group"), (signal.SIGTERM, "runner")],
    ids=["Ctrl-C twice", "SIGTERM twice to the runner"],
)
async def test_a_second_signal_ends_the_grace_and_requeues_the_running_jobs_at_once(
    tmp_path: Path, sig: signal.Signals, to: str
) -> None:
    """An operator whose stop waits on a long grace signals again. That was only logged
    ("already stopping"), so the next step was SIGKILL, after which every running job came
    back as a lost attempt, a retry spent. A second signal now ends the grace: the running
    jobs are interrupted and requeued as at its end, and the process exits at once."""
    config = write_config(tmp_path, SHUTDOWN_CONFIG.format(grace=600))
    db, pids = tmp_path / "jobs.db", pids_folder(tmp_path)
    ids = await submit_every_kind(config, pids)
    with Worker(config, tmp_path / "worker.log", new_session=True) as worker:
        await until_all_mid_progress(db, ids, worker)
        handler_processes = handler_pids(pids)
        send(worker, sig, to, pids)
        await until(lambda: "stopping; no new claims" in worker.output(), "the first", worker)
        send(worker, sig, to, pids)
        code = await exit_code(worker, timeout=30)  # not the 600 s grace
        output = worker.output()
    assert code == 0, output
    assert f"{sig.name} again: not waiting for the grace" in output, output
    assert "Traceback" not in output, output
    assert_none_left(handler_processes)
    assert_requeued_without_spending_a_retry(db, ids)


@pytest.mark.parametrize(
    ("sig", "to"),
    [(signal.SIGINT, "group"), (signal.SIGTERM, "group"), (signal.SIGTERM, "every process")],
    ids=[
        "Ctrl-C in the terminal",
        "SIGTERM to the group",
        "systemd stop (KillMode=control-group)",
    ],
)
async def test_a_signal_to_the_whole_group_lets_every_kind_of_job_finish_within_the_grace(
    tmp_path: Path, sig: signal.Signals, to: str
) -> None:
    """The handler processes of ``isolation = "process"`` may get the signal too (a service
    manager signals every process of the service): they must not die of it (``ProcessDied``,
    or a ``KeyboardInterrupt`` in the handler), spending a retry; the runner decides when they
    end."""
    config = write_config(tmp_path, SHUTDOWN_CONFIG.format(grace=20))
    db, pids = tmp_path / "jobs.db", pids_folder(tmp_path)
    ids = await submit_every_kind(config, pids, seconds=2)
    with Worker(config, tmp_path / "worker.log", new_session=True) as worker:
        await until_all_mid_progress(db, ids, worker)
        send(worker, sig, to, pids)
        started = time.monotonic()
        code = await exit_code(worker)
        took = time.monotonic() - started
        output = worker.output()
    assert code == 0, output
    assert took < 10, output  # when the jobs were done, not at the end of the grace
    assert "Traceback" not in output, output
    for name, job_id in ids.items():
        assert db_job(db, job_id)["status"] == "completed", (name, output)
        assert [a["outcome"] for a in db_attempts(db, job_id)] == ["completed"], name
    assert integrity(db) == ["ok"]


async def test_a_signal_while_the_runner_starts_stops_it_without_claiming(
    tmp_path: Path,
) -> None:
    """A SIGTERM while the runner imports its handlers (or recovers, or waits for a lock) is
    a stop like any other: exit 0, one log line, no job started, rather than death by the
    signal's default action."""
    config = write_config(tmp_path, SHUTDOWN_CONFIG.format(grace=1))
    db, mark = tmp_path / "jobs.db", tmp_path / "importing"
    client = EdgeJobs.from_config(config, environ={})
    try:
        job = await client.submit("s.slow_import", org="acme")
    finally:
        await client.close()
    slow = {"CORE_SLOW_IMPORT_S": "2", "CORE_SLOW_IMPORT_MARK": str(mark)}
    with Worker(config, tmp_path / "worker.log", **slow) as worker:
        await until(mark.exists, "the runner imports its handlers", worker)
        worker.proc.send_signal(signal.SIGTERM)
        code = await exit_code(worker)
        output = worker.output()
    assert code == 0, output
    assert "SIGTERM while starting: stopping without running any job" in output
    assert "Traceback" not in output and "worker running on" not in output
    assert db_job(db, job.id)["status"] == "queued" and db_attempts(db, job.id) == []
    with Worker(config, tmp_path / "next.log") as worker:
        await until(lambda: db_job(db, job.id)["status"] == "completed", "completed", worker)
        assert worker.terminate() == 0


IGNORES_CANCELLATION = """
[[job_types]]
name = "s.ignores_cancellation"
handler = "core_handlers:notes_each_cancellation"
timeout_s = 0.5
max_retries = 0
"""


@pytest.mark.parametrize("again", [signal.SIGINT, signal.SIGTERM], ids=["Ctrl-C", "SIGTERM"])
async def test_a_signal_while_the_closed_runner_waits_for_a_task_ignoring_cancellation_exits_0(
    tmp_path: Path, again: signal.Signals
) -> None:
    """Once closed, the runner's process waits a moment (2 s at most) for the tasks of async
    handlers that ignore their cancellation. A signal then (Ctrl-C again, a late SIGTERM) found
    no handler of the runner's: SIGINT's KeyboardInterrupt ended the process with exit code
    130, SIGTERM killed it. The signal now ends the wait: exit 0, no traceback."""
    config = write_config(tmp_path, SHUTDOWN_CONFIG.format(grace=1) + IGNORES_CANCELLATION)
    marks = tmp_path / "marks"
    marks.mkdir()
    client = EdgeJobs.from_config(config, environ={})
    try:
        await client.submit("s.ignores_cancellation", org="acme", params={"marks": str(marks)})
    finally:
        await client.close()
    with Worker(config, tmp_path / "worker.log") as worker:
        # Cancelled at its deadline, the handler goes on, abandoned; the runner too.
        await until((marks / "cancelled-1").exists, "the deadline's cancellation", worker)
        worker.proc.send_signal(signal.SIGTERM)
        # Cancelled again once the runner closed: the process now waits for the task.
        await until((marks / "cancelled-2").exists, "the exit's cancellation", worker)
        worker.proc.send_signal(again)
        code = await exit_code(worker)
        output = worker.output()
    assert code == 0, output
    assert "Traceback" not in output, output
    assert "exiting without 1 task(s) that ignored cancellation" in output, output


EXITS_WITH_A_HANDLER_RUNNING = """
import asyncio, sys
from pathlib import Path

from edgejobs import EdgeJobs


async def main() -> None:
    ej = EdgeJobs(database=sys.argv[1])
    ej.register("iso", "core_handlers:sync_pid_sleep", isolation="process", timeout_s=600)
    await ej.start()
    params = {"pid_file": sys.argv[2], "subprocess_file": sys.argv[3], "seconds": 600}
    await ej.submit("iso", org="acme", params=params)
    while not Path(sys.argv[2]).exists():
        await asyncio.sleep(0.02)


if __name__ == "__main__":
    # The loop is left with the attempt running: nothing stops the runner before the exit.
    asyncio.new_event_loop().run_until_complete(main())
"""


def test_a_runner_that_exits_with_a_handler_process_running_ends_it_and_its_subprocesses(
    tmp_path: Path,
) -> None:
    """At interpreter exit ``multiprocessing`` ends daemonic children with SIGTERM, which a
    handler's process ignores, and then waits for them: the runner kills the handler's whole
    group first, and exits."""
    script = tmp_path / "exits.py"
    script.write_text(EXITS_WITH_A_HANDLER_RUNNING)
    child, sleeper = tmp_path / "child", tmp_path / "sleeper"
    done = subprocess.run(
        [PYTHON, str(script), str(tmp_path / "jobs.db"), str(child), str(sleeper)],
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert_none_left([int(child.read_text()), int(sleeper.read_text())])


@pytest.mark.skipif(not hasattr(os, "fork"), reason="forks")
async def test_what_a_process_handler_starts_still_stops_on_sigterm_and_sigint(
    tmp_path: Path,
) -> None:
    """A handler's process ignores SIGINT and SIGTERM (the runner decides when it ends); what
    the handler forks or runs does not inherit that: it ends on them as usual."""
    ej = EdgeJobs(database=tmp_path / "jobs.db")
    ej.register("forks", "core_handlers:forks_and_terminates", isolation="process", max_retries=0)
    async with ej:
        job = await ej.submit("forks", org="acme")
        job = await ej.wait(job.id, timeout=30)
    assert job.status is Status.COMPLETED, job.error
    # SIGTERM's default action; SIGINT's KeyboardInterrupt (the child exits 130 on it).
    assert job.result == {"SIGTERM": -signal.SIGTERM, "SIGINT": 130}


# -- stop() and close() in-process ---------------------------------------------------------------


@pytest.mark.parametrize("method", ["stop", "close"])
async def test_stop_or_close_from_inside_a_handler_begins_the_stop_and_returns(
    tmp_path: Path, method: str
) -> None:
    """Awaited in a handler, the stop would wait for that handler, which waits for the stop:
    it returns at once instead, the handler's job completes, the others get the grace."""
    path = tmp_path / "jobs.db"
    ej = EdgeJobs(
        database=path, config=Config(runner=RunnerConfig(workers=2, shutdown_grace_s=0.3))
    )
    returned: list[float] = []
    forever_started = asyncio.Event()

    async def forever(ctx: Any, params: dict[str, Any]) -> None:
        forever_started.set()
        await asyncio.sleep(3600)

    async def stopper(ctx: Any, params: dict[str, Any]) -> str:
        started = time.monotonic()
        await getattr(ej, method)()
        returned.append(time.monotonic() - started)
        return "stopped"

    ej.register("forever", forever, timeout_s=600)
    ej.register("stopper", stopper, timeout_s=600)
    await ej.start()
    try:
        other = await ej.submit("forever", org="acme")
        await asyncio.wait_for(forever_started.wait(), 10)
        job = await ej.submit("stopper", org="acme")
        await poll_until(
            lambda: not ej.is_runner, timeout=10, interval=0.01, message="the runner stopped"
        )
    finally:
        await ej.close()
    assert returned and returned[0] < 0.1  # not after the grace: it did not wait for itself
    assert db_job(path, job.id)["status"] == "completed"
    assert json.loads(db_job(path, job.id)["result"]) == "stopped"
    assert db_job(path, other.id)["status"] == "queued"
    assert [a["error_type"] for a in db_attempts(path, other.id)] == ["Shutdown"]
    # The runner really stopped: the lock is free for a new runner on the same file.
    again = EdgeJobs(database=path)
    again.register("forever", forever)
    again.register("stopper", stopper)
    await again.start()
    await again.close()


def _held_runner(path: Path) -> tuple[EdgeJobs, asyncio.Event, asyncio.Event]:
    """A one-worker runner with a job type ``held`` whose handler sets ``started`` and returns
    once ``release`` is set; and those two events."""
    ej = EdgeJobs(database=path, workers=1)
    started, release = asyncio.Event(), asyncio.Event()

    async def held(ctx: Any, params: dict[str, Any]) -> str:
        started.set()
        await release.wait()
        return "done"

    ej.register("held", held, timeout_s=600)
    return ej, started, release


async def test_stop_called_twice_or_by_a_cancelled_caller_still_stops_once_and_fully(
    tmp_path: Path,
) -> None:
    ej, started, release = _held_runner(tmp_path / "jobs.db")
    await ej.start()
    try:
        job = await ej.submit("held", org="acme")
        await asyncio.wait_for(started.wait(), 10)
        impatient = asyncio.create_task(ej.stop(grace_s=30))
        patient = asyncio.create_task(ej.stop(grace_s=30))
        await poll_until(
            lambda: ej.stopping, timeout=10, interval=0.01, message=lambda: "no stop began"
        )
        impatient.cancel()  # e.g. an asyncio.timeout around it: the stop itself goes on
        with contextlib.suppress(asyncio.CancelledError):
            await impatient
        assert ej.stopping and ej.is_runner and not patient.done()
        release.set()  # the running job finishes within the grace
        await asyncio.wait_for(patient, 10)
        assert impatient.cancelled()
        assert not ej.is_runner
        assert (await ej.get(job.id)).status is Status.COMPLETED
        await ej.start()  # and it can run again after a stop, as documented
        assert ej.is_runner and not ej.stopping
    finally:
        release.set()
        await ej.close()


async def test_a_second_stop_with_a_shorter_grace_interrupts_the_running_job_now(
    tmp_path: Path,
) -> None:
    """``stop(grace_s=0)`` during a stop with a long grace requeues the running job at once
    (what a second signal does); a second stop's grace used to be ignored."""
    ej = EdgeJobs(database=tmp_path / "jobs.db", workers=1)
    started = asyncio.Event()

    async def held(ctx: Any, params: dict[str, Any]) -> str:
        started.set()
        await asyncio.sleep(600)
        return "done"

    ej.register("held", held, timeout_s=900, max_retries=0)
    await ej.start()
    try:
        job = await ej.submit("held", org="acme")
        await asyncio.wait_for(started.wait(), 10)
        patient = asyncio.create_task(ej.stop(grace_s=600))
        await poll_until(
            lambda: ej.stopping, timeout=10, interval=0.01, message=lambda: "no stop began"
        )
        async with asyncio.timeout(10):  # not the 600 s of the first stop's grace
            await ej.stop(grace_s=0)
            await patient
        assert not ej.is_runner
        stopped = await ej.get(job.id)
        assert stopped.status is Status.QUEUED
        attempts = await ej.attempts(job.id)
        assert [(a.outcome, a.error and a.error.type) for a in attempts] == [
            (Outcome.CANCELED, "Shutdown")
        ]
    finally:
        await ej.close()


async def test_drain_interrupted_by_a_stop_says_so_instead_of_returning_drained(
    tmp_path: Path,
) -> None:
    """A stopping runner claims nothing, so ``drain()`` found "nothing started" and returned as
    if the queue were empty; a test (or script) that drains then asserts on results went on
    with jobs never run. It raises ``ShuttingDown``, naming what is left; a drain that did
    finish before the stop still returns."""
    ej, started, release = _held_runner(tmp_path / "jobs.db")
    await ej.start()
    try:
        first = await ej.submit("held", org="acme", params={"n": 1})
        second = await ej.submit("held", org="acme", params={"n": 2})
        drain = asyncio.create_task(ej.drain(timeout=30))
        await asyncio.wait_for(started.wait(), 10)
        stop = asyncio.create_task(ej.stop(grace_s=30))
        await poll_until(
            lambda: ej.stopping, timeout=10, interval=0.01, message=lambda: "no stop began"
        )
        release.set()  # the running job finishes within the grace; the other stays queued
        with pytest.raises(ShuttingDown, match="1 job\\(s\\) still queued"):
            await drain
        await asyncio.wait_for(stop, 10)
        assert (await ej.get(first.id)).status is Status.COMPLETED
        assert (await ej.get(second.id)).status is Status.QUEUED
        await ej.start()
        await ej.drain(timeout=30)  # nothing interrupts it: it returns once all ran
        assert (await ej.get(second.id)).status is Status.COMPLETED
        await ej.stop()
        await ej.start()
        finished = asyncio.create_task(ej.drain(timeout=30))
        await ej.stop()  # nothing was queued: the drain is done, however the stop fell
        await finished
    finally:
        release.set()
        await ej.close()
