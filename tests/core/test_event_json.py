"""The stored form of a ``job`` event: put together by hand for speed, so checked against the
json module for every kind of value a row can hold."""

from __future__ import annotations

import json
from typing import Any

import pytest

from edgejobs.store.rows import job_event_json, render_job_event

BASE: dict[str, Any] = {
    "id": "06H2B46H7VBH28HXPPMB8RP3M8",
    "org": "acme",
    "job_type": "report.build",
    "status": "running",
    "priority": 2,
    "params": '{"secret":"never in an event"}',
    "result": None,
    "error": None,
    "progress": 0.0,
    "progress_message": None,
    "attempts": 1,
    "max_retries": 3,
    "run_at": 1_764_390_000_000,
    "next_retry_at": None,
    "created_at": 1_764_390_000_000,
    "started_at": 1_764_390_000_123,
    "finished_at": None,
    "updated_at": 1_764_390_000_123,
    "cancel_reason": None,
}

VARIANTS: list[dict[str, Any]] = [
    {},
    {"status": "completed", "progress": 100, "finished_at": 1_764_390_001_000},
    {"progress": 33.333333333333336, "progress_message": 'step "2" of 3\n'},
    {"org": "ünïcode-org", "job_type": "日本.job", "progress_message": "emoji 🚀 \u2028"},
    {
        "status": "retrying",
        "error": json.dumps({"type": "ValueError", "message": 'bad "x"', "traceback": "Tb..."}),
        "next_retry_at": 1_764_390_009_000,
    },
    {"status": "canceled", "cancel_reason": "parent X ended failed\t\\", "priority": 0},
    {"status": "queued", "started_at": None, "attempts": 0, "priority": 3},
]


def _expected(row: dict[str, Any]) -> dict[str, Any]:
    names = {0: "critical", 1: "high", 2: "normal", 3: "low"}
    error = json.loads(row["error"]) if row["error"] else None
    expected = {k: v for k, v in row.items() if k not in ("params", "result")}
    expected["priority"] = names[row["priority"]]
    expected["progress"] = float(row["progress"])
    expected["error"] = {"type": error["type"], "message": error["message"]} if error else None
    return expected


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_event_is_the_json_of_the_job_without_params_result_or_traceback(
    variant: dict[str, Any],
) -> None:
    row = {**BASE, **variant}
    text = job_event_json(row)
    assert json.loads(text) == _expected(row)
    # Byte for byte what the json module would write, so stored events stay one format.
    assert text == json.dumps(json.loads(text), separators=(",", ":"), ensure_ascii=False)
    assert "secret" not in text and "Tb..." not in text


def test_a_read_event_has_iso_times() -> None:
    rendered = json.loads(render_job_event(job_event_json(BASE)))
    assert rendered["created_at"] == "2025-11-29T04:20:00.000Z"
    assert rendered["next_retry_at"] is None
