"""Logging for a box nobody watches: one line per record, human or JSON, never a secret.

* :func:`configure` installs one stderr handler on the root logger (uvicorn's loggers
  propagate to it), with the human format (default) or JSON lines (``--log-format json``).
* Job log lines carry ``job_id``, ``org`` and ``job_type`` (and ``attempt``) as record
  attributes: pass ``extra=job_fields(...)`` or log through :func:`job_logger`. Human lines
  show them as ``key=value`` after the message; JSON lines as fields.
* :class:`RedactingFilter` replaces anything that looks like a token secret (``ej_…``), a
  bearer credential, or the value of an ``Authorization``/``Cookie`` header or a
  ``token``/``secret``/``password`` field, in the message, the traceback and every extra
  field, before any formatter sees it.
* User data cannot forge log lines: newlines and other control characters in a human line
  are escaped (``\\n``, ``\\x1b``); a traceback's lines are indented under their record.
  JSON escapes them by itself.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Callable, Mapping, MutableMapping
from typing import IO, Any

__all__ = [
    "JOB_FIELDS",
    "HumanFormatter",
    "JobLogAdapter",
    "JsonFormatter",
    "RedactingFilter",
    "RepeatLimiter",
    "configure",
    "escape",
    "job_fields",
    "job_logger",
    "redact",
]

JOB_FIELDS = ("job_id", "org", "job_type", "attempt")
"""Record attributes that identify a job, in the order human lines show them."""

REDACTED = "[redacted]"

# A token secret: "ej_" then at least 8 token characters, not glued to a longer word.
_TOKEN = re.compile(r"(?<![A-Za-z0-9])ej_[A-Za-z0-9_\-]{8,}")
# "Bearer <credential>" / "Basic <credential>" wherever it appears.
_SCHEME = re.compile(r"(?i)\b(bearer|basic)(\s+)[A-Za-z0-9._~+/=\-]+")
# The value of a credential header or field: `Authorization: …`, `"token": "…"`,
# `X-CSRF-Token: …`, `metrics_token = …`.
_FIELD = re.compile(
    r"(?i)((?:authorization|csrf[_-]?token|token|secret|password)[\"']?\s*[:=]\s*[\"']?)"
    r"(?:(?:bearer|basic)\s+)?[^\"'\s,;}&]+"
)
# A cookie header holds several credentials: its whole value goes.
_COOKIE = re.compile(r"(?i)((?:set-)?cookie[\"']?\s*[:=]\s*[\"']?)[^\"'\r\n]+")
# Control characters (C0, DEL, C1) and the Unicode line/paragraph separators.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
    "color_message",  # uvicorn's colored duplicate of the message
}


def redact(text: str) -> str:
    """``text`` with every credential-looking substring replaced by ``[redacted]``."""
    text = _COOKIE.sub(lambda m: f"{m.group(1)}{REDACTED}", text)
    text = _FIELD.sub(lambda m: f"{m.group(1)}{REDACTED}", text)
    text = _SCHEME.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", text)
    return _TOKEN.sub(REDACTED, text)


def escape(text: str) -> str:
    """``text`` on one line: newlines, tabs and other control characters as escapes."""
    return _CONTROL.sub(lambda m: _NAMED.get(m.group()) or _code(ord(m.group())), text)


def _code(point: int) -> str:
    return f"\\x{point:02x}" if point <= 0xFF else f"\\u{point:04x}"


def job_fields(job_id: str, org: str, job_type: str, attempt: int | None = None) -> dict[str, Any]:
    """The ``extra=`` of a job log line."""
    fields: dict[str, Any] = {"job_id": job_id, "org": org, "job_type": job_type}
    if attempt is not None:
        fields["attempt"] = attempt
    return fields


class JobLogAdapter(logging.LoggerAdapter[logging.Logger]):
    """A logger that adds a job's fields to every record (merged with a call's own ``extra``)."""

    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        """Merge the job's fields under the call's ``extra``."""
        kwargs["extra"] = {**(self.extra or {}), **(kwargs.get("extra") or {})}
        return msg, kwargs


def job_logger(
    logger: logging.Logger, job_id: str, org: str, job_type: str, attempt: int | None = None
) -> JobLogAdapter:
    """``logger`` bound to one job: every line it writes names the job, org and type."""
    return JobLogAdapter(logger, job_fields(job_id, org, job_type, attempt))


class RepeatLimiter:
    """Logs a recurring failure once, then at most once per ``interval_s`` with how often it
    recurred meanwhile (``... (312 more times in the last 60 s)``).

    For the loops that retry a failed write every half second or every tick: a full disk or a
    lock held for an hour must not write thousands of identical lines (to a disk that may be
    the full one). One instance per loop; identical means the same logger and text.
    """

    _MAX_KEYS = 64

    def __init__(
        self, interval_s: float = 60.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.interval_s = interval_s
        self._clock = clock
        self._seen: dict[tuple[str, str], tuple[float, int]] = {}

    def warning(self, logger: logging.Logger, msg: str, *args: Any) -> None:
        """``logger.warning(msg, *args)``, unless the same text was logged within the interval."""
        self._log(logger, logging.WARNING, msg % args if args else msg, None)

    def error(
        self,
        logger: logging.Logger,
        msg: str,
        *args: Any,
        exc_info: BaseException | None = None,
    ) -> None:
        """``logger.error(msg, *args)`` limited like :meth:`warning`; ``exc_info``'s traceback
        goes with the first line only (the same failure again has the same one)."""
        self._log(logger, logging.ERROR, msg % args if args else msg, exc_info)

    def _log(
        self, logger: logging.Logger, level: int, text: str, exc_info: BaseException | None
    ) -> None:
        key = (logger.name, text)
        now = self._clock()
        seen = self._seen.get(key)
        if seen is not None and now - seen[0] < self.interval_s:
            self._seen[key] = (seen[0], seen[1] + 1)
            return
        if len(self._seen) >= self._MAX_KEYS:
            self._seen.clear()
        self._seen[key] = (now, 0)
        if seen is None:
            logger.log(level, "%s", text, exc_info=exc_info)
        elif seen[1]:
            logger.log(level, "%s (%d more times in the last %.0f s)", text, seen[1], now - seen[0])
        else:
            logger.log(level, "%s", text)


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    """The record's ``extra=`` fields, job fields first."""
    found = {key: value for key, value in vars(record).items() if key not in _STANDARD}
    ordered = {key: found.pop(key) for key in JOB_FIELDS if key in found}
    ordered.update((key, value) for key, value in sorted(found.items()) if not key.startswith("_"))
    return ordered


class RedactingFilter(logging.Filter):
    """Removes credentials from a record (message, traceback, extras) before it is formatted.

    Attached to the handler, so it covers every logger that propagates to it. The record is
    rewritten in place: its message is formatted once and its arguments dropped.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Redact ``record``; always keep it."""
        try:
            message = record.getMessage()
        except Exception:  # a bad format string must not break the caller
            message = f"{record.msg!r} % {record.args!r}"
        record.msg = redact(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        for key, value in _extras(record).items():
            if isinstance(value, str):
                setattr(record, key, redact(value))
            elif isinstance(value, Mapping | list | tuple):
                setattr(record, key, redact(json.dumps(value, default=str)))
        return True


def _timestamp(record: logging.LogRecord) -> str:
    """ISO 8601 UTC with milliseconds and ``Z``."""
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
    return f"{seconds}.{int(record.msecs):03d}Z"


def _traceback(record: logging.LogRecord) -> str | None:
    text = record.exc_text
    if not text and record.exc_info:
        text = logging.Formatter().formatException(record.exc_info)
    if record.stack_info:
        text = f"{text}\n{record.stack_info}" if text else record.stack_info
    return text or None


class HumanFormatter(logging.Formatter):
    """``2026-01-02T03:04:05.678Z WARNING edgejobs.runner: message job_id=… org=…``.

    One physical line per record; a traceback follows on lines indented by four spaces.
    """

    def format(self, record: logging.LogRecord) -> str:
        """One escaped line (plus an indented traceback)."""
        parts = [
            _timestamp(record),
            record.levelname,
            f"{record.name}:",
            escape(record.getMessage()),
        ]
        for key, value in _extras(record).items():
            text = escape(str(value))
            if not text or " " in text or '"' in text or "=" in text:
                text = json.dumps(text, ensure_ascii=False)
            parts.append(f"{escape(key)}={text}")
        line = " ".join(parts)
        trace = _traceback(record)
        if trace:
            line += "".join("\n    " + escape(row) for row in trace.rstrip("\n").split("\n"))
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts``, ``level``, ``logger``, ``message``, the job fields
    and other extras, and ``exc`` (the traceback) when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON."""
        data: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in _extras(record).items():
            data.setdefault(key, value)
        trace = _traceback(record)
        if trace:
            data["exc"] = trace
        return json.dumps(data, ensure_ascii=False, default=str)


_HANDLER_MARK = "_edgejobs_handler"


def configure(
    fmt: str = "human", level: str | int = "INFO", stream: IO[str] | None = None
) -> logging.Handler:
    """Send every log record to ``stream`` (default stderr) in ``fmt`` (``human``/``json``).

    Replaces a handler an earlier call installed (never anybody else's), makes uvicorn's
    loggers propagate here, and routes :mod:`warnings` into logging. Returns the handler.
    """
    if fmt not in ("human", "json"):
        raise ValueError(f"log format must be 'human' or 'json', got {fmt!r}")
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else HumanFormatter())
    handler.addFilter(RedactingFilter())
    setattr(handler, _HANDLER_MARK, True)
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, _HANDLER_MARK, False):
            root.removeHandler(old)
            old.close()
    root.addHandler(handler)
    unknown = None
    if isinstance(level, str) and not level.strip().isdigit():
        name = level.strip().upper()
        if isinstance(logging.getLevelName(name), int):
            level = name
        else:
            unknown, level = level, "INFO"
    root.setLevel(int(level) if isinstance(level, str) and level.strip().isdigit() else level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        uvicorn_logger = logging.getLogger(name)
        uvicorn_logger.handlers.clear()
        uvicorn_logger.propagate = True
    logging.captureWarnings(True)
    if unknown is not None:
        logging.getLogger("edgejobs").warning(
            "unknown log level %r; using INFO (expected DEBUG, INFO, WARNING or ERROR)", unknown
        )
    return handler
