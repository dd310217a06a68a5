"""SSE fan-out latency: from an event's COMMIT to its receipt by each of N subscribers.

A child process serves the app (runner, broker, uvicorn on a free loopback port) and commits
one event at a time (a submitted job, scheduled far ahead so nothing else runs); it stamps
each commit with ``time.monotonic()`` in its commit listener, the moment the broker is woken.
This process holds N streams open (bare asyncio connections), stamps every receipt with the same system-wide
monotonic clock and prints p50 / p90 / p99 / max latency over every (subscriber, event) pair.

Usage: ``python bench/sse_fanout.py [--subscribers 500] [--events 200] [--interval-ms 20]``.
Bounded: it gives up after ``--timeout`` seconds (default 120) and reports what arrived.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ORG = "bench"


def _free_port() -> int:
    with contextlib.closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- the server process ---------------------------------------------------------------------


async def _until(condition: Callable[[], bool], deadline: float, step: float = 0.02) -> None:
    while not condition() and time.monotonic() < deadline:  # noqa: ASYNC110 - polls other code
        await asyncio.sleep(step)


async def _serve(args: argparse.Namespace) -> None:
    import uvicorn

    from edgejobs import EdgeJobs
    from edgejobs.api.app import create_app
    from edgejobs.broker import get_broker
    from edgejobs.config import Config, EventsConfig
    from edgejobs.store.db import WriteTx
    from edgejobs.store.tokens import create_token

    workdir = Path(args.workdir)
    # Every subscriber uses one token: without the per-token stream limit.
    config = Config(events=EventsConfig(max_streams_per_token=0))
    ej = EdgeJobs(database=workdir / "bench.db", config=config)
    ej.register("bench.tick", "builtins:print", dedup=False)
    await ej.open()
    token = await ej.store.write(
        lambda conn, tx: create_token(conn, tx, org=ORG, role="viewer", name="bench", now=0)
    )
    stamps: dict[str, float] = {}

    def on_commit(tx: WriteTx) -> None:
        now = time.monotonic()
        for job_id in tx.jobs_changed:
            stamps.setdefault(job_id, now)

    ej.add_commit_listener(on_commit)
    server = uvicorn.Server(
        uvicorn.Config(create_app(ej), host="127.0.0.1", port=args.port, log_level="warning")
    )
    serving = asyncio.create_task(server.serve())
    deadline = time.monotonic() + args.timeout
    await _until(lambda: bool(server.started), deadline)
    _write(workdir / "token", token.secret)
    broker = get_broker(ej)
    await _until(lambda: broker.subscriber_count >= args.subscribers, deadline)
    await asyncio.sleep(0.5)
    for _ in range(args.events):
        await ej.submit("bench.tick", org=ORG, delay_s=86400)
        await asyncio.sleep(args.interval_ms / 1000)
    _write(workdir / "stamps.json", json.dumps(stamps))
    # Stay up until the client has read the stamps (it deletes the file) or time runs out.
    await _until(lambda: not (workdir / "stamps.json").exists(), deadline, 0.05)
    server.should_exit = True
    await serving


def _write(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)  # atomic: the reader never sees half a file


# -- the subscribers ------------------------------------------------------------------------


async def _subscriber(port: int, secret: str, want: int, received: dict[str, float]) -> None:
    # A bare asyncio client (not httpx): the clients share this machine with the server, so
    # they should cost as little CPU as possible. uvicorn sends each write as one HTTP chunk;
    # the chunk-size lines are the only lines made of hex digits alone, and are skipped.
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        (
            f"GET /api/v1/events HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Authorization: Bearer {secret}\r\nAccept: text/event-stream\r\n\r\n"
        ).encode()
    )
    try:
        status = await reader.readline()
        if b" 200 " not in status:
            raise RuntimeError(f"stream refused: {status!r}")
        got = 0
        kind = b""
        while got < want:
            line = await reader.readline()
            if not line:
                return
            if line.startswith(b"event: "):
                kind = line[7:].strip()
            elif line.startswith(b"data: ") and kind == b"job":
                now = time.monotonic()
                received[json.loads(line[6:])["id"]] = now
                got += 1
    finally:
        writer.close()


async def _subscribe_all(
    args: argparse.Namespace, port: int, secret: str
) -> list[dict[str, float]]:
    per_sub: list[dict[str, float]] = [{} for _ in range(args.subscribers)]
    tasks = [
        asyncio.create_task(_subscriber(port, secret, args.events, per_sub[i]))
        for i in range(args.subscribers)
    ]
    _, pending = await asyncio.wait(tasks, timeout=args.timeout)
    for task in pending:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return per_sub


def _wait_file(path: Path, child: subprocess.Popen[bytes], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if child.poll() is not None or time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _run(args: argparse.Namespace) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="sse-bench-"))
    port = _free_port()
    command = [sys.executable, __file__, "--serve", "--workdir", str(workdir), "--port", str(port)]
    for name in ("subscribers", "events", "interval_ms", "timeout"):
        command += ["--" + name.replace("_", "-"), str(getattr(args, name))]
    root = str(Path(__file__).resolve().parent.parent)
    child = subprocess.Popen(command, env={**os.environ, "PYTHONPATH": root})
    try:
        if not _wait_file(workdir / "token", child, 30):
            print("the server did not start", file=sys.stderr)
            return 1
        secret = (workdir / "token").read_text()
        per_sub = asyncio.run(_subscribe_all(args, port, secret))
        stamps_file = workdir / "stamps.json"
        stamps: dict[str, float] = {}
        if _wait_file(stamps_file, child, args.timeout):
            stamps = json.loads(stamps_file.read_text())
            stamps_file.unlink()
    finally:
        try:
            child.wait(timeout=30)
        except subprocess.TimeoutExpired:
            child.kill()
    latencies = [
        (received_at - stamps[job_id]) * 1000
        for received in per_sub
        for job_id, received_at in received.items()
        if job_id in stamps
    ]
    expected = args.subscribers * args.events
    if args.jsonl:  # missing deliveries are in the record, which the table shows
        _record(args, latencies, expected)
        return 0
    _table(args, latencies, expected)
    return 0 if len(latencies) == expected else 1


def _record(args: argparse.Namespace, latencies: list[float], expected: int) -> None:
    """One JSON line in the format ``bench/report.py`` reads; missing deliveries are errors."""
    latencies.sort()
    conditions = (
        f"{args.subscribers} subscribers, {args.events} events (one commit each, every"
        f" {args.interval_ms} ms), {len(latencies)} of {expected} deliveries; from the commit"
        " listener on the server's event loop to the client's receipt"
    )
    figures = [
        ("sse_fanout_p50", _pct(latencies, 50)),
        ("sse_fanout_p99", _pct(latencies, 99)),
    ]
    record = {
        "subject": "edgejobs",
        "figures": [
            {
                "figure": name,
                "median": value,
                "unit": "ms",
                "runs": [value],
                "conditions": conditions,
            }
            for name, value in figures
        ],
        "errors": {"missing deliveries": expected - len(latencies)}
        if len(latencies) != expected
        else {},
    }
    print(json.dumps(record))


def _pct(latencies: list[float], p: float) -> float | None:
    if not latencies:
        return None  # no delivery at all (JSON has no NaN); the record's errors say it
    return latencies[min(len(latencies) - 1, int(p / 100 * len(latencies)))]


def _table(args: argparse.Namespace, latencies: list[float], expected: int) -> None:
    latencies.sort()

    def pct(p: float) -> float:
        if not latencies:
            return float("nan")
        return latencies[min(len(latencies) - 1, int(p / 100 * len(latencies)))]

    rows = [
        ("subscribers", f"{args.subscribers}"),
        ("events", f"{args.events} (one commit each, every {args.interval_ms} ms)"),
        ("deliveries", f"{len(latencies)} of {expected}"),
        ("p50 commit -> receipt", f"{pct(50):.1f} ms"),
        ("p90", f"{pct(90):.1f} ms"),
        ("p99", f"{pct(99):.1f} ms"),
        ("max", f"{latencies[-1] if latencies else float('nan'):.1f} ms"),
        ("mean", f"{statistics.fmean(latencies) if latencies else float('nan'):.1f} ms"),
    ]
    width = max(len(name) for name, _ in rows)
    print("SSE fan-out latency (server and clients on one machine)")
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")


def main() -> int:
    """Parse the arguments and run the client side (or, with --serve, the server side)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscribers", type=int, default=500)
    # BENCH_SCALE (bench/run's smoke runs) scales the events, as it scales the other figures.
    scale = float(os.environ.get("BENCH_SCALE", "1"))
    parser.add_argument("--events", type=int, default=max(10, int(200 * scale)))
    parser.add_argument(
        "--jsonl", action="store_true", help="print one JSON line for bench/report.py instead"
    )
    parser.add_argument("--interval-ms", type=int, default=20)
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(_serve(args))
        return 0
    return _run(args)


if __name__ == "__main__":
    sys.exit(main())
