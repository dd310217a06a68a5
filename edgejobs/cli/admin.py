"""``edgejobs prune``: retention on demand."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from edgejobs.cli import run_async
from edgejobs.cli.jobs import number_of, open_client
from edgejobs.models import MAX_RETENTION_DAYS


def register(subparsers: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add ``prune``."""
    prune = subparsers.add_parser(
        "prune",
        help="delete old terminal jobs now",
        description=(
            "Delete terminal jobs (with their attempts and events) that finished more than N"
            " days ago; N = 0 deletes every terminal job. A job whose child has not ended yet"
            " is kept. Default N: [retention] days."
        ),
    )
    common(prune)
    prune.add_argument("--older-than-days", metavar="N", type=_days, default=None)
    prune.set_defaults(handler=run_prune)


_days = number_of("days", MAX_RETENTION_DAYS)


def run_prune(args: argparse.Namespace) -> int:
    """``edgejobs prune``."""
    return run_async(_prune(args))


async def _prune(args: argparse.Namespace) -> int:
    async with open_client(args) as ej:
        report = await ej.prune(older_than_days=args.older_than_days)
    print(f"deleted {report.jobs} jobs and {report.events} events")
    return 0
