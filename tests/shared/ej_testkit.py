"""Helpers every test area shares (imported as ``ej_testkit``; ``tests/conftest.py`` puts this
folder on ``sys.path``).

Only for the test processes themselves: handler modules that runner subprocesses import
(``core_handlers``, ``chaos_handlers``, ``e2e_jobs``) must not import this module, since those
processes get their own ``PYTHONPATH``.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[2]


def asgi_client(app: Any, base_url: str = "http://testserver") -> httpx.AsyncClient:
    """An HTTP client that calls the ASGI ``app`` in this process (no server, no socket)."""
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=base_url)


def free_port() -> int:
    """A free TCP port on the loopback interface (bound and released: good enough for tests)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def run_script(
    folder: Path,
    source: str,
    *args: str,
    paths: Sequence[Path] = (),
    env: Mapping[str, str] | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """Write ``source`` to ``folder/child.py`` and run it with this interpreter, the checkout
    (then ``paths``) on ``PYTHONPATH``, in ``env`` (default: this process's); its output as
    text. For what a test must do in a process of its own (a resource limit, say)."""
    script = folder / "child.py"
    script.write_text(source)
    child_env = dict(os.environ if env is None else env)
    child_env["PYTHONPATH"] = os.pathsep.join([str(REPO), *map(str, paths)])
    return subprocess.run(
        [sys.executable, str(script), *args],
        capture_output=True,
        text=True,
        env=child_env,
        timeout=timeout,
    )


async def poll_until(
    predicate: Callable[[], bool],
    *,
    timeout: float,
    interval: float,
    message: str | Callable[[], str],
    check: Callable[[], None] | None = None,
) -> None:
    """Poll ``predicate`` every ``interval`` seconds until it holds.

    Once ``timeout`` seconds have passed without it holding, raise :class:`AssertionError` with
    ``message`` (called first if callable, e.g. to attach a worker's log). ``check``, if given,
    runs before each sleep and may raise to fail early (e.g. when a worker process died).
    """
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(message() if callable(message) else message)
        if check is not None:
            check()
        await asyncio.sleep(interval)


def count_drift(conn: sqlite3.Connection) -> dict[tuple[str, str, str], tuple[int, int]]:
    """Where the maintained ``job_counts`` disagree with counting the jobs table:
    {(org, job_type, status): (kept, counted)}; empty when they agree."""
    kept = {
        (r[0], r[1], r[2]): int(r[3])
        for r in conn.execute("SELECT org, job_type, status, n FROM job_counts WHERE n != 0")
    }
    counted = {
        (r[0], r[1], r[2]): int(r[3])
        for r in conn.execute(
            "SELECT org, job_type, status, count(*) FROM jobs GROUP BY org, job_type, status"
        )
    }
    return {
        key: (kept.get(key, 0), counted.get(key, 0))
        for key in kept.keys() | counted.keys()
        if kept.get(key, 0) != counted.get(key, 0)
    }


def vm_steps(conn: sqlite3.Connection, statement: Callable[[], Any]) -> int:
    """SQLite virtual-machine steps (in thousands) that ``statement`` took: work, not time."""
    steps = 0

    def count() -> int:
        nonlocal steps
        steps += 1
        return 0

    conn.set_progress_handler(count, 1000)
    try:
        statement()
    finally:
        conn.set_progress_handler(None, 0)
    return steps


def unexpected_tracebacks(output: str) -> list[str]:
    """The record lines of an edgejobs process's (human) log under which a traceback appears,
    other than attempts whose job gave up: those are logged at WARNING with their handler's
    traceback under the line, as designed. A traceback at the start of a line (Python's own,
    for an exception nothing caught) is returned as itself."""
    found: list[str] = []
    record = ""
    for line in output.splitlines():
        if line.startswith("Traceback"):
            found.append(line)
        elif not line.startswith(" "):
            record = line
        elif line.strip().startswith("Traceback") and not (
            " ended: " in record and "the job is now" in record
        ):
            found.append(record)
    return found
