"""The operator audit log: one entry per action, written in the action's own transaction,
org-scoped for reading, pruned by retention."""

from __future__ import annotations

from pathlib import Path

import pytest
from control_support import Factory, query

from edgejobs import Status
from edgejobs.config import RetentionConfig
from edgejobs.control import (
    AuditRetention,
    OperatorActor,
    list_audit,
    override_job_type,
    pause_job_type,
    resume_job_type,
)
from edgejobs.errors import Conflict, ValidationError
from edgejobs.testing import FakeClock

ALICE = OperatorActor(token_id="tok_alice", role="operator", org="acme")
ROOT = OperatorActor(token_id="tok_root", role="admin", org=None)


async def test_each_action_is_logged_once_with_its_actor(runner: Factory) -> None:
    ej = await runner(types=[("work", {"dedup": False})])
    job = await ej.submit("work", org="acme")
    other = await ej.submit("work", org="globex")
    await ej.cancel(job.id, org="acme", actor=ALICE)
    await ej.retry(job.id, org="acme", actor=ALICE)
    await ej.cancel(other.id, actor=ROOT, reason="maintenance")
    await pause_job_type(ej, "work", actor=ROOT)
    await resume_job_type(ej, "work", actor=ROOT)
    await override_job_type(ej, "work", {"timeout_s": 9}, actor=ROOT)
    await ej.submit("work", org="acme")  # not an operator action
    await ej.cancel((await ej.submit("work", org="acme")).id)  # no actor: not audited

    entries, cursor = await list_audit(ej)
    assert cursor is None
    seen = [(e.action, e.target, e.token_id, e.role, e.actor_org, e.org) for e in entries]
    assert seen == [
        ("override", "work", "tok_root", "admin", None, None),
        ("resume", "work", "tok_root", "admin", None, None),
        ("pause", "work", "tok_root", "admin", None, None),
        ("cancel", other.id, "tok_root", "admin", None, "globex"),
        ("retry", job.id, "tok_alice", "operator", "acme", "acme"),
        ("cancel", job.id, "tok_alice", "operator", "acme", "acme"),
    ]
    assert entries[0].details == {"changes": {"timeout_s": 9}}
    assert entries[3].details == {"reason": "maintenance"}
    shown = entries[0].to_dict()
    assert shown["at"] == "2026-01-01T00:00:00.000Z"
    assert set(shown) == {
        "id", "at", "token_id", "role", "actor_org", "org", "action", "target", "details"
    }  # fmt: skip


async def test_an_org_reads_only_its_own_entries(runner: Factory) -> None:
    ej = await runner(types=[("work", {"dedup": False})])
    a = await ej.submit("work", org="acme")
    b = await ej.submit("work", org="globex")
    await ej.cancel(a.id, actor=ROOT)
    await ej.cancel(b.id, actor=OperatorActor("tok_g", "admin", "globex"))
    await pause_job_type(ej, "work", actor=ROOT)
    acme, _ = await list_audit(ej, org="acme")
    assert [(e.target, e.token_id) for e in acme] == [(a.id, "tok_root")]
    globex, _ = await list_audit(ej, org="globex")
    assert [(e.target, e.token_id) for e in globex] == [(b.id, "tok_g")]
    assert len((await list_audit(ej))[0]) == 3


async def test_a_refused_action_leaves_no_entry(runner: Factory, db_path: Path) -> None:
    ej = await runner(types=[("work", {})])
    job = await ej.submit("work", org="acme")
    await ej.drain()
    with pytest.raises(Conflict):
        await ej.cancel(job.id, actor=ALICE)  # completed: nothing to cancel
    with pytest.raises(Conflict):
        await ej.retry(job.id, actor=ALICE)
    with pytest.raises(ValidationError):
        await override_job_type(ej, "work", {"concurrency": 0}, actor=ROOT)
    assert query(db_path, "SELECT count(*) FROM audit_log") == [(0,)]


async def test_an_action_and_its_entry_commit_together(runner: Factory, db_path: Path) -> None:
    ej = await runner(types=[("work", {})])
    job = await ej.submit("work", org="acme")

    def crash(stage: str, _n: int) -> None:
        if stage == "before_commit":
            raise RuntimeError("simulated crash before COMMIT")

    ej.store.writer.fault_hook = crash
    with pytest.raises(RuntimeError):
        await ej.cancel(job.id, actor=ALICE)
    with pytest.raises(RuntimeError):
        await pause_job_type(ej, "work", actor=ROOT)
    ej.store.writer.fault_hook = None
    assert (await ej.get(job.id)).status is Status.QUEUED
    assert "work" not in ej.registry.paused
    assert query(db_path, "SELECT count(*) FROM audit_log") == [(0,)]
    await ej.cancel(job.id, actor=ALICE)
    assert query(db_path, "SELECT action, token_id FROM audit_log") == [("cancel", "tok_alice")]


async def test_no_secret_reaches_the_log(runner: Factory, db_path: Path) -> None:
    class Principal:
        """Shaped like the API's principal, with a secret that must stay out of the log."""

        token_id = "tok_x"
        role = "admin"
        org = None
        secret = "ej_do-not-log-me"

    ej = await runner(types=[("work", {})])
    job = await ej.submit("work", org="acme")
    await ej.cancel(job.id, actor=Principal())
    dump = "".join(str(row) for row in query(db_path, "SELECT * FROM audit_log"))
    assert "tok_x" in dump and "ej_do-not-log-me" not in dump


async def test_pages_go_back_in_time(runner: Factory) -> None:
    ej = await runner(types=[("work", {})])
    for _ in range(5):
        await pause_job_type(ej, "work", actor=ROOT)
    first, cursor = await list_audit(ej, limit=2)
    second, cursor2 = await list_audit(ej, limit=2, before_id=cursor)
    third, cursor3 = await list_audit(ej, limit=2, before_id=cursor2)
    ids = [e.id for e in first + second + third]
    assert ids == sorted(ids, reverse=True) and len(set(ids)) == 5 and cursor3 is None
    with pytest.raises(ValidationError):
        await list_audit(ej, limit=0)


async def test_retention_prunes_old_entries(
    runner: Factory, clock: FakeClock, db_path: Path
) -> None:
    day_ms = 86_400_000
    ej = await runner(
        types=[("work", {})],
        retention=RetentionConfig(days=2, interval_s=2 * 86_400, batch_size=2),
    )
    for _ in range(5):
        await pause_job_type(ej, "work", actor=ROOT)
    clock.advance(86_400)
    await resume_job_type(ej, "work", actor=ROOT)
    (resumed_at,) = query(db_path, "SELECT at FROM audit_log WHERE action = 'resume'")[0]
    clock.advance(86_400 + 1)
    assert ej.ticker is not None
    await ej.ticker.tick()  # the retention task is registered with the runner
    # Only what is older than `days` goes (the five pauses, in batches of two).
    assert query(db_path, "SELECT action FROM audit_log") == [("resume",)]
    # It runs once per retention interval, like job retention: a day later the resume is
    # older than the cutoff too, but the interval (two days) has not passed, so it stays.
    clock.advance(86_400)
    assert resumed_at < clock.now_ms() - 2 * day_ms
    await ej.ticker.tick()
    assert query(db_path, "SELECT action FROM audit_log") == [("resume",)]
    clock.advance(86_400 - 0.001)  # one millisecond short of the interval
    await ej.ticker.tick()
    assert query(db_path, "SELECT action FROM audit_log") == [("resume",)]
    clock.advance(0.001)  # the interval has passed since the first run
    await ej.ticker.tick()
    assert query(db_path, "SELECT action FROM audit_log") == []
    # prune() itself deletes by age only, whenever it is called.
    await resume_job_type(ej, "work", actor=ROOT)
    retention = AuditRetention(ej)
    assert await retention.prune(clock.now_ms()) == 0
    clock.advance(2 * 86_400 + 1)
    assert await retention.prune(clock.now_ms()) == 1
