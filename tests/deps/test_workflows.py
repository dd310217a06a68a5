"""Workflows and batches: whole graphs, submitted in one transaction, all or nothing."""

from __future__ import annotations

import sqlite3

import pytest

from edgejobs import JobSpec, Status, UnknownJobType, UnknownParent, ValidationError, Workflow
from edgejobs.workflows import Step

from .conftest import Harness


def _count(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT count(*) FROM jobs").fetchone()[0])


async def test_chain_runs_in_order(h: Harness) -> None:
    wf = Workflow(org="acme")
    nodes = wf.chain(Step("step", {"n": 1}, name="fetch"), Step("step", {"n": 2}), "step")
    assert [n.name for n in nodes] == ["fetch", "step", "step#2"]
    jobs = await wf.submit(h.ej)
    assert [jobs[n].status for n in nodes] == [Status.QUEUED, Status.BLOCKED, Status.BLOCKED]
    assert jobs["step"].depends_on == (jobs["fetch"].id,)
    assert jobs["step#2"].depends_on == (jobs["step"].id,)
    assert list(jobs) == ["fetch", "step", "step#2"] and len(jobs) == 3

    order = []
    for node in nodes:
        assert await h.script.claim() == 1
        order.append(h.script.started[-1][0])
        await h.script.complete(jobs[node].id)
    assert order == [jobs[n].id for n in nodes]
    assert h.script.parent_results[(jobs["step#2"].id, 1)] == {
        jobs["step"].id: {"job": jobs["step"].id, "attempt": 1, "n": 2}
    }


async def test_jobs_are_found_by_node_with_get_and_in(h: Harness) -> None:
    wf = Workflow(org="acme")
    fetch = wf.add("step", name="fetch")
    jobs = await wf.submit(h.ej)
    later = wf.add("step", name="later")  # added after the submit: it has no job
    other = Workflow(org="acme").add("step", name="fetch")
    assert fetch in jobs and "fetch" in jobs
    assert jobs.get(fetch) is jobs["fetch"] and jobs.get("fetch", None) is jobs[fetch]
    for missing in (later, other, "later"):
        assert missing not in jobs
        assert jobs.get(missing) is None and jobs.get(missing, 0) == 0
    with pytest.raises(KeyError):
        jobs[later]  # not an IndexError


async def test_group_fans_out_and_in(h: Harness) -> None:
    wf = Workflow(org="acme")
    fetch = wf.add("step", params={"stage": "fetch"}, name="fetch")
    parts = wf.group(*(Step("step", {"part": i}, name=f"part{i}") for i in range(3)), after=fetch)
    merge = wf.add("step", params={"stage": "merge"}, after=parts, name="merge")
    jobs = await wf.submit(h.ej)
    assert jobs[merge].depends_on == tuple(jobs[p].id for p in parts)
    assert jobs[fetch].dependents == ()  # dependents appear once the children exist
    assert set((await h.ej.get(jobs[fetch].id)).dependents) == {jobs[p].id for p in parts}

    await h.script.claim()
    await h.script.complete(jobs[fetch].id)
    assert await h.script.claim() == 3  # fan-out: all parts at once
    await h.script.complete(jobs[parts[0]].id)
    await h.script.complete(jobs[parts[2]].id)
    assert await h.status(jobs[merge].id) == "blocked"
    await h.script.complete(jobs[parts[1]].id)
    assert await h.status(jobs[merge].id) == "queued"
    await h.script.claim()
    assert set(h.script.parent_results[(jobs[merge].id, 1)]) == {jobs[p].id for p in parts}


async def test_failure_inside_a_workflow_cancels_only_what_depends_on_it(h: Harness) -> None:
    wf = Workflow(org="acme")
    root = wf.add("step", params={"r": 1})
    left = wf.chain(Step("step", {"l": 1}), Step("step", {"l": 2}), after=root)
    right = wf.add("step", params={"right": 1}, after=root)
    join = wf.add("step", params={"join": 1}, after=[left[-1], right])
    jobs = await wf.submit(h.ej)
    await h.script.claim()
    await h.script.complete(jobs[root].id)
    await h.script.claim()  # left[0] and right
    await h.script.fail(jobs[left[0]].id)
    assert await h.status(jobs[left[1]].id) == "canceled"
    assert await h.status(jobs[join].id) == "canceled"
    assert await h.status(jobs[right].id) == "running"
    await h.script.complete(jobs[right].id)
    assert await h.status(jobs[right].id) == "completed"


async def test_workflow_is_atomic(h: Harness) -> None:
    existing = await h.ej.submit("step", org="acme", params={"e": 1})
    before = await h.read(_count)

    wf = Workflow(org="acme")
    a = wf.add("step", params={"a": 1}, after=existing.id)
    wf.add("step", params={"b": 1}, after=a)
    wf.add("no.such.type", after=a)
    with pytest.raises(UnknownJobType):
        await wf.submit(h.ej)
    assert await h.read(_count) == before

    # Rejected by the store in the insert transaction, after earlier nodes were inserted.
    wf = Workflow(org="acme")
    a = wf.add("step", params={"a": 2})
    wf.add("step", params={"b": 2}, after=a)
    wf.add("step", params={"c": 2}, after=[a, "01ZZZZZZZZZZZZZZZZZZZZZZZZ"])
    with pytest.raises(UnknownParent):
        await wf.submit(h.ej)
    assert await h.read(_count) == before
    assert h.ej.pool is not None and await h.script.claim() == 1  # only `existing`


async def test_cross_org_parent_is_unknown(h: Harness) -> None:
    theirs = await h.ej.submit("step", org="globex", params={"secret": 1})
    wf = Workflow(org="acme")
    wf.add("step", params={"mine": 1})
    wf.add("step", params={"mine": 2}, after=theirs.id)
    with pytest.raises(UnknownParent) as caught:
        await wf.submit(h.ej)
    assert caught.value.code == "unknown_parent" and caught.value.http_status == 422
    missing = "01ZZZZZZZZZZZZZZZZZZZZZZZZ"
    with pytest.raises(UnknownParent) as unknown:
        await h.ej.submit("step", org="acme", depends_on=[missing])
    # An id of another org and an id that does not exist read the same.
    assert str(caught.value).replace(theirs.id, "X") == str(unknown.value).replace(missing, "X")
    assert await h.read(_count) == 1


async def test_batch_references_by_index_spec_and_id(h: Harness) -> None:
    existing = await h.ej.submit("step", org="acme", params={"e": 1})
    first = JobSpec("step", "acme", {"i": 0})
    specs = [
        first,
        JobSpec("step", "acme", {"i": 1}, depends_on=[0]),
        JobSpec("step", "acme", {"i": 2}, depends_on=[first, 1, existing.id]),
    ]
    jobs = await h.ej.submit_many(specs)
    assert [j.status for j in jobs] == [Status.QUEUED, Status.BLOCKED, Status.BLOCKED]
    assert sorted(jobs[2].depends_on) == sorted([jobs[0].id, jobs[1].id, existing.id])

    with pytest.raises(ValidationError, match="earlier job"):
        await h.ej.submit_many([JobSpec("step", "acme", {"x": 1}, depends_on=[0])])
    with pytest.raises(ValidationError):
        await h.ej.submit_many(
            [JobSpec("step", "acme", {"x": 1}), JobSpec("step", "acme", {"x": 2}, depends_on=[1])]
        )
    # A batch reference to a job of another org in the same batch is an unknown parent too.
    with pytest.raises(UnknownParent):
        await h.ej.submit_many(
            [JobSpec("step", "globex", {"x": 1}), JobSpec("step", "acme", {"x": 2}, depends_on=[0])]
        )
    assert await h.read(_count) == 4


async def test_batch_child_of_a_failed_parent_is_created_canceled(h: Harness) -> None:
    failed = await h.ej.submit("step", org="acme", params={"f": 1})
    await h.script.claim()
    await h.script.fail(failed.id)
    wf = Workflow(org="acme")
    a = wf.add("step", params={"a": 1}, after=failed.id)
    b = wf.add("step", params={"b": 1}, after=a)
    c = wf.add("step", params={"c": 1})
    jobs = await wf.submit(h.ej)
    assert jobs[a].cancel_reason == f"parent {failed.id} ended failed"
    assert jobs[b].cancel_reason == f"parent {jobs[a].id} ended canceled"
    assert jobs[c].status is Status.QUEUED


def test_builder_rejects_what_could_form_a_cycle_or_a_mistake() -> None:
    wf = Workflow(org="acme")
    a = wf.add("step")
    other = Workflow(org="acme")
    with pytest.raises(ValidationError, match="another workflow"):
        other.add("step", after=a)
    with pytest.raises(ValidationError, match="already has a node named"):
        wf.add("step", name="step")
    with pytest.raises(ValidationError):
        wf.add("")
    with pytest.raises(ValidationError):
        wf.add("step", after=[42])  # type: ignore[list-item]
    with pytest.raises(ValidationError):
        Workflow(org="not an org!")
    # A node's parents are fixed when it is added; only earlier nodes exist to name.
    b = wf.add("step", after=a)
    assert b.spec.depends_on == (0,)
    assert wf.add("step", after=[a, a, b]).spec.depends_on == (0, 1)
    # `after` may be a one-shot iterator; every member of a group waits for all of it.
    group = wf.group("step", "step", after=iter([a, b]))
    assert [n.spec.depends_on for n in group] == [(0, 1), (0, 1)]
    assert [n.index for n in wf.nodes] == list(range(len(wf)))
    # A refused call takes no name with it.
    with pytest.raises(ValidationError):
        wf.add("step", name="kept", after=[42])  # type: ignore[list-item]
    assert wf.add("step", name="kept").name == "kept"


async def test_workflow_larger_than_max_batch_is_refused(h: Harness) -> None:
    wf = Workflow(org="acme")
    for n in range(h.ej.config.limits.max_batch + 1):
        wf.add("step", params={"n": n})
    with pytest.raises(ValidationError, match="at most"):
        await wf.submit(h.ej)
    assert await h.read(_count) == 0


async def test_dedup_never_drops_a_dependency(h: Harness) -> None:
    """A job submitted to run after a parent is never answered with an equal job that does
    not wait for that parent (it would run too early)."""
    h.ej.register("dd", h.script.handler, max_retries=0)  # deduplicating type
    loose = await h.ej.submit("dd", org="acme", params={"x": 1})
    parent = await h.ej.submit("step", org="acme", params={"p": 1})
    after = await h.ej.submit("dd", org="acme", params={"x": 1}, depends_on=[parent.id])
    assert not after.deduplicated and after.id != loose.id
    assert after.status is Status.BLOCKED and after.depends_on == (parent.id,)
    # The same submission again is a duplicate of the one with the same parents ...
    again = await h.ej.submit("dd", org="acme", params={"x": 1}, depends_on=[parent.id])
    assert again.deduplicated and again.id == after.id
    # ... and a plain one still of the plain one.
    assert (await h.ej.submit("dd", org="acme", params={"x": 1})).id == loose.id

    await h.script.claim()  # loose and parent
    assert {job for job, _ in h.script.started} == {loose.id, parent.id}


async def test_same_workflow_twice_deduplicates_node_by_node(h: Harness) -> None:
    h.ej.register("dd", h.script.handler, max_retries=0)

    def build() -> Workflow:
        wf = Workflow(org="acme")
        root = wf.add("dd", params={"stage": "root"})
        wf.add("dd", params={"stage": "leaf"}, after=root, name="leaf")
        return wf

    first = await build().submit(h.ej)
    second = await build().submit(h.ej)
    assert [j.deduplicated for j in second.jobs] == [True, True]
    assert second.ids == first.ids
