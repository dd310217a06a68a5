"""Many subscribers: all of them get every event; one that stops reading is disconnected and
the server's buffering stays bounded."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket

import pytest
from sse_support import (
    GUARD_S,
    SSE,
    Serve,
    client,
    is_final,
    make_config,
    make_token,
    open_stream,
    wait_for,
)

from edgejobs import EdgeJobs, Job
from edgejobs.api.events import transport_of
from edgejobs.app import JobSpec


async def test_200_concurrent_subscribers_all_receive_the_final_event(serve: Serve) -> None:
    server = await serve()
    ej = server.ej
    token = await make_token(ej, "acme")
    subscribers = 200
    opened = asyncio.Event()
    results: list[list[int]] = []

    async with client() as http:

        async def subscribe(final: asyncio.Future[str]) -> None:
            async with open_stream(http, server, token) as stream:
                if server.broker.subscriber_count >= subscribers:
                    opened.set()
                job_id = await final
                seen = await stream.until(is_final(job_id))
                results.append([e.id for e in seen if e.id is not None])

        final: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        tasks = [asyncio.create_task(subscribe(final)) for _ in range(subscribers)]
        async with asyncio.timeout(GUARD_S):
            await opened.wait()
        job = await ej.submit("steps", org="acme", params={"steps": [10, 20, 30, 40, 50]})
        final.set_result(job.id)
        async with asyncio.timeout(GUARD_S):
            await asyncio.gather(*tasks)

    assert len(results) == subscribers
    # Everyone saw the same events, in the same order.
    assert all(ids == results[0] for ids in results)
    assert len(results[0]) == 8  # queued, running, 5 x progress, completed
    await wait_for(lambda: server.broker.subscriber_count == 0, "streams to be released")


def _raw_stream(port: int, secret: str) -> socket.socket:
    """A client that sends the request, then never reads: with a tiny receive buffer the
    server soon cannot write to it at all."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(
        (
            "GET /api/v1/events HTTP/1.1\r\n"
            f"Host: 127.0.0.1:{port}\r\n"
            f"Authorization: Bearer {secret}\r\n"
            "Accept: text/event-stream\r\n\r\n"
        ).encode()
    )
    return sock


async def _big_progress_round(ej: EdgeJobs) -> list[Job]:
    """50 jobs that each report progress with a 1 kB message: big events, fast."""
    return await ej.submit_many(
        [JobSpec("steps", "acme", {"steps": [50], "message": "x" * 1000}) for _ in range(50)]
    )


async def test_a_subscriber_that_stops_reading_is_disconnected_and_buffering_is_bounded(
    serve: Serve,
) -> None:
    buffer = 20
    server = await serve(make_config(buffer=buffer))
    ej = server.ej
    broker = server.broker
    token = await make_token(ej, "acme")
    stalled = _raw_stream(server.port, token.secret)
    stalled.setblocking(False)
    loop = asyncio.get_running_loop()
    try:
        async with client() as http, open_stream(http, server, token) as healthy:
            await wait_for(lambda: broker.subscriber_count == 2, "both streams to subscribe")
            subscribers = broker.subscribers()
            marker: asyncio.Future[str] = loop.create_future()
            completed: set[str] = set()

            def read_along(event: SSE) -> bool:
                if event.event == "job" and event.data["status"] == "completed":
                    completed.add(event.data["id"])
                return marker.done() and is_final(marker.result())(event)

            # The healthy client keeps reading all along, up to a marker job sent at the end.
            reader = asyncio.create_task(healthy.until(read_along))
            # Big progress events (1 kB messages) until the stalled client is disconnected:
            # its socket buffers fill up first, then its bounded queue in the broker.
            largest_queue = 0
            rounds = 0
            while broker.subscriber_count == 2:
                rounds += 1
                assert rounds < 300, "the stalled subscriber was never disconnected"
                jobs = await _big_progress_round(ej)
                largest_queue = max([largest_queue, *broker.queue_sizes()])
                # The healthy client has read this round before the next one: only the stalled
                # client falls behind. (Unpaced, a reader slower than the runner fell behind
                # too and was disconnected after the stalled one, on a busy machine.)
                await wait_for(
                    lambda last=jobs[-1].id: last in completed or broker.subscriber_count < 2,
                    "the healthy client to read this round's events",
                )
            closed = [s for s in subscribers if s.closed]
            assert len(closed) == 1 and broker.disconnected == 1
            assert closed[0].qsize == 0  # its queue was released at once
            assert largest_queue <= buffer
            assert broker.subscriber_count == 1  # the healthy stream is still served
            job = await ej.submit("quick", org="acme")
            marker.set_result(job.id)
            async with asyncio.timeout(GUARD_S):
                seen = await reader
            assert seen[-1].data["id"] == job.id
            # The server ended the stalled connection: the client reads the end of the stream
            # after the bytes it managed to send, or a reset once the server gave up on it.
            with contextlib.suppress(ConnectionResetError):
                async with asyncio.timeout(GUARD_S):
                    while await loop.sock_recv(stalled, 65536):
                        pass
    finally:
        stalled.close()


async def test_the_connection_of_a_client_that_never_reads_again_is_cut(
    serve: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    """Disconnecting a stalled stream must release its connection: closing it politely waits
    until the bytes buffered for it are written, which a client that never reads never lets
    happen (its socket, and megabytes for it, stayed for as long as the client liked). The
    server says so once, as a warning, and not also as an error of the app's."""
    server = await serve(make_config(buffer=20))
    ej, broker = server.ej, server.broker
    connections = server.server.server_state.connections
    token = await make_token(ej, "acme")
    stalled = _raw_stream(server.port, token.secret)
    stalled.setblocking(False)
    loop = asyncio.get_running_loop()
    # uvicorn's own logger does not propagate to the root logger here: listen to it directly.
    uvicorn_log = logging.getLogger("uvicorn.error")
    uvicorn_log.addHandler(caplog.handler)
    try:
        await wait_for(lambda: broker.subscriber_count == 1, "the stream to subscribe")
        rounds = 0
        while broker.subscriber_count == 1:
            rounds += 1
            assert rounds < 300, "the stalled subscriber was never disconnected"
            for job in await _big_progress_round(ej):
                await ej.wait(job.id, timeout=GUARD_S)
        assert broker.disconnected == 1
        # The client still has not read a byte: the server lets go of the connection anyway.
        await wait_for(lambda: not connections, "the server to drop the stalled connection")
        received = 0
        with contextlib.suppress(ConnectionResetError):
            async with asyncio.timeout(GUARD_S):
                while chunk := await loop.sock_recv(stalled, 65536):
                    received += len(chunk)
        # What was still buffered for it on the server was dropped, not delivered.
        assert received < 256 * 1024, received
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert not errors, errors
    finally:
        uvicorn_log.removeHandler(caplog.handler)
        stalled.close()


class _LoopTransport:
    """A transport shaped like uvloop's (the loop of ``uvicorn[standard]``): asyncio's
    transport methods, but not a subclass of ``asyncio.Transport``."""

    def __init__(self) -> None:
        self.aborted = False

    def get_extra_info(self, name: str, default: object = None) -> object:
        return default

    def abort(self) -> None:
        self.aborted = True


class _Cycle:
    """Where uvicorn keeps the transport: on the object whose method is the ASGI ``send``."""

    def __init__(self, transport: object) -> None:
        self.transport = transport

    async def send(self, message: object) -> None:
        pass


def test_the_connection_is_found_on_a_transport_not_derived_from_asyncio() -> None:
    """Under uvloop the stalled stream's connection was never cut: its transport was looked
    for by class, and uvloop's transports are not ``asyncio.Transport`` subclasses."""
    transport = _LoopTransport()
    send = _Cycle(transport).send

    async def middleware_send(message: object) -> None:  # a middleware's wrapper
        await send(message)

    assert transport_of(middleware_send) is transport
    assert transport_of(_Cycle(object()).send) is None
