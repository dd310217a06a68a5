"""``edgejobs types list|pause|resume|set``, ``edgejobs schedules list`` and ``edgejobs audit``.

These work on the database file directly, like the other client commands: a running runner
sees the change within a fraction of a second. Actions are audited with the token id ``cli``
and the role ``admin``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from edgejobs.cli import print_json, print_table
from edgejobs.cli.jobs import whole_number, with_client
from edgejobs.control import (
    CLI_ACTOR,
    MAX_AUDIT_PAGE,
    JobTypeOverrides,
    JobTypeView,
    configured_job_type_views,
    configured_schedules,
    job_type_views,
    list_audit,
    list_schedules,
    override_job_type,
    pause_job_type,
    resume_job_type,
)
from edgejobs.errors import ValidationError
from edgejobs.models import iso_ms
from edgejobs.runner.registry import OVERRIDABLE

_POLICY_COLUMNS = OVERRIDABLE  # the table shows the keys an operator can set at runtime


def register(subparsers: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add ``types``, ``schedules`` and ``audit``."""
    types = subparsers.add_parser("types", help="job types: list, pause, resume, overrides")
    common(types)
    actions = types.add_subparsers(dest="types_command", metavar="ACTION")
    actions.required = True

    listing = actions.add_parser("list", help="job types with their policy and state")
    common(listing)
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(handler=run_types_list)

    pause = actions.add_parser("pause", help="accept jobs of a type but start none")
    common(pause)
    pause.add_argument("name", help="job type")
    pause.set_defaults(handler=run_types_pause)

    resume = actions.add_parser("resume", help="start jobs of a paused type again")
    common(resume)
    resume.add_argument("name", help="job type")
    resume.set_defaults(handler=run_types_resume)

    setter = actions.add_parser(
        "set",
        help="runtime policy overrides (KEY=null removes one)",
        description="Override timeout_s, max_retries, priority, concurrency, org_concurrency"
        " or rate_limit at runtime; KEY=null removes the override (the config value applies"
        " again).",
    )
    common(setter)
    setter.add_argument("name", help="job type")
    setter.add_argument("pairs", nargs="+", metavar="KEY=VALUE", help="e.g. concurrency=2")
    setter.set_defaults(handler=run_types_set)

    schedules = subparsers.add_parser("schedules", help="periodic schedules")
    common(schedules)
    schedule_actions = schedules.add_subparsers(dest="schedules_command", metavar="ACTION")
    schedule_actions.required = True
    schedule_list = schedule_actions.add_parser("list", help="schedules with next/last run")
    common(schedule_list)
    schedule_list.add_argument("--org", default=None, help="only this org's schedules")
    schedule_list.add_argument("--json", action="store_true", help="print JSON")
    schedule_list.set_defaults(handler=run_schedules_list)

    audit = subparsers.add_parser("audit", help="the operator audit log, newest first")
    common(audit)
    audit.add_argument(
        "--limit",
        type=whole_number(1, MAX_AUDIT_PAGE),
        default=50,
        help=f"entries to show (1-{MAX_AUDIT_PAGE})",
    )
    audit.add_argument("--org", default=None, help="only entries concerning this org")
    audit.add_argument("--json", action="store_true", help="print JSON")
    audit.set_defaults(handler=run_audit)


def parse_value(text: str) -> Any:
    """A ``KEY=VALUE`` value: ``null`` removes, JSON numbers and strings as such, else text."""
    if text == "null":
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return value if isinstance(value, int | float | str | bool) else text


def parse_pairs(pairs: list[str]) -> dict[str, Any]:
    """``["concurrency=2", "rate_limit=null"]`` -> ``{"concurrency": 2, "rate_limit": None}``."""
    changes: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValidationError(f"expected KEY=VALUE, got {pair!r}")
        changes[key.strip()] = parse_value(value.strip())
    return changes


def _policy_cell(view: JobTypeView, key: str) -> str:
    value = view.policy.get(key)
    text = "-" if value is None else str(value)
    return f"{text}*" if key in view.overrides else text


def _print_types(views: list[JobTypeView]) -> None:
    rows = [
        [view.name, "yes" if view.paused else "no"]
        + [_policy_cell(view, key) for key in _POLICY_COLUMNS]
        for view in views
    ]
    print_table(["name", "paused", *_POLICY_COLUMNS], rows)
    if any(view.overrides for view in views):
        print("* runtime override (`edgejobs types set NAME KEY=null` removes it)")


def run_types_list(args: argparse.Namespace) -> int:
    """List job types with their effective policy, overrides and pause state."""
    # With no database yet, from the config (job types are defined there) rather than create
    # an empty database: pointed at the wrong folder or config, it would be left behind. The
    # commands that change something (pause, resume, set) still create it: their change must
    # be stored for the runner to come.
    views = with_client(args, job_type_views, without_database=configured_job_type_views)
    if args.json:
        print_json([view.to_dict() for view in views])
    else:
        _print_types(views)
    return 0


def run_types_pause(args: argparse.Namespace) -> int:
    """Pause a job type."""
    view = with_client(args, lambda ej: pause_job_type(ej, args.name, actor=CLI_ACTOR), create=True)
    print(f"paused {view.name}: its jobs are accepted but none starts until resumed")
    return 0


def run_types_resume(args: argparse.Namespace) -> int:
    """Resume a job type."""
    view = with_client(
        args, lambda ej: resume_job_type(ej, args.name, actor=CLI_ACTOR), create=True
    )
    print(f"resumed {view.name}")
    return 0


def run_types_set(args: argparse.Namespace) -> int:
    """Set or remove runtime overrides."""
    try:
        patch = JobTypeOverrides.parse(parse_pairs(args.pairs))
    except ValidationError as exc:  # a malformed pair, an unknown key, a bad value: usage
        print(f"edgejobs: {exc.message} (see --help)", file=sys.stderr)
        return 2
    view = with_client(
        args, lambda ej: override_job_type(ej, args.name, patch, actor=CLI_ACTOR), create=True
    )
    _print_types([view])
    return 0


def run_schedules_list(args: argparse.Namespace) -> int:
    """List the configured schedules with their next and last run."""
    views = with_client(  # with no database yet, from the config (see run_types_list)
        args,
        lambda ej: list_schedules(ej, org=args.org),
        without_database=lambda ej: configured_schedules(ej, org=args.org),
    )
    if args.json:
        print_json([view.to_dict() for view in views])
        return 0
    print_table(
        ["name", "cron", "timezone", "job_type", "org", "next_run_at", "last_run_at", "last_job"],
        [
            [
                v.config.name,
                v.config.cron,
                v.config.timezone,
                v.config.job_type,
                v.config.org,
                iso_ms(v.next_run_at),
                iso_ms(v.last_run_at) or "never",
                v.last_job_id,
            ]
            for v in views
        ],
    )
    return 0


def run_audit(args: argparse.Namespace) -> int:
    """Show the newest audit entries."""
    entries, _ = with_client(args, lambda ej: list_audit(ej, org=args.org, limit=args.limit))
    if args.json:
        print_json([entry.to_dict() for entry in entries])
        return 0
    print_table(
        ["at", "token", "role", "org", "action", "target", "details"],
        [
            [
                iso_ms(e.at),
                e.token_id,
                e.role,
                e.org or "*",
                e.action,
                e.target,
                json.dumps(e.details, sort_keys=True) if e.details else "",
            ]
            for e in entries
        ],
    )
    return 0
