"""Configuration: one frozen pydantic model per ``edgejobs.toml`` section, and the loader.

The contract is SPEC §4 (and §3 for job types). Every key has a default, so the file is
optional. Unknown keys, wrong types and impossible values are refused with a one-line
:class:`~edgejobs.errors.ConfigError` that names the file (or the environment variable, or the
command line), the key in TOML spelling and what was expected, e.g.::

    edgejobs.toml: [runner] workers: expected an integer between 1 and 1024, got 0

Precedence, highest first: command-line flags (``overrides``), environment variables
(``EDGEJOBS_DB``, ``EDGEJOBS_HOST``, ``EDGEJOBS_PORT``, ``EDGEJOBS_ALLOWED_HOSTS``), the
file, the defaults. The file is
``path``, else ``$EDGEJOBS_CONFIG``, else ``./edgejobs.toml`` when it exists.

The models are strict: TOML already has integers, floats, booleans and strings, so a quoted
number (``workers = "8"``) is a wrong type, not something to guess at. Integers are accepted
where a number (float) is expected.
"""

from __future__ import annotations

import copy
import difflib
import json
import math
import os
import re
import tomllib
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import croniter
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from pydantic import ValidationError as PydanticValidationError
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError

from edgejobs.errors import ConfigError
from edgejobs.hosts import normalize_pattern
from edgejobs.models import MAX_DELAY_S, MAX_RETENTION_DAYS, MAX_RETRIES

__all__ = [
    "DEFAULT_CONFIG_NAME",
    "JOB_TYPE_OPTIONS",
    "Config",
    "DatabaseConfig",
    "EventsConfig",
    "JobTypeConfig",
    "LimitsConfig",
    "ProgressConfig",
    "RetentionConfig",
    "RetryConfig",
    "RunnerConfig",
    "ScheduleConfig",
    "ServerConfig",
    "check_job_type",
    "config_path",
    "default_config_text",
    "load",
    "load_config",
    "parse_rate_limit",
]

DEFAULT_CONFIG_NAME = "edgejobs.toml"
"""The file looked for in the current folder when neither a path nor ``EDGEJOBS_CONFIG`` is given."""

PriorityName = Literal["critical", "high", "normal", "low"]

_NAME_RE = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
_RATE_RE = re.compile(r"\s*([0-9]+)\s*/\s*([A-Za-z]+)\s*")
_RATE_UNITS: dict[str, float] = {
    "s": 1.0,
    "sec": 1.0,
    "second": 1.0,
    "seconds": 1.0,
    "min": 60.0,
    "minute": 60.0,
    "minutes": 60.0,
    "h": 3600.0,
    "hour": 3600.0,
    "hours": 3600.0,
    "d": 86400.0,
    "day": 86400.0,
    "days": 86400.0,
}

# What a string field with a format expects, for error messages (keyed by field name; the
# same name means the same format in every model).
_HINTS: dict[str, str] = {
    "name": 'a name of 1-128 letters, digits or "_.:-"',
    "job_type": 'a job type name of 1-128 letters, digits or "_.:-"',
    "handler": 'an import path "package.module:function"',
    "cron": 'a five-field cron expression such as "0 2 * * *"',
    "timezone": 'an IANA time zone name such as "UTC" or "Europe/Berlin"',
    "rate_limit": 'a rate "N/second", "N/minute", "N/hour" or "N/day" with N >= 1',
}


# --------------------------------------------------------------------------------------------
# Small helpers shared by the validators and the error messages


def _show(value: Any) -> str:
    """Render a user-supplied value on one short line, in TOML spelling where possible."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str | Path):
        text = json.dumps(str(value), ensure_ascii=False)
        return text if len(text) <= 60 else text[:56] + '..."'
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list | tuple):
        return "an array"
    iso = getattr(value, "isoformat", None)
    if callable(iso):
        return str(iso())
    return type(value).__name__


def _number(value: float) -> str:
    """A validated number without a needless ``.0`` (``60.0`` -> ``60``)."""
    return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)


def _bad(field: str, value: Any) -> ValueError:
    """A ValueError in the house style: ``expected <hint>, got <value>``."""
    return ValueError(f"expected {_HINTS[field]}, got {_show(value)}")


def _check_name(field: str, value: str) -> str:
    if _NAME_RE.fullmatch(value) is None:
        raise _bad(field, value)
    return value


def _check_delays(base: float | None, maximum: float | None) -> None:
    if base is not None and maximum is not None and maximum < base:
        raise ValueError(
            f"expected a number >= base_delay_s ({_number(base)}), got {_number(maximum)}"
        )


def _not_json(value: Any) -> tuple[tuple[int | str, ...], Any] | None:
    """The first item of ``value`` that JSON cannot carry (NaN, an infinity, a TOML date or
    time...) with its location inside ``value``, or None when ``value`` is JSON throughout.

    Iterative, so a deeply nested value cannot exhaust the stack here.
    """
    stack: list[tuple[tuple[int | str, ...], Any]] = [((), value)]
    while stack:
        where, item = stack.pop()
        if isinstance(item, dict):
            children: list[tuple[int | str, Any]] = list(item.items())
        elif isinstance(item, list | tuple):
            children = list(enumerate(item))
        elif item is None or isinstance(item, str | int | bool):
            continue
        elif isinstance(item, float) and math.isfinite(item):
            continue
        else:
            return where, item
        # Reversed, so the first problem in the file's order is the one reported.
        stack.extend(((*where, key), child) for key, child in reversed(children))
    return None


def _located(message: str, subloc: tuple[int | str, ...]) -> PydanticCustomError:
    """An error about an item inside the validated value (e.g. entry #3's ``name``)."""
    return PydanticCustomError(
        "edgejobs_located", "{message}", {"message": message, "subloc": subloc}
    )


def parse_rate_limit(text: str) -> tuple[int, float]:
    """Parse a rate limit such as ``"100/minute"`` into ``(count, window_seconds)``.

    Units: ``second``, ``minute``, ``hour``, ``day`` and the short forms ``s``, ``min``,
    ``h``, ``d`` (plurals and ``sec`` also work; case does not matter). The count must be a
    whole number >= 1. ``"100/minute"`` gives ``(100, 60.0)``.

    Raises :class:`ValueError` with a one-line message for anything else.
    """
    match = _RATE_RE.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise _bad("rate_limit", text)
    count = int(match.group(1))
    window = _RATE_UNITS.get(match.group(2).lower())
    if window is None or count < 1:
        raise _bad("rate_limit", text)
    return count, window


# --------------------------------------------------------------------------------------------
# Models


class _Model(BaseModel):
    """Base of every config model: unknown keys refused, immutable, no type guessing."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class DatabaseConfig(_Model):
    """The SQLite database file and how it is opened."""

    path: Path = Field(
        default=Path("edgejobs.db"),
        strict=False,
        description="SQLite file, relative to this file's folder",
    )
    synchronous: Literal["normal", "full"] = Field(
        default="normal",
        description='"normal" (WAL default) or "full" (also survives power loss)',
    )
    busy_timeout_ms: int = Field(
        default=5000,
        ge=0,
        le=2**31 - 1,  # SQLite's busy_timeout is a C int: a larger value was silently 0
        description="how long a write waits for another process's lock",
    )
    journal_size_limit_bytes: int = Field(
        default=64 * 1024 * 1024,
        ge=0,
        description="WAL file size kept after a checkpoint (64 MiB)",
    )

    @field_validator("path", mode="before")
    @classmethod
    def _usable_path(cls, value: Any) -> Any:
        if isinstance(value, str) and not value.strip():
            raise ValueError(f"expected a non-empty file path, got {_show(value)}")
        # No file system takes a NUL in a name: refused here, naming the key, not later when
        # the database is opened.
        if isinstance(value, str | Path) and "\0" in str(value):
            raise ValueError(f"expected a file path without NUL characters, got {_show(value)}")
        check_not_in_memory(value)
        return value


IN_MEMORY_REFUSED = (
    "expected a file path, got ':memory:' (the queue is one file in WAL mode, shared by the"
    " runner's threads and other processes; for tests use edgejobs.testing.temporary_database)"
)
"""Why ``:memory:`` is refused as the database path, at start, naming the key."""


def check_not_in_memory(path: Any) -> None:
    """Raise :class:`ValueError` (:data:`IN_MEMORY_REFUSED`) when ``path`` is ``:memory:``:
    accepted, it failed later, when the store set WAL mode, with a message naming neither the
    key nor what to use instead."""
    if isinstance(path, str | os.PathLike) and os.fspath(path) == ":memory:":
        raise ValueError(IN_MEMORY_REFUSED)


class RunnerConfig(_Model):
    """The worker pool and the periodic tick loop."""

    workers: int = Field(
        default=8, ge=1, le=1024, description="max concurrently running jobs in this process"
    )
    tick_interval_s: float = Field(
        default=1.0,
        gt=0,
        le=3600,
        description="retry promotion, dependency safety net, lease recovery",
    )
    lease_s: float = Field(
        default=30.0, gt=0, le=86400, description="a running job's lease, renewed while it runs"
    )
    shutdown_grace_s: float = Field(
        default=30.0,
        ge=0,
        le=86400,
        description="on SIGTERM/SIGINT: stop claiming, wait, then requeue",
    )


class RetryConfig(_Model):
    """Default retry backoff: min(max_delay_s, base_delay_s * 2**(n-1)) for retry n."""

    base_delay_s: float = Field(
        default=60.0,
        ge=0,
        le=MAX_DELAY_S,
        description="delay before the first retry; doubles each retry",
    )
    max_delay_s: float = Field(
        default=3600.0,
        ge=0,
        le=MAX_DELAY_S,
        description="upper bound of a retry delay (>= base_delay_s)",
    )
    jitter: bool = Field(default=True, description="spread each delay by up to +/-10 %")

    @field_validator("max_delay_s")
    @classmethod
    def _max_not_below_base(cls, value: float, info: ValidationInfo) -> float:
        _check_delays(info.data.get("base_delay_s"), value)
        return value


class RetentionConfig(_Model):
    """Deletion of old terminal jobs."""

    days: float = Field(
        default=30.0,
        ge=0,
        le=MAX_RETENTION_DAYS,
        description="delete terminal jobs (and attempts/events) older than this",
    )
    interval_s: float = Field(
        default=3600.0, gt=0, le=MAX_DELAY_S, description="how often retention runs"
    )
    batch_size: int = Field(
        default=500, ge=1, description="rows per delete transaction, so claims never wait long"
    )


class ProgressConfig(_Model):
    """Coalescing of progress reports."""

    min_interval_ms: int = Field(
        default=250,
        ge=0,
        le=3_600_000,
        description="per job: at most one progress write/event per interval",
    )


class EventsConfig(_Model):
    """The Server-Sent Events stream."""

    replay_max_events: int = Field(
        default=10000, ge=0, description="Last-Event-ID replay window: at most this many events"
    )
    replay_max_age_s: float = Field(
        default=3600.0,
        ge=0,
        le=MAX_DELAY_S,
        description="... and at most this old; older: a `reset` event",
    )
    keepalive_s: float = Field(
        default=15.0, gt=0, le=3600, description="SSE keep-alive comment interval"
    )
    subscriber_buffer: int = Field(
        default=1000,
        ge=1,
        description="events queued for a slow client before it is dropped",
    )
    max_streams_per_token: int = Field(
        default=64,
        ge=0,
        le=1_000_000,
        description="open streams one token may hold (0: no limit); more get 429",
    )


class ServerConfig(_Model):
    """The HTTP server (API, SSE, dashboard, metrics)."""

    host: str = Field(default="127.0.0.1", min_length=1, description="address to listen on")
    port: int = Field(
        default=8000, ge=0, le=65535, description="TCP port to listen on (0: any free port)"
    )
    metrics_token: str = Field(
        default="", description="when set, GET /metrics needs `Authorization: Bearer <it>`"
    )
    max_body_bytes: int = Field(
        default=1_048_576, ge=1, description="largest accepted request body (1 MiB)"
    )
    session_ttl_s: float = Field(
        default=86400.0, gt=0, le=MAX_DELAY_S, description="dashboard session lifetime (1 day)"
    )
    root_path: str = Field(
        default="",
        description='prefix a proxy serves this under and strips ("/jobs")',
    )
    allowed_hosts: list[str] | None = Field(
        default=None,
        description="Host names served; unset: loopback only on loopback, else *",
        examples=[["box.local"]],
    )

    @field_validator("allowed_hosts", mode="before")
    @classmethod
    def _valid_allowed_hosts(cls, value: Any) -> Any:
        if not isinstance(value, list):
            return value  # None, or a wrong type the model's own check reports
        if not value:
            # An empty list would refuse every browser: more likely a mistake than meant.
            raise ValueError(
                "expected at least one host name (leave the key out for the default), got []"
            )
        names = []
        for entry in value:
            if not isinstance(entry, str):
                raise ValueError(f"expected host names (strings), got {_show(entry)}")
            names.append(normalize_pattern(entry))
        return names

    @field_validator("root_path")
    @classmethod
    def _valid_root_path(cls, value: str) -> str:
        if re.fullmatch(r"(/[^/?#\s]+)*", value) is None:
            raise ValueError(
                f'expected "" or a path like "/jobs" (a leading "/", no trailing "/"), got {value!r}'
            )
        return value


class LimitsConfig(_Model):
    """Size limits on what clients and handlers may store."""

    max_params_bytes: int = Field(
        default=65536, ge=1, description="largest job params (as JSON) accepted on submit"
    )
    max_batch: int = Field(default=1000, ge=1, description="most jobs in one batch submission")
    max_result_bytes: int = Field(
        default=1_048_576, ge=1, description="largest handler result (as JSON) stored on a job"
    )


class JobTypeConfig(_Model):
    """Job types: a named handler and its policy; one [[job_types]] table each."""

    name: str = Field(
        description='unique; 1-128 letters, digits or "_.:-"', examples=["reports.build"]
    )
    handler: str = Field(
        description='import path "package.module:function"',
        examples=["myapp.jobs:build_report"],
    )
    timeout_s: float = Field(
        default=300.0,
        gt=0,
        le=MAX_DELAY_S,
        description="seconds one attempt may run",
        examples=[120],
    )
    max_retries: int = Field(
        default=3,
        ge=0,
        le=MAX_RETRIES,
        description="automatic retries after a failed attempt",
        examples=[5],
    )
    base_delay_s: float | None = Field(
        default=None,
        ge=0,
        le=MAX_DELAY_S,
        description="first retry delay (default: [retry] base_delay_s)",
        examples=[30],
    )
    max_delay_s: float | None = Field(
        default=None,
        ge=0,
        le=MAX_DELAY_S,
        description="retry delay bound (default: [retry] max_delay_s)",
        examples=[1800],
    )
    priority: PriorityName = Field(
        default="normal", description='"critical", "high", "normal" or "low"', examples=["high"]
    )
    concurrency: int | None = Field(
        default=None,
        ge=1,
        description="max running at once, all orgs (default: no limit)",
        examples=[4],
    )
    org_concurrency: int | None = Field(
        default=None,
        ge=1,
        description="max running at once per org (default: no limit)",
        examples=[2],
    )
    rate_limit: str | None = Field(
        default=None,
        description='per org, "N/second|minute|hour|day" (default: none)',
        examples=["100/minute"],
    )
    dedup: bool = Field(
        default=True,
        description="reuse a pending job with equal params",
        examples=[True],
    )
    isolation: Literal["thread", "process"] = Field(
        default="thread",
        description='sync handlers: "thread" or "process"',
        examples=["thread"],
    )

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        return _check_name("name", value)

    @field_validator("handler")
    @classmethod
    def _valid_handler(cls, value: str) -> str:
        module, sep, attr = value.partition(":")
        parts = [*module.split("."), *attr.split(".")]
        if not sep or not all(part.isidentifier() for part in parts):
            raise _bad("handler", value)
        return value

    @field_validator("rate_limit")
    @classmethod
    def _valid_rate_limit(cls, value: str | None) -> str | None:
        if value is not None:
            parse_rate_limit(value)
        return value

    @field_validator("max_delay_s")
    @classmethod
    def _max_not_below_base(cls, value: float | None, info: ValidationInfo) -> float | None:
        _check_delays(info.data.get("base_delay_s"), value)
        return value


class ScheduleConfig(_Model):
    """Schedules: submit a job at every due time of a cron expression."""

    name: str = Field(
        description='unique; 1-128 letters, digits or "_.:-"', examples=["nightly-report"]
    )
    cron: str = Field(
        description="minute hour day-of-month month day-of-week",
        examples=["0 2 * * *"],
    )
    timezone: str = Field(
        default="UTC",
        description="IANA zone the cron times are read in",
        examples=["UTC"],
    )
    job_type: str = Field(description="the job type to submit", examples=["reports.build"])
    org: str = Field(min_length=1, description="the org the jobs belong to", examples=["acme"])
    params: dict[str, Any] = Field(
        default_factory=dict,
        description="params of every submitted job",
        examples=[{"month": "current"}],
    )
    priority: PriorityName | None = Field(
        default=None, description="job priority (default: the job type's)", examples=["normal"]
    )
    catch_up: Literal["once", "skip"] = Field(
        default="once",
        description='missed while down: run "once" or "skip"',
        examples=["once"],
    )

    @field_validator("name", "job_type")
    @classmethod
    def _valid_name(cls, value: str, info: ValidationInfo) -> str:
        return _check_name(info.field_name or "name", value)

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, value: str) -> str:
        fields = value.split()
        if len(fields) != 5 or not croniter.croniter.is_valid(value):
            raise _bad("cron", value)
        if any(
            # "R", or "R(0-29)" (split here into "R(0" and "29)"); no name of a month or a day
            # of the week starts with an R.
            token.strip().upper().startswith("R")
            for field in fields
            for token in re.split(r"[,/-]", field)
        ):
            # croniter's random value: drawn anew at every computation of the next time, so
            # the schedule fired at random minutes, several times per period.
            raise ValueError(
                f"{value!r}: the random field R is not supported; give the minute, hour or day"
            )
        if fields[4] in ("*", "?") and not croniter.croniter.is_valid(value, strict=True):
            # (With a day of the week as well, cron runs on either day: "0 0 31 2 1" is every
            # Monday of February.)
            # Well formed, but its day of the month is in none of its months ("0 2 31 4 *"):
            # say so, rather than leave the user to wonder which field is wrong.
            raise ValueError(f"{value!r} never runs: no month it allows has that day of the month")
        return value

    @field_validator("timezone")
    @classmethod
    def _valid_timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError, OSError):
            raise _bad("timezone", value) from None
        return value

    @field_validator("org")
    @classmethod
    def _non_blank_org(cls, value: str) -> str:
        if not value.strip():
            raise ValueError(f"expected a non-empty org name, got {_show(value)}")
        return value

    @field_validator("params")
    @classmethod
    def _json_params(cls, value: dict[str, Any]) -> dict[str, Any]:
        # Every firing stores the params as JSON: a value JSON has no spelling for would make
        # the runner fail at start, while the other commands accepted the file.
        problem = _not_json(value)
        if problem is not None:
            where, item = problem
            raise _located(
                f"params must be JSON (no nan, inf, dates or times), got {_show(item)}",
                where,
            )
        return value


class Config(_Model):
    """The whole configuration: one attribute per ``edgejobs.toml`` section.

    ``source`` is not a TOML key: :func:`load_config` sets it to the absolute path of the
    file it read (``None`` when only defaults and environment were used).
    """

    database: DatabaseConfig = Field(default_factory=DatabaseConfig)
    runner: RunnerConfig = Field(default_factory=RunnerConfig)
    retry: RetryConfig = Field(default_factory=RetryConfig)
    retention: RetentionConfig = Field(default_factory=RetentionConfig)
    progress: ProgressConfig = Field(default_factory=ProgressConfig)
    events: EventsConfig = Field(default_factory=EventsConfig)
    server: ServerConfig = Field(default_factory=ServerConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    job_types: list[JobTypeConfig] = Field(default_factory=list)
    schedules: list[ScheduleConfig] = Field(default_factory=list)
    source: Path | None = Field(default=None, strict=False, exclude=True)

    @field_validator("job_types")
    @classmethod
    def _unique_job_types(
        cls, value: list[JobTypeConfig], info: ValidationInfo
    ) -> list[JobTypeConfig]:
        _check_unique("job type", [item.name for item in value])
        retry = info.data.get("retry")
        if isinstance(retry, RetryConfig):
            _check_delays_against(retry, value)
        return value

    @field_validator("schedules")
    @classmethod
    def _unique_schedules(cls, value: list[ScheduleConfig]) -> list[ScheduleConfig]:
        _check_unique("schedule", [item.name for item in value])
        return value


def _check_delays_against(retry: RetryConfig, job_types: Sequence[JobTypeConfig]) -> None:
    """A job type's own retry delay bound must not fall below the base it inherits from
    ``[retry]`` (nor its own base below an inherited bound): the delay would silently be the
    bound."""
    for index, item in enumerate(job_types):
        if item.base_delay_s is None and item.max_delay_s is None:
            continue
        base = item.base_delay_s if item.base_delay_s is not None else retry.base_delay_s
        maximum = item.max_delay_s if item.max_delay_s is not None else retry.max_delay_s
        if maximum < base:
            key = "max_delay_s" if item.max_delay_s is not None else "base_delay_s"
            raise _located(
                f"max_delay_s ({_number(maximum)}) is below base_delay_s ({_number(base)});"
                " one of them comes from [retry]",
                (index, key),
            )


def _check_unique(what: str, names: Sequence[str]) -> None:
    first: dict[str, int] = {}
    for index, name in enumerate(names):
        if name in first:
            raise _located(
                f"duplicate {what} name {_show(name)} (already used by #{first[name] + 1})",
                (index, "name"),
            )
        first[name] = index


_NON_TOML_KEYS = frozenset({"source"})


# --------------------------------------------------------------------------------------------
# Job types declared in code

JOB_TYPE_OPTIONS: tuple[str, ...] = tuple(
    key for key in JobTypeConfig.model_fields if key not in ("name", "handler")
)
"""The policy options of a job type: the keys of a ``[[job_types]]`` table besides ``name``
and ``handler``, and the keyword arguments of ``EdgeJobs.register``."""

# A callable handler has no import path to check; the model still needs a valid one.
_CALLABLE_HANDLER = "edgejobs.code:handler"


def check_job_type(
    name: Any, handler: str | None, options: Mapping[str, Any], retry: RetryConfig
) -> JobTypeConfig:
    """Check a job type declared in code (``EdgeJobs.register``) by the rules of a
    ``[[job_types]]`` table: the same model and validators, so the two cannot drift.

    ``handler`` is the import path, or None for a callable (the result's ``handler`` is then
    a stand-in). ``options`` are the policy options given; ``retry`` is the ``[retry]``
    section whose delays the type inherits. Raises :class:`ValueError` with one line naming
    each bad option and what was expected, e.g.
    ``timeout_s: expected a number > 0 and <= 315360000, got nan``.
    """
    data = {"name": name, "handler": _CALLABLE_HANDLER if handler is None else handler}
    try:
        declared = JobTypeConfig.model_validate({**options, **data})
        _check_delays_against(retry, [declared])
    except PydanticValidationError as exc:
        errors = exc.errors()
        messages = list(dict.fromkeys(_describe_option(error) for error in errors))
        if any(error["type"] == "extra_forbidden" for error in errors):
            messages.append(f"the options are {', '.join(JOB_TYPE_OPTIONS)}")
        raise ValueError("; ".join(messages)) from None
    except PydanticCustomError as exc:  # from _check_delays_against: one option
        context = exc.context or {}
        raise ValueError(f"{context['subloc'][-1]}: {context['message']}") from None
    return declared


def _describe_option(error: Mapping[str, Any]) -> str:
    """One error of :func:`check_job_type` as ``<option>: <what was expected>``."""
    loc: tuple[int | str, ...] = tuple(error["loc"])
    key = str(loc[-1]) if loc else ""
    ctx: Mapping[str, Any] = error.get("ctx") or {}
    if error["type"] == "extra_forbidden":
        close = difflib.get_close_matches(key, JOB_TYPE_OPTIONS, n=1)
        suggestion = f" (did you mean {close[0]!r}?)" if close else ""
        return f"unknown option {key!r}{suggestion}"
    if error["type"] in ("value_error", "assertion_error") and "error" in ctx:
        return f"{key}: {ctx['error']}"
    return f"{key}: expected {_expected(('job_types', 0, *loc))}, got {_show(error.get('input'))}"


# --------------------------------------------------------------------------------------------
# Loading


@dataclass(frozen=True)
class _Origin:
    """Where a value that did not come from the file came from."""

    label: str  # "environment" or "command line"
    variable: str | None = None  # the environment variable, if any


def load_config(
    path: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Load the configuration: defaults < file < environment < ``overrides``.

    ``path`` (or ``$EDGEJOBS_CONFIG``) names the file; either must exist. Without both,
    ``./edgejobs.toml`` is read if it exists, else only defaults apply. ``environ`` defaults
    to :data:`os.environ`; empty variables count as unset. ``overrides`` maps dotted keys to
    values (command-line flags), e.g. ``{"server.port": 9000, "database.path": "x.db"}``;
    ``None`` values are skipped, so unset flags can be passed as they are.

    ``database.path`` is made absolute: a path from the file (or the default, when a file
    was read) is relative to the file's folder; one from ``EDGEJOBS_DB`` or ``overrides``
    (or the default without a file) is relative to the current folder. ``~`` is expanded;
    ``:memory:`` is refused (the queue needs a real file).

    Raises :class:`~edgejobs.errors.ConfigError` with a one-line message for every problem.
    """
    env: Mapping[str, str] = os.environ if environ is None else environ
    file, label = _locate(path, env)
    data: dict[str, Any] = _read_toml(file, label) if file is not None else {}
    reserved = sorted(_NON_TOML_KEYS & data.keys())
    if reserved:
        raise ConfigError(f"{label}: unknown key {reserved[0]!r}")

    origins: dict[tuple[int | str, ...], _Origin] = {}
    _apply_environment(data, env, origins)
    if overrides:
        _apply_overrides(data, overrides, origins)

    try:
        config = Config.model_validate(data)
    except PydanticValidationError as exc:
        raise ConfigError(_describe_errors(exc, label, origins)) from None

    db_path = config.database.path
    from_file = file is not None and ("database", "path") not in origins
    base = file.parent if from_file and file is not None else Path.cwd()
    db_path = db_path.expanduser()
    if not db_path.is_absolute():
        db_path = base / db_path
    return config.model_copy(
        update={
            "database": config.database.model_copy(update={"path": db_path}),
            "source": file,
        }
    )


load = load_config
"""Alias of :func:`load_config` (the name ARCHITECTURE.md uses)."""


def config_path(
    path: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None
) -> Path:
    """The config file of a command: ``path``, else ``$EDGEJOBS_CONFIG``, else
    ``./edgejobs.toml`` (``~`` expanded; it need not exist).

    :func:`load_config` reads it and ``edgejobs init`` writes it, so a file written by
    ``init`` is the one every other command then reads.
    """
    env: Mapping[str, str] = os.environ if environ is None else environ
    if path is not None:
        return Path(path).expanduser()
    return Path(env.get("EDGEJOBS_CONFIG") or DEFAULT_CONFIG_NAME).expanduser()


def _locate(path: str | os.PathLike[str] | None, env: Mapping[str, str]) -> tuple[Path | None, str]:
    """The config file to read (absolute) and how to name it in messages."""
    file = config_path(path, env)
    if path is not None:
        label = os.fspath(path)
        explicit_label = label
    elif env.get("EDGEJOBS_CONFIG"):
        label = env["EDGEJOBS_CONFIG"]
        explicit_label = f"environment: EDGEJOBS_CONFIG: {label}"
    elif file.is_file():
        return file.absolute(), DEFAULT_CONFIG_NAME
    else:
        return None, "configuration"
    if not file.exists():
        raise ConfigError(f"{explicit_label}: config file not found")
    if not file.is_file():
        raise ConfigError(f"{explicit_label}: expected a config file, got a directory")
    return file.absolute(), label


def _read_toml(file: Path, label: str) -> dict[str, Any]:
    try:
        with file.open("rb") as handle:
            return tomllib.load(handle)
    except tomllib.TOMLDecodeError as exc:
        reason = str(exc).splitlines()[0] if str(exc) else "syntax error"
        where = re.search(r"\s*\(at line (\d+), column (\d+)\)$", reason)
        if where is not None:
            reason = reason[: where.start()]
            position = f"line {where.group(1)}, column {where.group(2)}"
        else:
            reason = re.sub(r"\s*\(at end of document\)$", "", reason)
            lines = file.read_bytes().count(b"\n") + 1
            position = f"line {lines} (end of file)"
        raise ConfigError(f"{label}: {position}: invalid TOML: {reason}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{label}: invalid TOML: not UTF-8 text (byte {exc.start})") from None
    except RecursionError:  # the TOML reader recurses into nested arrays and inline tables
        raise ConfigError(f"{label}: invalid TOML: arrays or tables nested too deeply") from None
    except OSError as exc:
        raise ConfigError(f"{label}: cannot read config file: {exc.strerror or exc}") from None


def _set(data: dict[str, Any], keys: Sequence[str], value: Any) -> bool:
    """Set ``data[k0][k1]...= value``, creating tables; False when a non-table is in the way."""
    node = data
    for key in keys[:-1]:
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        elif isinstance(child, dict):
            child = node[key] = dict(child)
        else:
            return False
        node = child
    node[keys[-1]] = value
    return True


def _apply_environment(
    data: dict[str, Any], env: Mapping[str, str], origins: dict[tuple[int | str, ...], _Origin]
) -> None:
    port = env.get("EDGEJOBS_PORT", "").strip()
    port_value: int | None = None
    if port:
        if re.fullmatch(r"[0-9]+", port) is None:
            expected = _expected(("server", "port"))
            raise ConfigError(
                f"environment: EDGEJOBS_PORT ([server] port): expected {expected}, "
                f"got {_show(env['EDGEJOBS_PORT'])}"
            )
        port_value = int(port)
    hosts = env.get("EDGEJOBS_ALLOWED_HOSTS", "").strip()
    # Comma-separated; empty entries (a trailing comma) are skipped. Each entry is checked
    # like the file's, the error naming the variable.
    hosts_value = [entry.strip() for entry in hosts.split(",") if entry.strip()] if hosts else None
    settings: list[tuple[str, tuple[str, str], Any]] = [
        ("EDGEJOBS_DB", ("database", "path"), env.get("EDGEJOBS_DB") or None),
        ("EDGEJOBS_HOST", ("server", "host"), env.get("EDGEJOBS_HOST") or None),
        ("EDGEJOBS_PORT", ("server", "port"), port_value),
        ("EDGEJOBS_ALLOWED_HOSTS", ("server", "allowed_hosts"), hosts_value),
    ]
    for variable, keys, value in settings:
        if value is not None and _set(data, keys, value):
            origins[keys] = _Origin("environment", variable)


def _apply_overrides(
    data: dict[str, Any],
    overrides: Mapping[str, Any],
    origins: dict[tuple[int | str, ...], _Origin],
) -> None:
    for dotted, value in overrides.items():
        if value is None:
            continue
        keys = tuple(str(dotted).split("."))
        if not all(keys):
            raise ConfigError(f"command line: invalid config key {str(dotted)!r}")
        if keys[0] in _NON_TOML_KEYS:
            raise ConfigError(f"command line: unknown key {keys[0]!r}")
        if not _set(data, keys, copy.deepcopy(value)):
            raise ConfigError(f"command line: cannot set {dotted!r}: its parent is not a table")
        origins[keys] = _Origin("command line")


# --------------------------------------------------------------------------------------------
# Turning pydantic errors into one line


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The model class behind a field annotation (through ``list[...]`` and ``X | None``)."""
    annotation = _strip_none(annotation)
    if get_origin(annotation) is list:
        args = get_args(annotation)
        annotation = args[0] if args else None
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def _strip_none(annotation: Any) -> Any:
    if get_origin(annotation) in (Union, types.UnionType):
        args = [arg for arg in get_args(annotation) if arg is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _walk(loc: Sequence[int | str]) -> tuple[type[BaseModel] | None, FieldInfo | None, Any]:
    """Follow an error location from :class:`Config`: (owning model, field, annotation)."""
    owner: type[BaseModel] | None = None
    info: FieldInfo | None = None
    annotation: Any = Config
    for part in loc:
        if isinstance(part, int):
            if get_origin(_strip_none(annotation)) is not list:
                return None, None, None
            args = get_args(_strip_none(annotation))
            annotation, info = (args[0] if args else Any), None
            continue
        model = _model_of(annotation)
        if model is None or part not in model.model_fields:
            return None, None, None
        owner, info = model, model.model_fields[part]
        annotation = info.annotation
    return owner, info, annotation


def _describe_type(annotation: Any, info: FieldInfo | None, key: str | None) -> str:
    """``an integer >= 1``, ``"normal" or "full"``, ``a table``... for one field."""
    annotation = _strip_none(annotation)
    if key in _HINTS and annotation is str:
        return _HINTS[key]
    origin = get_origin(annotation)
    if origin is Literal:
        return _or_list([json.dumps(value) for value in get_args(annotation)])
    if origin is list:
        if _model_of(annotation) is not None:
            return "an array of tables"
        return "an array of strings" if get_args(annotation) == (str,) else "an array"
    if origin is dict or _model_of(annotation) is not None:
        return "a table"
    names = {bool: "true or false", int: "an integer", float: "a number", Path: "a file path"}
    if annotation is str:
        text = "a string"
    elif annotation in names:
        text = names[annotation]
    else:
        text = "a value"
    limits: dict[str, Any] = {}
    for item in info.metadata if info is not None else []:
        for attr in ("ge", "gt", "le", "lt", "min_length"):
            if getattr(item, attr, None) is not None:
                limits[attr] = getattr(item, attr)
    if limits.get("min_length") == 1 and annotation is str:
        text = "a non-empty string"
    if "ge" in limits and "le" in limits:
        return f"{text} between {_show(limits['ge'])} and {_show(limits['le'])}"
    bounds = [
        f"{symbol} {_show(limits[attr])}"
        for attr, symbol in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"))
        if attr in limits
    ]
    return f"{text} {' and '.join(bounds)}" if bounds else text


def _or_list(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} or {items[-1]}"


def _expected(loc: Sequence[int | str]) -> str:
    _, info, annotation = _walk(loc)
    key = loc[-1] if loc and isinstance(loc[-1], str) else None
    return _describe_type(annotation, info, key) if annotation is not None else "a valid value"


def _where(loc: Sequence[int | str], *, table: bool = False) -> str:
    """TOML spelling of a location: ``[runner] workers``, ``[[job_types]] #2 timeout_s``.

    A lone section name is spelled as a key (``runner``) unless ``table`` asks for the table
    header (``[runner]``), as in "[runner] unknown key 'x'".
    """
    if not loc:
        return ""
    head, rest = loc[0], list(loc[1:])
    model = _model_of(Config.model_fields[head].annotation) if head in Config.model_fields else None
    is_array = (
        head in Config.model_fields and get_origin(Config.model_fields[head].annotation) is list
    )
    if not rest:
        return f"[{head}]" if table and model is not None and not is_array else str(head)
    if is_array and isinstance(rest[0], int):
        text = f"[[{head}]] #{rest[0] + 1}"
        rest = rest[1:]
    elif model is not None:
        text = f"[{head}]"
    else:
        text = str(head)
    if rest:
        text += " " + ".".join(str(part) for part in rest)
    return text


def _suggest(loc: Sequence[int | str], key: str) -> str:
    owner_loc = list(loc[:-1])
    _, _, annotation = _walk(owner_loc)
    model = _model_of(annotation) if owner_loc else Config
    if model is None:
        return ""
    known = [name for name in model.model_fields if name not in _NON_TOML_KEYS]
    close = difflib.get_close_matches(key, known, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _describe_error(
    error: Mapping[str, Any], file_label: str, origins: Mapping[tuple[int | str, ...], _Origin]
) -> str:
    loc: tuple[int | str, ...] = tuple(error["loc"])
    kind: str = error["type"]
    ctx: Mapping[str, Any] = error.get("ctx") or {}
    if kind == "edgejobs_located":
        loc += tuple(ctx.get("subloc", ()))

    origin = next(
        (origins[loc[:n]] for n in range(len(loc), 0, -1) if loc[:n] in origins),
        None,
    )
    label = origin.label if origin is not None else file_label
    where = _where(loc)
    if origin is not None and origin.variable is not None:
        where = f"{origin.variable} ({where})"

    key = loc[-1] if loc else ""
    if kind == "extra_forbidden":
        suggestion = _suggest(loc, str(key))
        if len(loc) == 1:
            if isinstance(error.get("input"), dict):
                return f"{label}: unknown section [{key}]{suggestion}"
            return f"{label}: unknown key {str(key)!r}{suggestion}"
        return f"{label}: {_where(loc[:-1], table=True)} unknown key {str(key)!r}{suggestion}"
    if kind == "missing":
        return f"{label}: {where}: required key is missing (expected {_expected(loc)})"
    if kind == "edgejobs_located":
        text = str(ctx.get("message", error.get("msg", "")))
    elif kind in ("value_error", "assertion_error") and "error" in ctx:
        text = str(ctx["error"])
    else:
        text = f"expected {_expected(loc)}, got {_show(error.get('input'))}"
    return f"{label}: {where}: {text}" if where else f"{label}: {text}"


def _describe_errors(
    exc: PydanticValidationError, file_label: str, origins: Mapping[tuple[int | str, ...], _Origin]
) -> str:
    """All of a ValidationError's errors on one line, joined by ``"; "`` (at most five)."""
    messages: list[str] = []
    for error in exc.errors():
        message = " ".join(_describe_error(error, file_label, origins).split())
        if message not in messages:
            messages.append(message)
    shown = messages[:5]
    if len(messages) > len(shown):
        shown.append(f"and {len(messages) - len(shown)} more")
    # "file: a; file: b" reads better as "file: a; b".
    prefix = f"{file_label}: "
    if all(message.startswith(prefix) for message in shown[1:]):
        shown[1:] = [message.removeprefix(prefix) for message in shown[1:]]
    return "; ".join(shown)


# --------------------------------------------------------------------------------------------
# The documented default file

_HEADER = """\
# edgejobs configuration (https://toml.io).
#
# Every key is optional: the values below are the defaults, so this file may be trimmed to
# what you change. Unknown keys, wrong types and impossible values are refused at start.
# Command-line flags override environment variables, which override this file:
#   EDGEJOBS_CONFIG (path of this file), EDGEJOBS_DB, EDGEJOBS_HOST, EDGEJOBS_PORT,
#   EDGEJOBS_ALLOWED_HOSTS (comma-separated)."""


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        return json.dumps(str(value))
    if isinstance(value, dict):
        items = ", ".join(
            f"{key if re.fullmatch(r'[A-Za-z0-9_-]+', key) else json.dumps(key)} = "
            f"{_toml_value(item)}"
            for key, item in value.items()
        )
        return f"{{ {items} }}" if items else "{}"
    if isinstance(value, list):
        return f"[{', '.join(_toml_value(item) for item in value)}]"
    raise TypeError(f"no TOML spelling for {value!r}")


def _first_line(doc: str | None) -> str:
    return (doc or "").strip().splitlines()[0] if doc and doc.strip() else ""


def default_config_text() -> str:
    """The commented ``edgejobs.toml`` that ``edgejobs init`` writes (and the repo ships).

    It lists every key of every section with its default and a one-line comment; the
    ``[[job_types]]`` and ``[[schedules]]`` examples are commented out. It is generated from
    the models, so it cannot drift from them, and it loads back to the defaults.
    """
    rows: list[tuple[str, str, str] | str] = [_HEADER]
    for section, field in Config.model_fields.items():
        model = _model_of(field.annotation)
        if model is None or section in _NON_TOML_KEYS:
            continue
        rows.append("")
        if get_origin(field.annotation) is list:
            rows.append(f"# {_first_line(model.__doc__)}")
            rows.append("# Example (uncomment and adapt):")
            rows.append(f"# [[{section}]]")
            for key, info in model.model_fields.items():
                if info.is_required():
                    note = "required"
                elif info.default is None:
                    note = ""
                else:
                    note = f"default: {_toml_value(info.get_default(call_default_factory=True))}"
                description = info.description or ""
                if note:
                    description = f"{description} ({note})" if description else note
                example = (info.examples or [info.get_default(call_default_factory=True)])[0]
                rows.append(("# ", f"{key} = {_toml_value(example)}", description))
        else:
            rows.append(f"# {_first_line(model.__doc__)}")
            rows.append(f"[{section}]")
            for key, info in model.model_fields.items():
                default = info.get_default(call_default_factory=True)
                if default is None:  # no TOML spelling for "unset": an example, commented out
                    example = (info.examples or [""])[0]
                    rows.append(("# ", f"{key} = {_toml_value(example)}", info.description or ""))
                    continue
                rows.append(("", f"{key} = {_toml_value(default)}", info.description or ""))
    width = max(len(row[0]) + len(row[1]) for row in rows if isinstance(row, tuple)) + 2
    lines = [
        row
        if isinstance(row, str)
        else (f"{row[0]}{row[1]}".ljust(width) + f"# {row[2]}" if row[2] else row[0] + row[1])
        for row in rows
    ]
    return "\n".join(line.rstrip() for line in lines) + "\n"
