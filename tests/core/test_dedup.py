"""Deduplication (SPEC §2 rule 8): equal pending submissions return the pending job."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from core_support import CoreKit, rows

from edgejobs import Conflict, EdgeJobs, Job, Status


async def _submit(kit: CoreKit, job_type: str = "t.work", **kwargs: Any) -> Job:
    """Submit with deduplication left at its default (the kit's own submit turns it off)."""
    kwargs.setdefault("org", "acme")
    return await kit.ej.submit(job_type, **kwargs)


async def test_equal_params_return_the_pending_job(kit: CoreKit) -> None:
    first = await _submit(kit, params={"a": 1, "b": [1, 2]})
    assert not first.deduplicated
    again = await _submit(kit, params={"b": [1, 2], "a": 1})  # key order does not matter
    assert again.deduplicated and again.id == first.id and again.status is Status.QUEUED
    # Different params, job type or org: a new job.
    assert not (await _submit(kit, params={"a": 2, "b": [1, 2]})).deduplicated
    assert not (await _submit(kit, "t.once", params={"a": 1, "b": [1, 2]})).deduplicated
    assert not (await _submit(kit, params={"a": 1, "b": [1, 2]}, org="beta")).deduplicated
    count = rows(kit.path, "SELECT count(*) AS n FROM jobs")[0]["n"]
    assert count == 4


@pytest.mark.parametrize("ending", ["completed", "failed", "canceled"])
async def test_a_new_job_once_the_first_has_ended(kit: CoreKit, ending: str) -> None:
    params = {"mode": "permanent" if ending == "failed" else "ok"}
    first = await _submit(kit, params=params)
    running = await _submit(kit, params=params)
    assert running.id == first.id
    if ending == "canceled":
        await kit.ej.cancel(first.id)
    else:
        await kit.harness.drain()
    assert kit.status(first.id).value == ending
    second = await _submit(kit, params=params)
    assert not second.deduplicated and second.id != first.id
    assert (await _submit(kit, params=params)).id == second.id


async def test_dedup_false_and_dedup_key(kit: CoreKit) -> None:
    first = await _submit(kit, params={"x": 1})
    forced = await _submit(kit, params={"x": 1}, dedup=False)
    assert not forced.deduplicated and forced.id != first.id
    # A job submitted with dedup=False is not a dedup target either.
    assert (await _submit(kit, params={"x": 1})).id == first.id

    keyed = await _submit(kit, params={"x": 2}, dedup_key="nightly")
    same_key = await _submit(kit, params={"x": 3}, dedup_key="nightly")
    assert same_key.deduplicated and same_key.id == keyed.id and same_key.params == {"x": 2}
    other_key = await _submit(kit, params={"x": 2}, dedup_key="hourly")
    assert not other_key.deduplicated
    # The key replaces the params in the hash: params equal to a keyed job's are not a match.
    assert not (await _submit(kit, params={"x": 2})).deduplicated


async def test_job_type_dedup_false_and_submit_override(kit: CoreKit) -> None:
    kit.ej.register("t.nodedup", kit._handler, dedup=False)
    a = await _submit(kit, "t.nodedup", params={"x": 1})
    b = await _submit(kit, "t.nodedup", params={"x": 1})
    assert a.id != b.id and not b.deduplicated
    c = await _submit(kit, "t.nodedup", params={"y": 1}, dedup=True)
    d = await _submit(kit, "t.nodedup", params={"y": 1}, dedup=True)
    assert d.deduplicated and d.id == c.id


async def test_fifty_concurrent_identical_submits_create_one_job(kit: CoreKit) -> None:
    jobs = await asyncio.gather(*(_submit(kit, params={"same": True}) for _ in range(50)))
    assert len({j.id for j in jobs}) == 1
    assert sum(not j.deduplicated for j in jobs) == 1
    assert sum(j.deduplicated for j in jobs) == 49
    assert rows(kit.path, "SELECT count(*) AS n FROM jobs")[0]["n"] == 1


async def test_fifty_concurrent_identical_submits_from_separate_clients(kit: CoreKit) -> None:
    """Several client instances (separate writer connections, like separate processes)."""
    clients = [EdgeJobs(database=kit.path) for _ in range(5)]
    for client in clients:
        client.register("t.work", kit._handler)
    try:
        jobs = await asyncio.gather(
            *(clients[i % 5].submit("t.work", org="acme", params={"shared": 1}) for i in range(50))
        )
    finally:
        for client in clients:
            await client.close()
    assert len({j.id for j in jobs}) == 1
    assert sum(not j.deduplicated for j in jobs) == 1
    assert rows(kit.path, "SELECT count(*) AS n FROM jobs")[0]["n"] == 1


async def test_retry_refuses_while_an_equal_job_is_pending(kit: CoreKit) -> None:
    first = await _submit(kit, params={"mode": "permanent"})
    await kit.harness.drain()
    replacement = await _submit(kit, params={"mode": "permanent"})
    assert replacement.id != first.id
    with pytest.raises(Conflict) as info:
        await kit.ej.retry(first.id)
    assert replacement.id in info.value.message
    assert kit.status(first.id) is Status.FAILED


@pytest.mark.parametrize("first_action", ["submit", "retry"])
async def test_a_job_created_canceled_keeps_its_hash_so_retry_and_submit_still_dedup(
    kit: CoreKit, first_action: str
) -> None:
    """A child submitted after its parent was canceled is created ``canceled``; once the
    parent is retried and completed, that child and an equal new one are never both pending
    (SPEC rule 8), as for a job canceled any other way."""
    parent = await _submit(kit, params={"mode": "ok", "n": 0})
    await kit.ej.cancel(parent.id)
    child = await _submit(kit, params={"mode": "ok", "n": 1}, depends_on=[parent.id])
    assert child.status is Status.CANCELED
    await kit.ej.retry(parent.id)
    await kit.harness.drain()
    assert kit.status(parent.id) is Status.COMPLETED
    if first_action == "submit":
        twin = await _submit(kit, params={"mode": "ok", "n": 1}, depends_on=[parent.id])
        assert not twin.deduplicated and twin.status is Status.QUEUED
        with pytest.raises(Conflict) as info:
            await kit.ej.retry(child.id)
        assert twin.id in info.value.message
        assert kit.status(child.id) is Status.CANCELED
    else:
        assert (await kit.ej.retry(child.id)).status is Status.QUEUED
        again = await _submit(kit, params={"mode": "ok", "n": 1}, depends_on=[parent.id])
        assert again.deduplicated and again.id == child.id
