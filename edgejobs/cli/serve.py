"""``edgejobs serve [--host] [--port] [--demo]``: the web app and the runner in one process.

uvicorn runs inside this asyncio program (``Server.serve()``), so the HTTP server, the
workers, the ticks and the SSE broker share one event loop; the app's lifespan owns the
runner. Shutdown on SIGTERM or SIGINT:

1. at once: the SSE streams are closed (they would otherwise hold uvicorn's connection drain
   open until its timeout) and the runner stops claiming; running jobs keep running;
2. uvicorn stops listening and gives open requests up to :data:`HTTP_DRAIN_S` seconds;
3. the lifespan waits for running jobs up to ``[runner] shutdown_grace_s`` (requeuing the
   rest) and closes the database.

A second signal skips the HTTP drain and ends the grace at once: running jobs are interrupted
and requeued without spending a retry. (SIGKILL is safe too: the next start recovers what was
running, as lost attempts.)

Start-up: the signal handlers come first, so a signal while the runner starts stops it before
it claims anything (exit 0); the runner is started without its workers, which begin only once
uvicorn has bound the port — a port in use ends the command at once, with no job started.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import resource
import signal
import sys
from collections.abc import Callable, Iterator
from typing import Any

import uvicorn
from starlette.applications import Starlette

from edgejobs import demo
from edgejobs.api.app import begin_shutdown, create_app
from edgejobs.app import EdgeJobs
from edgejobs.cli.runner import (
    add_stop_handlers,
    app_from_args,
    remove_stop_handlers,
    run_abandoning,
)
from edgejobs.hosts import is_loopback
from edgejobs.logs import RepeatLimiter

log = logging.getLogger("edgejobs")

HTTP_DRAIN_S = 5.0
"""How long open HTTP requests may take to finish once a shutdown began."""

DEMO_DATABASE = "edgejobs-demo.db"
"""The demo's database when no database was chosen (never the user's real one)."""


def register(subparsers: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add ``serve``."""
    serve = subparsers.add_parser(
        "serve", help="run the web app (API, SSE, dashboard) and the runner in one process"
    )
    common(serve)
    serve.add_argument("--host", default=None, help="address to listen on ([server] host)")
    serve.add_argument("--port", type=int, default=None, help="TCP port ([server] port)")
    serve.add_argument(
        "--demo",
        action="store_true",
        help="register demo job types, create a demo org token and keep submitting demo jobs",
    )
    serve.set_defaults(handler=run_serve)


def _database_chosen(args: argparse.Namespace) -> bool:
    """Whether the user named a database: a config file (flag or variable) or EDGEJOBS_DB.

    An ``edgejobs.toml`` that merely sits in the current folder does not count (its other
    settings apply, its database does not), so the demo never writes its jobs into a real
    database by accident.
    """
    return bool(
        getattr(args, "config", None)
        or os.environ.get("EDGEJOBS_CONFIG")
        or os.environ.get("EDGEJOBS_DB")
    )


def run_serve(args: argparse.Namespace) -> int:
    """Load the configuration and serve until a signal."""
    overrides: dict[str, Any] = {"server.host": args.host, "server.port": args.port}
    if args.demo and not _database_chosen(args):
        overrides["database.path"] = DEMO_DATABASE
    ej = app_from_args(args, **overrides)
    if args.demo:
        demo.register(ej)
    # Like asyncio.run, but a handler task that swallows cancellation cannot keep the
    # process alive after SIGTERM.
    return run_abandoning(serve(ej, demo_mode=args.demo))


async def _end_skipped_lifespan(server: uvicorn.Server) -> None:
    """Let the app's lifespan end after a second signal made uvicorn skip its shutdown (that
    is uvicorn's ``force_exit``): its task would wait on until cancelled at exit, and log the
    cancellation as an error with a traceback. Its shutdown waits for the runner's stop,
    which the same signal cut short."""
    lifespan = getattr(server, "lifespan", None)
    done = getattr(lifespan, "shutdown_event", None)
    if lifespan is None or not isinstance(done, asyncio.Event) or done.is_set():
        return
    with contextlib.suppress(Exception):
        await lifespan.shutdown()


ACCEPT_FAILURE_REPORT_S = 10.0
"""How often a listening socket that cannot accept (no descriptor left) is reported."""


class _AcceptFailureReporter:
    """The event loop's exception handler while serving: asyncio's report that the listening
    socket could not accept a connection for want of a descriptor or memory becomes one
    warning line per :data:`ACCEPT_FAILURE_REPORT_S`; every other report goes on as before.

    asyncio reports that failure with a traceback for every ``accept()`` it tries, up to the
    listen backlog (uvicorn's: 2048) per turn of the loop, and tries again every second: at
    the open-file limit ``serve`` wrote thousands of tracebacks a second, and the loop spent
    its time writing them instead of serving the connections it had (an event stream's
    events waited until descriptors were free again).
    """

    def __init__(self, previous: Any) -> None:
        self._previous = previous
        self._repeats = RepeatLimiter(interval_s=ACCEPT_FAILURE_REPORT_S)

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """Report ``context`` (see the class docstring)."""
        exc = context.get("exception")
        if context.get("message") == "socket.accept() out of system resource" and isinstance(
            exc, OSError
        ):
            limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
            self._repeats.warning(
                log,
                "cannot accept new connections: %s (open-file limit %d); the open connections"
                " are still served, new ones wait until descriptors are free",
                exc.strerror or exc,
                limit,
            )
            return
        if isinstance(exc, ValueError) and "_start_serving" in repr(context.get("handle")):
            # After such a failure asyncio retries every accept it tried a second later; once
            # the server has closed its socket (a stop within that second), each retry fails
            # on the closed socket, with a traceback apiece: nothing is lost, say nothing.
            return
        if self._previous is not None:
            self._previous(loop, context)
        else:
            loop.default_exception_handler(context)


class _Server(uvicorn.Server):
    """uvicorn's server without its own signal handling: :func:`serve` installs handlers on
    the event loop that also begin the app's shutdown (uvicorn's would only stop HTTP, and
    re-raise the signal after serving, killing the process instead of exiting 0)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """No-op: see the class docstring."""
        yield


def _address(server: uvicorn.Server, host: str) -> str:
    port = server.config.port
    for listener in server.servers:
        for sock in listener.sockets:
            port = sock.getsockname()[1]
            break
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/"


async def _when_listening(server: uvicorn.Server, ej: EdgeJobs, demo_secret: str | None) -> None:
    """Once the port is bound: start the workers, and say where the server listens."""
    # uvicorn exposes only a flag for "listening", no event to wait on.
    while not server.started:  # noqa: ASYNC110
        await asyncio.sleep(0.02)
    if server.should_exit:
        return
    ej._start_workers()
    url = _address(server, ej.config.server.host)
    log.info("serving on %s (database %s)", url, ej.config.database.path)
    if demo_secret is not None:
        print(
            f"edgejobs demo: open {url} and sign in with this admin token of org "
            f"{demo.DEMO_ORG!r} (database {ej.config.database.path}):",
            flush=True,
        )
        print(demo_secret, flush=True)


async def serve(ej: EdgeJobs, *, demo_mode: bool = False) -> int:
    """Run the app and the runner until SIGTERM/SIGINT; returns the exit code."""
    loop = asyncio.get_running_loop()
    server: _Server | None = None
    app: Starlette | None = None
    background: list[asyncio.Task[None]] = []
    hurry: list[asyncio.Task[None]] = []  # a second signal's stop(grace_s=0)
    stopped_while_starting = False
    code = 0

    def on_signal(sig: signal.Signals) -> None:
        nonlocal stopped_while_starting
        if server is None or app is None:
            if not stopped_while_starting:
                log.info("%s while starting: stopping without running any job", sig.name)
            stopped_while_starting = True
            return
        if server.should_exit:
            if not server.force_exit:
                log.warning(
                    "%s again: not waiting for open HTTP requests nor the grace; interrupting"
                    " the running jobs now (they are requeued, no retry spent)",
                    sig.name,
                )
                server.force_exit = True
                # Not in `background`, which is cancelled as the serving ends: this must run.
                hurry.append(loop.create_task(ej.stop(grace_s=0)))
            return
        log.info(
            "%s: stopping; running jobs get up to %.0f s",
            sig.name,
            ej.config.runner.shutdown_grace_s,
        )
        server.should_exit = True
        background.append(loop.create_task(begin_shutdown(app)))

    # First thing: a signal during the start is a stop (exit 0), not death by SIGTERM's
    # default action or a KeyboardInterrupt in the middle of the start.
    add_stop_handlers(loop, on_signal)
    previous_handler = loop.get_exception_handler()
    loop.set_exception_handler(_AcceptFailureReporter(previous_handler))
    try:
        # Become the runner before binding the port: a second runner fails here, cleanly.
        # The workers start only once the port is bound (_when_listening): a port in use must
        # not start jobs, only to interrupt them after the shutdown grace.
        await ej.start(run_workers=False)
        if stopped_while_starting:
            return 0
        # The bound address decides the default Host allow-list (loopback names on loopback).
        app = create_app(ej, listen_host=ej.config.server.host)
        config = uvicorn.Config(
            app,
            host=ej.config.server.host,
            port=ej.config.server.port,
            lifespan="on",
            log_config=None,  # keep edgejobs' logging setup
            timeout_graceful_shutdown=int(HTTP_DRAIN_S),
            server_header=False,
            # The prefix a proxy strips: the app sees it as the ASGI root_path (the OpenAPI
            # document's server URL); the proxy's X-Forwarded-Proto is trusted from the
            # addresses in FORWARDED_ALLOW_IPS (uvicorn's default: loopback).
            root_path=ej.config.server.root_path,
        )
        server = _Server(config)
        if not is_loopback(ej.config.server.host):
            # edgejobs speaks plain HTTP only: off the loopback, every token, session cookie
            # and job crosses the network readable by anyone on the path. Said once, before
            # the port is bound (so it is in the log before any client can connect).
            log.warning(
                "listening on %s without TLS: tokens, session cookies and job data cross the"
                " network in clear text; put a TLS-terminating reverse proxy in front (and bind"
                " 127.0.0.1), or keep this network private",
                ej.config.server.host or "every interface",
            )
            if ej.config.server.allowed_hosts is None:
                # Off the loopback the unset list answers any Host (deployments behind a proxy
                # keep working), so nothing stops DNS rebinding: said once, with the fix.
                log.warning(
                    "[server] allowed_hosts is not set: answering requests for any host name;"
                    " set it to the names clients use (DNS rebinding, docs/http.md)"
                )
        secret = None
        if demo_mode:
            secret = await demo.create_token(ej)
            await demo.seed(ej)
            background.append(loop.create_task(demo.trickle(ej), name="edgejobs-demo"))
        background.append(loop.create_task(_when_listening(server, ej, secret)))
        try:
            await server.serve()
        except SystemExit:
            # uvicorn exits the process when it cannot listen (it logged why): end cleanly.
            print(
                f"edgejobs: could not serve on {ej.config.server.host}:{ej.config.server.port}",
                file=sys.stderr,
            )
            code = 1
    finally:
        remove_stop_handlers(loop)
        if server is not None and server.force_exit:
            await _end_skipped_lifespan(server)
        for task in background:
            task.cancel()
        for task in background:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if app is not None:
            # The lifespan closed everything unless uvicorn skipped it (failed start, second
            # signal): then finish the stop here.
            await begin_shutdown(app)
            if app.state.runner_stop is not None:
                await app.state.runner_stop
        await ej.close()
        for task in hurry:
            with contextlib.suppress(Exception):
                await task
        loop.set_exception_handler(previous_handler)
    return code
