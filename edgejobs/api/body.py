"""Reading request bodies: bounded (see :class:`~edgejobs.api.middleware.BodyLimit`), strict
JSON, then a pydantic model.

Malformed JSON is a 400; JSON that parses but does not fit the model is a 422. JSON that
Python would accept but that cannot be stored or sent back faithfully is malformed here too:
``NaN``/``Infinity`` (also as an overflowing number like ``1e400``), text with lone surrogates
(not encodable as UTF-8), nesting deeper than :data:`MAX_DEPTH`, and an object that names a
key twice (Python keeps the last value, a proxy or another parser may read the first).

A body of up to :data:`INLINE_PARSE_BYTES` is parsed on the event loop; a bigger one (up to
the body limit, 1 MiB by default: ~0.4 s of parsing and checking for one made of empty
arrays) in a worker thread, one such body at a time per app, so that nobody's large bodies
stall the runner, the ticks and every event stream that share the loop; at most
:data:`MAX_BIG_BODIES_WAITING` more wait for it (503 ``overloaded`` beyond).
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar

from pydantic import BaseModel
from pydantic import ValidationError as PydanticValidationError
from starlette.requests import Request

from edgejobs.api.errors import BadRequest, validation_details
from edgejobs.errors import Overloaded, ValidationError
from edgejobs.models import is_valid_unicode

M = TypeVar("M", bound=BaseModel)

MAX_DEPTH = 64
"""Deepest nesting of arrays and objects accepted in a body."""

MAX_BIG_BODIES_WAITING = 8
"""Bodies over :data:`INLINE_PARSE_BYTES` that may wait for the one being parsed; beyond, 503
``overloaded`` with ``Retry-After`` (each holds up to ``[server] max_body_bytes`` in memory,
and each waits ~0.4 s per 1 MiB body ahead of it)."""

INLINE_PARSE_BYTES = 64 * 1024
"""Bodies up to this size are parsed on the event loop (a few milliseconds at most); bigger
ones in a worker thread (see the module's docstring)."""


def reject_json_constant(name: str) -> Any:
    """``json.loads``'s ``parse_constant``: refuse ``NaN`` and ``Infinity`` (ValueError),
    which Python's parser takes but JSON has not."""
    raise ValueError(f"{name} is not valid JSON")


def finite_float(text: str) -> float:
    """``json.loads``'s ``parse_float``: refuse a number that parses as infinity (ValueError)."""
    value = float(text)
    if not math.isfinite(value):  # 1e400 parses as infinity, which JSON cannot carry back
        raise ValueError(f"the number {text[:30]} is out of range")
    return value


def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``json.loads``'s ``object_pairs_hook``: refuse an object that names a key twice
    (ValueError). Python would keep the last value silently, while a proxy, a firewall or the
    client's own log may read the first: two readers of one body must not disagree."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise ValueError(f"the key {json.dumps(key[:40])} appears twice in one object")
            seen.add(key)
    return obj


def loads_strict(text: str | bytes) -> Any:
    """``json.loads`` with the refusals every client input shares: ``NaN``/``Infinity``, a
    number out of range and a key given twice are ValueError (RecursionError when nested past
    the interpreter's stack; :data:`MAX_DEPTH` is checked by the callers)."""
    try:
        return json.loads(
            text,
            parse_constant=reject_json_constant,
            parse_float=finite_float,
            object_pairs_hook=unique_keys,
        )
    except ValueError as exc:
        if "int_max_str_digits" in str(exc):  # Python's own hint is meaningless to a client
            raise ValueError("a number has more than 4300 digits") from None
        raise


def _check_tree(value: Any) -> None:
    """Refuse too-deep nesting and strings that are not valid Unicode (iteratively)."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            _check_text(item)
        elif isinstance(item, dict | list):
            if depth >= MAX_DEPTH:
                raise BadRequest(f"the JSON body is nested deeper than {MAX_DEPTH} levels")
            if isinstance(item, dict):
                for key, child in item.items():
                    _check_text(key)
                    stack.append((child, depth + 1))
            else:
                stack.extend((child, depth + 1) for child in item)


def _check_text(text: str) -> None:
    if not is_valid_unicode(text):
        raise BadRequest("the JSON body holds text that is not valid Unicode")


def parse_json(raw: bytes, precheck: Callable[[Any], None] | None = None) -> Any:
    """Strict JSON from bytes (:class:`BadRequest` when malformed).

    ``precheck`` sees the parsed value before the walk that checks its depth and text (a
    batch's length, say: a body of 60,000 jobs is refused before it costs that walk).
    """
    if not raw.strip():
        raise BadRequest("the request needs a JSON body")
    try:
        data = loads_strict(raw)
    except RecursionError:
        raise BadRequest(f"the JSON body is nested deeper than {MAX_DEPTH} levels") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, duplicate keys, digits
        raise BadRequest(f"malformed JSON: {str(exc)[:200]}") from None
    if precheck is not None:
        precheck(data)
    _check_tree(data)
    return data


def validate(model: type[M], data: Any) -> M:
    """``data`` as ``model`` (:class:`~edgejobs.errors.ValidationError`, 422, when it does not fit)."""
    try:
        return model.model_validate(data)
    except PydanticValidationError as exc:
        details = validation_details(exc)
        first = details[0] if details else {"loc": [], "message": "invalid"}
        where = ".".join(str(part) for part in first["loc"]) or "body"
        raise ValidationError(f"{where}: {first['message']}"[:300], details=details) from None


def _parse_model(raw: bytes, model: type[M], precheck: Callable[[Any], None] | None) -> M:
    return validate(model, parse_json(raw, precheck))


async def read_model(
    request: Request,
    model: type[M],
    *,
    optional: bool = False,
    precheck: Callable[[Any], None] | None = None,
) -> M:
    """The request's JSON body as ``model``; with ``optional`` an empty body means ``{}``.

    ``precheck``: see :func:`parse_json`. A body over :data:`INLINE_PARSE_BYTES` is parsed and
    validated in a worker thread, one at a time per app (the module's docstring says why).
    """
    raw = await request.body()
    if optional and not raw.strip():
        return validate(model, {})
    if len(raw) <= INLINE_PARSE_BYTES:
        return _parse_model(raw, model, precheck)
    gate = _big_body_gate(request)
    if gate.waiting >= MAX_BIG_BODIES_WAITING:
        raise Overloaded(
            f"{gate.waiting} large request bodies are already waiting to be parsed; try again"
            " shortly"
        )
    gate.waiting += 1
    try:
        await gate.semaphore.acquire()
    finally:
        gate.waiting -= 1
    parsing = asyncio.ensure_future(asyncio.to_thread(_parse_model, raw, model, precheck))
    # The gate opens when the thread ends, not when this request does: a request cancelled
    # meanwhile (the server shutting down, a client gone) leaves its thread parsing on — a
    # thread cannot be stopped — and a second one beside it is what the gate is there to stop.
    parsing.add_done_callback(partial(_reopen, gate))
    return await asyncio.shield(parsing)


class BigBodyGate:
    """One large body parsed at a time per app, and a bounded line of them waiting.

    One at a time: a thread parsing Python objects holds the interpreter lock in 5 ms turns,
    so two such threads would leave the loop a third of the time instead of half. A bounded
    line: each waiting request holds its whole body in memory.
    """

    def __init__(self) -> None:
        self.semaphore = asyncio.Semaphore(1)
        self.waiting = 0
        """Requests waiting for :attr:`semaphore` (the one parsing not counted)."""


def _reopen(gate: BigBodyGate, parsing: asyncio.Future[Any]) -> None:
    """Open the gate after a parse ended; its error, if nobody awaits it now, goes unsaid."""
    gate.semaphore.release()
    if not parsing.cancelled():
        parsing.exception()  # retrieved: no "exception was never retrieved" for a gone request


def _big_body_gate(request: Request) -> BigBodyGate:
    state = request.app.state
    gate: BigBodyGate | None = getattr(state, "big_body_gate", None)
    if gate is None:
        gate = state.big_body_gate = BigBodyGate()
    return gate


def query_values(request: Request, allowed: frozenset[str]) -> dict[str, str]:
    """The query parameters of ``request``, each at most once, all of them in ``allowed``
    (400 otherwise: a misspelled filter must not be silently ignored)."""
    values: dict[str, str] = {}
    for key, value in request.query_params.multi_items():
        if key not in allowed:
            raise BadRequest(f"unknown query parameter {key[:40]!r}")
        if key in values:
            raise BadRequest(f"query parameter {key!r} may be given once")
        values[key] = value
    if "org" in values and not values["org"]:
        raise BadRequest("org must not be empty")
    return values
