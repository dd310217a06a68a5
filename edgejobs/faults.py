"""Test-only fault injection, driven by environment variables and inert unless they are set.

The reliability suite proves the guarantees of a runner by breaking a real one: it kills the
process just before or just after a chosen write transaction, or makes the database "full".
Both need to reach inside a subprocess (``edgejobs worker``, ``edgejobs submit``), so they are
read from the environment; nothing here runs, and no variable is even parsed, in a process
where they are not set. They are not configuration and are not documented for users.

``EDGEJOBS_TEST_CRASH_AT="before_commit:17"``
    the runner's writer ends the process with ``os._exit(137)`` (no cleanup, like SIGKILL)
    just before its 17th group commit (``after_commit:17``: just after it).
``EDGEJOBS_TEST_COMMIT_LOG="PATH"``
    the runner's writer appends the number of every group commit it made to PATH, one per
    line (how the suite learns how many writes a workload takes).
``EDGEJOBS_TEST_MAX_PAGE_COUNT="N"``
    every write connection gets ``PRAGMA max_page_count = N``: once the file has N pages
    (SQLite never lowers the limit below the current size), writes that need a new page fail
    with SQLITE_FULL, as on a full disk.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from typing import Protocol

CRASH_VAR = "EDGEJOBS_TEST_CRASH_AT"
PAGES_VAR = "EDGEJOBS_TEST_MAX_PAGE_COUNT"
COMMIT_LOG_VAR = "EDGEJOBS_TEST_COMMIT_LOG"
CRASH_EXIT_CODE = 137
"""The exit status of a process ended by the crash hook (what a shell shows after SIGKILL)."""

STAGES = ("before_commit", "after_commit")


class _HasFaultHook(Protocol):
    fault_hook: Callable[[str, int], None] | None


def parse_crash_point(text: str) -> tuple[str, int]:
    """``"before_commit:17"`` → ``("before_commit", 17)`` (ValueError when malformed)."""
    stage, _, number = text.partition(":")
    if stage not in STAGES or not number.isdigit() or int(number) < 1:
        raise ValueError(f"{CRASH_VAR} must look like before_commit:N or after_commit:N (N >= 1)")
    return stage, int(number)


def crash_hook(stage: str, commit: int) -> Callable[[str, int], None]:
    """A writer fault hook that ends the process at ``(stage, commit)``."""

    def hook(current_stage: str, current_commit: int) -> None:
        if current_stage == stage and current_commit == commit:
            os._exit(CRASH_EXIT_CODE)

    return hook


def commit_logger(path: str) -> Callable[[str, int], None]:
    """A writer fault hook that appends every commit's number to the file at ``path``."""

    def hook(stage: str, commit: int) -> None:
        if stage == "after_commit":
            with open(path, "a", encoding="utf-8") as handle:
                handle.write(f"{commit}\n")

    return hook


def install_crash_hook(writer: _HasFaultHook) -> None:
    """Arm the writer's ``fault_hook`` from ``EDGEJOBS_TEST_CRASH_AT`` and
    ``EDGEJOBS_TEST_COMMIT_LOG`` (only when one of them is set)."""
    crash_at, log_path = os.environ.get(CRASH_VAR), os.environ.get(COMMIT_LOG_VAR)
    if not crash_at and not log_path:
        return
    hooks = [commit_logger(log_path)] if log_path else []
    if crash_at:
        hooks.append(crash_hook(*parse_crash_point(crash_at)))

    def hook(stage: str, commit: int) -> None:
        for each in hooks:
            each(stage, commit)

    writer.fault_hook = hook


def limit_pages(conn: sqlite3.Connection) -> None:
    """Apply ``EDGEJOBS_TEST_MAX_PAGE_COUNT`` to a write connection (only when it is set)."""
    text = os.environ.get(PAGES_VAR)
    if not text:
        return
    # A validated integer, never user input: PRAGMA arguments cannot be bound parameters.
    conn.execute(f"PRAGMA max_page_count = {int(text)}")


__all__ = [
    "COMMIT_LOG_VAR",
    "CRASH_EXIT_CODE",
    "CRASH_VAR",
    "PAGES_VAR",
    "commit_logger",
    "crash_hook",
    "install_crash_hook",
    "limit_pages",
    "parse_crash_point",
]
