"""Reading request bodies: bounded (see :class:`~edgejobs.api.middleware.BodyLimit`), strict
JSON, then a pydantic model.

Malformed JSON is a 400; JSON that parses but does not fit the model is a 422. JSON that
Python would accept but that cannot be stored or sent back faithfully is malformed here too:
``NaN``/``Infinity`` (also as an overflowing number like ``1e400``), text with lone surrogates (not encodable as UTF-8), and nesting deeper
than :data:`MAX_DEPTH`.
"""

from __future__ import annotations

import json
import math
from typing import Any, TypeVar

from pydantic import BaseModel
from pydantic import ValidationError as PydanticValidationError
from starlette.requests import Request

from edgejobs.api.errors import BadRequest, validation_details
from edgejobs.errors import ValidationError
from edgejobs.models import is_valid_unicode

M = TypeVar("M", bound=BaseModel)

MAX_DEPTH = 64
"""Deepest nesting of arrays and objects accepted in a body."""


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


def parse_json(raw: bytes) -> Any:
    """Strict JSON from bytes (:class:`BadRequest` when malformed)."""
    if not raw.strip():
        raise BadRequest("the request needs a JSON body")
    try:
        data = json.loads(raw, parse_constant=reject_json_constant, parse_float=finite_float)
    except RecursionError:
        raise BadRequest(f"the JSON body is nested deeper than {MAX_DEPTH} levels") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, too many digits
        raise BadRequest(f"malformed JSON: {str(exc)[:200]}") from None
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


async def read_model(request: Request, model: type[M], *, optional: bool = False) -> M:
    """The request's JSON body as ``model``; with ``optional`` an empty body means ``{}``."""
    raw = await request.body()
    if optional and not raw.strip():
        return validate(model, {})
    return validate(model, parse_json(raw))


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
