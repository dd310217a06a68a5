"""Cascade: a parent that ends without completing cancels everything waiting below it."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import pytest

from edgejobs import Conflict, Status
from edgejobs.store.db import WriteTx

from .conftest import Harness, start_harness, stop_harness


async def test_failed_parent_cancels_child_and_grandchild(h: Harness) -> None:
    parent = await h.ej.submit("step", org="acme", params={"n": 1})
    await h.script.claim()
    child = await h.ej.submit("step", org="acme", params={"n": 2}, depends_on=[parent.id])
    grandchild = await h.ej.submit("step", org="acme", params={"n": 3}, depends_on=[child.id])
    changes: list[dict[str, str]] = []
    h.ej.add_commit_listener(lambda tx: changes.append(dict(tx.jobs_changed)))

    await h.script.fail(parent.id)

    # One transaction ends the parent and cancels the whole subgraph.
    assert {parent.id: "failed", child.id: "canceled", grandchild.id: "canceled"} in changes
    c = await h.ej.get(child.id)
    g = await h.ej.get(grandchild.id)
    assert c.status is Status.CANCELED and g.status is Status.CANCELED
    assert c.cancel_reason == f"parent {parent.id} ended failed"
    assert g.cancel_reason == f"parent {child.id} ended canceled"
    assert c.finished_at is not None and c.attempts == 0
    assert await h.script.claim() == 0
    assert [job for job, _ in h.script.started] == [parent.id]


async def test_child_submitted_after_parent_failed_is_created_canceled(h: Harness) -> None:
    parent = await h.ej.submit("step", org="acme")
    await h.script.claim()
    await h.script.fail(parent.id, permanent=True)
    assert await h.status(parent.id) == "failed"

    child = await h.ej.submit("step", org="acme", params={"n": 2}, depends_on=[parent.id])
    assert child.status is Status.CANCELED
    assert child.cancel_reason == f"parent {parent.id} ended failed"
    # ... and so is anything submitted below it, naming the job that reached it.
    grandchild = await h.ej.submit("step", org="acme", params={"n": 3}, depends_on=[child.id])
    assert grandchild.status is Status.CANCELED
    assert grandchild.cancel_reason == f"parent {child.id} ended canceled"
    # A canceled child does not take the dedup slot: the same params can be submitted again.
    again = await h.ej.submit("step", org="acme", params={"n": 2})
    assert again.status is Status.QUEUED and not again.deduplicated


@pytest.mark.parametrize("ending", ["lost", "dead_letter", "canceled_running", "canceled_queued"])
async def test_every_unsuccessful_ending_cascades(tmp_path: Path, ending: str) -> None:
    harness = await start_harness(tmp_path / "cascade.db", lease_s=5)
    try:
        ej, script = harness.ej, harness.script
        job_type = "flaky" if ending == "dead_letter" else "step"
        parent = await ej.submit(job_type, org="acme")
        other = await ej.submit("step", org="acme", params={"other": 1})
        child = await ej.submit(
            "step", org="acme", params={"c": 1}, depends_on=[parent.id, other.id]
        )
        if ending == "canceled_queued":
            await ej.cancel(parent.id)
        else:
            await script.claim()
            await script.complete(other.id)  # the child now waits for `parent` alone
            if ending == "canceled_running":
                await ej.cancel(parent.id)
                await script.settle()
            elif ending == "lost":
                # The lease expires (the runner stalled): with no retry left the job is lost
                # for good; a job type with max_retries=0 ends dead_letter after a lost attempt.
                await harness.tick(6)
            else:
                await script.fail(parent.id)  # flaky: one retry left
                await harness.tick(1)
                await script.claim()
                await harness.tick(6)  # the retry's lease expires: retries exhausted
        final = (await ej.get(parent.id)).status.value
        expected = {
            "canceled_running": "canceled",
            "canceled_queued": "canceled",
            "lost": "dead_letter",
            "dead_letter": "dead_letter",
        }[ending]
        assert final == expected
        got = await ej.get(child.id)
        assert got.status is Status.CANCELED
        assert got.cancel_reason == f"parent {parent.id} ended {final}"
        # The other parent is not affected.
        assert (await ej.get(other.id)).status in (Status.QUEUED, Status.COMPLETED)
    finally:
        await stop_harness(harness)
    assert harness.watch.violations == []
    assert harness.script.violations == []


async def test_handler_timeout_cascades(tmp_path: Path) -> None:
    harness = await start_harness(tmp_path / "timeout.db")

    async def slow(ctx: object, params: object) -> None:
        import asyncio

        await asyncio.sleep(30)

    harness.ej.register("slow", slow, max_retries=0, timeout_s=0.05)
    try:
        parent = await harness.ej.submit("slow", org="acme")
        child = await harness.ej.submit("step", org="acme", depends_on=[parent.id])
        await harness.ej.drain(timeout=10)
        assert (await harness.ej.get(parent.id)).status is Status.TIMED_OUT
        got = await harness.ej.get(child.id)
        assert got.status is Status.CANCELED
        assert got.cancel_reason == f"parent {parent.id} ended timed_out"
    finally:
        await stop_harness(harness)
    assert harness.watch.violations == []


async def test_cancel_of_a_blocked_job_cascades_but_spares_its_parents(h: Harness) -> None:
    a = await h.ej.submit("step", org="acme")
    b = await h.ej.submit("step", org="acme", params={"b": 1}, depends_on=[a.id])
    c = await h.ej.submit("step", org="acme", params={"c": 1}, depends_on=[b.id])
    await h.ej.cancel(b.id, reason="not needed")
    assert (await h.ej.get(b.id)).cancel_reason == "not needed"
    assert (await h.ej.get(c.id)).cancel_reason == f"parent {b.id} ended canceled"
    assert await h.status(a.id) == "queued"


async def test_retry_of_child_whose_parent_failed_is_a_conflict(h: Harness) -> None:
    parent = await h.ej.submit("step", org="acme")
    child = await h.ej.submit("step", org="acme", params={"c": 1}, depends_on=[parent.id])
    await h.script.claim()
    await h.script.fail(parent.id)
    with pytest.raises(Conflict, match="retry the parent first") as caught:
        await h.ej.retry(child.id)
    assert caught.value.http_status == 409
    assert await h.status(child.id) == "canceled"

    # Retrying the parent does not revive the child by itself ...
    await h.ej.retry(parent.id)
    assert await h.status(parent.id) == "queued"
    assert await h.status(child.id) == "canceled"
    # ... retrying the child now puts it back to blocked behind its pending parent ...
    again = await h.ej.retry(child.id)
    assert again.status is Status.BLOCKED
    assert again.cancel_reason is None and again.finished_at is None
    # ... and it runs once the parent completes.
    await h.script.claim()
    await h.script.complete(parent.id)
    assert await h.status(child.id) == "queued"
    await h.script.claim()
    await h.script.complete(child.id)
    assert await h.status(child.id) == "completed"


async def test_retry_of_child_whose_parents_completed_queues_it(h: Harness) -> None:
    parent = await h.ej.submit("step", org="acme")
    await h.script.claim()
    await h.script.complete(parent.id)
    child = await h.ej.submit("step", org="acme", params={"c": 1}, depends_on=[parent.id])
    await h.script.claim()
    await h.script.fail(child.id)
    assert await h.status(child.id) == "failed"
    assert (await h.ej.retry(child.id)).status is Status.QUEUED
    await h.script.claim()
    assert h.script.started[-1] == (child.id, 2)
    assert h.script.parent_results[(child.id, 2)] == {parent.id: {"job": parent.id, "attempt": 1}}


async def test_fan_in_with_one_failed_parent_cancels_even_while_the_other_runs(
    h: Harness,
) -> None:
    a = await h.ej.submit("step", org="acme", params={"p": "a"})
    b = await h.ej.submit("step", org="acme", params={"p": "b"})
    await h.script.claim()
    child = await h.ej.submit("step", org="acme", params={"c": 1}, depends_on=[a.id, b.id])
    await h.script.fail(a.id)
    got = await h.ej.get(child.id)
    assert got.status is Status.CANCELED
    assert got.cancel_reason == f"parent {a.id} ended failed"
    await h.script.complete(b.id)
    assert await h.status(child.id) == "canceled"


async def test_safety_net_settles_and_warns_about_a_stuck_child(
    h: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    """If a promotion were ever missed, the next tick settles it and says so loudly."""
    done = await h.ej.submit("step", org="acme", params={"p": 1})
    failed = await h.ej.submit("step", org="acme", params={"p": 2})
    await h.script.claim()
    await h.script.complete(done.id)
    await h.script.fail(failed.id)
    h.watch.close()  # the corruption below breaks the invariants on purpose

    # Simulate the old engine's bug: children left blocked behind ended parents.
    def corrupt(conn: sqlite3.Connection, tx: WriteTx) -> None:
        seqs: dict[str, int] = {}
        for name, parent_id in (("orphan", done.id), ("doomed", failed.id), ("below", None)):
            seqs[name] = conn.execute(
                "INSERT INTO jobs (id, org, job_type, status, priority, params, max_retries,"
                " run_at, pending_parents, created_at, updated_at)"
                " VALUES (?, 'acme', 'step', 'blocked', 2, '{}', 0, 0, 1, 0, 0) RETURNING seq",
                (name.upper().ljust(26, "0"),),
            ).fetchone()[0]
            parent_seq = (
                seqs["doomed"]
                if parent_id is None
                else conn.execute("SELECT seq FROM jobs WHERE id = ?", (parent_id,)).fetchone()[0]
            )
            conn.execute(
                "INSERT INTO job_deps (child_seq, parent_seq) VALUES (?, ?)",
                (seqs[name], parent_seq),
            )

    await h.ej.store.write(corrupt)
    with caplog.at_level(logging.WARNING, logger="edgejobs.ticks"):
        await h.tick()
    orphan = "ORPHAN".ljust(26, "0")
    doomed = "DOOMED".ljust(26, "0")
    below = "BELOW".ljust(26, "0")
    assert await h.status(orphan) == "queued"
    assert await h.status(doomed) == "canceled"
    assert (await h.ej.get(doomed)).cancel_reason == f"parent {failed.id} ended failed"
    assert await h.status(below) == "canceled"
    assert (await h.ej.get(below)).cancel_reason == f"parent {doomed} ended canceled"
    warned = [r.getMessage() for r in caplog.records if "safety net" in r.getMessage()]
    assert len(warned) == 2 and any(orphan in w for w in warned)
    # The next tick finds nothing more.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="edgejobs.ticks"):
        await h.tick()
    assert not [r for r in caplog.records if "safety net" in r.getMessage()]
