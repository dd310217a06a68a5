"""Helpers of the dashboard's end-to-end tests (imported as ``e2e_support``; see conftest.py):
a real ``edgejobs serve`` subprocess, tokens written straight into its database, and a small
Bearer-token API client for the test's side of the conversation."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import httpx
from ej_testkit import free_port

from edgejobs.clock import SystemClock
from edgejobs.store import Store
from edgejobs.store import tokens as token_store
from edgejobs.store.db import Pragmas

HERE = Path(__file__).resolve().parent
CHROMIUM = Path(os.environ.get("EDGEJOBS_CHROMIUM") or "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
STARTUP_TIMEOUT_S = 30.0

# Realistic job types (the screenshots show them) mapped onto the controllable handlers of
# e2e_jobs.py. reports.build runs one at a time, so a second one visibly waits `queued`.
CONFIG = """\
[database]
path = "e2e.db"

[runner]
workers = 8
tick_interval_s = 0.2
shutdown_grace_s = 1

[retry]
base_delay_s = 0
max_delay_s = 0
jitter = false

[progress]
min_interval_ms = 50

[server]
host = "127.0.0.1"
port = {port}

[[job_types]]
name = "emails.send"
handler = "e2e_jobs:quick"

[[job_types]]
name = "images.resize"
handler = "e2e_jobs:quick"
priority = "low"

[[job_types]]
name = "exports.archive"
handler = "e2e_jobs:held"
dedup = false

[[job_types]]
name = "reports.build"
handler = "e2e_jobs:stepped"
concurrency = 1
dedup = false

[[job_types]]
name = "billing.sync"
handler = "e2e_jobs:broken"
max_retries = 0
dedup = false

[[job_types]]
name = "webhooks.deliver"
handler = "e2e_jobs:broken"
max_retries = 1
dedup = false

[[job_types]]
name = "{long_type}"
handler = "e2e_jobs:quick"
"""

LONG_TYPE = "integrations.catalogue_synchronisation_of_every_regional_storefront_with_its_feed"
"""A job type name as long as people write them: the dashboard must not widen for it."""


@dataclass
class Server:
    """``edgejobs serve`` in a subprocess, on a free loopback port, with the e2e job types."""

    root: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    extra_config: str = ""

    @property
    def url(self) -> str:
        """The dashboard's address."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def gates(self) -> Path:
        """The folder of the handlers' release files (see e2e_jobs.py)."""
        return self.root / "gates"

    @property
    def config_path(self) -> Path:
        """The generated edgejobs.toml."""
        return self.root / "edgejobs.toml"

    @property
    def log_path(self) -> Path:
        """The server's stdout and stderr."""
        return self.root / "server.log"

    def start(self) -> Server:
        """Start the server (again, on the same port and database, after :meth:`stop`) and
        return once ``/healthz`` answers 200."""
        self.gates.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(
            CONFIG.format(port=self.port, long_type=LONG_TYPE) + self.extra_config
        )
        env = self._env()
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "edgejobs", "serve", "--config", str(self.config_path)],
                cwd=self.root,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"edgejobs serve exited at start:\n{self.log()}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)  # waiting for another process to listen: nothing to await
        self.stop()
        raise RuntimeError(f"edgejobs serve did not answer within {STARTUP_TIMEOUT_S} s")

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(HERE), env.get("PYTHONPATH", "")) if p)
        env["EDGEJOBS_E2E_GATES"] = str(self.gates)
        for name in (
            "EDGEJOBS_CONFIG",
            "EDGEJOBS_DB",
            "EDGEJOBS_HOST",
            "EDGEJOBS_PORT",
            "EDGEJOBS_ALLOWED_HOSTS",
        ):
            env.pop(name, None)
        return env

    def cli(self, *args: str) -> str:
        """Run an ``edgejobs`` command on this server's database; its stdout."""
        done = subprocess.run(
            [sys.executable, "-m", "edgejobs", *args, "--config", str(self.config_path)],
            cwd=self.root,
            env=self._env(),
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    def stop(self) -> None:
        """SIGTERM (a graceful stop), then SIGKILL if it hangs."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def log(self) -> str:
        """The server's output so far (for failure messages)."""
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def create_token(self, org: str | None, role: str) -> str:
        """A new token's secret, written into the server's database by this process (any
        process may write to it, like ``edgejobs token create`` does)."""
        store = Store(self.root / "e2e.db", Pragmas())
        store.prepare()
        try:
            new = store.writer.run_sync(
                partial(
                    token_store.create_token,
                    org=org,
                    role=role,
                    name=f"e2e {role}",
                    now=SystemClock().now_ms(),
                )
            )
        finally:
            store.reader.close()
        return new.secret

    def last_event_id(self, job_id: str) -> int:
        """The id of the newest event of ``job_id`` in the server's database (0: none)."""
        conn = sqlite3.connect(f"file:{self.root / 'e2e.db'}?mode=ro", uri=True)
        try:
            found = conn.execute("SELECT max(id) FROM events WHERE job_id = ?", (job_id,))
            return int(found.fetchone()[0] or 0)
        finally:
            conn.close()

    def release(self, job_id: str, suffix: str = "release") -> None:
        """Let a handler pass its gate (``release``, ``step<N>`` or ``fixed``)."""
        (self.gates / f"{job_id}.{suffix}").touch()


class Api:
    """The test's own API client: a Bearer token of one org."""

    def __init__(self, server: Server, token: str) -> None:
        self.server = server
        self.client = httpx.Client(
            base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=10.0
        )

    def submit(self, job_type: str, params: dict[str, Any] | None = None, **extra: Any) -> str:
        """Submit a job; its id."""
        response = self.client.post(
            "/api/v1/jobs", json={"job_type": job_type, "params": params or {}, **extra}
        )
        assert response.status_code in (200, 201), response.text
        job_id: str = response.json()["id"]
        return job_id

    def job(self, job_id: str) -> dict[str, Any]:
        """The job object."""
        response = self.client.get(f"/api/v1/jobs/{job_id}")
        assert response.status_code == 200, response.text
        job: dict[str, Any] = response.json()
        return job

    def status(self, job_id: str) -> str:
        """The job's status."""
        status: str = self.job(job_id)["status"]
        return status

    def wait_progress(self, job_id: str, percent: float, timeout_s: float = 10.0) -> None:
        """Poll the API until the job's stored progress is ``percent``."""
        deadline = time.monotonic() + timeout_s
        while (progress := self.job(job_id)["progress"]) != percent:
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_id} is at {progress} %, expected {percent}")
            time.sleep(0.05)  # another process does the work: nothing to await here

    def wait_status(self, job_id: str, *statuses: str, timeout_s: float = 10.0) -> dict[str, Any]:
        """Poll the API (the test's side, not the dashboard's) until the job has a status."""
        deadline = time.monotonic() + timeout_s
        while True:
            job = self.job(job_id)
            if job["status"] in statuses:
                return job
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_id} is {job['status']}, expected {statuses}")
            time.sleep(0.05)  # another process does the work: nothing to await here

    def close(self) -> None:
        """Close the connection pool."""
        self.client.close()


@dataclass
class Org:
    """A tenant of its own for one test: tokens by role and the test's API client."""

    name: str
    server: Server
    tokens: dict[str, str] = field(default_factory=dict)
    clients: list[Api] = field(default_factory=list)

    def token(self, role: str) -> str:
        """This org's token of ``role`` (created once)."""
        if role not in self.tokens:
            self.tokens[role] = self.server.create_token(self.name, role)
        return self.tokens[role]

    def api(self, role: str = "operator") -> Api:
        """A Bearer-token client of this org."""
        client = Api(self.server, self.token(role))
        self.clients.append(client)
        return client
