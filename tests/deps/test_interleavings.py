"""Property-based: random graphs under random interleavings never strand or misrun a job.

Each example opens a fresh database and drives the real facade, pool, ticker and store with a
fake clock through a random sequence of: submit (single, or a batch referring to earlier jobs
of the batch), claim, complete, fail (retryable or permanent), cancel, manual retry, tick
(clock moved a little, or past the lease so running attempts are lost) and prune. Handlers wait
for the test to decide how each attempt ends.

Checked throughout, not only at the end:

* after every commit, on the writer thread, the stored graph obeys SPEC §2.3
  (:func:`conftest.graph_violations`): no orphaned ``blocked`` job, no ``blocked`` job with an
  unsuccessful parent, ``pending_parents`` exact, every child of an unsuccessful parent
  ``canceled``, no attempt started before a parent finished;
* when an attempt starts, the handler reads its parents in a separate transaction: all
  ``completed``; and every parent the job was *submitted* with (the test's own record, which
  survives retention) has completed before — so retention cannot make a child run early;
* the tick loop's safety net never finds anything to settle (promotion and cascade happen in
  the parent's own transaction);
* at the end, a final tick leaves nothing stranded, and running every remaining attempt to
  completion leaves no job unfinished.

``EDGEJOBS_LONG=1`` runs ten times as many examples and shrinks a failure to a minimal one.
"""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from edgejobs import EdgeJobsError, JobSpec
from edgejobs.store.db import WriteTx

from .conftest import TERMINAL, UNSUCCESSFUL, Harness, graph_violations, start_harness, stop_harness

LONG = os.environ.get("EDGEJOBS_LONG") == "1"
EXAMPLES = 2000 if LONG else 200
MAX_STEPS = 60 if LONG else 40
LEASE_S = 10.0
NON_TERMINAL = ("blocked", "scheduled", "queued", "running", "retrying")


def _actions(model: Model, waiting: list[str]) -> list[str]:
    """The actions that can do something now (repeats weigh the choice)."""
    actions = ["submit", "submit", "submit", "batch", "claim", "claim"]
    if waiting:
        actions += ["complete", "complete", "complete", "fail", "fail"]
    if model.ids:
        actions += ["cancel", "retry", "retry", "retry"]
    return actions + ["tick", "tick", "expire", "prune", "prune"]


STATS: Counter[str] = Counter()


class _SafetyNetAlarm(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if "safety net" in record.getMessage():
            self.messages.append(record.getMessage())


class Model:
    """The graph as the test submitted it, and what it saw complete (in commit order)."""

    def __init__(self, h: Harness) -> None:
        self.h = h
        self.ids: list[str] = []
        self.parents: dict[str, tuple[str, ...]] = {}
        self.completed: set[str] = set()
        self.problems: list[str] = []
        h.ej.add_commit_listener(self._on_commit)
        h.script.on_start = self._on_start

    def _on_commit(self, tx: WriteTx) -> None:
        # Commit listeners run in commit order, before any handler that a later claim starts.
        for job_id, status in tx.jobs_changed.items():
            if status == "completed":
                self.completed.add(job_id)

    def _on_start(self, job_id: str, attempt: int, parent_results: dict[str, Any]) -> None:
        wanted = self.parents.get(job_id, ())
        missing = [p for p in wanted if p not in self.completed]
        if missing:
            self.problems.append(f"{job_id} attempt {attempt} started before {missing} completed")
        if set(parent_results) != set(wanted):
            self.problems.append(
                f"{job_id} attempt {attempt} got results of {sorted(parent_results)},"
                f" submitted after {sorted(wanted)}"
            )
        STATS["attempts"] += 1
        if self.parents.get(job_id):
            STATS["child attempts"] += 1

    def in_order(self, ids: list[str]) -> list[str]:
        """``ids`` in submission order (job ids are random: never let them order choices)."""
        chosen = set(ids)
        return [job_id for job_id in self.ids if job_id in chosen]

    def add(self, jobs: list[Any], parents: list[tuple[str, ...]]) -> None:
        for job, wanted in zip(jobs, parents, strict=True):
            if job.id not in self.parents:
                self.ids.append(job.id)
                self.parents[job.id] = wanted
                STATS[f"created {job.status.value}"] += 1


async def _submit(h: Harness, model: Model, data: st.DataObject, n: int) -> None:
    job_type = data.draw(st.sampled_from(["step", "flaky"]), label="type")
    # Mostly recent jobs, so graphs grow deep and children meet parents in every state.
    recent = model.ids[-6:]
    parents: list[str] = []
    if recent:
        parents = data.draw(
            st.lists(st.sampled_from(recent), max_size=3, unique=True), label="after"
        )
    if set(parents) & set(h.script.waiting()):
        STATS["child of a running parent"] += 1
    try:
        job = await h.ej.submit(job_type, org="acme", params={"n": n}, depends_on=parents)
    except EdgeJobsError:  # a parent pruned meanwhile
        STATS["submit refused"] += 1
        return
    model.add([job], [tuple(parents)])


async def _submit_batch(h: Harness, model: Model, data: st.DataObject, n: int) -> None:
    size = data.draw(st.integers(2, 4), label="batch size")
    specs: list[JobSpec] = []
    batch_refs: list[list[str | int]] = []
    for index in range(size):
        refs: list[str | int] = []
        if index:
            refs += data.draw(
                st.lists(st.integers(0, index - 1), max_size=2, unique=True), label="refs"
            )
        if model.ids:
            refs += data.draw(
                st.lists(st.sampled_from(model.ids), max_size=1, unique=True), label="ids"
            )
        batch_refs.append(refs)
        specs.append(JobSpec("step", "acme", {"n": n, "i": index}, depends_on=refs))
    try:
        jobs = await h.ej.submit_many(specs)
    except EdgeJobsError:
        STATS["batch refused"] += 1
        return
    wanted = [
        tuple(jobs[ref].id if isinstance(ref, int) else ref for ref in refs) for refs in batch_refs
    ]
    model.add(jobs, wanted)
    STATS["batches"] += 1


async def _end_attempt(h: Harness, model: Model, data: st.DataObject, action: str) -> None:
    waiting = model.in_order(h.script.waiting())
    if not waiting:
        return
    job_id = data.draw(st.sampled_from(waiting), label="job")
    if action == "complete":
        await h.script.complete(job_id)
    else:
        await h.script.fail(job_id, permanent=data.draw(st.booleans(), label="permanent"))
    STATS[action] += 1


async def _operate(h: Harness, model: Model, data: st.DataObject, action: str) -> None:
    if not model.ids:
        return
    # Mostly jobs the action applies to (non-terminal / unsuccessful), sometimes any job.
    applies = NON_TERMINAL if action == "cancel" else UNSUCCESSFUL
    statuses = await h.read(_statuses)
    fitting = [j for j in model.ids if statuses.get(j) in applies]
    fit = bool(fitting) and data.draw(st.integers(0, 3), label="fit") > 0
    job_id = data.draw(st.sampled_from(fitting if fit else model.ids), label="job")
    try:
        if action == "cancel":
            await h.ej.cancel(job_id)
        else:
            await h.ej.retry(job_id)
    except EdgeJobsError:
        STATS[f"{action} refused"] += 1
        return
    await h.script.settle()
    STATS[action] += 1


async def _act(h: Harness, model: Model, data: st.DataObject, action: str, n: int) -> None:
    if action == "submit":
        await _submit(h, model, data, n)
    elif action == "batch":
        await _submit_batch(h, model, data, n)
    elif action == "claim":
        STATS["claimed"] += await h.script.claim()
    elif action in ("complete", "fail"):
        await _end_attempt(h, model, data, action)
    elif action in ("cancel", "retry"):
        await _operate(h, model, data, action)
    elif action == "tick":
        await h.tick(data.draw(st.sampled_from([0.0, 0.5, 1.0, 3.0]), label="seconds"))
    elif action == "expire":
        running = len(h.script.waiting())
        await h.tick(LEASE_S + 1)
        STATS["lost attempts"] += max(0, running - len(h.script.waiting()))
    elif action == "prune":
        h.clock.advance(data.draw(st.sampled_from([0.0, 1.0]), label="seconds"))
        STATS["pruned"] += (await h.ej.prune(older_than_days=0)).jobs
    else:  # pragma: no cover
        raise AssertionError(action)


def _statuses(conn: Any) -> dict[str, str]:
    return {row[0]: row[1] for row in conn.execute("SELECT id, status FROM jobs")}


def _non_terminal(conn: Any) -> list[tuple[str, str]]:
    marks = ",".join("?" * len(TERMINAL))
    return [
        (row[0], row[1])
        for row in conn.execute(
            f"SELECT id, status FROM jobs WHERE status NOT IN ({marks})", TERMINAL
        )
    ]


async def _scenario(path: Path, data: st.DataObject) -> None:
    alarm = _SafetyNetAlarm()
    logging.getLogger("edgejobs.ticks").addHandler(alarm)
    h = await start_harness(path, workers=3, lease_s=LEASE_S)
    model = Model(h)
    try:
        steps = data.draw(st.integers(5, MAX_STEPS), label="steps")
        for n in range(steps):
            action = data.draw(st.sampled_from(_actions(model, h.script.waiting())), label="action")
            STATS["actions"] += 1
            await _act(h, model, data, action, n)

        # A final tick: nothing may be left blocked behind ended parents.
        await h.tick(0)
        final = await h.read(graph_violations)
        assert final == [], final

        # Then let everything run to the end: no job may stay unfinished.
        for _ in range(200):
            for job_id in model.in_order(h.script.waiting()):
                await h.script.complete(job_id)
            await h.tick(10)
            if not await h.script.claim() and not h.script.waiting():
                if not await h.read(_non_terminal):
                    break
        assert await h.read(_non_terminal) == []
    finally:
        await stop_harness(h)
        logging.getLogger("edgejobs.ticks").removeHandler(alarm)
    assert h.watch.violations == [], h.watch.violations[:5]
    assert h.script.violations == [], h.script.violations[:5]
    assert model.problems == [], model.problems[:5]
    assert alarm.messages == [], alarm.messages[:5]
    STATS["examples"] += 1
    STATS["jobs"] += len(model.ids)
    STATS["commits checked"] += h.watch.commits


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    # Shrinking a failure replays hundreds of scenarios; the default run reports the failing
    # sequence as drawn (every draw is labelled) and stays within its time budget. The long
    # run shrinks.
    phases=tuple(Phase) if LONG else (Phase.explicit, Phase.reuse, Phase.generate),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data())
def _explore(data: st.DataObject) -> None:
    with tempfile.TemporaryDirectory(prefix="edgejobs-deps-") as folder:
        asyncio.run(_scenario(Path(folder) / "deps.db", data))


@pytest.mark.timeout(3600 if LONG else 120)
def test_random_interleavings_keep_the_graph_sound(capsys: Any) -> None:
    STATS.clear()
    _explore()
    summary = ", ".join(f"{key}={value}" for key, value in sorted(STATS.items()))
    with capsys.disabled():
        print(f"\ndependency interleavings: {summary}")
    # The exploration must reach the interesting cases, or it proves nothing.
    assert STATS["examples"] >= EXAMPLES
    for key in (
        "child of a running parent",
        "child attempts",
        "created blocked",
        "created canceled",
        "lost attempts",
        "retry",
        "cancel",
        "pruned",
        "batches",
    ):
        assert STATS[key] > 0, f"no example exercised {key!r}: {summary}"
