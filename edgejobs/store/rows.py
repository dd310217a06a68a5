"""Turning stored rows into domain objects and event payloads (no SQL here)."""

from __future__ import annotations

import dataclasses
import json
import json.encoder
import json.scanner
import sqlite3
from collections.abc import Callable
from typing import Any, Protocol

from edgejobs.models import TERMINAL, Attempt, Job, JobError, Outcome, Priority, Status, iso_ms


class RowLike(Protocol):
    """A stored row: a :class:`sqlite3.Row` or a dict with the same column names."""

    def __getitem__(self, key: str, /) -> Any: ...


_canonical_json = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode


def _not_serializable(value: Any) -> Any:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _strict_encoder() -> Callable[[Any], str]:
    """Compact, sorted-key JSON with NaN and infinities refused, for :func:`strict_dumps`.

    The C encoder that ``json.JSONEncoder(sort_keys=True, separators=(",", ":"),
    ensure_ascii=False, allow_nan=False).encode`` builds anew at every call, built once: params
    are encoded for every submitted job, on the event loop before the batch can be written,
    and the encoder's set-up cost more than encoding a small object (0.65 against 1.8 µs). It
    keeps no table of the containers it is inside, so a value that contains itself ends in
    RecursionError, as one nested too deep does.
    """
    make_encoder = json.encoder.c_make_encoder  # type: ignore[attr-defined]
    if make_encoder is None:  # without CPython's C accelerator: the plain encoder
        return json.JSONEncoder(
            sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        ).encode
    encode = make_encoder(
        None, _not_serializable, json.encoder.encode_basestring, None, ":", ",", True, False, False
    )
    return lambda value: "".join(encode(value, 0))


_strict_encode = _strict_encoder()


MAX_JSON_DEPTH = 200
"""Deepest nesting of arrays and objects in stored params and results. Decoding JSON recurses
once per level from wherever the reader's stack already is: a value stored just short of
Python's recursion limit could not be read back, and every read of its job (``get``,
``wait``, a listing that held it) failed with ``RecursionError``."""

TERMINAL_STATUS_SQL = (
    "("
    + " OR ".join("status = '" + status.value + "'" for status in Status if status in TERMINAL)
    + ")"
)
"""A row's status is terminal (:data:`~edgejobs.models.TERMINAL`, in the order of
:class:`~edgejobs.models.Status`), as the partial indexes ``jobs_finished`` and ``jobs_dedup``
(migration 0012) say it: a query that must read one of them repeats this condition (or its
``NOT``) word for word, since SQLite uses a partial index only for a query whose WHERE implies
the index's. Comparisons, not ``status IN (...)``: SQLite evaluates the index's condition at
every insert and status change, and built an IN list's lookup table anew each time."""


def nested_too_deep(value: Any, text: str) -> bool:
    """Whether ``value`` (whose JSON is ``text``) nests arrays and objects deeper than
    :data:`MAX_JSON_DEPTH` levels. Iterative, and skipped when the text has too few brackets
    to nest that deep (the common case: a count in C instead of a walk in Python)."""
    if text.count("[") + text.count("{") <= MAX_JSON_DEPTH:
        return False
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if not isinstance(item, dict | list | tuple):
            continue  # (the top value may be a string with brackets in its text)
        if depth > MAX_JSON_DEPTH:
            return True
        children = item.values() if isinstance(item, dict) else item
        stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list | tuple))
    return False


def strict_dumps(value: Any) -> str:
    """:func:`dumps` for what callers send (job params): NaN and infinities are refused
    (``ValueError``), as JSON has no such numbers; a value that contains itself raises
    ``RecursionError``."""
    return _strict_encode(value)


def dumps(value: Any) -> str:
    """Canonical compact JSON: sorted keys, no spaces (also what dedup hashes).

    One encoder for every call: ``json.dumps`` with options builds a new encoder each time,
    which costs more than encoding a small object (this runs for every submit and result).
    """
    if value is None:
        return "null"  # what most handlers return
    return _canonical_json(value)


def _error(text: str | None) -> JobError | None:
    if not text:
        return None
    data = json.loads(text)
    return JobError(type=data["type"], message=data["message"], traceback=data.get("traceback"))


def estimate_eta_s(row: RowLike, mean_ms: float | None, now_ms: int) -> float | None:
    """Seconds left for a job, or None when there is nothing to base an estimate on.

    A running job that reports progress is extrapolated from its own rate
    (elapsed / progress * remaining); otherwise from this job type's mean run duration minus
    the time already spent. A job that has not started yet needs the whole mean duration.
    """
    status = row["status"]
    if status in ("completed", "failed", "timed_out", "dead_letter", "canceled"):
        return None
    if status == "running" and row["started_at"] is not None:
        elapsed = float(max(0, now_ms - int(row["started_at"])))
        progress = float(row["progress"] or 0)
        if 0 < progress < 100 and elapsed > 0:
            return round(elapsed / progress * (100 - progress) / 1000, 1)
        if progress >= 100:
            return 0.0
        if mean_ms is not None:
            return round(max(0.0, mean_ms - elapsed) / 1000, 1)
        return None
    return round(mean_ms / 1000, 1) if mean_ms is not None else None


# A Job is built through its slots' own setters, in field order, instead of its generated
# ``__init__``: a frozen dataclass sets each of its 23 fields by ``object.__setattr__``, which
# made building one ~4 µs — and every job of a submission is returned as one (20,000 for one
# ``submit_many``, built on the writer thread while it holds the transaction).
_JOB_SETTERS = tuple(getattr(Job, field.name).__set__ for field in dataclasses.fields(Job))
_STATUSES = {status.value: status for status in Status}


# (The C scanner, where CPython has it; typeshed types make_scanner as a class of its own.)
_scan_json = json.scanner.make_scanner(json.JSONDecoder())  # type: ignore[arg-type]


def load_stored(text: str) -> Any:
    """A JSON value this engine stored (params, a result): ``json.loads``, less its Python
    wrappers (~1.1 of its 1.5 µs for small params, paid for every job of a submission). What
    the scanner does not take whole (never our own canonical JSON) goes through
    ``json.loads``, which says what is wrong with it."""
    try:
        value, end = _scan_json(text, 0)
    except StopIteration:
        return json.loads(text)
    return value if end == len(text) else json.loads(text)


def job_from_row(
    row: RowLike,
    *,
    depends_on: tuple[str, ...] = (),
    dependents: tuple[str, ...] = (),
    eta_s: float | None = None,
    deduplicated: bool = False,
) -> Job:
    """A :class:`Job` from a full ``jobs`` row."""
    result = row["result"]
    error = row["error"]
    values = (
        row["id"],
        row["org"],
        row["job_type"],
        _STATUSES[row["status"]],
        Priority.from_rank(row["priority"]),
        load_stored(row["params"]),
        load_stored(result) if result is not None else None,
        _error(error) if error else None,
        float(row["progress"]),
        row["progress_message"],
        row["attempts"],
        row["max_retries"],
        depends_on,
        dependents,
        row["run_at"],
        row["next_retry_at"],
        row["created_at"],
        row["started_at"],
        row["finished_at"],
        row["updated_at"],
        row["cancel_reason"],
        eta_s,
        deduplicated,
    )
    job = object.__new__(Job)
    for set_field, value in zip(_JOB_SETTERS, values, strict=True):
        set_field(job, value)
    return job


JOB_EVENT_FIELDS = (
    "status",
    "job_type",
    "priority",
    "error_type",
    "error_message",
    "progress",
    "progress_message",
    "attempts",
    "max_retries",
    "run_at",
    "next_retry_at",
    "created_at",
    "started_at",
    "finished_at",
    "updated_at",
    "cancel_reason",
)
"""What a stored ``job`` event holds, in order: a JSON array of these values (the event row's
own columns give the job's id and org). Priority is its rank, times integer milliseconds:
compact, because an event is written for every status change (three or more per job) and its
bytes go through the WAL of the hottest commits. Readers decode it by name
(:func:`job_event_fields`); the API form is built when a stream sends it
(:func:`render_job_event`)."""

_EVENT_TIME_FIELDS = tuple(name for name in JOB_EVENT_FIELDS if name.endswith("_at"))


def job_event_path(name: str) -> str:
    """The JSON path of field ``name`` in a stored ``job`` event, for SQL's ``json_extract``
    (passed as a bound parameter, so queries follow :data:`JOB_EVENT_FIELDS`)."""
    return f"$[{JOB_EVENT_FIELDS.index(name)}]"


def job_event_fields(data: str) -> dict[str, Any]:
    """A stored ``job`` event's values by field name (see :data:`JOB_EVENT_FIELDS`)."""
    return dict(zip(JOB_EVENT_FIELDS, json.loads(data), strict=True))


@dataclasses.dataclass(frozen=True, slots=True)
class JobEventExtras:
    """What a ``job`` event's job object shows beyond its stored array, read from the job's
    row when the event is read (:mod:`edgejobs.store.events`); every field None once the job
    was deleted."""

    params: str | None
    """The job's params (canonical JSON)."""
    result: str | None
    """The job's result (JSON) when the event is the job's completion; None otherwise."""
    depends_on: str | None
    """The parents' ids (a JSON array, submission order)."""
    dependents: str | None
    """The children's ids (a JSON array, submission order)."""
    traceback: str | None
    """The traceback of the event's error."""
    mean_ms: float | None
    """The job type's mean run duration, for the event's ETA."""


def render_job_event(data: str, job_id: str, org: str, extras: JobEventExtras | None = None) -> str:
    """The API form (SPEC §6: the job object, ISO times) of a stored ``job`` event of the job
    ``job_id`` of ``org``, completed by ``extras``; its ETA is the one at the event's time."""
    fields = job_event_fields(data)
    eta_s = None
    if extras is not None:
        eta_s = estimate_eta_s(fields, extras.mean_ms, fields["updated_at"])
    for name in _EVENT_TIME_FIELDS:
        value = fields[name]
        if value is not None:
            fields[name] = iso_ms(value)
    error = None
    if fields["error_type"] is not None:
        error = {
            "type": fields["error_type"],
            "message": fields["error_message"],
            "traceback": extras.traceback if extras else None,
        }
    payload = {
        "id": job_id,
        "org": org,
        "job_type": fields["job_type"],
        "status": fields["status"],
        "priority": _PRIORITY_NAMES[fields["priority"]],
        "params": _json_or_none(extras.params if extras else None),
        "result": _json_or_none(extras.result if extras else None),
        "error": error,
        "progress": fields["progress"],
        "progress_message": fields["progress_message"],
        "attempts": fields["attempts"],
        "max_retries": fields["max_retries"],
        "depends_on": _json_or_none(extras.depends_on if extras else None) or [],
        "dependents": _json_or_none(extras.dependents if extras else None) or [],
        "run_at": fields["run_at"],
        "next_retry_at": fields["next_retry_at"],
        "created_at": fields["created_at"],
        "started_at": fields["started_at"],
        "finished_at": fields["finished_at"],
        "updated_at": fields["updated_at"],
        "cancel_reason": fields["cancel_reason"],
        "eta_s": eta_s,
    }
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False)


def _json_or_none(text: str | None) -> Any:
    return json.loads(text) if text is not None else None


_PRIORITY_NAMES = {p.rank: p.value for p in Priority}


def attempt_from_row(job_id: str, row: sqlite3.Row) -> Attempt:
    """An :class:`Attempt` from an ``attempts`` row."""
    error = None
    if row["error_type"] is not None:
        error = JobError(row["error_type"], row["error_message"] or "", row["traceback"])
    return Attempt(
        job_id=job_id,
        number=row["number"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        outcome=Outcome(row["outcome"]) if row["outcome"] else None,
        error=error,
    )
