"""Promotion: a blocked child is queued in the very transaction that completes its last parent."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

from edgejobs import Status

from .conftest import Harness, parent_statuses, start_harness, stop_harness


def _statuses(conn: sqlite3.Connection, ids: list[str]) -> dict[str, str]:
    marks = ",".join("?" * len(ids))
    return dict(conn.execute(f"SELECT id, status FROM jobs WHERE id IN ({marks})", ids).fetchall())


async def test_child_submitted_while_parent_runs_is_queued_in_the_parents_commit(
    h: Harness,
) -> None:
    """The original bug: the child of a running parent must not be forgotten."""
    parent = await h.ej.submit("step", org="acme", params={"n": 1})
    assert await h.script.claim() == 1
    assert await h.status(parent.id) == "running"

    child = await h.ej.submit("step", org="acme", params={"n": 2}, depends_on=[parent.id])
    assert child.status is Status.BLOCKED
    assert child.depends_on == (parent.id,)

    # What every commit changed, and what the database held right after each commit.
    changes: list[dict[str, str]] = []
    h.ej.add_commit_listener(lambda tx: changes.append(dict(tx.jobs_changed)))
    seen: list[dict[str, str]] = []
    h.watch.snapshots.append(lambda conn: seen.append(_statuses(conn, [parent.id, child.id])))

    await h.script.complete(parent.id)

    completing = [c for c in changes if c.get(parent.id) == "completed"]
    assert completing == [{parent.id: "completed", child.id: "queued"}]
    # Every committed state in which the parent is completed already shows the child queued.
    assert {parent.id: "completed", child.id: "queued"} in seen
    assert all(s[child.id] != "blocked" for s in seen if s[parent.id] == "completed")

    # It runs on the next claim: no tick, no manual action.
    assert h.ej.ticker is not None and h.ej.ticker.ticks == 0
    assert await h.script.claim() == 1
    assert h.script.started[-1] == (child.id, 1)
    await h.script.complete(child.id)
    assert await h.status(child.id) == "completed"


async def test_parent_completion_racing_child_submission(h: Harness) -> None:
    """Completion and submission queued together, repeated: the child never stays blocked."""
    for round_ in range(15):
        parent = await h.ej.submit("step", org="acme", params={"round": round_})
        await h.script.claim()
        submit = asyncio.ensure_future(
            h.ej.submit("step", org="acme", params={"child": round_}, depends_on=[parent.id])
        )
        if round_ % 2:
            await asyncio.sleep(0)
        await h.script.complete(parent.id)
        child = await submit
        assert child.status in (Status.BLOCKED, Status.QUEUED)
        assert await h.status(child.id) == "queued"
        await h.script.claim()
        await h.script.complete(child.id)
        assert await h.status(child.id) == "completed"
    assert h.ej.ticker is not None and h.ej.ticker.ticks == 0


async def test_child_of_completed_parent_starts_queued_or_scheduled(h: Harness) -> None:
    parent = await h.ej.submit("step", org="acme")
    await h.script.claim()
    await h.script.complete(parent.id)
    child = await h.ej.submit("step", org="acme", params={"c": 1}, depends_on=[parent.id])
    assert child.status is Status.QUEUED
    later = await h.ej.submit(
        "step", org="acme", params={"c": 2}, depends_on=[parent.id], delay_s=60
    )
    assert later.status is Status.SCHEDULED


async def test_blocked_child_with_run_at_in_the_future_becomes_scheduled(h: Harness) -> None:
    parent = await h.ej.submit("step", org="acme")
    child = await h.ej.submit(
        "step", org="acme", params={"c": 1}, depends_on=[parent.id], delay_s=60
    )
    assert child.status is Status.BLOCKED
    await h.script.claim()
    await h.script.complete(parent.id)
    assert await h.status(child.id) == "scheduled"
    await h.tick(61)
    assert await h.status(child.id) == "queued"


async def test_fan_in_waits_for_the_last_parent(h: Harness) -> None:
    a = await h.ej.submit("step", org="acme", params={"p": "a"})
    b = await h.ej.submit("step", org="acme", params={"p": "b"})
    await h.script.claim()
    await h.script.complete(a.id)
    # b still running when the fan-in child is submitted.
    child = await h.ej.submit("step", org="acme", params={"c": 1}, depends_on=[a.id, b.id])
    assert child.status is Status.BLOCKED
    assert (
        await h.read(
            lambda c: c.execute(
                "SELECT pending_parents FROM jobs WHERE id = ?", (child.id,)
            ).fetchone()[0]
        )
        == 1
    )
    await h.tick(5)
    assert await h.status(child.id) == "blocked"
    await h.script.complete(b.id)
    assert await h.status(child.id) == "queued"
    await h.script.claim()
    assert h.script.parent_results[(child.id, 1)] == {
        a.id: {"job": a.id, "attempt": 1, "p": "a"},
        b.id: {"job": b.id, "attempt": 1, "p": "b"},
    }


async def test_child_stays_blocked_through_a_parents_retry(h: Harness) -> None:
    parent = await h.ej.submit("flaky", org="acme")
    child = await h.ej.submit("step", org="acme", depends_on=[parent.id])
    await h.script.claim()
    await h.script.fail(parent.id)
    assert await h.status(parent.id) == "retrying"
    assert await h.status(child.id) == "blocked"
    await h.tick(0.5)  # retry not due yet
    assert await h.script.claim() == 0
    assert await h.status(child.id) == "blocked"
    await h.tick(1)  # the first retry is due after 1 s
    assert await h.script.claim() == 1
    assert h.script.started[-1] == (parent.id, 2)
    assert await h.status(child.id) == "blocked"
    await h.script.complete(parent.id)
    assert await h.status(child.id) == "queued"
    await h.script.claim()
    assert h.script.parent_results[(child.id, 1)] == {parent.id: {"job": parent.id, "attempt": 2}}


async def test_parent_results_reach_async_and_sync_handlers(tmp_path: Path) -> None:
    harness = await start_harness(tmp_path / "results.db")
    seen: dict[str, Any] = {}

    def sync_handler(ctx: Any, params: dict[str, Any]) -> str:
        seen["sync"] = dict(ctx.parent_results)
        return "sync done"

    async def async_handler(ctx: Any, params: dict[str, Any]) -> str:
        seen["async"] = dict(ctx.parent_results)
        return "async done"

    harness.ej.register("sync_child", sync_handler, max_retries=0)
    harness.ej.register("async_child", async_handler, max_retries=0)
    try:
        ej = harness.ej
        a = await ej.submit("step", org="acme", params={"x": [1, 2]})
        b = await ej.submit("step", org="acme", params={"y": None})
        s = await ej.submit("sync_child", org="acme", depends_on=[a.id, b.id])
        c = await ej.submit("async_child", org="acme", depends_on=[s.id, a.id])
        await harness.script.claim()
        await harness.script.complete(a.id)
        await harness.script.complete(b.id)
        await ej.drain(timeout=10)
        assert seen["sync"] == {
            a.id: {"job": a.id, "attempt": 1, "x": [1, 2]},
            b.id: {"job": b.id, "attempt": 1, "y": None},
        }
        assert seen["async"] == {s.id: "sync done", a.id: {"job": a.id, "attempt": 1, "x": [1, 2]}}
        assert (await ej.get(c.id)).status is Status.COMPLETED
    finally:
        await stop_harness(harness)
    assert harness.watch.violations == []


async def test_job_object_carries_depends_on_and_dependents(h: Harness) -> None:
    a = await h.ej.submit("step", org="acme", params={"n": "a"})
    b = await h.ej.submit("step", org="acme", params={"n": "b"})
    c = await h.ej.submit("step", org="acme", params={"n": "c"}, depends_on=[b.id, a.id, a.id])
    d = await h.ej.submit("step", org="acme", params={"n": "d"}, depends_on=[c.id])
    assert sorted(c.depends_on) == sorted((a.id, b.id))  # each parent once
    got = await h.ej.get(c.id)
    assert got.depends_on == (a.id, b.id)  # stored: in the parents' submission order
    assert got.dependents == (d.id,)
    assert (await h.ej.get(a.id)).dependents == (c.id,)
    assert got.to_dict()["depends_on"] == [a.id, b.id]
    assert got.to_dict()["dependents"] == [d.id]
    listed, _ = await h.ej.list_jobs(org="acme")
    by_id = {job.id: job for job in listed}
    assert by_id[c.id].depends_on == (a.id, b.id)
    assert by_id[c.id].dependents == (d.id,)
    assert by_id[d.id].depends_on == (c.id,)
    parents = await h.read(lambda conn: parent_statuses(conn, d.id))
    assert parents == {c.id: "blocked"}
