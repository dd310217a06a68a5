"""A stream's life: keep-alives, closing on revocation or an ended session, and a server
shutdown that never waits on open streams."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from pathlib import Path

import httpx
import pytest
from ej_testkit import free_port
from sse_support import (
    GUARD_S,
    REPO,
    Serve,
    Stream,
    client,
    is_final,
    make_config,
    make_token,
    open_stream,
    revoke,
    wait_for,
)

from edgejobs import EdgeJobs
from edgejobs.api import events as api_events
from edgejobs.app import JobSpec


async def test_idle_stream_gets_keepalive_comments(serve: Serve) -> None:
    server = await serve(make_config(keepalive_s=0.1))
    token = await make_token(server.ej, "acme")
    async with client() as http, open_stream(http, server, token) as stream:
        reader = asyncio.create_task(stream.next())
        await wait_for(lambda: stream.comments.count("keep-alive") >= 3, "keep-alive comments")
        assert not reader.done()  # comments only: no event
        reader.cancel()


async def test_revoking_the_token_closes_the_stream(serve: Serve) -> None:
    server = await serve(make_config(keepalive_s=0.2))
    ej = server.ej
    token = await make_token(ej, "acme")
    other = await make_token(ej, "acme")
    async with client() as http:
        async with (
            open_stream(http, server, token) as doomed,
            open_stream(http, server, other) as survivor,
        ):
            job = await ej.submit("quick", org="acme")
            await doomed.until(is_final(job.id))
            await revoke(ej, token)
            rest = await doomed.until_end()  # ends within one keep-alive interval
            assert rest == []
            assert any("token was revoked" in c for c in doomed.comments)
            # The other token's stream is untouched.
            job2 = await ej.submit("quick", org="acme")
            await survivor.until(is_final(job2.id))
            assert server.broker.subscriber_count == 1
        # Reconnecting with the revoked token is refused.
        async with open_stream(http, server, token, expect=401):
            pass


async def test_a_revoked_token_ends_its_stream_however_long_the_keepalive(
    serve: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``edgejobs token revoke`` (another process) is heard of only by a stream's credentials
    check, which ran once per ``keepalive_s``: with an hour there, a revoked token went on
    receiving its org's events for an hour. The check runs at least every
    ``CREDENTIALS_CHECK_MAX_S`` (made short here)."""
    monkeypatch.setattr(api_events, "CREDENTIALS_CHECK_MAX_S", 0.2)
    server = await serve(make_config(keepalive_s=3600))
    ej = server.ej
    token = await make_token(ej, "acme")
    async with client() as http, open_stream(http, server, token) as doomed:
        job = await ej.submit("quick", org="acme")
        await doomed.until(is_final(job.id))
        await revoke(ej, token)
        assert await doomed.until_end() == []  # within GUARD_S, not an hour
        assert any("token was revoked" in c for c in doomed.comments)
        assert "keep-alive" not in doomed.comments  # the check sends nothing while it stands


async def test_ending_the_session_closes_a_cookie_stream(serve: Serve) -> None:
    server = await serve(make_config(keepalive_s=0.2))
    token = await make_token(server.ej, "acme")
    async with client(base_url=server.base_url) as http:
        login = await http.post("/login", json={"token": token.secret})
        assert login.status_code == 200, login.text
        csrf = login.json()["csrf_token"]
        async with http.stream("GET", "/api/v1/events") as response:
            assert response.status_code == 200
            stream = Stream(response)
            job = await server.ej.submit("quick", org="acme")
            await stream.until(is_final(job.id))
            logout = await http.post("/logout", headers={"X-CSRF-Token": csrf})
            assert logout.status_code in (200, 204), logout.text
            assert await stream.until_end() == []
            assert any("session ended" in c for c in stream.comments)


async def test_logout_closes_its_sessions_streams_at_once(serve: Serve) -> None:
    """A logout ended the session's streams only at their next credentials check, as far as
    ``keepalive_s`` away (up to an hour): meanwhile the signed-out browser went on receiving
    the org's events. Now they end at once; another session of the same token stays open."""
    server = await serve(make_config(keepalive_s=3600))
    token = await make_token(server.ej, "acme")
    async with (
        client(base_url=server.base_url) as leaving,
        client(base_url=server.base_url) as staying,
    ):
        csrf = ""
        for http in (leaving, staying):
            login = await http.post("/login", json={"token": token.secret})
            assert login.status_code == 200, login.text
            csrf = csrf or login.json()["csrf_token"]
        async with (
            leaving.stream("GET", "/api/v1/events") as ended,
            staying.stream("GET", "/api/v1/events") as kept,
        ):
            doomed, survivor = Stream(ended), Stream(kept)
            job = await server.ej.submit("quick", org="acme")
            await doomed.until(is_final(job.id))
            await survivor.until(is_final(job.id))
            logout = await leaving.post("/logout", headers={"X-CSRF-Token": csrf})
            assert logout.status_code == 200, logout.text
            assert await doomed.until_end() == []  # the keep-alive check is an hour away
            assert any("session ended" in c for c in doomed.comments)
            job2 = await server.ej.submit("quick", org="acme")
            await survivor.until(is_final(job2.id))
            assert server.broker.subscriber_count == 1


async def test_shutdown_with_50_open_streams_completes_within_the_grace_time(
    serve: Serve,
) -> None:
    grace_s = 5.0
    server = await serve(make_config(shutdown_grace_s=grace_s))
    ej = server.ej
    tokens = [await make_token(ej, org) for org in ("acme", "globex")]
    tokens.append(await make_token(ej, None))
    ended: list[bool] = []
    opened = asyncio.Event()

    async with client() as http:

        async def hold(index: int) -> None:
            async with open_stream(http, server, tokens[index % 3]) as stream:
                if server.broker.subscriber_count >= 50:
                    opened.set()
                await stream.until_end()
                ended.append(stream.ended)

        tasks = [asyncio.create_task(hold(i)) for i in range(50)]
        async with asyncio.timeout(GUARD_S):
            await opened.wait()
        # Busy streams, not idle ones: events are flowing when the server is told to stop.
        await ej.submit_many([JobSpec("steps", "acme", {"steps": [50]}) for _ in range(20)])
        started = time.monotonic()
        await server.stop()
        took = time.monotonic() - started
        async with asyncio.timeout(GUARD_S):
            await asyncio.gather(*tasks)

    assert took < grace_s, f"shutdown took {took:.1f} s with 50 open streams"
    assert ended == [True] * 50
    assert server.broker.subscriber_count == 0
    assert not server.broker.running


async def test_sigterm_to_edgejobs_serve_with_50_open_streams_exits_promptly(
    tmp_path: Path,
) -> None:
    grace_s = 5.0
    port = free_port()
    config = tmp_path / "edgejobs.toml"
    config.write_text(
        f'[database]\npath = "jobs.db"\n[server]\nport = {port}\n'
        f"[runner]\nshutdown_grace_s = {grace_s}\n[events]\nmax_streams_per_token = 0\n"
    )
    ej = EdgeJobs(database=tmp_path / "jobs.db")
    await ej.open()
    token = await make_token(ej, "acme")
    await ej.close()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "edgejobs",
        "serve",
        "--config",
        str(config),
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    ended: list[bool] = []
    try:
        async with client() as http:
            async with asyncio.timeout(GUARD_S):
                while True:
                    with contextlib.suppress(httpx.TransportError):
                        if (await http.get(base + "/healthz")).status_code == 200:
                            break
                    await asyncio.sleep(0.05)
            opened = asyncio.Semaphore(0)

            async def hold() -> None:
                headers = token.headers
                async with http.stream("GET", base + "/api/v1/events", headers=headers) as r:
                    assert r.status_code == 200
                    stream = Stream(r)
                    opened.release()
                    await stream.until_end()
                    ended.append(stream.ended)

            tasks = [asyncio.create_task(hold()) for _ in range(50)]
            async with asyncio.timeout(GUARD_S):
                for _ in range(50):
                    await opened.acquire()
            started = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            async with asyncio.timeout(GUARD_S):
                code = await proc.wait()
            took = time.monotonic() - started
            async with asyncio.timeout(GUARD_S):
                await asyncio.gather(*tasks)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    stderr = (await proc.stderr.read()).decode() if proc.stderr else ""
    assert code == 0, stderr
    assert took < grace_s, f"serve took {took:.1f} s to stop with 50 open streams"
    assert ended == [True] * 50
