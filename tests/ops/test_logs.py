"""Logs: human or JSON lines, job fields on job lines, escaped user data, no secret ever."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from ej_testkit import asgi_client, poll_until, unexpected_tracebacks
from ops_support import connect, make_app

from edgejobs import logs
from edgejobs.cli import main
from edgejobs.store import tokens
from edgejobs.store.claim import ClaimLimits, claim_ready
from edgejobs.testing import FakeClock

pytestmark = pytest.mark.usefixtures("restore_logging")

log = logging.getLogger("edgejobs.test")


def capture(fmt: str = "human", level: str = "DEBUG") -> io.StringIO:
    stream = io.StringIO()
    logs.configure(fmt, level, stream)
    return stream


def test_human_lines_are_one_line_each_with_user_data_escaped() -> None:
    out = capture()
    log.info(
        "job says %s",
        "done\n2026-01-01T00:00:00.000Z ERROR edgejobs: forged\r\x1b[31mred\u2028",
        extra=logs.job_fields("J1", "acme", "reports.build", 2),
    )
    lines = out.getvalue().splitlines()
    assert len(lines) == 1
    line = lines[0]
    assert " INFO edgejobs.test: job says done\\n2026-01-01T00:00:00.000Z ERROR" in line
    assert "\\r\\x1b[31mred\\u2028" in line
    assert "\u2028" not in line and "\x1b" not in line and "\r" not in line
    assert line.endswith("job_id=J1 org=acme job_type=reports.build attempt=2")


def test_a_traceback_stays_under_its_record() -> None:
    out = capture()
    try:
        raise ValueError("bad input\nFAKE RECORD")
    except ValueError:
        log.exception("handler failed")
    first, *rest = out.getvalue().rstrip("\n").split("\n")
    assert first.endswith("ERROR edgejobs.test: handler failed")
    assert rest and all(line.startswith("    ") for line in rest)
    assert "    FAKE RECORD" in rest


def test_json_lines_carry_the_job_fields() -> None:
    out = capture("json")
    logs.job_logger(log, "J2", "beta", "mail.send").warning("slow\nsmtp", extra={"ms": 1200})
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.error("failed", exc_info=True)
    first, second = (json.loads(line) for line in out.getvalue().splitlines())
    assert first["message"] == "slow\nsmtp" and first["level"] == "WARNING"
    assert (first["job_id"], first["org"], first["job_type"], first["ms"]) == (
        "J2",
        "beta",
        "mail.send",
        1200,
    )
    assert first["ts"].endswith("Z") and first["logger"] == "edgejobs.test"
    assert "RuntimeError: boom" in second["exc"]


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("token ej_" + "A" * 43 + " used", "ej_" + "A" * 43),
        ("Authorization: Bearer abc.def-ghi", "abc.def-ghi"),
        ("headers={'authorization': 'Basic dXNlcjpwYXNz'}", "dXNlcjpwYXNz"),
        ('login body {"token": "s3cr3t-value"}', "s3cr3t-value"),
        ("cookie: edgejobs_session=abc123; edgejobs_csrf=def456", "abc123"),
        ("cookie: edgejobs_session=abc123; edgejobs_csrf=def456", "def456"),
        ("x-csrf-token: 0123456789abcdef", "0123456789abcdef"),
        ("metrics_token = m-secret", "m-secret"),
    ],
)
def test_credentials_are_redacted(text: str, secret: str) -> None:
    out = capture()
    log.info("%s", text)
    log.info("extra", extra={"header": text})
    try:
        raise PermissionError(text)
    except PermissionError:
        log.exception("failed")
    assert secret not in out.getvalue()
    assert out.getvalue().count("[redacted]") >= 3


def test_ids_and_ordinary_words_are_not_redacted() -> None:
    out = capture()
    log.info("token tok_0123456789abcdef revoked; Authorization header missing; ej_short")
    assert "tok_0123456789abcdef revoked; Authorization header missing; ej_short" in out.getvalue()


def test_configure_replaces_its_own_handler_and_survives_a_bad_level() -> None:
    first = capture()
    second = capture("human", "chatty")
    log.info("once")
    assert "once" not in first.getvalue()
    assert "unknown log level 'chatty'; using INFO" in second.getvalue()
    assert second.getvalue().count("once") == 1
    assert logging.getLogger().level == logging.INFO
    with pytest.raises(ValueError):
        logs.configure("xml", "INFO", io.StringIO())


async def test_attempt_lines_name_the_job_org_and_type(db_path: Path, clock: FakeClock) -> None:
    out = capture("json")
    ej = make_app(db_path, clock)

    @ej.job_type("fails", max_retries=0)
    async def fails(ctx: Any, params: dict[str, Any]) -> None:
        raise RuntimeError("no such\nprinter")

    async with ej:
        job = await ej.submit("fails", org="acme", params={})
        await ej.drain()
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    ended = [line for line in lines if line.get("job_id") == job.id]
    assert ended, out.getvalue()
    assert ended[0]["org"] == "acme" and ended[0]["job_type"] == "fails"
    assert ended[0]["attempt"] == 1
    assert "RuntimeError: no such\nprinter" in ended[0]["message"]


async def test_a_job_that_gives_up_is_a_warning_with_its_traceback_once(
    db_path: Path, clock: FakeClock
) -> None:
    """Every failed attempt was the same INFO line, without what became of the job: dead
    letters could not be found in the log, and no traceback was ever logged. A retry stays
    one INFO line; the attempt after which the job gives up is a WARNING naming its final
    status, with the handler's traceback under it."""
    out = capture("human")
    ej = make_app(db_path, clock)

    @ej.job_type("flaky", max_retries=1, base_delay_s=0.0)
    async def flaky(ctx: Any, params: dict[str, Any]) -> None:
        raise RuntimeError("printer on fire")

    async with ej:
        job = await ej.submit("flaky", org="acme", params={})
        await ej.drain()
        clock.advance(60)  # past the retry's backoff
        await ej.drain()
        assert (await ej.get(job.id)).status.value == "dead_letter"
    text = out.getvalue()
    lines = [line for line in text.splitlines() if job.id in line and "ended:" in line]
    assert len(lines) == 2, text
    assert " INFO " in lines[0] and "the job is now retrying " in lines[0], lines[0]
    assert " WARNING " in lines[1] and "the job is now dead_letter" in lines[1], lines[1]
    # The traceback once, indented under the WARNING (and not under the retry's line).
    assert text.count('raise RuntimeError("printer on fire")') == 1, text
    after = text.split(lines[1], 1)[1]
    assert 'raise RuntimeError("printer on fire")' in after
    # What the worker tests accept as the only tracebacks in a log; anything else they flag.
    assert unexpected_tracebacks(text) == []
    crash = "2026-11-30T00:00:00.000Z ERROR edgejobs.runner: tick failed\n    Traceback (most"
    assert unexpected_tracebacks(text + crash) == [crash.splitlines()[0]]
    assert unexpected_tracebacks("Traceback (most recent call last):") != []


async def test_a_job_lost_in_a_crash_is_logged_by_id_org_and_type(
    db_path: Path, clock: FakeClock
) -> None:
    """After a crash the on-call engineer needs to know which jobs ran twice."""
    out = capture("json")
    dead = make_app(db_path, clock)  # a client: what a runner killed mid-job left behind
    job = await dead.submit("quick", org="acme", params={})
    limits = ClaimLimits(types=frozenset({"quick"}))
    await dead.store.write(
        partial(claim_ready, now=clock.now_ms(), slots=1, lease_ms=60_000, limits=limits)
    )
    await dead.close()
    runner = make_app(db_path, clock)
    await runner.start(run_workers=False)
    await runner.close()
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    lost = [line for line in lines if line.get("job_id") == job.id and "lost" in line["message"]]
    assert len(lost) == 1, out.getvalue()
    assert lost[0]["level"] == "WARNING"
    assert (lost[0]["org"], lost[0]["job_type"], lost[0]["attempt"]) == ("acme", "quick", 1)
    assert lost[0]["message"].endswith("the job is now dead_letter")  # max_retries=0


async def test_a_token_created_and_used_in_a_run_never_reaches_the_logs(
    db_path: Path, clock: FakeClock
) -> None:
    out = capture("human", "DEBUG")
    ej = make_app(db_path, clock)

    @ej.job_type("leaky", max_retries=0)
    async def leaky(ctx: Any, params: dict[str, Any]) -> None:
        logging.getLogger("myapp.jobs").info("calling upstream with %s", params["auth"])
        raise RuntimeError(f"upstream refused {params['auth']}")

    await ej.start(run_workers=False)
    try:
        new = await ej.store.write(
            partial(tokens.create_token, org="acme", role="admin", name="ops", now=clock.now_ms())
        )
        secret = new.secret
        assert secret.startswith("ej_")
        app = ej.asgi_app()
        bearer = {"Authorization": f"Bearer {secret}"}
        async with asgi_client(app) as http:
            assert (await http.get("/api/v1/jobs", headers=bearer)).status_code == 200
            submitted = await http.post(
                "/api/v1/jobs",
                headers=bearer,
                json={"job_type": "leaky", "params": {"auth": f"Bearer {secret}"}},
            )
            assert submitted.status_code == 201, submitted.text
            await http.post("/login", json={"token": secret})
            await http.get(f"/api/v1/jobs?token={secret}")
            await http.post("/api/v1/jobs", headers=bearer, content=b"{not json " + secret.encode())
        await ej.drain()
        # Log it outright, as careless code might.
        logging.getLogger("myapp").warning("debug dump: token=%s headers=%s", secret, bearer)
    finally:
        await ej.close()
    text = out.getvalue()
    assert "calling upstream with" in text and "upstream refused" in text
    assert "debug dump" in text
    assert secret not in text
    assert secret[3:] not in text  # not even without its prefix
    assert text.count("[redacted]") >= 4


async def test_the_command_line_switches_to_json_lines(
    db_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "edgejobs.toml"
    config.write_text(f'[database]\npath = "{db_path.name}"\n', encoding="utf-8")
    ej = make_app(db_path)
    async with ej:
        await ej.submit("quick", org="acme", params={})
        await ej.drain()
    capsys.readouterr()
    argv = ["--log-format", "json", "prune", "--older-than-days", "0", "--config", str(config)]
    assert await asyncio.to_thread(main, argv) == 0
    captured = capsys.readouterr()
    records = [json.loads(line) for line in captured.err.splitlines()]
    assert any(r["message"] == "retention deleted 1 jobs and 3 events" for r in records), records
    assert "deleted 1 jobs" in captured.out


def test_a_recurring_warning_is_logged_once_a_minute_with_its_count() -> None:
    out = capture()
    now = [0.0]
    repeats = logs.RepeatLimiter(60.0, clock=lambda: now[0])
    for second in range(150):
        now[0] = float(second)
        repeats.warning(log, "write failed: %s", "the disk is full")
    repeats.warning(log, "write failed: %s", "something else")
    lines = out.getvalue().splitlines()
    assert len(lines) == 4, lines
    assert lines[0].endswith("write failed: the disk is full")
    assert lines[1].endswith("write failed: the disk is full (59 more times in the last 60 s)")
    assert lines[2].endswith("write failed: the disk is full (59 more times in the last 60 s)")
    assert lines[3].endswith("write failed: something else")


async def test_a_tick_failing_the_same_way_logs_its_traceback_once_then_its_recovery(
    db_path: Path, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A tick that raised (no memory left, a bug hit every time) logged a full traceback per
    tick; a failed tick is followed by another one interval later."""
    caplog.set_level(logging.INFO, logger="edgejobs.ticks")
    ej = make_app(db_path, clock, runner={"tick_interval_s": 0.02})
    raised = [0]
    failing = [True]

    async def out_of_memory(now_ms: int) -> None:
        if failing[0]:
            raised[0] += 1
            raise MemoryError

    await ej.start()
    try:
        assert ej.ticker is not None
        ej.ticker.extra_tasks.append(out_of_memory)
        await poll_until(lambda: raised[0] >= 6, timeout=10, interval=0.005, message="no tick ran")
        failing[0] = False

        def said(text: str) -> list[logging.LogRecord]:
            return [r for r in caplog.records if text in r.getMessage()]

        await poll_until(
            lambda: bool(said("ticks go through again")),
            timeout=10,
            interval=0.005,
            message="no recovery line",
        )
    finally:
        await ej.close()
    failed = said("tick failed")
    assert [r.getMessage() for r in failed] == ["tick failed: MemoryError"]
    assert failed[0].levelno == logging.ERROR and failed[0].exc_info is not None
    (recovered,) = said("ticks go through again")
    assert recovered.getMessage() == f"ticks go through again after {raised[0]} failed tick(s)"


async def test_a_runner_that_cannot_write_does_not_flood_the_log(
    db_path: Path, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """Ticks failing on a write lock another process holds: one line, not one per tick."""
    ej = make_app(db_path, clock, runner={"tick_interval_s": 0.02}, database={"busy_timeout_ms": 5})
    await ej.start()
    try:
        other = connect(db_path)
        other.execute("BEGIN EXCLUSIVE")
        try:
            failures: set[float] = set()
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 10
            while len(failures) < 6:  # six failed ticks (or other writes) in a row
                assert loop.time() < deadline, "the runner did not try to write"
                if ej.store.writer.last_failure is not None:
                    failures.add(ej.store.writer.last_failure[0])
                await asyncio.sleep(0.005)
        finally:
            other.execute("ROLLBACK")
            other.close()
        said = [r.getMessage() for r in caplog.records if "tick failed" in r.getMessage()]
        assert len(said) == 1, said
    finally:
        await ej.close()
