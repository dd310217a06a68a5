"""HTTP submit latency with many concurrent clients (a benchmark, not a test).

Starts a real ``edgejobs serve`` on a free loopback port with a fresh database and a no-op
job type, creates an operator token with ``edgejobs token create``, then has ``--clients``
concurrent clients (50 by default) send ``--requests`` ``POST /api/v1/jobs`` in total, each on
its own keep-alive connection (a minimal HTTP/1.1 client, so the client's own CPU cost stays
small next to the server's on a small machine). The runner executes the jobs meanwhile, as it would in
production. Latency is measured per request, from send to the parsed answer.

    python bench/http_submit.py                       # 50 clients, 5,000 requests
    python bench/http_submit.py --requests 20000 --synchronous full

Prints one table: throughput, p50 / p90 / p99 / max latency, and errors by status (or, with
``--jsonl``, one JSON line in the format ``bench/report.py`` reads).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent


async def noop(ctx: Any, params: dict[str, Any]) -> None:
    """The benchmark's job: does nothing (the server imports it as ``http_submit:noop``)."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _start(folder: Path, args: argparse.Namespace) -> tuple[subprocess.Popen[str], str, str]:
    config = folder / "edgejobs.toml"
    config.write_text(
        f'[database]\npath = "bench.db"\nsynchronous = "{args.synchronous}"\n'
        f"[runner]\nworkers = {args.workers}\nshutdown_grace_s = 2.0\n"
        f"[limits]\nmax_batch = 1000\n"
        f'[[job_types]]\nname = "bench.noop"\nhandler = "http_submit:noop"\n'
        f"max_retries = 0\ndedup = false\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEJOBS_")}
    env["EDGEJOBS_CONFIG"] = str(config)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")])
    cli = [sys.executable, "-m", "edgejobs"]
    made = subprocess.run(
        [*cli, "token", "create", "--org", "bench", "--role", "operator"],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    token = made.stdout.strip().splitlines()[-1]
    port = _free_port()
    proc = subprocess.Popen(
        [*cli, "serve", "--port", str(port), "--log-level", "WARNING"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"edgejobs serve exited: {proc.communicate()[1][-2000:]}")
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code in (200, 503):
                return proc, url, token
        except httpx.TransportError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("edgejobs serve did not start within 30 s")


class _Connection:
    """A minimal HTTP/1.1 keep-alive client: httpx costs more CPU per request than the
    server does, and on a small machine the client would be what gets measured."""

    def __init__(self, host: str, port: int, token: str) -> None:
        self.host, self.port = host, port
        self.head = (
            f"POST /api/v1/jobs HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
        )
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, body: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        request = f"{self.head}Content-Length: {len(body)}\r\n\r\n".encode() + body
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.lower() == "content-length":
                length = int(value)
        return status, await self.reader.readexactly(length)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            await self.writer.wait_closed()


async def _client(
    url: str, token: str, jobs: asyncio.Queue[int], latencies: list[float], errors: dict[str, int]
) -> None:
    parsed = httpx.URL(url)
    connection = _Connection(parsed.host, parsed.port or 80, token)
    try:
        while True:
            try:
                number = jobs.get_nowait()
            except asyncio.QueueEmpty:
                return
            body = json.dumps({"job_type": "bench.noop", "params": {"n": number}}).encode()
            started = time.perf_counter()
            try:
                code, payload = await connection.post(body)
                json.loads(payload)
                status = str(code)
            except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                status = type(exc).__name__
                await connection.close()
                connection = _Connection(parsed.host, parsed.port or 80, token)
            latencies.append(time.perf_counter() - started)
            if status != "201":
                errors[status] = errors.get(status, 0) + 1
    finally:
        await connection.close()


async def _run(
    url: str, token: str, args: argparse.Namespace
) -> tuple[list[float], dict[str, int], float]:
    # Warm up: connections, the token lookup path and SQLite's caches.
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        for n in range(20):
            await http.post(
                "/api/v1/jobs",
                json={"job_type": "bench.noop", "params": {"warm": n}},
                headers={"Authorization": f"Bearer {token}"},
            )
    jobs: asyncio.Queue[int] = asyncio.Queue()
    for number in range(args.requests):
        jobs.put_nowait(number)
    latencies: list[float] = []
    errors: dict[str, int] = {}
    started = time.perf_counter()
    await asyncio.gather(
        *(_client(url, token, jobs, latencies, errors) for _ in range(args.clients))
    )
    return latencies, errors, time.perf_counter() - started


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def main() -> None:
    """Parse arguments, run the benchmark, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=50, help="concurrent clients (50)")
    parser.add_argument("--requests", type=int, default=5000, help="submissions in total (5000)")
    parser.add_argument("--workers", type=int, default=8, help="[runner] workers (8)")
    parser.add_argument("--synchronous", choices=["normal", "full"], default="normal")
    parser.add_argument(
        "--jsonl", action="store_true", help="print one JSON line for bench/report.py instead"
    )
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="edgejobs-http-bench-"))
    proc = None
    try:
        proc, url, token = _start(folder, args)
        latencies, errors, elapsed = asyncio.run(_run(url, token, args))
    finally:
        if proc is not None and proc.poll() is None:
            proc.terminate()
            proc.wait(30)
        shutil.rmtree(folder, ignore_errors=True)
    ms = [value * 1000 for value in latencies]
    if args.jsonl:
        conditions = f"{args.clients} clients, {len(ms)} requests, synchronous={args.synchronous}"
        figures = [
            ("http_submit_throughput", len(ms) / elapsed, "req/s"),
            ("http_submit_p50", statistics.median(ms), "ms"),
            ("http_submit_p99", _percentile(ms, 0.99), "ms"),
        ]
        record = {
            "subject": "edgejobs",
            "figures": [
                {
                    "figure": name,
                    "median": value,
                    "unit": unit,
                    "runs": [value],
                    "conditions": conditions,
                }
                for name, value, unit in figures
            ],
            "errors": errors,
        }
        print(json.dumps(record))
        return
    rows = [
        ("clients", f"{args.clients}"),
        ("requests", f"{len(ms)}"),
        ("synchronous", args.synchronous),
        ("throughput", f"{len(ms) / elapsed:,.0f} req/s"),
        ("p50", f"{statistics.median(ms):.1f} ms"),
        ("p90", f"{_percentile(ms, 0.90):.1f} ms"),
        ("p99", f"{_percentile(ms, 0.99):.1f} ms"),
        ("max", f"{max(ms):.1f} ms"),
        ("errors", ", ".join(f"{k}: {v}" for k, v in sorted(errors.items())) or "none"),
    ]
    width = max(len(name) for name, _ in rows)
    print("HTTP submit (POST /api/v1/jobs) against edgejobs serve on loopback")
    for name, value in rows:
        print(f"  {name.ljust(width)}  {value}")


if __name__ == "__main__":
    main()
