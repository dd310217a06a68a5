"""The API under a real open-file limit: a request that needs one more descriptor than the
process may open is answered 503 ``out_of_resources`` (never a 500 "bug" with a traceback per
request), ``serve`` reports a listening socket that cannot accept in one line, and both work
again once descriptors are free.

The limit is set with ``setrlimit`` in a child process, so the test process keeps its own.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from ej_testkit import free_port, run_script

resource = pytest.importorskip("resource")

HERE = Path(__file__).resolve().parent

ROUTES = ("/static/app.js", "/api/v1/jobs", "/api/v1/stats", "/metrics", "/api/v1/openapi.json")

CHILD = textwrap.dedent(
    """
    import asyncio, json, os, resource, sys
    from pathlib import Path
    from api_support import lifespan, make_api
    from edgejobs.errors import OutOfResources
    from edgejobs.store.db import Pragmas, Reader

    ROUTES = {routes!r}

    def lowest_free_descriptor():
        fd = os.open(os.devnull, os.O_RDONLY)
        os.close(fd)
        return fd

    async def main():
        api = await make_api(Path(sys.argv[1]))
        try:
            async with lifespan(api.app):
                headers = api.auth("admin")
                soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
                # No new descriptor from here on: the lowest free number is the limit.
                resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free_descriptor(), hard))
                limited = []
                for path in ROUTES:
                    response = await api.client.get(path, headers=headers)
                    limited.append([path, response.status_code, response.headers.get(
                        "retry-after"), response.text[:300]])
                # A read connection opened now (a pool thread's first read) cannot open the
                # database: that is the same shortage, not a raw SQLite error.
                fresh = Reader(Path(sys.argv[1]), Pragmas(), threads=1)
                try:
                    fresh.run_sync(lambda conn: conn.execute("SELECT 1").fetchone())
                    store_read = "read"
                except OutOfResources:
                    store_read = "OutOfResources"
                except Exception as exc:
                    store_read = repr(exc)
                fresh.close()
                resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
                freed = []
                for path in ROUTES:
                    response = await api.client.get(path, headers=headers)
                    freed.append([path, response.status_code])
                print(json.dumps({{"limited": limited, "freed": freed, "store_read": store_read}}))
        finally:
            await api.client.aclose()
            await api.ej.close()

    asyncio.run(main())
    """
).format(routes=ROUTES)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs RLIMIT_NOFILE semantics")
def test_requests_without_a_free_descriptor_are_503_and_work_again_once_freed(
    tmp_path: Path,
) -> None:
    done = run_script(tmp_path, CHILD, str(tmp_path / "api.db"), paths=[HERE], timeout=60)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    statuses = {path: status for path, status, _, _ in report["limited"]}
    assert 500 not in statuses.values(), report["limited"]
    refused = [row for row in report["limited"] if row[1] == 503]
    assert refused, report["limited"]  # the static file at least needs a descriptor
    for _, _, retry_after, body in refused:
        assert json.loads(body)["error"]["code"] == "out_of_resources", body
        assert retry_after is not None and int(retry_after) >= 1
    # One line for the operator, not a traceback per request.
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert done.stderr.count("answered 503 out_of_resources") == 1, done.stderr[-3000:]
    assert report["store_read"] == "OutOfResources", report["store_read"]
    assert all(status == 200 for _, status in report["freed"]), report["freed"]


def _wait_for(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("the condition did not come true in time")
        time.sleep(0.02)


def _healthz(port: int) -> int | None:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code
    except httpx.TransportError:
        return None


SERVE_FILE_LIMIT = 48


def _limit_files() -> None:  # in the child, before it runs anything
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (SERVE_FILE_LIMIT, hard))


HANDLERS = """
import time

def until_cancelled(ctx, params):
    while not ctx.cancelled:
        time.sleep(0.01)
"""

SERVE_CONFIG = """
[runner]
shutdown_grace_s = 1.5
[database]
path = "served.db"
[[job_types]]
name = "t.until_cancelled"
handler = "limit_handlers:until_cancelled"
"""


def _running_here(port: int) -> int:
    response = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
    return int(response.json()["details"]["running_here"])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs RLIMIT_NOFILE semantics")
@pytest.mark.parametrize("then", ["free", "stop"])
def test_serve_at_its_open_file_limit_logs_one_line_and_accepts_again_once_freed(
    tmp_path: Path, then: str
) -> None:
    """``then``: free the descriptors (new connections are accepted again), or stop the
    server while a job runs, so that its shutdown outlasts the second after which asyncio
    retries the accepts that failed (on the socket the server has closed by then)."""
    (tmp_path / "limit_handlers.py").write_text(HANDLERS)
    config = tmp_path / "edgejobs.toml"
    config.write_text(SERVE_CONFIG)
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEJOBS_")}
    env["EDGEJOBS_CONFIG"] = str(config)
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env.get("PYTHONPATH", "")])
    port = free_port()
    log_path = tmp_path / "serve.log"
    with log_path.open("w") as log_file:
        # A file, not a pipe: a flood of log lines must not block the server on a full pipe.
        proc = subprocess.Popen(
            [sys.executable, "-m", "edgejobs", "serve", "--port", str(port)],
            env=env,
            cwd=tmp_path,
            stdout=log_file,
            stderr=log_file,
            preexec_fn=_limit_files,
        )
    held: list[socket.socket] = []
    try:
        _wait_for(lambda: _healthz(port) == 200)
        if then == "stop":
            subprocess.run(
                [sys.executable, "-m", "edgejobs", "submit", "t.until_cancelled", "--org", "a"],
                env=env,
                cwd=tmp_path,
                check=True,
                capture_output=True,
            )
            _wait_for(lambda: _running_here(port) == 1)
        # More connections than the process has descriptors: the last ones cannot be
        # accepted and wait in the listen queue.
        for _ in range(SERVE_FILE_LIMIT):
            held.append(socket.create_connection(("127.0.0.1", port)))
        _wait_for(lambda: "accept" in log_path.read_text())
        if then == "free":
            for connection in held:
                connection.close()
            held.clear()
            _wait_for(lambda: _healthz(port) == 200)  # serving new connections again
        else:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
    finally:
        for connection in held:
            connection.close()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    output = log_path.read_text()
    assert "socket.accept() out of system resource" not in output, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    reports = output.count("cannot accept new connections: Too many open files")
    assert 1 <= reports <= 2, output[-3000:]
    assert proc.returncode == 0, output[-3000:]
