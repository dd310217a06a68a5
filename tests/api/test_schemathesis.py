"""Property-based fuzzing of every documented operation with schemathesis, against a live app
(a real uvicorn on a free loopback port) with a valid operator token: no 5xx, and every
response conforms to the OpenAPI document (status code, content type, headers, body schema);
in negative mode, every request that violates the document is refused."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from api_support import Api, ThreadedServer, make_api
from ej_testkit import free_port
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from starlette.applications import Starlette

EXAMPLES = {GenerationMode.POSITIVE: 30, GenerationMode.NEGATIVE: 15}
BUDGET_S = 60.0

CONFORMANCE = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


@pytest.mark.timeout(110)
def test_every_operation_survives_fuzzing(tmp_path: Path) -> None:
    holder: dict[str, Api] = {}

    async def make_app() -> Starlette:
        api = await make_api(tmp_path / "fuzz.db", run_workers=True)
        holder["api"] = api
        for n in range(5):  # something to list, show and cancel
            await api.job(params={"n": n})
        return api.app

    server = ThreadedServer(make_app, free_port())
    with server.running():
        api = holder["api"]
        headers = {"Authorization": f"Bearer {api.secrets['operator']}"}
        schema = schemathesis.openapi.from_url(f"{server.url}/api/v1/openapi.json")
        deadline = time.monotonic() + BUDGET_S
        operations = [
            op
            for op in (result.ok() for result in schema.get_all_operations())
            if not _is_stream(op)  # endless by design; tests/sse covers the event stream
        ]
        assert len(operations) >= 15
        tested = 0
        calls: list[int] = []
        for operation in operations:
            for mode, examples in EXAMPLES.items():
                if time.monotonic() > deadline:
                    break
                checks = CONFORMANCE + (
                    [negative_data_rejection] if mode is GenerationMode.NEGATIVE else []
                )
                run = _fuzz(operation, mode, examples, server.url, headers, checks, deadline, calls)
                try:
                    run()
                except Unsatisfiable:
                    # Nothing to violate (no parameters, no body): no negative cases exist.
                    assert mode is GenerationMode.NEGATIVE, operation.label
                    continue
                tested += 1
        assert tested >= len(operations)  # every operation, at least in positive mode
        assert len(calls) >= 10 * len(operations), len(calls)


def _is_stream(operation: Any) -> bool:
    responses = operation.definition.raw.get("responses", {})
    return any(
        "text/event-stream" in (response.get("content") or {}) for response in responses.values()
    )


def _fuzz(
    operation: Any,
    mode: GenerationMode,
    examples: int,
    base_url: str,
    headers: dict[str, str],
    checks: list[Any],
    deadline: float,
    calls: list[int],
) -> Any:
    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
    )
    def run(case: Any) -> None:
        if time.monotonic() > deadline:
            return
        response = case.call_and_validate(
            base_url=base_url, headers=headers, checks=checks, timeout=10
        )
        calls.append(response.status_code)

    return run
