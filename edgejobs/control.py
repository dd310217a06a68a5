"""Runtime control of a runner: pause/resume and policy overrides of job types, the schedule
listing and the operator audit log.

These are functions of an :class:`~edgejobs.EdgeJobs` (the HTTP routes and the CLI call the
same ones). Every change is one write transaction that also appends its audit entry, and the
in-process registry is updated as soon as it commits, so the next claim already sees it. A
runner in another process picks the change up through its foreign-commit listener.
"""

from __future__ import annotations

import dataclasses
import sqlite3
import weakref
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic import ValidationError as PydanticValidationError

from edgejobs.app import EdgeJobs
from edgejobs.config import ScheduleConfig, parse_rate_limit
from edgejobs.errors import NotFound, ValidationError
from edgejobs.models import MAX_DELAY_S, MAX_RETRIES, iso_ms
from edgejobs.runner.pacing import delete_in_batches
from edgejobs.runner.registry import OVERRIDABLE
from edgejobs.runner.schedules import MIN_GRACE_MS, Scheduler, next_due_after
from edgejobs.runner.ticks import TickTask
from edgejobs.store import job_types as job_type_store
from edgejobs.store.audit import (
    CLI_ACTOR,
    Actor,
    AuditEntry,
    OperatorActor,
    delete_old_entries,
    list_entries,
    record_action,
)
from edgejobs.store.db import WriteTx
from edgejobs.store.schedules import ScheduleState, load_schedules

__all__ = [
    "CLI_ACTOR",
    "Actor",
    "AuditEntry",
    "AuditRetention",
    "JobTypeOverrides",
    "JobTypeView",
    "OperatorActor",
    "ScheduleView",
    "job_type_view",
    "job_type_views",
    "list_audit",
    "list_schedules",
    "override_job_type",
    "pause_job_type",
    "prepare_runner",
    "resume_job_type",
    "scheduler_of",
]

MAX_AUDIT_PAGE = 500

# --------------------------------------------------------------------------------------------
# Job types


class JobTypeOverrides(BaseModel):
    """A PATCH of runtime overrides. A key set to ``null`` removes that override; a key left
    out keeps it. Values follow the same rules as ``[[job_types]]`` in the config."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    timeout_s: float | None = Field(
        default=None, gt=0, le=MAX_DELAY_S, description="seconds one attempt may run"
    )
    max_retries: int | None = Field(
        default=None,
        ge=0,
        le=MAX_RETRIES,
        description="automatic retries (for jobs submitted from now on)",
    )
    priority: Literal["critical", "high", "normal", "low"] | None = Field(
        default=None, description="default priority of new jobs"
    )
    concurrency: int | None = Field(default=None, ge=1, description="max running, all orgs")
    org_concurrency: int | None = Field(default=None, ge=1, description="max running per org")
    rate_limit: str | None = Field(
        default=None, description='submissions per org, "N/second|minute|hour|day"'
    )

    @field_validator("rate_limit")
    @classmethod
    def _valid_rate_limit(cls, value: str | None) -> str | None:
        if value is not None:
            parse_rate_limit(value)
        return value

    def changes(self) -> dict[str, Any]:
        """The keys the caller gave, with their values (None: remove the override)."""
        return {key: getattr(self, key) for key in OVERRIDABLE if key in self.model_fields_set}

    @classmethod
    def parse(cls, data: object) -> JobTypeOverrides:
        """Validate a PATCH body; :class:`~edgejobs.errors.ValidationError` names each bad key."""
        if not isinstance(data, Mapping):
            raise ValidationError("expected a JSON object of overrides")
        try:
            return cls.model_validate(dict(data))
        except PydanticValidationError as exc:
            raise ValidationError(_describe(exc), details=_details(exc)) from None


def _describe(exc: PydanticValidationError) -> str:
    messages: list[str] = []
    for error in exc.errors():
        key = ".".join(str(part) for part in error["loc"]) or "body"
        if error["type"] == "extra_forbidden":
            messages.append(f"{key}: not an overridable key (use {', '.join(OVERRIDABLE)})")
        else:
            text = str(error["msg"]).removeprefix("Value error, ")
            messages.append(f"{key}: {text}")
    return "; ".join(messages)


def _details(exc: PydanticValidationError) -> list[dict[str, Any]]:
    return [
        {"field": ".".join(str(part) for part in error["loc"]), "message": str(error["msg"])}
        for error in exc.errors()
    ]


@dataclasses.dataclass(frozen=True, slots=True)
class JobTypeView:
    """A job type as operators see it: declared policy, runtime overrides, their result."""

    name: str
    paused: bool
    policy: dict[str, Any]
    """The effective policy (declared, with the overrides applied)."""
    declared: dict[str, Any]
    """The policy from the config or code: what applies again when an override is removed."""
    overrides: dict[str, Any]
    registered: bool
    """Whether this process has the handler (False for a type only the runner declared)."""

    def to_dict(self) -> dict[str, Any]:
        """The API shape (an item of ``GET /api/v1/job-types`` plus ``declared``)."""
        return {
            "name": self.name,
            "policy": self.policy,
            "overrides": self.overrides,
            "paused": self.paused,
            "registered": self.registered,
            "declared": self.declared,
        }


def _views(ej: EdgeJobs, states: Mapping[str, job_type_store.JobTypeState]) -> list[JobTypeView]:
    names = sorted({t.name for t in ej.registry} | {n for n, s in states.items() if s.policy})
    views: list[JobTypeView] = []
    for name in names:
        state = states.get(name)
        overrides = dict(state.overrides) if state else {}
        if name in ej.registry:
            declared_type = ej.registry.declared(name)
            declared = declared_type.policy()
            policy = declared_type.with_overrides(overrides).policy()
        else:
            declared = dict(state.policy) if state else {}
            policy = state.effective_policy if state else {}
        views.append(
            JobTypeView(
                name=name,
                paused=bool(state and state.paused),
                policy=policy,
                declared=declared,
                overrides=overrides,
                registered=name in ej.registry,
            )
        )
    return views


async def job_type_views(ej: EdgeJobs) -> list[JobTypeView]:
    """Every job type this process serves or the runner declared, with its runtime state."""
    await ej.open()
    states = await ej.store.read(job_type_store.load_states)
    return _views(ej, states)


def configured_job_type_views(ej: EdgeJobs) -> list[JobTypeView]:
    """The job types of ``ej``'s registry alone, as :func:`job_type_views` shows them on a
    database no runner has written to yet (nothing paused, no overrides); opens nothing."""
    return _views(ej, {})


async def job_type_view(ej: EdgeJobs, name: str) -> JobTypeView:
    """One job type; :class:`~edgejobs.errors.NotFound` when unknown."""
    for view in await job_type_views(ej):
        if view.name == name:
            return view
    raise NotFound(f"no job type {name!r}")


def _check_known(
    ej: EdgeJobs, states: Mapping[str, job_type_store.JobTypeState], name: str
) -> None:
    # Known: served by this process, or declared in the database by the runner (a client
    # such as the CLI may not have the handler).
    state = states.get(name)
    if name not in ej.registry and (state is None or not state.policy):
        raise NotFound(f"no job type {name!r}")


Change = Callable[[sqlite3.Connection, WriteTx, int, job_type_store.JobTypeState | None], None]


async def _change(ej: EdgeJobs, name: str, apply: Change) -> JobTypeView:
    """Run ``apply(conn, tx, now, state)`` on a known job type, then refresh the registry."""
    await ej.open()
    now = ej.clock.now_ms()

    def op(conn: sqlite3.Connection, tx: WriteTx) -> dict[str, job_type_store.JobTypeState]:
        before = job_type_store.load_states(conn)
        _check_known(ej, before, name)
        apply(conn, tx, now, before.get(name))
        return job_type_store.load_states(conn)

    states = await ej.store.write(op)
    # The in-process registry changes at once (the pool reads it at its next claim).
    ej.set_stored_types(states)
    if ej.pool is not None:
        ej.pool.wake()
    return next(view for view in _views(ej, states) if view.name == name)


async def _set_paused(ej: EdgeJobs, name: str, *, paused: bool, actor: Actor) -> JobTypeView:
    def apply(
        conn: sqlite3.Connection,
        tx: WriteTx,
        now: int,
        state: job_type_store.JobTypeState | None,
    ) -> None:
        job_type_store.set_paused(conn, tx, name=name, paused=paused, now=now)
        record_action(
            conn,
            tx,
            actor=actor,
            action="pause" if paused else "resume",
            target=name,
            org=None,
            now=now,
            details={"was_paused": bool(state and state.paused)},
        )

    return await _change(ej, name, apply)


async def pause_job_type(ej: EdgeJobs, name: str, *, actor: Actor = CLI_ACTOR) -> JobTypeView:
    """Pause a job type: its jobs are still accepted but none starts; running ones finish."""
    return await _set_paused(ej, name, paused=True, actor=actor)


async def resume_job_type(ej: EdgeJobs, name: str, *, actor: Actor = CLI_ACTOR) -> JobTypeView:
    """Resume a paused job type: its queued jobs start again, in priority order."""
    return await _set_paused(ej, name, paused=False, actor=actor)


async def override_job_type(
    ej: EdgeJobs,
    name: str,
    changes: JobTypeOverrides | Mapping[str, Any],
    *,
    actor: Actor = CLI_ACTOR,
) -> JobTypeView:
    """Set (or, with a None value, remove) runtime policy overrides of a job type.

    ``timeout_s``, ``concurrency`` and ``org_concurrency`` apply from the next claim;
    ``priority``, ``max_retries`` and ``rate_limit`` to jobs submitted from now on.
    """
    patch = changes if isinstance(changes, JobTypeOverrides) else JobTypeOverrides.parse(changes)
    values = patch.changes()

    def apply(
        conn: sqlite3.Connection,
        tx: WriteTx,
        now: int,
        state: job_type_store.JobTypeState | None,
    ) -> None:
        if not values:
            return
        job_type_store.set_overrides(conn, tx, name=name, changes=values, now=now)
        record_action(
            conn,
            tx,
            actor=actor,
            action="override",
            target=name,
            org=None,
            now=now,
            details={"changes": values},
        )

    return await _change(ej, name, apply)


# --------------------------------------------------------------------------------------------
# Schedules


@dataclasses.dataclass(frozen=True, slots=True)
class ScheduleView:
    """A configured schedule with its next and last run (times in unix ms)."""

    config: ScheduleConfig
    next_run_at: int | None
    last_run_at: int | None
    last_job_id: str | None

    def to_dict(self) -> dict[str, Any]:
        """The API shape."""
        schedule = self.config
        return {
            "name": schedule.name,
            "cron": schedule.cron,
            "timezone": schedule.timezone,
            "job_type": schedule.job_type,
            "org": schedule.org,
            "params": schedule.params,
            "priority": schedule.priority,
            "catch_up": schedule.catch_up,
            "next_run_at": iso_ms(self.next_run_at),
            "last_run_at": iso_ms(self.last_run_at),
            "last_job_id": self.last_job_id,
        }


async def list_schedules(ej: EdgeJobs, *, org: str | None = None) -> list[ScheduleView]:
    """The configured schedules (of ``org`` only, when given) with their stored state.

    ``last_run_at`` is the due time fired last. Before a runner has stored a schedule (or
    after its cron changed), ``next_run_at`` is computed from the clock.
    """
    await ej.open()
    states: dict[str, ScheduleState] = await ej.store.read(partial(load_schedules, org=org))
    return _schedule_views(ej, states, org)


def configured_schedules(ej: EdgeJobs, *, org: str | None = None) -> list[ScheduleView]:
    """The configured schedules as :func:`list_schedules` shows them before a runner has
    stored any (next run from the clock, never run); opens nothing."""
    return _schedule_views(ej, {}, org)


def _schedule_views(
    ej: EdgeJobs, states: Mapping[str, ScheduleState], org: str | None
) -> list[ScheduleView]:
    now = ej.clock.now_ms()
    views: list[ScheduleView] = []
    for schedule in sorted(ej.config.schedules, key=lambda s: s.name):
        if org is not None and schedule.org != org:
            continue
        state = states.get(schedule.name)
        current = (
            state is not None
            and state.cron == schedule.cron
            and state.timezone == schedule.timezone
        )
        if state is not None and current:
            next_run: int | None = state.next_fire_at
        else:
            next_run = next_due_after(schedule.cron, schedule.timezone, now - 1)
        views.append(
            ScheduleView(
                config=schedule,
                next_run_at=next_run,
                last_run_at=state.last_fire_at if state else None,
                last_job_id=state.last_job_id if state else None,
            )
        )
    return views


# --------------------------------------------------------------------------------------------
# Audit log


async def list_audit(
    ej: EdgeJobs, *, org: str | None = None, limit: int = 50, before_id: int | None = None
) -> tuple[list[AuditEntry], int | None]:
    """A page of audit entries, newest first, and the cursor (an id) of the next page.

    ``org`` None: every entry (system admins); otherwise the entries concerning that org.
    """
    if not 1 <= limit <= MAX_AUDIT_PAGE:
        raise ValidationError(f"limit must be between 1 and {MAX_AUDIT_PAGE}")
    await ej.open()
    return await ej.store.read(partial(list_entries, org=org, limit=limit, before_id=before_id))


class AuditRetention:
    """Tick task: deletes audit entries older than ``[retention] days``, as often as job
    retention runs, in batches of ``[retention] batch_size``."""

    def __init__(self, ej: EdgeJobs) -> None:
        self._ej = ej
        self._last_ms: int | None = None

    async def tick(self, now: int) -> None:
        """Prune when the retention interval has passed since the last run."""
        retention = self._ej.config.retention
        if self._last_ms is not None and now - self._last_ms < retention.interval_s * 1000:
            return
        self._last_ms = now
        await self.prune(now)

    async def prune(self, now: int) -> int:
        """Delete every entry older than the retention period; return how many."""
        retention = self._ej.config.retention
        cutoff = now - int(retention.days * 86_400_000)
        delete = partial(delete_old_entries, cutoff_ms=cutoff, batch=retention.batch_size)
        return await delete_in_batches(self._ej.store, delete, retention.batch_size)


# --------------------------------------------------------------------------------------------
# Runner hook

_schedulers: weakref.WeakKeyDictionary[EdgeJobs, Scheduler] = weakref.WeakKeyDictionary()


async def prepare_runner(ej: EdgeJobs, now: int) -> list[TickTask]:
    """Called by :meth:`EdgeJobs.start`: validate and store the schedules, and return the
    tick tasks of this module (the scheduler and audit retention).

    Raises :class:`~edgejobs.errors.ConfigError` for a schedule of an unknown job type.
    """
    tick_ms = int(ej.config.runner.tick_interval_s * 1000)
    scheduler = Scheduler(ej, ej.config.schedules, grace_ms=max(MIN_GRACE_MS, 3 * tick_ms))
    scheduler.validate()
    await scheduler.sync(now)
    _schedulers[ej] = scheduler
    return [scheduler.tick, AuditRetention(ej).tick]


def scheduler_of(ej: EdgeJobs) -> Scheduler | None:
    """The scheduler of a started runner (None before :meth:`EdgeJobs.start`)."""
    return _schedulers.get(ej)
