"""Retention keeps a parent as long as a child may still need it."""

from __future__ import annotations

import sqlite3

from edgejobs import Status

from .conftest import Harness

DAY = 86_400.0


def _ids(conn: sqlite3.Connection) -> set[str]:
    return {row[0] for row in conn.execute("SELECT id FROM jobs")}


async def test_parent_outlives_retention_while_its_child_waits(h: Harness) -> None:
    old = await h.ej.submit("step", org="acme", params={"p": "old"})
    await h.script.claim()
    await h.script.complete(old.id)
    h.clock.advance(40 * DAY)
    slow = await h.ej.submit("step", org="acme", params={"p": "slow"})
    await h.script.claim()
    child = await h.ej.submit("step", org="acme", params={"c": 1}, depends_on=[old.id, slow.id])
    bystander = await h.ej.submit("step", org="acme", params={"p": "bystander"})
    h.clock.advance(40 * DAY)

    # `old` finished 80 days ago, but its child is blocked: it stays.
    report = await h.ej.prune()
    assert report.jobs == 0
    report = await h.ej.prune(older_than_days=0)
    assert report.jobs == 0
    assert {old.id, slow.id, child.id} <= await h.read(_ids)

    await h.script.complete(slow.id)
    assert await h.status(child.id) == "queued"
    assert (await h.ej.prune(older_than_days=0)).jobs == 0  # queued: still needs its parents
    await h.script.claim()
    assert (await h.ej.prune(older_than_days=0)).jobs == 0  # running
    # The child sees both parents' results although `old` is far past retention.
    assert set(h.script.parent_results[(child.id, 1)]) == {old.id, slow.id}
    await h.script.complete(child.id)
    h.clock.advance(1)
    assert (await h.ej.prune(older_than_days=0)).jobs == 3
    assert await h.read(_ids) == {bystander.id}


async def test_failed_parent_is_kept_while_a_retryable_child_exists(h: Harness) -> None:
    """A child may be retried only after its parents completed: deleting a failed parent
    before its canceled child would let a retry of the child run without it."""
    parent = await h.ej.submit("step", org="acme")
    await h.script.claim()
    await h.script.fail(parent.id)
    h.clock.advance(40 * DAY)
    child = await h.ej.submit("step", org="acme", params={"c": 1}, depends_on=[parent.id])
    assert child.status is Status.CANCELED

    await h.ej.prune()  # the parent is 40 days old, the child brand new
    assert parent.id in await h.read(_ids)
    assert (await h.ej.get(child.id)).depends_on == (parent.id,)
    assert "retry the parent first" in str(await _retry_error(h, child.id))

    # Once the child is old enough too, both go, child first, in one prune.
    h.clock.advance(40 * DAY)
    assert (await h.ej.prune()).jobs == 2
    assert await h.read(_ids) == set()


async def test_completed_parent_is_kept_while_a_failed_child_can_be_retried(h: Harness) -> None:
    """A retried child gets ctx.parent_results, so its parents must still be there."""
    parent = await h.ej.submit("step", org="acme", params={"p": 1})
    await h.script.claim()
    await h.script.complete(parent.id)
    h.clock.advance(40 * DAY)
    child = await h.ej.submit("step", org="acme", params={"c": 1}, depends_on=[parent.id])
    await h.script.claim()
    await h.script.fail(child.id)
    await h.ej.prune()
    assert parent.id in await h.read(_ids)
    await h.ej.retry(child.id)
    await h.script.claim()
    assert h.script.parent_results[(child.id, 2)] == {
        parent.id: {"job": parent.id, "attempt": 1, "p": 1}
    }


async def test_deep_chain_is_pruned_in_one_call(h: Harness) -> None:
    ids = []
    previous: list[str] = []
    for n in range(6):
        job = await h.ej.submit("step", org="acme", params={"n": n}, depends_on=previous)
        ids.append(job.id)
        previous = [job.id]
    await h.ej.cancel(ids[0])  # cancels the whole chain
    assert {(await h.ej.get(i)).status for i in ids} == {Status.CANCELED}
    h.clock.advance(1)
    assert (await h.ej.prune(older_than_days=0)).jobs == 6
    assert await h.read(_ids) == set()


async def _retry_error(h: Harness, job_id: str) -> Exception:
    try:
        await h.ej.retry(job_id)
    except Exception as exc:
        return exc
    raise AssertionError("retry unexpectedly succeeded")
