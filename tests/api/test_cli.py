"""``edgejobs token ...`` in-process, and ``edgejobs serve`` as a real process: a real uvicorn
on a free loopback port, graceful on SIGTERM even with an event stream open, and the demo."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
import pytest
from ej_testkit import free_port

from edgejobs.cli import main


@pytest.fixture
def db_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    path = tmp_path / "cli.db"
    monkeypatch.setenv("EDGEJOBS_DB", str(path))
    monkeypatch.delenv("EDGEJOBS_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    # main() configures logging onto this test's captured stderr: undo that afterwards.
    handlers, level = logging.root.handlers[:], logging.root.level
    yield path
    logging.root.handlers[:] = handlers
    logging.root.setLevel(level)


def test_token_create_list_revoke(db_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["token", "create", "--org", "acme", "--role", "operator", "--name", "ci"]) == 0
    out, err = capsys.readouterr()
    secret = out.strip().splitlines()[-1]
    assert secret.startswith("ej_") and len(secret) > 40
    assert "tok_" in err and secret not in err
    token_id = err.split()[2]
    assert main(["token", "create", "--org", "*", "--role", "admin"]) == 0
    system_secret = capsys.readouterr()[0].strip().splitlines()[-1]
    assert main(["token", "list", "--json"]) == 0
    out = capsys.readouterr()[0]
    rows = json.loads(out)
    assert secret not in out and system_secret not in out
    assert {(r["org"], r["role"], r["revoked"]) for r in rows} == {
        ("acme", "operator", None),
        ("*", "admin", None),
    }
    assert main(["token", "revoke", token_id]) == 0
    capsys.readouterr()
    assert main(["token", "list"]) == 0
    table = capsys.readouterr()[0]
    line = next(row for row in table.splitlines() if token_id in row)
    assert line.split()[-1].endswith("Z")  # the revoked column is filled in
    # Revoking it again changes nothing, says so, and adds no second audit entry.
    assert main(["token", "revoke", token_id]) == 0
    assert f"token {token_id} was already revoked at {line.split()[-1]}" in capsys.readouterr()[1]
    assert main(["audit", "--json"]) == 0
    entries = json.loads(capsys.readouterr()[0])
    assert [e["action"] for e in entries if e["target"] == token_id] == [
        "token_revoke",
        "token_create",
    ]
    assert main(["token", "revoke", "tok_nope"]) == 1
    assert "no token" in capsys.readouterr()[1]


def test_token_create_refuses_bad_input(db_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["token", "create", "--org", "acme", "--role", "root"])
    assert exit_info.value.code == 2
    assert main(["token", "create", "--org", "no spaces", "--role", "viewer"]) == 1
    assert "org must be" in capsys.readouterr()[1]


def test_token_commands_explain_a_database_they_cannot_open(
    tmp_path: Path,
    db_env: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # A folder where the database file should be, and a path under a regular file.
    (tmp_path / "a-folder.db").mkdir()
    (tmp_path / "plain-file").write_text("not a folder")
    # Under the file nothing exists: only `token create` (which may come before the first
    # runner) tries to create the database there; the others say there is none.
    cannot_open, none_there = "edgejobs: cannot open the database", "edgejobs: no database at"
    for path, listing in (
        (tmp_path / "a-folder.db", cannot_open),
        (tmp_path / "plain-file" / "x.db", none_there),
    ):
        monkeypatch.setenv("EDGEJOBS_DB", str(path))
        for argv, expected in (
            (["token", "list"], listing),
            (["token", "create", "--org", "acme", "--role", "viewer"], cannot_open),
            (["token", "revoke", "tok_x"], listing),
        ):
            assert main(argv) == 1, argv
            out, err = capsys.readouterr()
            assert err.startswith(expected), (argv, err)
            assert "Traceback" not in err and str(path) in err and out == ""


class Serving:
    """An ``edgejobs serve`` child process."""

    def __init__(self, args: list[str], env: dict[str, str], cwd: Path) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edgejobs", "serve", "--port", str(self.port), *args],
            env=env,
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.url = f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"serve exited: {self.proc.communicate()}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code in (200, 503):
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise TimeoutError("serve did not start")

    def stop(self, timeout: float = 20) -> tuple[int, str, str]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        out, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, out, err


@pytest.fixture
def child_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEJOBS_")}
    config = tmp_path / "edgejobs.toml"
    config.write_text('[runner]\nshutdown_grace_s = 1.0\n[database]\npath = "served.db"\n')
    env["EDGEJOBS_CONFIG"] = str(config)
    yield env


def test_serve_runs_http_and_runner_and_stops_on_sigterm_with_a_stream_open(
    tmp_path: Path, child_env: dict[str, str]
) -> None:
    _token_secret(tmp_path, child_env, "admin")
    server = Serving([], child_env, tmp_path)
    try:
        server.wait_ready()
        # A token created by another process while the server runs works at once.
        headers = {"Authorization": f"Bearer {_token_secret(tmp_path, child_env, 'viewer')}"}
        assert httpx.get(server.url + "/api/v1/whoami", headers=headers).json()["role"] == "viewer"
        second = subprocess.run(
            [sys.executable, "-m", "edgejobs", "serve", "--port", str(free_port())],
            env=child_env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert second.returncode == 3 and "already running" in second.stderr
        # Hold an event stream open (when the SSE route exists), then stop the server.
        streaming = threading.Event()
        statuses: list[int] = []

        def hold_stream() -> None:
            try:
                with httpx.stream(
                    "GET", server.url + "/api/v1/events", headers=headers, timeout=30
                ) as response:
                    statuses.append(response.status_code)
                    streaming.set()
                    for _ in response.iter_bytes():
                        pass
            except httpx.HTTPError:
                pass
            streaming.set()

        reader = threading.Thread(target=hold_stream, daemon=True)
        reader.start()
        streaming.wait(10)
        assert statuses == [200]  # a stream really is open when SIGTERM comes
        started = time.monotonic()
        code, out, err = server.stop(timeout=30)
        assert code == 0, err[-2000:]
        assert time.monotonic() - started < 8  # not held by the open stream
        assert "Traceback" not in err
        assert "without TLS" not in err  # the default host is the loopback
        reader.join(10)
        assert not reader.is_alive()
    finally:
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.communicate()


def test_serve_behind_a_proxy_that_strips_a_prefix_and_ends_tls(
    tmp_path: Path, child_env: dict[str, str]
) -> None:
    """`[server] root_path` is the prefix the proxy strips: the OpenAPI document names it as
    its server; the proxy's X-Forwarded-Proto (trusted from loopback) makes the cookies
    Secure."""
    config = Path(child_env["EDGEJOBS_CONFIG"])
    config.write_text(
        config.read_text() + '[server]\nroot_path = "/jobs"\nallowed_hosts = ["box.local"]\n'
    )
    secret = _token_secret(tmp_path, child_env, "viewer")
    server = Serving([], child_env, tmp_path)
    try:
        server.wait_ready()
        # The proxy forwards the public name (nginx's `proxy_set_header Host $host`).
        document = httpx.get(
            server.url + "/api/v1/openapi.json", headers={"Host": "box.local"}
        ).json()
        assert document["servers"] == [{"url": "/jobs"}]
        login = httpx.post(
            server.url + "/login",
            json={"token": secret},
            headers={"X-Forwarded-Proto": "https"},
        )
        assert login.status_code == 200
        cookies = login.headers.get_list("set-cookie")
        assert len(cookies) == 2 and all("; secure" in c.lower() for c in cookies), cookies
    finally:
        code, _, err = server.stop()
    assert code == 0, err


def test_serve_on_loopback_answers_loopback_host_names_only(
    tmp_path: Path, child_env: dict[str, str]
) -> None:
    """DNS rebinding: a page of another site, its name re-pointed at 127.0.0.1, must not read
    the unauthenticated routes; the browser sends that site's name as Host."""
    server = Serving([], child_env, tmp_path)
    try:
        server.wait_ready()
        rebound = httpx.get(server.url + "/metrics", headers={"Host": "evil.example:8000"})
        assert rebound.status_code == 400
        assert "[server] allowed_hosts" in rebound.json()["error"]["message"]
        for host in ("localhost", f"127.0.0.1:{server.port}"):
            assert httpx.get(server.url + "/metrics", headers={"Host": host}).status_code == 200
    finally:
        code, _, err = server.stop()
    assert code == 0, err


def test_serve_demo_prints_a_token_and_keeps_jobs_moving(
    tmp_path: Path, child_env: dict[str, str]
) -> None:
    server = Serving(["--demo"], child_env, tmp_path)
    try:
        server.wait_ready()
        assert server.proc.stdout is not None
        lines = [server.proc.stdout.readline() for _ in range(2)]
        assert f"http://127.0.0.1:{server.port}/" in lines[0]
        token = lines[1].strip()
        assert token.startswith("ej_")
        headers = {"Authorization": f"Bearer {token}"}
        me = httpx.get(server.url + "/api/v1/whoami", headers=headers).json()
        assert (me["org"], me["role"]) == ("demo", "admin")
        deadline = time.monotonic() + 15
        seen: set[str] = set()
        while time.monotonic() < deadline and not {"running", "completed"} <= seen:
            stats = httpx.get(server.url + "/api/v1/stats", headers=headers).json()
            seen |= {status for status, count in stats["by_status"].items() if count}
            time.sleep(0.3)
        assert {"running", "completed"} <= seen, seen
        types = {
            t["name"]
            for t in httpx.get(server.url + "/api/v1/job-types", headers=headers).json()["items"]
        }
        assert {"demo.progress", "demo.flaky", "demo.doomed", "demo.chain.fetch"} <= types
        code, _, err = server.stop(timeout=30)
        assert code == 0, err[-2000:]
    finally:
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.communicate()


def test_demo_database_defaults_to_a_file_of_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import argparse

    from edgejobs.cli.serve import _database_chosen

    for name in ("EDGEJOBS_CONFIG", "EDGEJOBS_DB"):
        monkeypatch.delenv(name, raising=False)
    assert not _database_chosen(argparse.Namespace())
    assert _database_chosen(argparse.Namespace(config="x.toml"))
    monkeypatch.setenv("EDGEJOBS_DB", "mine.db")
    assert _database_chosen(argparse.Namespace())


def test_serve_off_the_loopback_warns_that_it_speaks_plain_http(
    tmp_path: Path, child_env: dict[str, str]
) -> None:
    """Bound to every interface, tokens and session cookies cross the network in clear
    text: ``serve`` said nothing about it."""
    server = Serving(["--host", "0.0.0.0"], child_env, tmp_path)
    try:
        server.wait_ready()
    finally:
        code, _, err = server.stop(timeout=30)
    assert code == 0, err[-2000:]
    warnings = [line for line in err.splitlines() if "WARNING" in line and "without TLS" in line]
    assert len(warnings) == 1 and "0.0.0.0" in warnings[0], err[-2000:]
    unlisted = [line for line in err.splitlines() if "allowed_hosts is not set" in line]
    assert len(unlisted) == 1 and "WARNING" in unlisted[0], err[-2000:]
    # With the list set, only the plain-HTTP warning remains.
    listed = Serving(
        ["--host", "0.0.0.0"], {**child_env, "EDGEJOBS_ALLOWED_HOSTS": "box.local"}, tmp_path
    )
    try:
        listed.wait_ready()
    finally:
        code, _, err = listed.stop(timeout=30)
    assert code == 0, err[-2000:]
    assert "without TLS" in err and "allowed_hosts is not set" not in err, err[-2000:]


def test_only_loopback_hosts_count_as_local() -> None:
    from edgejobs.cli.serve import is_loopback

    for host in ("127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost", "LOCALHOST"):
        assert is_loopback(host), host
    for host in ("0.0.0.0", "::", "", "192.168.1.10", "edge.example.com"):
        assert not is_loopback(host), host


def test_serve_exits_1_when_the_port_is_taken(tmp_path: Path, child_env: dict[str, str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "edgejobs", "serve", "--port", str(port)],
            env=child_env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert result.returncode == 1
    assert f"could not serve on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr


SERVED_JOBS = """
import asyncio, os, time
from pathlib import Path
from typing import Any

if os.environ.get("SLOW_IMPORT_MARK"):
    Path(os.environ["SLOW_IMPORT_MARK"]).write_text("importing")
    time.sleep(2)


async def run(ctx, params):
    if "started" in params:
        Path(params["started"]).write_text(ctx.job_id)
    if "hold_s" in params:
        await asyncio.sleep(params["hold_s"])
    return {"ok": True}
"""


def _with_jobs(tmp_path: Path, env: dict[str, str], grace_s: float) -> dict[str, str]:
    """``env`` with a config of one job type, ``served.run``, whose handler module (in
    ``tmp_path``) notes that it started and, with ``SLOW_IMPORT_MARK`` set, takes 2 s to
    import; ``[runner] shutdown_grace_s`` is ``grace_s``."""
    (tmp_path / "served_jobs.py").write_text(SERVED_JOBS)
    config = tmp_path / "edgejobs.toml"
    config.write_text(
        f'[runner]\nshutdown_grace_s = {grace_s}\n[database]\npath = "served.db"\n'
        '[[job_types]]\nname = "served.run"\nhandler = "served_jobs:run"\n'
    )
    paths = [str(tmp_path), *filter(None, [env.get("PYTHONPATH")])]
    return {**env, "EDGEJOBS_CONFIG": str(config), "PYTHONPATH": os.pathsep.join(paths)}


def _submit_queued(tmp_path: Path, env: dict[str, str], **params: Any) -> Path:
    """Submit one ``served.run`` job from the command line (with ``params`` besides, e.g.
    ``hold_s``: how long it runs); the file it writes when it starts."""
    started = tmp_path / "job-started"
    subprocess.run(
        [sys.executable, "-m", "edgejobs", "submit", "served.run", "--org", "acme"]
        + ["--params", json.dumps({"started": str(started), **params})],
        env=env,
        cwd=tmp_path,
        check=True,
        capture_output=True,
    )
    return started


def _token_secret(tmp_path: Path, env: dict[str, str], role: str) -> str:
    """Create an ``acme`` token of ``role`` with the command line; its secret."""
    made = subprocess.run(
        [sys.executable, "-m", "edgejobs", "token", "create", "--org", "acme", "--role", role],
        env=env,
        cwd=tmp_path,
        check=True,
        capture_output=True,
        text=True,
    )
    return made.stdout.strip().splitlines()[-1]


def _attempts(db: Path) -> int:
    with closing(sqlite3.connect(db)) as conn:
        return int(conn.execute("SELECT count(*) FROM attempts").fetchone()[0])


def test_serve_with_its_port_taken_starts_no_job_and_does_not_wait_for_the_grace(
    tmp_path: Path, child_env: dict[str, str]
) -> None:
    """The runner's workers start once the port is bound: a port in use is reported at once,
    not after ``shutdown_grace_s`` spent interrupting jobs it should never have started."""
    env = _with_jobs(tmp_path, child_env, grace_s=30)
    started = _submit_queued(tmp_path, env)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        begun = time.monotonic()
        result = subprocess.run(
            [sys.executable, "-m", "edgejobs", "serve", "--port", str(port)],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
        took = time.monotonic() - begun
    assert result.returncode == 1, result.stderr
    assert f"could not serve on 127.0.0.1:{port}" in result.stderr
    assert took < 15, result.stderr
    assert not started.exists() and _attempts(tmp_path / "served.db") == 0


def test_serve_stopped_while_starting_exits_0_without_running_a_job(
    tmp_path: Path, child_env: dict[str, str]
) -> None:
    env = _with_jobs(tmp_path, child_env, grace_s=30)
    started = _submit_queued(tmp_path, env)
    mark = tmp_path / "importing"
    server = Serving([], {**env, "SLOW_IMPORT_MARK": str(mark)}, tmp_path)
    try:
        deadline = time.monotonic() + 30
        while not mark.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert mark.exists(), "the runner never imported its handlers"
        code, _, err = server.stop(timeout=30)
    finally:
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.communicate()
    assert code == 0, err
    assert "SIGTERM while starting: stopping without running any job" in err
    assert "Traceback" not in err and "serving on" not in err
    assert not started.exists() and _attempts(tmp_path / "served.db") == 0


@pytest.mark.parametrize(
    "pause_s", [0.0, 1.0], ids=["during the HTTP drain", "while waiting for the job"]
)
def test_a_second_sigterm_to_serve_ends_the_grace_and_requeues_the_running_job(
    tmp_path: Path, child_env: dict[str, str], pause_s: float
) -> None:
    """The second signal only skipped the HTTP drain: a running job still held the process
    for the whole grace (here 600 s), so an operator's next step was SIGKILL and a lost
    attempt. Now it ends the grace: the job is requeued, no retry spent, and serve exits 0
    (and the app's lifespan ends rather than being cancelled with a traceback)."""
    child_env = _with_jobs(tmp_path, child_env, grace_s=600)
    started = _submit_queued(tmp_path, child_env, hold_s=600)
    server = Serving([], child_env, tmp_path)
    try:
        server.wait_ready()
        deadline = time.monotonic() + 20
        while not started.exists() and time.monotonic() < deadline:
            time.sleep(0.05)  # another process runs the job: nothing to await here
        assert started.exists(), "the job did not start"
        server.proc.send_signal(signal.SIGTERM)
        # The first signal closes the listener (then waits for the job): wait for that, so
        # that the second is not merged with the first by the kernel.
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                httpx.get(server.url + "/healthz", timeout=1)
            except httpx.TransportError:
                break
            time.sleep(0.05)
        time.sleep(pause_s)  # past the drain (0.1 s with no open request): in the grace
        server.proc.send_signal(signal.SIGTERM)
        code = server.proc.wait(timeout=30)
        _, err = server.proc.communicate(timeout=10)
    finally:
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.communicate()
    assert code == 0, err[-2000:]
    assert "SIGTERM again: not waiting for open HTTP requests nor the grace" in err, err[-2000:]
    assert "Traceback" not in err
    with closing(sqlite3.connect(tmp_path / "served.db")) as conn:
        job = conn.execute("SELECT seq, status FROM jobs").fetchone()
        outcomes = conn.execute(
            "SELECT outcome, error_type FROM attempts WHERE job_seq = ?", (job[0],)
        ).fetchall()
    assert job[1] == "queued"
    assert outcomes == [("canceled", "Shutdown")]


def test_submits_in_flight_at_sigterm_are_committed_or_refused_with_503(
    tmp_path: Path, child_env: dict[str, str]
) -> None:
    """Every submission that got its 201 is in the database; a submission the stopping server
    still answered got 503 ``shutting_down`` with a Retry-After; nothing else (the listener
    closes, so later ones cannot connect at all)."""
    child_env = _with_jobs(tmp_path, child_env, grace_s=5)
    headers = {"Authorization": f"Bearer {_token_secret(tmp_path, child_env, 'admin')}"}
    server = Serving([], child_env, tmp_path)
    acknowledged: list[str] = []
    refusals: list[tuple[int, str, str | None]] = []
    stop = threading.Event()

    def submit(n: int) -> None:
        with httpx.Client(headers=headers, timeout=30) as http:
            i = 0
            while not stop.is_set():
                i += 1
                body = {"job_type": "served.run", "params": {"n": n, "i": i}}
                try:
                    answer = http.post(server.url + "/api/v1/jobs", json=body)
                except httpx.TransportError:
                    time.sleep(0.01)
                    continue
                if answer.status_code == 201:
                    acknowledged.append(answer.json()["id"])
                else:
                    refusals.append(
                        (answer.status_code, answer.text, answer.headers.get("retry-after"))
                    )

    try:
        server.wait_ready()
        submitters = [threading.Thread(target=submit, args=(n,), daemon=True) for n in range(6)]
        for thread in submitters:
            thread.start()
        deadline = time.monotonic() + 10
        while len(acknowledged) < 50 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(acknowledged) >= 50, refusals[:3]
        server.proc.send_signal(signal.SIGTERM)
        code = server.proc.wait(timeout=30)
        stop.set()
        for thread in submitters:
            thread.join(10)
        _, err = server.proc.communicate(timeout=10)
    finally:
        stop.set()
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.communicate()
    assert code == 0, err[-2000:]
    assert "Traceback" not in err
    for status, text, retry_after in refusals:
        assert status == 503, text
        assert json.loads(text)["error"]["code"] == "shutting_down"
        assert retry_after is not None
    with closing(sqlite3.connect(tmp_path / "served.db")) as conn:
        stored = {row[0] for row in conn.execute("SELECT id FROM jobs")}
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert set(acknowledged) <= stored
