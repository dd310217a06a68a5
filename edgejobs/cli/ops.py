"""``edgejobs backup PATH``: an online, verified copy of the database.

(``edgejobs prune`` lives in :mod:`edgejobs.cli.admin`; it goes through ``EdgeJobs.prune``,
which vacuums and checkpoints afterwards so the file shrinks.)
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgejobs.cli.runner import app_from_args
from edgejobs.store.maintenance import backup_database


def register(subparsers: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add ``backup``."""
    backup = subparsers.add_parser(
        "backup",
        help="write an online, consistent copy of the database",
        description=(
            "Copy the database to PATH while the runner keeps working: one consistent snapshot"
            " (every job committed before the copy began), compacted, checked with PRAGMA"
            " integrity_check. PATH must not exist yet."
        ),
    )
    common(backup)
    backup.add_argument("path", metavar="PATH", type=Path, help="file to create")
    backup.set_defaults(handler=run_backup)


def format_bytes(count: int) -> str:
    """``1536`` -> ``1.5 KiB``."""
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def run_backup(args: argparse.Namespace) -> int:
    """``edgejobs backup PATH``."""
    ej = app_from_args(args)
    result = backup_database(ej.store.path, args.path, ej.store.pragmas)
    print(
        f"wrote {result.path}: {format_bytes(result.bytes)}, {result.jobs} jobs,"
        f" integrity ok ({result.seconds:.1f} s)"
    )
    if result.upgraded_from is not None:
        print(
            f"edgejobs: the database has schema version {result.upgraded_from} (an older"
            " edgejobs serves it); the copy was upgraded to this version's schema: restore it"
            " with this version",
            file=sys.stderr,
        )
    return 0
