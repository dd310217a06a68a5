"""The live progress display of ``edgejobs submit --wait``.

The CLI is a separate process from the runner, so it follows the job through the database: it
re-reads the job whenever another process commits (``PRAGMA data_version``, noticed within
about 50 ms) and at least every ``refresh_s`` so the ETA keeps counting down. No HTTP needed.

On a terminal it redraws one line (bar, percent, status, ETA, message); when stdout is not a
terminal it prints a plain line (with the ETA) whenever the status, progress or message
changes. The last
line on stdout is the final status; an error or cancel reason goes to stderr. The exit code
is 0 only when the job completed.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from edgejobs.logs import escape
from edgejobs.models import Job, Status
from edgejobs.runner.lock import runner_elsewhere
from edgejobs.store.db import WriteTx

if TYPE_CHECKING:
    from edgejobs.app import EdgeJobs

BAR_WIDTH = 24
MIN_READ_INTERVAL_S = 0.1
"""At most this many reads of the job per second, however busy the database is."""


def format_eta(seconds: float | None) -> str:
    """``12s``, ``3m05s``, ``1h02m``; empty when there is no estimate."""
    if seconds is None:
        return ""
    total = max(0, round(seconds))
    if total < 60:
        return f"{total}s"
    if total < 3600:
        return f"{total // 60}m{total % 60:02d}s"
    return f"{total // 3600}h{total % 3600 // 60:02d}m"


def describe(job: Job) -> str:
    """Percent, status, ETA and message of a job, for one line."""
    parts = [f"{job.progress:5.1f}%", job.status.value]
    eta = format_eta(job.eta_s)
    if eta and not job.is_terminal:
        parts.append(f"ETA {eta}")
    if job.progress_message:
        parts.append(escape(job.progress_message))  # a handler's text, never raw to a tty
    return "  ".join(parts)


def bar_line(job: Job, width: int) -> str:
    """The terminal line: ``[#####-----] 45.0%  running  ETA 12s  message``, cut to ``width``."""
    filled = round(BAR_WIDTH * max(0.0, min(100.0, job.progress)) / 100)
    line = "[" + "#" * filled + "-" * (BAR_WIDTH - filled) + "] " + describe(job)
    line = " ".join(line.split("\n"))
    return line[: max(10, width - 1)]


class _Changes:
    """Set when the database may hold news about the job."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        self.event = asyncio.Event()
        self.active = True

    def on_foreign(self) -> None:
        if self.active:
            self.event.set()

    def on_commit(self, tx: WriteTx) -> None:
        # Same process (tests, or a runner embedding the CLI helper): our own commits.
        if self.active and (tx.events or self.job_id in tx.jobs_changed):
            self.event.set()


NO_RUNNER_HINT_AFTER_S = 2.0
"""How long a followed job may stay ``queued`` before the command looks for a runner."""


def _no_runner_hint(ej: EdgeJobs, job: Job) -> str | None:
    """What to say of a job still ``queued`` with no runner on its database (else it waits
    at "queued" for good, and says nothing of why); None when a runner is there."""
    if job.status is not Status.QUEUED or ej.is_runner or _runner_may_be_there(ej.store.path):
        return None
    return (
        f"edgejobs: no runner is using {ej.store.path}: the job starts once"
        " `edgejobs serve` or `edgejobs worker` runs on it"
    )


async def follow_job(
    ej: EdgeJobs,
    job_id: str,
    *,
    out: TextIO | None = None,
    err: TextIO | None = None,
    tty: bool | None = None,
    refresh_s: float = 1.0,
) -> int:
    """Show the job's progress until it ends; return 0 if it completed, 1 otherwise."""
    out = out or sys.stdout
    err = err or sys.stderr
    if tty is None:
        tty = out.isatty()
    changes = _Changes(job_id)
    ej.add_foreign_listener(changes.on_foreign)
    ej.add_commit_listener(changes.on_commit)
    loop = asyncio.get_running_loop()
    shown = ""  # what is on screen (terminal) or the last change printed (log)
    hint_at: float | None = loop.time() + NO_RUNNER_HINT_AFTER_S
    try:
        while True:
            changes.event.clear()
            read_at = loop.time()
            job = await ej.get(job_id)
            if tty:
                width = shutil.get_terminal_size((80, 20)).columns
                line = bar_line(job, width)
                if line != shown:
                    out.write("\r\x1b[2K" + line)
                    out.flush()
                shown = line
            else:
                # A log gets a line per change of status, progress or message, not per tick
                # of the ETA countdown.
                key = repr((job.status, job.progress, job.progress_message))
                if key != shown:
                    out.write(describe(job) + "\n")
                    out.flush()
                shown = key
            if job.is_terminal:
                break
            if hint_at is not None and loop.time() >= hint_at:
                hint_at = None
                hint = _no_runner_hint(ej, job)
                if hint is not None:
                    if tty and shown:
                        out.write("\n")
                        shown = ""
                    err.write(hint + "\n")
                    err.flush()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(refresh_s):
                    await changes.event.wait()
            # A busy database commits many times a second: read at most every 0.1 s.
            pause = MIN_READ_INTERVAL_S - (loop.time() - read_at)
            if pause > 0:
                await asyncio.sleep(pause)
    finally:
        changes.active = False
        if tty and shown:
            out.write("\n")
            out.flush()
    out.write(job.status.value + "\n")
    out.flush()
    if job.status is Status.COMPLETED:
        return 0
    if job.error is not None:
        err.write(escape(f"edgejobs: job {job_id}: {job.error.type}: {job.error.message}") + "\n")
    elif job.cancel_reason:
        err.write(escape(f"edgejobs: job {job_id}: {job.cancel_reason}") + "\n")
    err.flush()
    return 1


def _runner_may_be_there(database: Path) -> bool:
    try:
        return runner_elsewhere(database) is not None
    except PermissionError:  # its lock file is another user's: cannot tell, so say nothing
        return True
