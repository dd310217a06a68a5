"""``edgejobs submit --wait``: a live progress display that follows the job through the
database (another process runs it), and exit code 0 only when the job completed."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import sqlite3
import subprocess
import sys
from collections.abc import Mapping
from contextlib import closing
from pathlib import Path
from typing import Any

from sse_support import GUARD_S, REPO, make_config, register_job_types, wait_for

from edgejobs import EdgeJobs
from edgejobs.cli.progress_bar import bar_line, describe, follow_job, format_eta
from edgejobs.runner.context import JobContext


async def _runner_and_client(
    path: Path, gates: Mapping[int, asyncio.Event] | None = None
) -> tuple[EdgeJobs, EdgeJobs]:
    """A started runner and a follower on ``path``; the runner's ``gated`` job reports each
    percent of ``gates`` in turn and waits for its gate before going on."""
    runner = EdgeJobs(database=path, config=make_config())
    register_job_types(runner)
    step_gates = dict(gates or {})

    @runner.job_type("gated", max_retries=0, dedup=False)
    async def gated(ctx: JobContext, params: dict[str, Any]) -> dict[str, Any]:
        for percent, gate in step_gates.items():
            await ctx.progress(percent, f"step {percent}")
            await gate.wait()
        return {"ok": True}

    @runner.job_type("broken", max_retries=0, dedup=False)
    async def broken(ctx: JobContext, params: dict[str, Any]) -> None:
        await ctx.progress(40, "almost")
        raise RuntimeError("disk on fire")

    await runner.start()
    follower = EdgeJobs(database=path)  # like the CLI: a client of its own, on the same file
    await follower.open()
    return runner, follower


async def test_follow_prints_plain_lines_and_exits_0_when_completed(tmp_path: Path) -> None:
    # The job waits at each step until the follower has printed it: no timing involved.
    gates = {percent: asyncio.Event() for percent in (25, 50, 75)}
    runner, follower = await _runner_and_client(tmp_path / "jobs.db", gates)
    out, err = io.StringIO(), io.StringIO()

    def printed(percent: int) -> bool:
        return any(
            f"{percent}.0%" in line and f"step {percent}" in line
            for line in out.getvalue().splitlines()
        )

    try:
        job = await follower.submit("gated", org="acme")
        follow = asyncio.create_task(follow_job(follower, job.id, out=out, err=err))
        try:
            for percent, gate in gates.items():
                await wait_for(lambda p=percent: printed(p) or follow.done(), f"step {percent}")
                assert printed(percent), (out.getvalue(), follow)
                gate.set()
            code = await asyncio.wait_for(follow, GUARD_S)
        finally:
            for gate in gates.values():
                gate.set()  # let the job end whatever happened
            if not follow.done():
                follow.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await follow
    finally:
        await follower.close()
        await runner.close()
    lines = out.getvalue().splitlines()
    assert code == 0
    assert lines[-1] == "completed"
    assert any("25.0%" in line and "step 25" in line for line in lines)
    assert any("75.0%" in line and "step 75" in line for line in lines)
    assert "\r" not in out.getvalue() and "\x1b" not in out.getvalue()  # not a terminal
    assert err.getvalue() == ""


async def test_follow_exits_1_with_the_error_when_the_job_failed(tmp_path: Path) -> None:
    runner, follower = await _runner_and_client(tmp_path / "jobs.db")
    try:
        job = await follower.submit("broken", org="acme")
        out, err = io.StringIO(), io.StringIO()
        code = await asyncio.wait_for(follow_job(follower, job.id, out=out, err=err, tty=True), 30)
    finally:
        await follower.close()
        await runner.close()
    assert code == 1
    text = out.getvalue()
    assert text.startswith("\r\x1b[2K[")  # a terminal: one line redrawn in place
    assert text.endswith("\nfailed\n")
    assert "RuntimeError: disk on fire" in err.getvalue()


def test_line_formats() -> None:
    assert [format_eta(s) for s in (None, 0.4, 12, 185, 3725)] == [
        "",
        "0s",
        "12s",
        "3m05s",
        "1h02m",
    ]

    class FakeJob:
        progress = 45.0
        status = type("S", (), {"value": "running"})()
        eta_s = 12.0
        progress_message = "copying\nfiles"
        is_terminal = False

    job: Any = FakeJob()
    # The message is the handler's text: one line, its control characters escaped.
    assert describe(job) == " 45.0%  running  ETA 12s  copying\\nfiles"
    line = bar_line(job, 200)
    assert line.startswith("[###########-------------]  45.0%  running  ETA 12s")
    assert "\n" not in line
    assert len(bar_line(job, 30)) == 29


def test_submit_wait_command_follows_a_job_run_by_another_process(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    config = tmp_path / "edgejobs.toml"
    config.write_text(f'[database]\npath = "{path.name}"\n')

    async def scenario() -> subprocess.CompletedProcess[str]:
        runner = EdgeJobs(database=path, config=make_config())
        register_job_types(runner)
        await runner.start()
        try:
            command = [
                sys.executable,
                "-m",
                "edgejobs",
                "submit",
                "steps",
                "--org",
                "acme",
                "--params",
                '{"steps": [20, 40, 60, 80], "pause_s": 0.2}',
                "--wait",
                "--config",
                str(config),
            ]
            proc = await asyncio.create_subprocess_exec(
                *command,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env={**os.environ, "PYTHONPATH": str(REPO)},
                cwd=tmp_path,
            )
            out, err = await asyncio.wait_for(proc.communicate(), 60)
            assert proc.returncode is not None
            return subprocess.CompletedProcess(command, proc.returncode, out.decode(), err.decode())
        finally:
            await runner.close()

    result = asyncio.run(scenario())
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    with closing(sqlite3.connect(str(path))) as conn:  # the job id comes first
        assert conn.execute("SELECT status FROM jobs WHERE id = ?", (lines[0],)).fetchone() == (
            "completed",
        )
    assert lines[-1] == "completed"
    assert any("40.0%" in line and "step 40" in line for line in lines[1:-1])


_HOLD_THE_RUNNER_LOCK = """
import sys, time
from pathlib import Path
from edgejobs.runner.lock import RunnerLock
RunnerLock(Path(sys.argv[1])).acquire()
print("holding", flush=True)
time.sleep(60)
"""


async def test_a_job_followed_with_no_runner_on_the_database_says_so(
    tmp_path: Path, monkeypatch: Any
) -> None:
    """``submit --wait`` with no runner on the file waited at "queued" for good, silently (a
    wrong database, or a runner not started): it now says so once, and only then."""
    import edgejobs.cli.progress_bar as progress_bar

    monkeypatch.setattr(progress_bar, "NO_RUNNER_HINT_AFTER_S", 0.0)
    path = tmp_path / "jobs.db"
    client = EdgeJobs(database=path, config=make_config())
    register_job_types(client)
    job = await client.submit("quick", org="acme")

    async def follow_a_while() -> str:
        err = io.StringIO()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                follow_job(client, job.id, out=io.StringIO(), err=err, refresh_s=0.05), 1.0
            )
        return err.getvalue()

    try:
        said = await follow_a_while()
        assert said.count("no runner is using") == 1 and str(path) in said, said
        holder = subprocess.Popen(
            [sys.executable, "-c", _HOLD_THE_RUNNER_LOCK, str(path)],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert holder.stdout is not None and holder.stdout.readline().strip() == "holding"
            assert await follow_a_while() == ""  # a runner is there (just busy): nothing said
        finally:
            holder.kill()
            holder.wait(timeout=10)
    finally:
        await client.close()


async def test_a_followed_job_says_nothing_when_whether_a_runner_is_there_cannot_be_told(
    tmp_path: Path, monkeypatch: Any
) -> None:
    """The runner's lock file is another user's (``0600``): the look cannot tell whether a
    runner is there, so "no runner is using" would be a guess, and is not said."""
    import edgejobs.cli.progress_bar as progress_bar

    monkeypatch.setattr(progress_bar, "NO_RUNNER_HINT_AFTER_S", 0.0)

    def unreadable(database: Path) -> str | None:
        raise PermissionError(13, "Permission denied", str(database) + ".runner.lock")

    monkeypatch.setattr(progress_bar, "runner_elsewhere", unreadable)
    client = EdgeJobs(database=tmp_path / "jobs.db", config=make_config())
    register_job_types(client)
    job = await client.submit("quick", org="acme")
    err = io.StringIO()
    try:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                follow_job(client, job.id, out=io.StringIO(), err=err, refresh_s=0.05), 1.0
            )
    finally:
        await client.close()
    assert err.getvalue() == ""
