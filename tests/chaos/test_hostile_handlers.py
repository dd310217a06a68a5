"""Hostile handlers against a real ``edgejobs worker``: each ends with a clear error on its
job and the runner survives, except a sync handler that ends the runner process itself, which
must end ``dead_letter`` through ``lost`` attempts instead of crash-looping forever."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from chaos_support import (
    LONG,
    Worker,
    config_text,
    query,
    setup_folder,
    unfinished,
    wait_for,
)

from edgejobs import EdgeJobs

HOSTILE_TYPES = """
[[job_types]]
name = "h.swallow"
handler = "chaos_handlers:swallow_cancel"
timeout_s = 0.5
max_retries = 0

[[job_types]]
name = "h.block"
handler = "chaos_handlers:block_loop"
timeout_s = 1
max_retries = 0

[[job_types]]
name = "h.hang"
handler = "chaos_handlers:hang"
timeout_s = 0.5
max_retries = 0

[[job_types]]
name = "h.exit"
handler = "chaos_handlers:system_exit"
max_retries = 0

[[job_types]]
name = "h.interrupt"
handler = "chaos_handlers:keyboard_interrupt"
max_retries = 0

[[job_types]]
name = "h.notjson"
handler = "chaos_handlers:not_json"
max_retries = 0

[[job_types]]
name = "h.large"
handler = "chaos_handlers:too_large"
max_retries = 0

[[job_types]]
name = "h.selfkill"
handler = "chaos_handlers:kill_own_process"
isolation = "process"
timeout_s = 30
max_retries = 2

[[job_types]]
name = "h.exit_runner"
handler = "chaos_handlers:exit_runner"
timeout_s = 30
max_retries = 2

[limits]
max_result_bytes = 1000
"""
BLOCK_S = 5.0


def _job(db: Path, job_id: str) -> dict[str, object]:
    return query(db, "SELECT * FROM jobs WHERE id = ?", (job_id,))[0]


def _outcomes(db: Path, job_id: str) -> list[str]:
    return [
        r["outcome"]
        for r in query(
            db,
            "SELECT a.outcome FROM attempts a JOIN jobs j ON j.seq = a.job_seq"
            " WHERE j.id = ? ORDER BY a.number",
            (job_id,),
        )
    ]


def _error(db: Path, job_id: str) -> dict[str, str]:
    text = _job(db, job_id)["error"]
    assert isinstance(text, str), f"{job_id} has no error"
    return dict(json.loads(text))


@pytest.mark.timeout(120)
async def test_the_runner_survives_hostile_handlers(tmp_path: Path) -> None:
    # Two slots: the swallowing handler must give its slot back for the rest to run.
    config = setup_folder(tmp_path, config_text(workers=2, lease_s=30, extra=HOSTILE_TYPES))
    db = tmp_path / "jobs.db"
    client = EdgeJobs.from_config(config, environ={})
    await client.open()

    async def submit(job_type: str, **params: object) -> str:
        job = await client.submit(job_type, org="acme", params=params, dedup=False)
        return job.id

    try:
        with Worker(config, "hostile") as worker:
            await wait_for(worker.started, 30, "worker start", worker)
            swallow = await submit("h.swallow")
            ids = {
                "exit": await submit("h.exit"),
                "interrupt": await submit("h.interrupt"),
                "notjson": await submit("h.notjson"),
                "large": await submit("h.large", bytes=5000),
                "selfkill": await submit("h.selfkill"),
            }
            await wait_for(lambda: not unfinished(db, [swallow, *ids.values()]), 60, "ends", worker)

            block = await submit("h.block", seconds=BLOCK_S)
            await wait_for(lambda: not unfinished(db, [block]), 30, "block ends", worker)
            hang = await submit("h.hang")  # a timeout after the loop was blocked still fires
            await wait_for(lambda: not unfinished(db, [hang]), 10, "hang times out", worker)
            assert worker.alive()
            log = worker.output()
            code = await worker.stop()
            # The whole log, the stop included: an exit other than 0 is explained by its end.
            assert code == 0, worker.output()[-3000:]
            # SIGTERM ended the process although a handler task still ignores cancellation.
            assert "exiting without 1 task(s) that ignored cancellation" in worker.output()
    finally:
        await client.close()

    assert _job(db, swallow)["status"] == "timed_out"
    assert "timeout of 0.5 s" in _error(db, swallow)["message"]
    assert _job(db, hang)["status"] == "timed_out"
    assert _job(db, block)["status"] in ("completed", "timed_out")
    assert "event loop was blocked for" in log
    lag = float(log.split("event loop was blocked for ")[1].split(" s")[0])
    assert lag >= BLOCK_S - 1.5
    assert block in log.split("event loop was blocked for ")[1].splitlines()[0]
    for name, error_type in (
        ("exit", "SystemExit"),
        ("interrupt", "KeyboardInterrupt"),
        ("notjson", "ResultNotSerializable"),
        ("large", "ResultTooLarge"),
    ):
        assert _job(db, ids[name])["status"] == "failed", name
        assert _error(db, ids[name])["type"] == error_type, name
    assert "limit is 1000" in _error(db, ids["large"])["message"]
    assert _job(db, ids["selfkill"])["status"] == "dead_letter"
    assert _outcomes(db, ids["selfkill"]) == ["failed"] * 3
    assert _error(db, ids["selfkill"])["type"] == "ProcessDied"


@pytest.mark.timeout(180 if LONG else 120)
async def test_a_handler_that_kills_the_runner_ends_dead_letter_not_in_a_crash_loop(
    tmp_path: Path,
) -> None:
    config = setup_folder(tmp_path, config_text(lease_s=30, extra=HOSTILE_TYPES))
    db = tmp_path / "jobs.db"
    client = EdgeJobs.from_config(config, environ={})
    await client.open()
    job = await client.submit("h.exit_runner", org="acme")
    await client.close()
    deaths = 0
    for start in range(6):
        with Worker(config, f"runner{start}") as worker:
            await wait_for(
                lambda: not worker.alive() or not unfinished(db, [job.id]), 30, "die or end"
            )
            if not worker.alive():
                deaths += 1
                assert worker.proc.returncode == 1  # os._exit(1) inside the handler
                continue
            assert await worker.stop() == 0, worker.output()
            break
    assert deaths == 3  # max_retries 2: three attempts, each one killing the runner
    assert _job(db, job.id)["status"] == "dead_letter"
    assert _outcomes(db, job.id) == ["lost"] * 3
    assert _error(db, job.id)["type"] == "Lost"
