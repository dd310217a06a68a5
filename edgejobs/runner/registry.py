"""Job types: a handler plus its policy, declared in code or in ``edgejobs.toml``."""

from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
import weakref
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from edgejobs.config import parse_rate_limit
from edgejobs.errors import ConfigError, UnknownJobType, ValidationError
from edgejobs.models import Priority
from edgejobs.retry import RetryPolicy

Handler = Callable[..., Any]

OVERRIDABLE = (
    "timeout_s",
    "max_retries",
    "priority",
    "concurrency",
    "org_concurrency",
    "rate_limit",
)
"""Policy keys an admin may override at runtime (SPEC §6 PATCH /job-types)."""


@dataclasses.dataclass(frozen=True, slots=True)
class JobType:
    """A registered job type with its effective policy."""

    name: str
    handler_ref: Handler | str
    timeout_s: float = 300.0
    max_retries: int = 3
    retry: RetryPolicy = RetryPolicy()
    priority: Priority = Priority.NORMAL
    concurrency: int | None = None
    org_concurrency: int | None = None
    rate_limit: str | None = None
    dedup: bool = True
    isolation: str = "thread"

    def handler(self) -> Handler:
        """The callable, importing ``package.module:function`` on first use."""
        if callable(self.handler_ref):
            return self.handler_ref
        return import_handler(self.handler_ref)

    @property
    def handler_path(self) -> str:
        """``module:qualname`` of the handler (what a child process imports)."""
        if isinstance(self.handler_ref, str):
            return self.handler_ref
        return f"{self.handler_ref.__module__}:{self.handler_ref.__qualname__}"

    @property
    def has_limits(self) -> bool:
        """Whether a ``concurrency`` or ``org_concurrency`` limit applies to this type."""
        return self.concurrency is not None or self.org_concurrency is not None

    @property
    def is_async(self) -> bool:
        """Whether the handler is a coroutine function."""
        return is_async_handler(self.handler())

    def policy(self) -> dict[str, Any]:
        """The policy as a JSON-ready dict (declared in the database, shown by the API)."""
        return {
            "timeout_s": self.timeout_s,
            "max_retries": self.max_retries,
            "base_delay_s": self.retry.base_delay_s,
            "max_delay_s": self.retry.max_delay_s,
            "jitter": self.retry.jitter,
            "priority": self.priority.value,
            "concurrency": self.concurrency,
            "org_concurrency": self.org_concurrency,
            "rate_limit": self.rate_limit,
            "dedup": self.dedup,
            "isolation": self.isolation,
        }

    def with_overrides(self, overrides: Mapping[str, Any]) -> JobType:
        """This type with runtime overrides applied (unknown keys are ignored)."""
        changes: dict[str, Any] = {}
        for key in OVERRIDABLE:
            if key in overrides and overrides[key] is not None:
                value = overrides[key]
                changes[key] = Priority(value) if key == "priority" else value
        return dataclasses.replace(self, **changes) if changes else self


_async_cache: weakref.WeakKeyDictionary[Handler, bool] = weakref.WeakKeyDictionary()


def is_async_handler(handler: Handler) -> bool:
    """Whether ``handler`` is a coroutine function (remembered per handler: inspect's check
    walks wrappers and flags, and it runs once per attempt)."""
    try:
        known = _async_cache.get(handler)
    except TypeError:  # not weak-referenceable (e.g. a builtin): just ask
        return _is_coroutine_callable(handler)
    if known is None:
        known = _is_coroutine_callable(handler)
        _async_cache[handler] = known
    return known


def _is_coroutine_callable(handler: Handler) -> bool:
    # Also an object whose __call__ is ``async def``: run in a thread, its coroutine was never
    # awaited and the handler's body never ran.
    return inspect.iscoroutinefunction(handler) or (
        not inspect.isroutine(handler) and inspect.iscoroutinefunction(type(handler).__call__)
    )


def import_path_of(handler: Handler) -> str | None:
    """``module:qualname`` of a handler when a child process can import it by that path, else
    None: a lambda, a function defined inside another (``<locals>``) or a callable without a
    module path (a ``functools.partial``, an instance)."""
    module = getattr(handler, "__module__", None)
    qualname = getattr(handler, "__qualname__", None)
    if not isinstance(module, str) or not isinstance(qualname, str):
        return None
    parts = [*module.split("."), *qualname.split(".")]
    return f"{module}:{qualname}" if all(part.isidentifier() for part in parts) else None


@functools.lru_cache(maxsize=512)
def import_handler(path: str) -> Handler:
    """Import ``package.module:function`` (a clear error when it cannot be found)."""
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"handler {path!r}: expected 'package.module:function'")
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        hint = ""
        if isinstance(exc, ModuleNotFoundError) and exc.name == module_name.split(".")[0]:
            hint = (
                " (is it importable by this Python? the edgejobs command adds the config"
                " file's folder and the current folder; else install the project or set"
                " PYTHONPATH)"
            )
        raise ConfigError(f"handler {path!r}: cannot import {module_name}: {exc}{hint}") from exc
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError as exc:
            raise ConfigError(f"handler {path!r}: {module_name} has no attribute {attr}") from exc
    if not callable(target):
        raise ConfigError(f"handler {path!r} is not callable")
    return target  # type: ignore[no-any-return]


class Registry:
    """The job types this process knows, plus runtime pause flags and overrides."""

    def __init__(self) -> None:
        self._types: dict[str, JobType] = {}
        self.paused: frozenset[str] = frozenset()
        self.overrides: dict[str, dict[str, Any]] = {}

    def add(self, job_type: JobType) -> None:
        """Register (or replace) a job type."""
        if job_type.rate_limit is not None:
            try:
                parse_rate_limit(job_type.rate_limit)
            except ValueError as exc:
                raise ValidationError(f"job type {job_type.name}: {exc}") from None
        if job_type.isolation == "process" and not isinstance(job_type.handler_ref, str):
            _check_importable(job_type.name, job_type.handler_ref)
        self._types[job_type.name] = job_type

    def __contains__(self, name: object) -> bool:
        return name in self._types

    def __iter__(self) -> Iterator[JobType]:
        return iter(self._types.values())

    def __len__(self) -> int:
        return len(self._types)

    def declared(self, name: str) -> JobType:
        """The type as declared (no overrides); :class:`UnknownJobType` if absent."""
        try:
            return self._types[name]
        except KeyError:
            raise UnknownJobType(f"unknown job type {name!r}") from None

    def get(self, name: str) -> JobType:
        """The type with its runtime overrides applied."""
        declared = self.declared(name)
        overrides = self.overrides.get(name)
        return declared.with_overrides(overrides) if overrides else declared

    def retry_policy(self, name: str) -> RetryPolicy:
        """Backoff policy of a type (the default one for types this process does not know)."""
        if name in self._types:
            return self._types[name].retry
        return RetryPolicy()


def _check_importable(name: str, handler: Callable[..., Any]) -> None:
    """A process-isolated handler is imported by the child process from its module path: one
    that has none failed every attempt (and every retry) in the child; refuse it up front."""
    if import_path_of(handler) is not None:
        return
    qualname = getattr(handler, "__qualname__", None)
    if not isinstance(qualname, str):
        what = f"a {type(handler).__name__} object, which has no module path"
    elif "<lambda>" in qualname:
        what = "a lambda"
    elif "<locals>" in qualname:
        what = f"{qualname!r}, defined inside a function,"
    else:
        what = f"{getattr(handler, '__module__', None)}:{qualname}, which is not an import path,"
    raise ValidationError(
        f'job type {name!r}: isolation="process" runs the handler in a child process, which'
        f" imports it by its module path; the handler is {what} so the child cannot import"
        ' it: define it at module level (or give its import path "package.module:function")'
    )
