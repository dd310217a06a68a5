"""Request bodies a careless or hostile client sends: the small limit of the routes anyone may
reach, bodies refused part-way (the connection is closed, the rest never read), bodies that
never finish arriving, keys given twice, and large bodies parsed where they cannot stall the
runner and the event streams that share its event loop."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_support import Api, ThreadedServer, make_api
from ej_testkit import free_port, poll_until
from starlette.applications import Starlette
from starlette.requests import Request

from edgejobs.api import body as body_module
from edgejobs.api import middleware
from edgejobs.api.schemas import SubmitJob
from edgejobs.cli.jobs import parse_params


def _error(response: Any) -> dict[str, Any]:
    error: dict[str, Any] = response.json()["error"]
    return error


async def _call(
    app: Any, path: str, headers: list[tuple[bytes, bytes]], receive: Any, method: str = "POST"
) -> list[Any]:
    """Call the ASGI app directly with a request whose body ``receive`` hands out; the
    messages the app sent back."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"testserver"), *headers],
        "client": ("127.0.0.1", 5000),
        "server": ("testserver", 80),
    }
    sent: list[Any] = []

    async def send(message: Any) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent


def _start(sent: list[Any]) -> tuple[int, dict[bytes, bytes], dict[str, Any]]:
    start = next(m for m in sent if m["type"] == "http.response.start")
    content = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], dict(start["headers"]), json.loads(content)["error"]


async def test_login_and_logout_take_at_most_4_kib_declared_or_streamed(api: Api) -> None:
    padding = "x" * 5000
    response = await api.client.post("/login", json={"token": api.secrets["viewer"], "p": padding})
    assert response.status_code == 413
    assert _error(response)["code"] == "payload_too_large"
    assert response.headers["connection"] == "close"

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted while streaming
        for _ in range(5):
            yield b" " * 1024

    response = await api.client.post(
        "/login", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 413
    assert response.headers["connection"] == "close"
    response = await api.client.post("/logout", content=b"{}" + b" " * 5000)
    assert response.status_code == 413
    # A real login is far below it, and other routes keep the configured limit.
    response = await api.client.post("/login", json={"token": api.secrets["viewer"]})
    assert response.status_code == 200
    api.client.cookies.clear()
    response = await api.client.post(
        "/api/v1/jobs",
        json={"job_type": "t.echo", "params": {"p": padding}},
        headers=api.auth("operator"),
    )
    assert response.status_code == 201


async def test_a_chunked_body_over_the_limit_is_not_read_further_and_closes(api: Api) -> None:
    chunk = b" " * 65536
    reads = 0

    async def endless() -> dict[str, Any]:
        nonlocal reads
        reads += 1
        return {"type": "http.request", "body": chunk, "more_body": True}

    auth = api.auth("operator")["Authorization"].encode()
    sent = await _call(
        api.app,
        "/api/v1/jobs",
        [(b"transfer-encoding", b"chunked"), (b"authorization", auth)],
        endless,
    )
    status, headers, error = _start(sent)
    assert (status, error["code"]) == (413, "payload_too_large")
    assert headers[b"connection"] == b"close"
    limit = api.ej.config.server.max_body_bytes
    assert reads == limit // len(chunk) + 1  # stopped at the first chunk past the limit


async def test_a_body_without_any_length_header_is_bounded_too(api: Api) -> None:
    """Under HTTP/2 a body comes with neither ``Content-Length`` nor ``Transfer-Encoding``:
    it is counted all the same (a megabyte to ``/login`` without a token was read whole)."""
    reads = 0

    async def endless() -> dict[str, Any]:
        nonlocal reads
        reads += 1
        return {"type": "http.request", "body": b" " * 1024, "more_body": True}

    sent = await _call(api.app, "/login", [(b"content-type", b"application/json")], endless)
    status, headers, error = _start(sent)
    assert (status, error["code"]) == (413, "payload_too_large")
    assert reads == 5  # 4 KiB, then the first chunk past it


async def test_an_answer_before_the_body_was_read_closes_the_connection(api: Api) -> None:
    """A route that refuses first (no token: 401) never reads the body; the server would
    then read and drop the rest of it, a byte now and then, for as long as the client likes."""

    async def never_called() -> dict[str, Any]:
        raise AssertionError("the body was read")

    sent = await _call(api.app, "/api/v1/jobs", [(b"content-length", b"1000")], never_called)
    status, headers, error = _start(sent)
    assert (status, error["code"]) == (401, "unauthorized")
    assert headers[b"connection"] == b"close"
    viewer = api.auth("viewer")["Authorization"].encode()
    sent = await _call(
        api.app, "/api/v1/jobs", [(b"content-length", b"0"), (b"authorization", viewer)], _empty
    )
    status, headers, _ = _start(sent)
    assert status == 403 and b"connection" not in headers  # no body: the connection stays


async def _empty() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


async def test_a_stream_whose_request_body_never_ends_is_ended_quietly(
    api: Api, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An event stream requested with a body that never finishes: at the deadline its wait for
    the client's disconnect is told the client left (not an error after the response began,
    which was logged with a traceback on every such request)."""
    monkeypatch.setattr(middleware, "BODY_DEADLINE_S", 0.3)
    never = asyncio.Event()
    reads = 0

    async def unfinished() -> dict[str, Any]:
        nonlocal reads
        reads += 1
        if reads == 1:
            return {"type": "http.request", "body": b"x", "more_body": True}
        await never.wait()
        raise AssertionError("unreachable")

    viewer = api.auth("viewer")["Authorization"].encode()
    headers = [(b"transfer-encoding", b"chunked"), (b"authorization", viewer)]
    sent = await asyncio.wait_for(
        _call(api.app, "/api/v1/events", headers, unfinished, method="GET"), 20
    )
    start = next(m for m in sent if m["type"] == "http.response.start")
    assert start["status"] == 200
    assert (b"connection", b"close") in start["headers"]
    assert not [r for r in caplog.records if r.levelname == "ERROR"], caplog.text


async def test_a_body_that_stops_arriving_is_408_and_closes(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(middleware, "BODY_DEADLINE_S", 0.2)
    never = asyncio.Event()
    reads = 0

    async def stalls() -> dict[str, Any]:
        nonlocal reads
        reads += 1
        if reads == 1:
            return {"type": "http.request", "body": b'{"job_type": "t.', "more_body": True}
        await never.wait()  # the client went quiet, connection open
        raise AssertionError("unreachable")

    auth = api.auth("operator")["Authorization"].encode()
    sent = await _call(
        api.app,
        "/api/v1/jobs",
        [(b"content-length", b"40"), (b"authorization", auth)],
        stalls,
    )
    status, headers, error = _start(sent)
    assert (status, error["code"]) == (408, "request_timeout")
    assert headers[b"connection"] == b"close"
    assert (await api.ej.stats())["by_status"]["queued"] == 0


def _http(port: int, head: bytes, body: bytes = b"", *, timeout: float = 10) -> bytes:
    """Send ``head`` (and ``body``) over a real socket; everything the server sent until it
    closed the connection (a timeout here means it kept the connection open)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(head + body)
        received = b""
        while True:
            data = sock.recv(65536)
            if not data:
                return received
            received += data


def test_a_real_server_closes_a_refused_or_stalled_body(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(middleware, "BODY_DEADLINE_S", 0.5)
    holder: dict[str, Api] = {}

    async def make_app() -> Starlette:
        holder["api"] = await make_api(tmp_path / "real.db")
        return holder["api"].app

    server = ThreadedServer(make_app, free_port())
    with server.running():
        auth = f"Authorization: Bearer {holder['api'].secrets['operator']}\r\n".encode()
        # Chunked, past the limit: 413, then the server closes instead of reading on.
        chunk = b"10000\r\n" + b" " * 65536 + b"\r\n"
        answer = _http(
            server.port,
            b"POST /api/v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            + auth
            + b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
            chunk * 17,
        )
        assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
        assert b"connection: close" in answer.lower()
        # A declared body that stops after 10 bytes: 408 at the deadline, then closed.
        begun = time.monotonic()
        answer = _http(
            server.port,
            b"POST /api/v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            + auth
            + b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n",
            b'{"job_type"',
        )
        assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
        assert b'"request_timeout"' in answer
        assert time.monotonic() - begun < 8  # the deadline, not the socket's own timeout
        # Without a token, a body trickling after a 401: the server closes, not reads on.
        answer = _http(
            server.port,
            b"POST /api/v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000\r\n\r\n",
            b"{",
        )
        assert answer.startswith(b"HTTP/1.1 401 "), answer[:200]
        # Without a token, a login body of a megabyte is refused unread.
        answer = _http(
            server.port,
            b"POST /login HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1048576\r\n\r\n",
        )
        assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]


async def test_a_key_given_twice_is_malformed(api: Api) -> None:
    headers = {**api.auth("operator"), "Content-Type": "application/json"}
    for raw in (
        b'{"job_type": "nope", "job_type": "t.echo"}',
        b'{"job_type": "t.echo", "params": {"x": 1, "x": 2}}',
        b'{"job_type": "t.echo", "params": {"deep": [{"a": 1, "b": 2, "a": 3}]}}',
    ):
        response = await api.client.post("/api/v1/jobs", content=raw, headers=headers)
        assert response.status_code == 400, raw
        assert "appears twice" in _error(response)["message"]
    response = await api.client.post(
        "/api/v1/jobs",
        content=b'{"job_type": "t.echo", "params": {"x": 1, "X": 2}}',
        headers=headers,
    )
    assert response.status_code == 201  # keys differ by case only: two keys
    assert (await api.ej.stats())["by_status"]["queued"] == 1
    with pytest.raises(ValueError, match="appears twice"):
        parse_params('{"a": 1, "a": 2}')


async def test_a_number_past_pythons_digit_limit_gets_a_plain_message(api: Api) -> None:
    raw = b'{"job_type": "t.echo", "params": {"n": ' + b"9" * 5000 + b"}}"
    response = await api.client.post(
        "/api/v1/jobs",
        content=raw,
        headers={**api.auth("operator"), "Content-Type": "application/json"},
    )
    assert response.status_code == 400
    message = _error(response)["message"]
    assert "more than 4300 digits" in message
    assert "sys.set_int_max_str_digits" not in message


def _record_walks(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The thread of every walk of a parsed body (depth and text checks)."""
    threads: list[int] = []
    walk = body_module._check_tree

    def recording(value: Any) -> None:
        threads.append(threading.get_ident())
        walk(value)

    monkeypatch.setattr(body_module, "_check_tree", recording)
    return threads


async def test_a_large_body_is_parsed_off_the_event_loop_and_a_small_one_on_it(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    walks = _record_walks(monkeypatch)
    loop_thread = threading.get_ident()
    jobs = [{"job_type": "t.echo", "params": {"n": n, "pad": "x" * 300}} for n in range(300)]
    assert len(json.dumps({"jobs": jobs})) > body_module.INLINE_PARSE_BYTES
    response = await api.client.post(
        "/api/v1/jobs/batch", json={"jobs": jobs}, headers=api.auth("operator")
    )
    assert response.status_code == 201
    response = await api.client.post(
        "/api/v1/jobs", json={"job_type": "t.echo"}, headers=api.auth("operator")
    )
    assert response.status_code == 201
    assert len(walks) == 2
    assert walks[0] != loop_thread
    assert walks[1] == loop_thread
    assert (await api.ej.stats())["by_status"]["queued"] == 301
    # A large malformed body is still the same 400, and writes nothing.
    response = await api.client.post(
        "/api/v1/jobs/batch",
        content=json.dumps({"jobs": jobs})[:-2].encode() + b"x]}",
        headers={**api.auth("operator"), "Content-Type": "application/json"},
    )
    assert response.status_code == 400
    assert (await api.ej.stats())["by_status"]["queued"] == 301


async def test_a_batch_over_the_limit_is_refused_before_its_jobs_are_walked(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    walks = _record_walks(monkeypatch)
    limit = api.ej.config.limits.max_batch
    response = await api.client.post(
        "/api/v1/jobs/batch",
        json={"jobs": [{"job_type": "t.echo"}] * (limit + 1)},
        headers=api.auth("operator"),
    )
    assert response.status_code == 413
    assert f"this one has {limit + 1}" in _error(response)["message"]
    assert walks == []
    response = await api.client.post(
        "/api/v1/jobs/batch",
        json={"jobs": [{"job_type": "t.echo"}] * limit},
        headers=api.auth("operator"),
    )
    assert response.status_code == 201
    assert len(walks) == 1


async def test_a_large_body_whose_request_is_cancelled_holds_the_gate_until_its_thread_ends(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Large bodies are parsed in a thread one at a time, or two such threads would take the
    event loop's turns. A request cancelled while its thread parsed (a shutdown, a client gone)
    opened the gate at once, and the next large body's thread ran beside the first one."""
    started: list[str] = []
    running: list[str] = []
    overlaps: list[list[str]] = []
    finish = threading.Event()
    real = body_module._parse_model

    def slow_parse(raw: bytes, model: Any, precheck: Any) -> Any:
        name = "first" if not started else "second"
        started.append(name)
        running.append(name)
        overlaps.append(list(running))
        if name == "first":
            finish.wait(timeout=30)  # parses on after its request was cancelled
        try:
            return real(raw, model, precheck)
        finally:
            running.remove(name)

    monkeypatch.setattr(body_module, "_parse_model", slow_parse)
    app = Starlette()
    big = json.dumps(
        {"job_type": "t.echo", "params": {"pad": "x" * body_module.INLINE_PARSE_BYTES}}
    )

    def request() -> Request:
        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": big.encode(), "more_body": False}

        scope = {"type": "http", "method": "POST", "headers": [], "app": app}
        return Request(scope, receive)

    try:
        first = asyncio.create_task(body_module.read_model(request(), SubmitJob))
        await poll_until(
            lambda: started == ["first"],
            timeout=30,
            interval=0.005,
            message="the first body's thread to start",
        )
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        second = asyncio.create_task(body_module.read_model(request(), SubmitJob))
        await poll_until(
            lambda: app.state.big_body_gate.waiting == 1,
            timeout=30,
            interval=0.005,
            message="the second body to wait at the gate (it went through: the gate was open)",
        )
        assert started == ["first"]
        finish.set()
        parsed = await asyncio.wait_for(second, timeout=30)
        assert parsed.job_type == "t.echo"
        assert started == ["first", "second"]
        assert overlaps == [["first"], ["second"]]  # never two at once
    finally:
        finish.set()  # never leave the first thread waiting


async def test_large_bodies_waiting_beyond_a_few_are_told_to_come_back(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each request waiting for the one large body being parsed holds its whole body (up to
    1 MiB): the line of them was unbounded. Beyond a few, 503 ``overloaded`` with Retry-After,
    and nothing is written for it; the ones waiting are all served."""
    release = threading.Event()
    real = body_module._parse_model

    def held_parse(raw: bytes, model: Any, precheck: Any) -> Any:
        release.wait(timeout=30)
        return real(raw, model, precheck)

    monkeypatch.setattr(body_module, "_parse_model", held_parse)
    per_batch = 250

    async def post(n: int) -> httpx.Response:
        jobs = [
            {"job_type": "t.echo", "params": {"n": n, "i": i, "pad": "x" * 300}}
            for i in range(per_batch)
        ]
        assert len(json.dumps({"jobs": jobs})) > body_module.INLINE_PARSE_BYTES
        return await api.client.post(
            "/api/v1/jobs/batch", json={"jobs": jobs}, headers=api.auth("operator")
        )

    waiting = body_module.MAX_BIG_BODIES_WAITING
    try:
        first = asyncio.create_task(post(0))
        await poll_until(
            lambda: getattr(api.app.state, "big_body_gate", None) is not None,
            timeout=30,
            interval=0.005,
            message="the first large body to be parsed",
        )
        gate = api.app.state.big_body_gate
        line = [asyncio.create_task(post(n)) for n in range(1, waiting + 1)]
        await poll_until(
            lambda: gate.waiting == waiting,
            timeout=30,
            interval=0.005,
            message="the line of large bodies to fill",
        )
        refused = await asyncio.wait_for(post(waiting + 1), timeout=10)  # not in the line
        assert refused.status_code == 503
        assert _error(refused)["code"] == "overloaded"
        assert refused.headers["Retry-After"] == "1"
    finally:
        release.set()
    served = await asyncio.wait_for(asyncio.gather(first, *line), timeout=60)
    assert [response.status_code for response in served] == [201] * (waiting + 1)
    assert (await api.ej.stats())["by_status"]["queued"] == (waiting + 1) * per_batch
