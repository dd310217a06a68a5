"""Handlers imported by path (``core_handlers:NAME``) by runner subprocesses and by process
isolation; the tests put this folder on ``PYTHONPATH`` / ``sys.path``."""

from __future__ import annotations

import asyncio
import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Any


async def echo(ctx: Any, params: dict[str, Any]) -> dict[str, Any]:
    """Return the params with the attempt number."""
    return {"params": params, "attempt": ctx.attempt}


async def sleepy(ctx: Any, params: dict[str, Any]) -> dict[str, Any]:
    """Sleep ``seconds`` on the first attempt only, so a recovered job finishes quickly."""
    if ctx.attempt == 1:
        await asyncio.sleep(float(params.get("seconds", 60)))
    return {"attempt": ctx.attempt}


def sync_sleep(ctx: Any, params: dict[str, Any]) -> dict[str, Any]:
    """Block in ``time.sleep`` (ignores cancellation: only a kill or abandonment stops it)."""
    time.sleep(float(params.get("seconds", 60)))
    return {"slept": params.get("seconds", 60)}


def sync_quick(ctx: Any, params: dict[str, Any]) -> dict[str, Any]:
    """Return at once (a sync handler)."""
    return {"ok": True, "attempt": ctx.attempt}


def fail(ctx: Any, params: dict[str, Any]) -> None:
    """Always raise."""
    raise RuntimeError(params.get("message", "boom"))


def sync_pid_sleep(ctx: Any, params: dict[str, Any]) -> dict[str, Any]:
    """Write this process's pid to ``params["pid_file"]`` (and with ``subprocess_file``, start
    a ``sleep`` subprocess and write its pid there first), then block for ``seconds``."""
    if "subprocess_file" in params:
        start_sleeper(params["subprocess_file"])
    Path(params["pid_file"]).write_text(str(os.getpid()))
    time.sleep(float(params.get("seconds", 60)))
    return {"slept": params.get("seconds", 60)}


def returns_a_set(ctx: Any, params: dict[str, Any]) -> set[int]:
    """Return a value JSON has no form for."""
    return {1, 2}


def returns_a_lone_surrogate(ctx: Any, params: dict[str, Any]) -> str:
    """Return a file name that is not UTF-8, as ``os.listdir`` gives it (JSON encodes it, but
    as text it cannot be stored)."""
    return os.fsdecode(b"report-\xff.csv")


def raises_naming_a_file_that_is_not_utf8(ctx: Any, params: dict[str, Any]) -> None:
    """Fail naming a file whose name is not UTF-8, as ``os.listdir`` gives it (a lone
    surrogate in the message and the traceback)."""
    name = os.fsdecode(b"caf\xe9.txt")
    raise ValueError(f"cannot parse {name}")


async def async_raises_naming_a_file_that_is_not_utf8(ctx: Any, params: dict[str, Any]) -> None:
    """:func:`raises_naming_a_file_that_is_not_utf8`, async."""
    raises_naming_a_file_that_is_not_utf8(ctx, params)


def start_sleeper(pid_file: str) -> None:
    """Start a ``sleep 600`` subprocess and write its pid to ``pid_file`` (left running)."""
    sleeper = subprocess.Popen(["sleep", "600"])
    Path(pid_file).write_text(str(sleeper.pid))


def starts_a_subprocess_and_returns(ctx: Any, params: dict[str, Any]) -> str:
    """Start a ``sleep`` subprocess (its pid to ``params["subprocess_file"]``) and return."""
    start_sleeper(params["subprocess_file"])
    return "returned"


def forks_and_dies(ctx: Any, params: dict[str, Any]) -> None:
    """Fork a process that sleeps (its pid to ``params["fork_file"]``; it inherits the pipe to
    the runner), then end this one without returning."""
    pid = os.fork()
    if pid == 0:
        time.sleep(600)
        os._exit(0)
    Path(params["fork_file"]).write_text(str(pid))
    os._exit(3)


def returns_leaving_a_thread(ctx: Any, params: dict[str, Any]) -> str:
    """Start a thread that is not a daemon and never ends (the process cannot exit), and
    return."""
    threading.Thread(target=time.sleep, args=(600,), daemon=False).start()
    Path(params["pid_file"]).write_text(str(os.getpid()))
    return "returned"


async def async_reports_its_pid(ctx: Any, params: dict[str, Any]) -> int:
    """Report progress (awaited), then return this process's pid."""
    await ctx.progress(50, "half")
    await asyncio.sleep(0)
    return os.getpid()


# -- shutdown (test_shutdown.py): the first attempt runs ``seconds`` (default: until stopped)
# reporting progress; any later attempt returns at once. Each writes its pid, and the
# process handler its subprocess's pid, into ``params["pids"]`` (a folder).


def _note_pid(params: dict[str, Any], name: str, pid: int) -> None:
    folder = Path(params["pids"])
    (folder / f"{name}.tmp").write_text(str(pid))
    (folder / f"{name}.tmp").replace(folder / name)  # whole, or not there


async def until_stopped_async(ctx: Any, params: dict[str, Any]) -> dict[str, Any]:
    """Async, reporting progress; ``stubborn`` swallows its cancellation."""
    if ctx.attempt > 1:
        return {"attempt": ctx.attempt}
    _note_pid(params, params["name"], os.getpid())
    end = time.monotonic() + float(params.get("seconds", 3600))
    step = 0
    while time.monotonic() < end:
        step += 1
        await ctx.progress(min(99.0, step / 10), f"step {step}")
        try:
            await asyncio.sleep(0.05)
        except asyncio.CancelledError:
            if not params.get("stubborn"):
                raise
    return {"attempt": ctx.attempt, "steps": step}


async def notes_each_cancellation(ctx: Any, params: dict[str, Any]) -> None:
    """Swallows every cancellation, each noted as a file ``cancelled-N`` in ``params["marks"]``
    (the first comes at its deadline, the next from the process exiting)."""
    count = 0
    while True:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            count += 1
            (Path(params["marks"]) / f"cancelled-{count}").touch()


def until_stopped_sync(ctx: Any, params: dict[str, Any]) -> dict[str, Any]:
    """A thread (or, with process isolation, a process), reporting progress; ``polite`` ends
    when ``ctx.cancelled``; ``child`` starts a subprocess first and waits for it at the end."""
    if ctx.attempt > 1:
        return {"attempt": ctx.attempt}
    _note_pid(params, params["name"], os.getpid())
    child = None
    if params.get("child"):
        child = subprocess.Popen(["sleep", str(params.get("seconds", 3600))])
        _note_pid(params, params["name"] + ".child", child.pid)
    end = time.monotonic() + float(params.get("seconds", 3600))
    step = 0
    while time.monotonic() < end:
        step += 1
        ctx.progress(min(99.0, step / 10), f"step {step}")
        if params.get("polite") and ctx.cancelled:
            return {"cancelled": True}
        time.sleep(0.05)
    if child is not None:
        child.wait()
    return {"attempt": ctx.attempt, "steps": step}


def forks_and_terminates(ctx: Any, params: dict[str, Any]) -> dict[str, Any]:
    """Fork a child that sleeps, end it with SIGTERM and with SIGINT: how each child ended."""
    import signal

    ended = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the forked child
            try:
                time.sleep(30)
            except KeyboardInterrupt:
                os._exit(130)
            os._exit(0)
        time.sleep(0.1)
        os.kill(pid, sig)
        _, status = os.waitpid(pid, 0)
        ended[sig.name] = os.waitstatus_to_exitcode(status)
    return ended


def big_result_while_a_thread_reports(ctx: Any, params: dict[str, Any]) -> dict[str, Any]:
    """Return ~``kb`` KiB while a thread of the handler's reports progress without a pause."""
    stop = threading.Event()

    def beat() -> None:
        n = 0
        while not stop.is_set():
            ctx.progress(n % 100, "alive")
            n += 1

    threading.Thread(target=beat, daemon=True).start()
    time.sleep(0.2)
    return {"blob": "x" * (int(params["kb"]) * 1024)}
