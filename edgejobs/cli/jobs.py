"""``edgejobs submit``, ``jobs list/show/cancel/retry`` and ``stats``: the operator's client.

These commands are clients of the database, not runners: they open it (creating and
migrating it when needed) without taking the runner lock, so they work while a ``worker`` or
``serve`` process runs on the same file, which notices their writes within a fraction of a
second. A job type that only the running runner registered (in code) can still be submitted:
the runner declares its job types in the database when it starts.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from edgejobs.api.body import MAX_DEPTH, loads_strict
from edgejobs.app import EdgeJobs, check_org
from edgejobs.cli import print_json, print_table, run_async
from edgejobs.cli.runner import app_from_args
from edgejobs.errors import EdgeJobsError, UnknownJobType
from edgejobs.logs import escape
from edgejobs.models import MAX_DELAY_S, MAX_PAGE, Attempt, Job, Priority, Status, iso_ms
from edgejobs.store.audit import CLI_ACTOR

T = TypeVar("T")

MAX_LIST_LIMIT = 10_000


def register(subparsers: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add ``submit``, ``jobs`` (with ``list``, ``show``, ``cancel``, ``retry``) and ``stats``."""
    submit = subparsers.add_parser(
        "submit",
        help="submit a job and print its id",
        description="Submit a job; its id is printed on stdout. Put TYPE before --after.",
    )
    common(submit)
    submit.add_argument("job_type", metavar="TYPE", help="the job type")
    submit.add_argument("--org", required=True, help="the org the job belongs to")
    submit.add_argument("--params", metavar="JSON", help="the job's params, a JSON object")
    submit.add_argument(
        "--priority", choices=[p.value for p in Priority], help="default: the job type's"
    )
    submit.add_argument(
        "--after",
        metavar="ID",
        nargs="+",
        action="extend",
        default=[],
        help="run only after these jobs completed (depends_on)",
    )
    submit.add_argument(
        "--delay", metavar="S", type=_seconds, help="run no earlier than S seconds from now"
    )
    submit.add_argument(
        "--dedup-key", metavar="K", help="deduplicate on this key instead of the params"
    )
    submit.add_argument(
        "--no-dedup", action="store_true", help="create a new job even if an equal one is pending"
    )
    submit.add_argument(
        "--wait",
        action="store_true",
        help="wait until the job ends; exit 0 only if it completed",
    )
    submit.set_defaults(handler=run_submit)

    jobs = subparsers.add_parser("jobs", help="list, show, cancel or retry jobs")
    common(jobs)
    actions = jobs.add_subparsers(dest="jobs_command", metavar="ACTION")
    actions.required = True

    listing = actions.add_parser("list", help="list jobs, newest first")
    common(listing)
    listing.add_argument("--org", help="only this org's jobs")
    listing.add_argument(
        "--status",
        nargs="+",
        action="extend",
        choices=[s.value for s in Status],
        metavar="STATUS",
        help="only jobs in these statuses (" + ", ".join(s.value for s in Status) + ")",
    )
    listing.add_argument("--type", dest="job_type", metavar="TYPE", help="only this job type")
    listing.add_argument(
        "--limit", type=_limit, default=50, help="at most this many jobs (default 50)"
    )
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(handler=run_list)

    show = actions.add_parser("show", help="one job in full, with its attempts")
    common(show)
    show.add_argument("job_id", metavar="ID")
    show.add_argument("--json", action="store_true", help="print JSON")
    show.set_defaults(handler=run_show)

    cancel = actions.add_parser("cancel", help="cancel a job that has not ended")
    common(cancel)
    cancel.add_argument("job_id", metavar="ID")
    cancel.add_argument("--reason", help="recorded as the job's cancel_reason")
    cancel.add_argument("--json", action="store_true", help="print the job as JSON")
    cancel.set_defaults(handler=run_cancel)

    retry = actions.add_parser("retry", help="retry a failed, timed-out, dead or canceled job")
    common(retry)
    retry.add_argument("job_id", metavar="ID")
    retry.add_argument("--json", action="store_true", help="print the job as JSON")
    retry.set_defaults(handler=run_retry)

    stats = subparsers.add_parser("stats", help="job counts by status and by type")
    common(stats)
    stats.add_argument("--org", help="only this org's jobs")
    stats.add_argument("--json", action="store_true", help="print JSON")
    stats.add_argument(
        "--recount",
        action="store_true",
        help=(
            "first rebuild the kept counts from the jobs table (after editing the file by hand);"
            " counts every job in one write transaction, which holds the write lock about 2 s"
            " per million jobs (nothing else commits meanwhile)"
        ),
    )
    stats.set_defaults(handler=run_stats)


# -- argument types ---------------------------------------------------------------------------


def number_of(unit: str, high: float) -> Callable[[str], float]:
    """An argparse ``type``: a number of ``unit`` from 0 to ``high`` (else a usage error)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number of {unit}, got {text!r}") from None
        if not 0 <= value <= high:  # (also refuses NaN and infinity)
            raise argparse.ArgumentTypeError(
                f"expected a number of {unit} from 0 to {high:.0f}, got {text!r}"
            )
        return value

    return parse


_seconds = number_of("seconds", MAX_DELAY_S)


def whole_number(low: int, high: int) -> Callable[[str], int]:
    """An argparse ``type``: a whole number from ``low`` to ``high`` (else a usage error)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"expected {low} to {high}, got {value}")
        return value

    return parse


_limit = whole_number(1, MAX_LIST_LIMIT)


def usage_error(message: str) -> int:
    """Print a usage error on stderr and return its exit code, 2."""
    print(f"edgejobs: {message}", file=sys.stderr)
    return 2


_TOO_DEEP = f"--params is nested deeper than {MAX_DEPTH} levels"


def parse_params(text: str | None) -> dict[str, Any]:
    """``--params``: a JSON object (absent means ``{}``); ValueError with a short reason.

    Arrays and objects may nest at most :data:`~edgejobs.api.body.MAX_DEPTH` levels deep, as
    in a request body of the HTTP API.
    """
    if text is None:
        return {}
    try:
        value = loads_strict(text)
    except RecursionError:  # the parser recurses; thousands of levels exhaust the stack
        raise ValueError(_TOO_DEEP) from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"--params is not valid JSON: {exc.msg} at character {exc.pos}") from None
    except ValueError as exc:  # NaN, Infinity, out of range, a key twice: as the HTTP API says
        raise ValueError(f"--params is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ValueError(f"--params must be a JSON object, got {type(value).__name__}")
    if _too_deep(value):
        raise ValueError(_TOO_DEEP)
    return value


def _too_deep(value: Any) -> bool:
    """Whether arrays and objects in ``value`` nest deeper than ``MAX_DEPTH`` levels
    (walked iteratively, so a deep value cannot exhaust the stack here)."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth >= MAX_DEPTH:
                return True
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return False


# -- the client -------------------------------------------------------------------------------


def refuse_missing_database(path: Path) -> None:
    """Raise a one-line :class:`EdgeJobsError` when no database file is at ``path``."""
    if not path.exists():
        raise EdgeJobsError(
            f"no database at {path}: start the runner first (edgejobs serve or edgejobs"
            " worker), or give the runner's --config (or EDGEJOBS_DB)"
        )


@contextlib.asynccontextmanager
async def open_client(
    args: argparse.Namespace, *, create: bool = False, app: EdgeJobs | None = None
) -> AsyncIterator[EdgeJobs]:
    """An :class:`EdgeJobs` opened as a client (no runner lock, no workers), closed after.

    A database that does not exist is refused unless ``create``: a command about jobs,
    tokens or the audit log pointed at the wrong folder or config would otherwise create an
    empty database there, answer from it ("no jobs match") and leave the file behind. The
    commands that may come before the first runner pass ``create``: ``submit`` (the job waits
    for the runner), ``token create``, and the commands that change a job type (their
    definitions come from the config; the listings answer from it alone while no database
    exists: :func:`with_client`'s ``without_database``). ``app``: the one ``args`` made
    already (else it is made here).
    """
    ej = app if app is not None else app_from_args(args)
    if not create:
        refuse_missing_database(ej.config.database.path)
    try:
        await ej.open()  # a file it cannot open is a one-line EdgeJobsError
    except EdgeJobsError:
        await ej.close()
        raise
    try:
        yield ej
    finally:
        await ej.close()


def with_client(
    args: argparse.Namespace,
    action: Callable[[EdgeJobs], Awaitable[T]],
    *,
    create: bool = False,
    without_database: Callable[[EdgeJobs], T] | None = None,
) -> T:
    """Run ``action`` on a client opened by :func:`open_client` and return its result.

    ``without_database``: the answer when no database file exists yet, from the app alone
    (its config), instead of creating one or refusing.
    """
    app = app_from_args(args)
    if without_database is not None and not app.config.database.path.exists():
        return without_database(app)

    async def main() -> T:
        async with open_client(args, create=create, app=app) as ej:
            return await action(ej)

    return asyncio.run(main())


# -- submit -----------------------------------------------------------------------------------


def run_submit(args: argparse.Namespace) -> int:
    """``edgejobs submit``."""
    try:
        params = parse_params(args.params)
    except ValueError as exc:
        return usage_error(str(exc))
    return run_async(_submit(args, params))


async def _submit(args: argparse.Namespace, params: dict[str, Any]) -> int:
    app = app_from_args(args)
    path = app.config.database.path
    if not path.exists():
        # Nothing is stored yet, so the configuration alone says which job types exist: a
        # submission it refuses must not leave a new, empty database behind — the case of a
        # command run from the wrong folder, where no config was found either.
        check_org(args.org)
        if args.job_type not in app.registry:
            raise UnknownJobType(
                f"unknown job type {args.job_type!r} (no database at {path} yet, and the"
                " configuration declares no such type: give the runner's --config or"
                " EDGEJOBS_DB)"
            )
    async with open_client(args, create=True, app=app) as ej:
        job = await ej.submit(
            args.job_type,
            org=args.org,
            params=params,
            priority=args.priority,
            depends_on=args.after,
            delay_s=args.delay,
            dedup=False if args.no_dedup else None,
            dedup_key=args.dedup_key,
        )
        print(job.id, flush=True)
        if job.deduplicated:
            print(
                f"edgejobs: an equal job was already {job.status.value}; this is that job",
                file=sys.stderr,
            )
        if not args.wait:
            return 0
        return await wait_for_job(ej, job.id)


async def wait_for_job(ej: EdgeJobs, job_id: str) -> int:
    """Wait until the job ends, print its final status and return the exit code: 0 only
    when it completed. Meanwhile a live progress bar (percent, message, ETA) is shown, or
    plain lines when stdout is not a terminal (see :mod:`edgejobs.cli.progress_bar`)."""
    from edgejobs.cli.progress_bar import follow_job

    return await follow_job(ej, job_id)


# -- jobs list / show / cancel / retry --------------------------------------------------------


def run_list(args: argparse.Namespace) -> int:
    """``edgejobs jobs list``."""
    return run_async(_list(args))


async def _list(args: argparse.Namespace) -> int:
    jobs: list[Job] = []
    async with open_client(args) as ej:
        before: int | None = None
        while len(jobs) < args.limit:  # --limit goes past one page (MAX_PAGE): follow the cursor
            page, before = await ej.list_jobs(
                org=args.org,
                statuses=args.status or (),
                job_type=args.job_type,
                before_seq=before,
                limit=min(MAX_PAGE, args.limit - len(jobs)),
            )
            jobs.extend(page)
            if before is None:
                break
    if args.json:
        print_json([job.to_dict() for job in jobs])
        return 0
    if not jobs:
        print("edgejobs: no jobs match", file=sys.stderr)
        return 0
    print_table(
        ("id", "org", "type", "status", "priority", "attempts", "progress", "created"),
        [
            (
                job.id,
                job.org,
                job.job_type,
                job.status.value,
                job.priority.value,
                job.attempts,
                f"{job.progress:g}%",
                _time(job.created_at),
            )
            for job in jobs
        ],
    )
    return 0


def run_show(args: argparse.Namespace) -> int:
    """``edgejobs jobs show``."""
    return run_async(_show(args))


async def _show(args: argparse.Namespace) -> int:
    async with open_client(args) as ej:
        job = await ej.get(args.job_id)
        attempts = await ej.attempts(args.job_id)
    if args.json:
        print_json({"job": job.to_dict(), "attempts": [a.to_dict() for a in attempts]})
    else:
        print_job(job, attempts)
    return 0


def print_job(job: Job, attempts: Sequence[Attempt]) -> None:
    """A job in full, as aligned ``field value`` lines, then its attempts as a table.

    Handlers and submitters write the messages, error texts and tracebacks shown: their
    control characters are printed escaped (``\\x1b``), as in the logs, so none can
    rewrite the screen, the window title or the clipboard of the operator's terminal.
    """
    fields: list[tuple[str, str]] = [
        ("id", job.id),
        ("org", job.org),
        ("type", job.job_type),
        ("status", job.status.value),
        ("priority", job.priority.value),
        ("attempts", f"{job.attempts} (max_retries {job.max_retries})"),
        (
            "progress",
            f"{job.progress:g}%" + (f" {job.progress_message}" if job.progress_message else ""),
        ),
        ("eta_s", _text(job.eta_s)),
        ("depends_on", ", ".join(job.depends_on) or "-"),
        ("dependents", ", ".join(job.dependents) or "-"),
        ("run_at", _time(job.run_at)),
        ("next_retry_at", _time(job.next_retry_at)),
        ("created_at", _time(job.created_at)),
        ("started_at", _time(job.started_at)),
        ("finished_at", _time(job.finished_at)),
        ("updated_at", _time(job.updated_at)),
        ("cancel_reason", _text(job.cancel_reason)),
        ("params", json.dumps(job.params, sort_keys=True)),
        ("result", json.dumps(job.result, sort_keys=True) if job.result is not None else "-"),
        ("error", f"{job.error.type}: {job.error.message}" if job.error else "-"),
    ]
    width = max(len(name) for name, _ in fields)
    for name, value in fields:
        print(f"{name.ljust(width)}  {escape(value)}")
    if job.error is not None and job.error.traceback:
        print()
        print("traceback:")
        for line in job.error.traceback.rstrip().splitlines():
            print(f"  {escape(line)}")
    print()
    if not attempts:
        print("no attempts yet")
        return
    print_table(
        ("attempt", "started", "finished", "outcome", "error"),
        [
            (
                a.number,
                _time(a.started_at),
                _time(a.finished_at),
                a.outcome.value if a.outcome else "running",
                f"{a.error.type}: {a.error.message}" if a.error else "",
            )
            for a in attempts
        ],
    )


def run_cancel(args: argparse.Namespace) -> int:
    """``edgejobs jobs cancel``."""
    return run_async(_act(args, "cancel"))


def run_retry(args: argparse.Namespace) -> int:
    """``edgejobs jobs retry``."""
    return run_async(_act(args, "retry"))


async def _act(args: argparse.Namespace, action: str) -> int:
    async with open_client(args) as ej:
        # Recorded in the operator audit log as the command line's action.
        if action == "cancel":
            job = await ej.cancel(args.job_id, reason=args.reason, actor=CLI_ACTOR)
        else:
            job = await ej.retry(args.job_id, actor=CLI_ACTOR)
    if args.json:
        print_json(job.to_dict())
        return 0
    print(f"{job.id} {job.status.value}")
    return 0


# -- stats ------------------------------------------------------------------------------------


def run_stats(args: argparse.Namespace) -> int:
    """``edgejobs stats``."""
    return run_async(_stats(args))


async def _stats(args: argparse.Namespace) -> int:
    async with open_client(args) as ej:
        if args.recount:
            wrong = await ej.recount()
            print(f"recounted: {wrong} kept counts were wrong", file=sys.stderr)
        stats = await ej.stats(org=args.org)
    if args.json:
        print_json(stats)
        return 0
    by_status: dict[str, int] = stats["by_status"]
    print_table(("status", "count"), [(s, n) for s, n in by_status.items()])
    print_table_of_counts("type", stats["by_type"])
    if "by_org" in stats:
        print_table_of_counts("org", stats["by_org"])
    return 0


def print_table_of_counts(label: str, counts: dict[str, dict[str, int]]) -> None:
    """``{name: {status: n}}`` as a table with one column per status that occurs."""
    if not counts:
        return
    columns = [s.value for s in Status if any(s.value in row for row in counts.values())]
    print()
    print_table(
        (label, *columns, "total"),
        [
            (name, *(row.get(c, 0) for c in columns), sum(row.values()))
            for name, row in sorted(counts.items())
        ],
    )


# -- formatting -------------------------------------------------------------------------------


def _time(ms: int | None) -> str:
    return iso_ms(ms) or "-"


def _text(value: object) -> str:
    return "-" if value is None else str(value)
