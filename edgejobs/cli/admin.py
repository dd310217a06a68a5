"""``edgejobs prune``: retention on demand."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from edgejobs.cli import run_async
from edgejobs.cli.jobs import open_client
from edgejobs.models import MAX_RETENTION_DAYS as MAX_DAYS


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


def _days(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of days, got {text!r}") from None
    if not 0 <= value <= MAX_DAYS:  # (also refuses NaN and infinity)
        raise argparse.ArgumentTypeError(
            f"expected a number of days from 0 to {MAX_DAYS:.0f}, got {text!r}"
        )
    return value


def run_prune(args: argparse.Namespace) -> int:
    """``edgejobs prune``."""
    return run_async(_prune(args))


async def _prune(args: argparse.Namespace) -> int:
    async with open_client(args) as ej:
        report = await ej.prune(older_than_days=args.older_than_days)
    print(f"deleted {report.jobs} jobs and {report.events} events")
    return 0
