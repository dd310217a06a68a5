"""``edgejobs init`` and ``edgejobs worker``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import logging
import os
import signal
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from edgejobs.app import EdgeJobs
from edgejobs.config import config_path, default_config_text, load_config
from edgejobs.store.db import PRIVATE_FILE_MODE

log = logging.getLogger("edgejobs")


def app_from_args(args: argparse.Namespace, **overrides: Any) -> EdgeJobs:
    """An :class:`EdgeJobs` from ``--config`` (and the environment) plus flag overrides."""
    config = load_config(getattr(args, "config", None), overrides=overrides or None)
    make_project_importable(config.source)
    return EdgeJobs(config=config)


def make_project_importable(config_file: Path | None) -> None:
    """Put the config file's folder and the current folder first on the import path, so that
    ``handler = "myapp.jobs:build"`` finds the ``myapp`` beside ``edgejobs.toml``.

    The console script does not (unlike ``python -m edgejobs``): a project's own handlers
    could not be imported by ``edgejobs serve`` run in the project's folder, while Celery and
    RQ workers import from there. The config file's folder comes first: a service started
    with ``--config /srv/app/edgejobs.toml`` from ``/`` finds its project too. A handler's
    child process (``isolation = "process"``) inherits the path.
    """
    folders = [str(config_file.parent)] if config_file is not None else []
    folders.append(os.getcwd())
    for folder in reversed(dict.fromkeys(folders)):
        if folder not in sys.path:
            sys.path.insert(0, folder)


def register(subparsers: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add ``init`` and ``worker``."""
    init = subparsers.add_parser("init", help="write a commented edgejobs.toml")
    common(init)
    init.set_defaults(handler=run_init)

    worker = subparsers.add_parser("worker", help="run the workers and ticks (no HTTP)")
    common(worker)
    worker.add_argument("--workers", type=int, default=None, help="override [runner] workers")
    worker.set_defaults(handler=run_worker)


def run_init(args: argparse.Namespace) -> int:
    """Write the default config where every other command looks for it (``--config``, else
    ``$EDGEJOBS_CONFIG``, else ``./edgejobs.toml``); never overwrite an existing file.

    The file is created readable by its owner only, like the database: it may come to hold
    ``[server] metrics_token``.
    """
    target = config_path(getattr(args, "config", None))
    try:
        # O_EXCL: an existing file is never overwritten (FileExistsError below).
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE)
        with open(fd, "w", encoding="utf-8") as handle:
            handle.write(default_config_text())
    except FileExistsError:
        print(f"edgejobs: {target} already exists; not overwriting it", file=sys.stderr)
        return 1
    except OSError as exc:  # a missing folder, no permission, a read-only disk
        print(f"edgejobs: cannot write {target}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    print(f"wrote {target}")
    return 0


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
"""A graceful stop: SIGHUP too (the terminal or SSH session of a runner started by hand
closed), whose default action had killed the runner at once, its running jobs recovered as
lost attempts at the next start."""


def add_stop_handlers(loop: asyncio.AbstractEventLoop, callback: Callable[..., None]) -> None:
    """Call ``callback(sig)`` on SIGTERM, SIGINT and SIGHUP (where the loop can: not on Windows, nor
    from a thread other than the main one, as when a test runs a command in a thread)."""
    for sig in STOP_SIGNALS:
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, callback, sig)


def remove_stop_handlers(loop: asyncio.AbstractEventLoop) -> None:
    """Undo :func:`add_stop_handlers`."""
    for sig in STOP_SIGNALS:
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.remove_signal_handler(sig)


class StopSignals:
    """SIGTERM, SIGINT and SIGHUP as a stop request, from before the runner starts until the process
    exits (the handlers are left on the event loop, whose close removes them).

    The first signal stops claiming and gives running jobs ``[runner] shutdown_grace_s``; a
    second one ends the grace at once (the running jobs are interrupted and requeued without
    spending a retry), as a second Ctrl-C does in Celery: better than the SIGKILL an operator
    reaches for next, after which the next start recovers them as lost attempts.

    Installed first thing, so that a signal while the runner starts (a slow handler import,
    the recovery of a dead runner's jobs, a locked database) is a stop like any other: the
    start completes, no job is claimed, and the process exits 0 — rather than dying of the
    signal's default action (SIGTERM) or a ``KeyboardInterrupt`` somewhere in the start.
    """

    def __init__(self, ej: EdgeJobs) -> None:
        self.ej = ej
        self.requested = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._hurry: asyncio.Task[None] | None = None  # the second signal's stop(grace_s=0)

    def __enter__(self) -> StopSignals:
        add_stop_handlers(self._loop, self._on_signal)
        return self

    def __exit__(self, *exc: object) -> None:
        # The handlers stay until the event loop closes (:func:`run_abandoning` replaces them):
        # removed here, a signal in the moments before the process exits found SIGINT's
        # KeyboardInterrupt (exit 130) or SIGTERM's default action (death by the signal).
        if self._hurry is not None and self._hurry.done() and not self._hurry.cancelled():
            self._hurry.exception()  # reported by the stop itself; not "never retrieved"

    def _on_signal(self, sig: signal.Signals) -> None:
        grace = self.ej.config.runner.shutdown_grace_s
        if not self.requested.is_set():
            self.requested.set()
            if self.ej.is_runner:
                log.info(
                    "%s: stopping; no new claims, running jobs get up to %.0f s", sig.name, grace
                )
            else:
                log.info("%s while starting: stopping without running any job", sig.name)
            return
        if self._hurry is None and self.ej.is_runner:
            log.warning(
                "%s again: not waiting for the grace; interrupting the running jobs now (they"
                " are requeued, no retry spent)",
                sig.name,
            )
            self._hurry = self._loop.create_task(self.ej.stop(grace_s=0))
        else:
            log.warning("%s again: already stopping", sig.name)


def run_worker(args: argparse.Namespace) -> int:
    """Run the runner in this process until a signal."""
    overrides = {"runner.workers": args.workers} if args.workers is not None else {}
    ej = app_from_args(args, **overrides)

    async def main() -> int:
        with StopSignals(ej) as signals:
            try:
                await ej.start(run_workers=False)
                if not signals.requested.is_set():
                    ej._start_workers()
                    log.info(
                        "worker running on %s with %d workers (pid %d)",
                        ej.config.database.path,
                        ej.config.runner.workers,
                        os.getpid(),
                    )
                    await signals.requested.wait()
            finally:
                await ej.close()
        return 0

    return run_abandoning(main())


EXIT_GRACE_S = 2.0


def run_abandoning(main: Coroutine[Any, Any, int], grace_s: float = EXIT_GRACE_S) -> int:
    """Like :func:`asyncio.run`, except that tasks still ignoring cancellation ``grace_s``
    after the runner closed are left behind instead of waited for.

    Why: an async handler that swallows ``CancelledError`` is abandoned at its timeout, and
    its task lives on; ``asyncio.run`` would wait for it forever at exit, so SIGTERM would
    never end the process. By then the database is closed and every outcome written.

    SIGTERM or SIGINT during that wait (a second Ctrl-C, a late SIGTERM) ends it at once, and
    the exit code stays ``main``'s.
    """
    loop = asyncio.new_event_loop()
    try:
        asyncio.set_event_loop(loop)
        result = loop.run_until_complete(main)
        # Handlers of our own until the loop closes: without one, SIGINT raised a
        # KeyboardInterrupt out of the wait below (exit 130) and SIGTERM killed the process.
        over: asyncio.Future[None] = loop.create_future()  # every task ended, or a signal
        add_stop_handlers(loop, functools.partial(_exit_now, over))
        left = [task for task in asyncio.all_tasks(loop) if not task.done()]
        for task in left:
            task.cancel()
        if left:

            def ended(_: asyncio.Task[Any]) -> None:
                if not over.done() and all(task.done() for task in left):
                    over.set_result(None)

            for task in left:
                task.add_done_callback(ended)
            loop.run_until_complete(asyncio.wait([over], timeout=grace_s))
            pending = [task for task in left if not task.done()]
            if pending:
                log.warning(
                    "exiting without %d task(s) that ignored cancellation: %s",
                    len(pending),
                    ", ".join(sorted(task.get_name() for task in pending)),
                )
                for task in pending:
                    # Said once above; asyncio would add an error per task at interpreter exit.
                    setattr(task, "_log_destroy_pending", False)  # noqa: B010
        loop.run_until_complete(loop.shutdown_asyncgens())
        return result
    finally:
        asyncio.set_event_loop(None)
        loop.close()


def _exit_now(over: asyncio.Future[None], sig: signal.Signals) -> None:
    """A stop signal once the runner has closed: stop waiting for tasks and exit."""
    if not over.done():
        over.set_result(None)
        log.warning("%s again: already stopped; exiting now", sig.name)
