"""Operations (route + documentation in one record) and the OpenAPI 3.1 document built from them.

Each API module lists its :class:`Operation` objects; :func:`build_routes` turns them into
Starlette routes and :func:`build_document` into ``/api/v1/openapi.json``, with the schemas
taken from the pydantic models (``models_json_schema``), so the document cannot drift from the
code.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from edgejobs.api.schemas import ErrorBody

Endpoint = Callable[[Request], Awaitable[Response]]

_REF = "#/components/schemas/{model}"
_PATH_PARAM = re.compile(r"{([a-zA-Z_][a-zA-Z0-9_]*)(?::[a-z]+)?}")


@dataclasses.dataclass(frozen=True, slots=True)
class Param:
    """A query (or path) parameter, described by a JSON schema."""

    name: str
    schema: dict[str, Any]
    description: str = ""
    location: Literal["query", "path", "header"] = "query"


@dataclasses.dataclass(frozen=True, slots=True)
class Operation:
    """One method on one path: the handler and everything the OpenAPI document says about it.

    ``role`` is the least role needed (``None``: no authentication). ``responses`` maps success
    status codes to a model, or to a media type string for non-JSON bodies (``"text/html"``).
    """

    method: str
    path: str
    endpoint: Endpoint
    summary: str
    role: str | None
    responses: dict[int, type[BaseModel] | str]
    body: type[BaseModel] | None = None
    body_required: bool = True
    form_body: bool = False
    params: Sequence[Param] = ()
    tags: Sequence[str] = ()
    description: str = ""
    security: Sequence[dict[str, list[str]]] | None = None

    @property
    def operation_id(self) -> str:
        """A stable id: the endpoint's function name."""
        return self.endpoint.__name__.strip("_")


class _PathRoute(Route):
    """Every method one path serves, so a method it does not serve is answered 405 with all
    of them in ``Allow`` (sorted: the same header every time)."""

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve the request, or raise the 405 the app's handler turns into the error body."""
        if self.methods and scope["method"] not in self.methods:
            raise HTTPException(405, headers={"Allow": ", ".join(sorted(self.methods))})
        await super().handle(scope, receive, send)


def build_routes(operations: Iterable[Operation]) -> list[Route]:
    """The Starlette routes serving ``operations``: one per path, in the order the paths first
    appear, dispatching on the method.

    A route per operation would answer a method the path does not serve with the ``Allow``
    of whichever of its routes came first (``DELETE /api/v1/jobs``: ``POST``, though GET is
    served there too).
    """
    by_path: dict[str, dict[str, Operation]] = {}
    for op in operations:
        methods = by_path.setdefault(op.path, {})
        if op.method in methods:
            raise ValueError(f"two operations for {op.method} {op.path}")
        methods[op.method] = op
    return [_path_route(path, methods) for path, methods in by_path.items()]


def _path_route(path: str, ops: dict[str, Operation]) -> Route:
    endpoints = {method: op.endpoint for method, op in ops.items()}
    if "GET" in endpoints:
        endpoints.setdefault("HEAD", endpoints["GET"])  # as Starlette serves HEAD for a GET

    async def dispatch(request: Request) -> Response:
        return await endpoints[request.method](request)

    name = "|".join(op.operation_id for op in ops.values())
    return _PathRoute(path, dispatch, methods=list(ops), name=name)


_SECURITY: list[dict[str, list[str]]] = [{"bearer": []}, {"session": []}]


_Refs = dict[tuple[Any, str], Any]


def _schemas(operations: Iterable[Operation]) -> tuple[_Refs, dict[str, Any]]:
    models: dict[tuple[type[BaseModel], JsonSchemaMode], None] = {
        (ErrorBody, "serialization"): None
    }
    for op in operations:
        if op.body is not None:
            models[(op.body, "validation")] = None
        for response in op.responses.values():
            if isinstance(response, type):
                models[(response, "serialization")] = None
    refs, top = models_json_schema(list(models), ref_template=_REF)
    found: _Refs = {(model, mode): ref for (model, mode), ref in refs.items()}
    return found, top.get("$defs", {})


def _parameters(op: Operation) -> list[dict[str, Any]]:
    params: list[dict[str, Any]] = []
    declared = {p.name for p in op.params}
    for name in _PATH_PARAM.findall(op.path):
        if name not in declared:
            params.append(
                {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            )
    for param in op.params:
        entry: dict[str, Any] = {
            "name": param.name,
            "in": param.location,
            "required": param.location == "path",
            "schema": param.schema,
        }
        if param.description:
            entry["description"] = param.description
        if param.schema.get("type") == "array" and param.location == "query":
            entry["style"] = "form"
            entry["explode"] = True
        params.append(entry)
    return params


def build_document(operations: Sequence[Operation], *, title: str, version: str) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``operations``."""
    refs, components = _schemas(operations)
    error_ref = refs[(ErrorBody, "serialization")]
    paths: dict[str, dict[str, Any]] = {}
    for op in operations:
        path = _PATH_PARAM.sub(r"{\1}", op.path)
        entry: dict[str, Any] = {
            "operationId": op.operation_id,
            "summary": op.summary,
            "tags": list(op.tags),
            "responses": {},
        }
        description = op.description
        if op.role is not None:
            description = f"Role: {op.role} or above. {description}".strip()
            entry["x-edgejobs-role"] = op.role
        if description:
            entry["description"] = description
        if op.security is not None:
            entry["security"] = list(op.security)
        else:
            entry["security"] = _SECURITY if op.role is not None else []
        parameters = _parameters(op)
        if parameters:
            entry["parameters"] = parameters
        if op.body is not None:
            schema = refs[(op.body, "validation")]
            content: dict[str, Any] = {"application/json": {"schema": schema}}
            if op.form_body:
                content["application/x-www-form-urlencoded"] = {"schema": schema}
            entry["requestBody"] = {"required": op.body_required, "content": content}
        for status, response in sorted(op.responses.items()):
            if isinstance(response, str):
                kind = "object" if response.endswith("json") else "string"
                media: dict[str, Any] = {response: {"schema": {"type": kind}}}
                entry["responses"][str(status)] = {"description": "success", "content": media}
            else:
                entry["responses"][str(status)] = {
                    "description": (response.__doc__ or "success").strip().splitlines()[0],
                    "content": {"application/json": {"schema": refs[(response, "serialization")]}},
                }
        entry["responses"]["default"] = {
            "description": "an error: its code, message and details (status codes in docs/http.md, Errors and limits)",
            "content": {"application/json": {"schema": error_ref}},
        }
        paths.setdefault(path, {})[op.method.lower()] = entry
    return {
        "openapi": "3.1.0",
        "info": {
            "title": title,
            "version": version,
            "description": "JSON over HTTP. Errors always have the body "
            '{"error": {"code", "message", "details"}}.',
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "session": {"type": "apiKey", "in": "cookie", "name": "edgejobs_session"},
            },
        },
    }


ORG_PARAM = Param(
    "org", {"type": "string", "minLength": 1, "maxLength": 64}, "system tokens: only this org"
)
"""The ``org`` query parameter of the listings and counts."""
