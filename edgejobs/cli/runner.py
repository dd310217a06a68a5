"""``edgejobs init`` and ``edgejobs worker``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from edgejobs.app import EdgeJobs
from edgejobs.config import config_path, default_config_text, load_config

log = logging.getLogger("edgejobs")


def app_from_args(args: argparse.Namespace, **overrides: Any) -> EdgeJobs:
    """An :class:`EdgeJobs` from ``--config`` (and the environment) plus flag overrides."""
    config = load_config(getattr(args, "config", None), overrides=overrides or None)
    return EdgeJobs(config=config)


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
    ``$EDGEJOBS_CONFIG``, else ``./edgejobs.toml``); never overwrite an existing file."""
    target = config_path(getattr(args, "config", None))
    try:
        with target.open("x", encoding="utf-8") as handle:
            handle.write(default_config_text())
    except FileExistsError:
        print(f"edgejobs: {target} already exists; not overwriting it", file=sys.stderr)
        return 1
    except OSError as exc:  # a missing folder, no permission, a read-only disk
        print(f"edgejobs: cannot write {target}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    print(f"wrote {target}")
    return 0


async def serve_until_signal(ej: EdgeJobs) -> None:
    """Run until SIGTERM or SIGINT, then shut down gracefully."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info(
        "stopping: no new claims; waiting up to %.0f s for running jobs",
        ej.config.runner.shutdown_grace_s,
    )


def run_worker(args: argparse.Namespace) -> int:
    """Run the runner in this process until a signal."""
    overrides = {"runner.workers": args.workers} if args.workers is not None else {}
    ej = app_from_args(args, **overrides)

    async def main() -> int:
        await ej.start()
        log.info(
            "worker running on %s with %d workers (pid %d)",
            ej.config.database.path,
            ej.config.runner.workers,
            __import__("os").getpid(),
        )
        try:
            await serve_until_signal(ej)
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
    """
    loop = asyncio.new_event_loop()
    try:
        asyncio.set_event_loop(loop)
        result = loop.run_until_complete(main)
        left = [task for task in asyncio.all_tasks(loop) if not task.done()]
        for task in left:
            task.cancel()
        if left:
            _, pending = loop.run_until_complete(asyncio.wait(left, timeout=grace_s))
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
