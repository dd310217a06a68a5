"""The operator commands: init, submit, jobs list/show/cancel/retry, stats, prune.

Most commands run in this process through :func:`edgejobs.cli.main` (in a worker thread, as
the command runs its own event loop) while a stepped runner works on the same database; a
few run as real subprocesses to check the installed entry points.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import sqlite3
import stat
from collections.abc import AsyncIterator, Iterator
from contextlib import closing
from pathlib import Path

import pytest
from core_support import count_status, run_cli, write_config

from edgejobs import JobSpec, Status
from edgejobs.cli import main
from edgejobs.cli.progress_bar import describe
from edgejobs.clock import SystemClock
from edgejobs.config import load_config
from edgejobs.models import MAX_PAGE
from edgejobs.store import jobs as store_jobs
from edgejobs.store.store import Store
from edgejobs.testing import Harness

CONFIG = """
[database]
path = "jobs.db"

[retry]
base_delay_s = 0
max_delay_s = 0

[[job_types]]
name = "echo"
handler = "core_handlers:echo"

[[job_types]]
name = "fails"
handler = "core_handlers:fail"
max_retries = 0
"""

Result = tuple[int, str, str]


def exit_code_of(argv: list[str]) -> int:
    """``edgejobs ARGV`` in this process; argparse's usage errors exit through SystemExit."""
    try:
        return main(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1


class Cli:
    """Runs ``edgejobs ARGS --config <config>`` in this process: (exit code, stdout, stderr)."""

    def __init__(self, config: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.config = config
        self.capsys = capsys

    async def __call__(self, *args: str, config_first: bool = False) -> Result:
        # The command configures logging for the whole process; ERROR keeps the stepped
        # runner's own log lines (this same process) out of the captured stderr.
        config = ["--config", str(self.config), "--log-level", "ERROR"]
        argv = [*config, *args] if config_first else [*args, *config]
        code = await asyncio.to_thread(exit_code_of, argv)
        out, err = self.capsys.readouterr()
        assert "Traceback" not in err, err
        return code, out, err


@pytest.fixture
def config(tmp_path: Path) -> Path:
    return write_config(tmp_path, CONFIG)


@pytest.fixture
def database(config: Path) -> Path:
    """The commands' database, created (and left without a runner)."""
    path = load_config(config, environ={}).database.path
    Store(path).prepare()
    return path


@pytest.fixture
async def runner(config: Path) -> AsyncIterator[Harness]:
    """The runner of the database the commands use (stepped; real clock)."""
    loaded = load_config(config, environ={})
    async with Harness(config=loaded, database=loaded.database.path, clock=SystemClock()) as h:
        yield h


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """Commands run here configure logging for the whole process (a handler on this test's
    captured stderr); undo that so later tests log as before."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(False)


@pytest.fixture
def cli(config: Path, capsys: pytest.CaptureFixture[str]) -> Cli:
    """The command line, on the test's config."""
    return Cli(config, capsys)


def _one_line_error(err: str, *needles: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("edgejobs: ")
    for needle in needles:
        assert needle in lines[0], (needle, err)


# -- help and init ------------------------------------------------------------------------------


def test_python_m_edgejobs_help_lists_the_commands() -> None:
    result = run_cli("--help")
    assert result.returncode == 0, result.stderr
    for command in ("init", "worker", "submit", "jobs", "stats", "prune"):
        assert command in result.stdout
    result = run_cli("jobs", "--help")
    assert result.returncode == 0
    for action in ("list", "show", "cancel", "retry"):
        assert action in result.stdout


def test_init_writes_a_config_that_loads_and_never_overwrites(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "conf" / "edgejobs.toml"
    target.parent.mkdir()
    assert main(["init", "--config", str(target)]) == 0
    text = target.read_text()
    config = load_config(target, environ={})
    assert config.database.path == target.parent / "edgejobs.db"
    capsys.readouterr()
    assert main(["--config", str(target), "init"]) != 0
    _one_line_error(capsys.readouterr().err, "already exists")
    assert target.read_text() == text
    # Without --config: ./edgejobs.toml.
    monkeypatch.chdir(tmp_path)
    assert main(["init"]) == 0
    assert load_config(tmp_path / "edgejobs.toml", environ={}).runner.workers >= 1


def test_init_writes_a_file_only_its_owner_can_read(tmp_path: Path) -> None:
    """It may come to hold `[server] metrics_token`: not readable by every local user."""
    target = tmp_path / "edgejobs.toml"
    previous = os.umask(0o022)  # the usual umask, under which a plain open() gives 0644
    try:
        assert main(["init", "--config", str(target)]) == 0
    finally:
        os.umask(previous)
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


def test_init_writes_the_file_named_by_edgejobs_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every other command reads $EDGEJOBS_CONFIG: init must write there, not ./edgejobs.toml."""
    target = tmp_path / "conf" / "env.toml"
    target.parent.mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("EDGEJOBS_CONFIG", str(target))
    assert main(["init"]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {target}"
    assert not (tmp_path / "edgejobs.toml").exists()
    assert load_config().source == target
    # The flag still comes first.
    flagged = tmp_path / "flag.toml"
    assert main(["init", "--config", str(flagged)]) == 0
    assert flagged.is_file()


# -- the operator's flow ------------------------------------------------------------------------


async def test_submit_list_show_and_dependencies(cli: Cli, runner: Harness) -> None:
    code, out, err = await cli("submit", "echo", "--org", "acme", "--params", '{"x": 1}')
    assert code == 0 and err == ""
    parent = out.strip()
    assert out == parent + "\n" and len(parent) == 26

    code, out, err = await cli("submit", "echo", "--org", "acme", "--params", '{"x":1}')
    assert code == 0 and out.strip() == parent and "already" in err  # deduplicated
    code, out, _ = await cli("submit", "echo", "--org", "acme", "--params", '{"x":1}', "--no-dedup")
    assert code == 0 and out.strip() != parent
    code, out, _ = await cli(
        "submit", "echo", "--org", "acme", "--priority", "high", "--delay", "60", config_first=True
    )
    scheduled = out.strip()
    code, out, _ = await cli(
        "submit", "echo", "--org", "acme", "--params", '{"child": true}', "--after", parent
    )
    child = out.strip()
    code, out, _ = await cli("submit", "echo", "--org", "other", "--dedup-key", "k")
    other = out.strip()

    code, out, _ = await cli("jobs", "list", "--json")
    listed = json.loads(out)
    assert code == 0 and len(listed) == 5
    assert {j["id"]: j["status"] for j in listed}[child] == "blocked"
    assert {j["id"]: j["priority"] for j in listed}[scheduled] == "high"
    code, out, _ = await cli("jobs", "list", "--status", "blocked", "scheduled", "--json")
    assert sorted(j["id"] for j in json.loads(out)) == sorted([child, scheduled])
    code, out, _ = await cli("jobs", "list", "--org", "other", "--json")
    assert [j["id"] for j in json.loads(out)] == [other]
    code, out, _ = await cli("jobs", "list", "--type", "echo", "--limit", "2", "--json")
    assert len(json.loads(out)) == 2
    code, out, _ = await cli("jobs", "list", "--type", "nothing", "--json")
    assert json.loads(out) == []
    code, out, err = await cli("jobs", "list")
    assert code == 0 and out.splitlines()[0].split()[:4] == ["ID", "ORG", "TYPE", "STATUS"]
    assert all(job_id in out for job_id in (parent, child, scheduled, other))

    code, out, _ = await cli("jobs", "show", child, "--json")
    shown = json.loads(out)
    assert shown["job"]["depends_on"] == [parent] and shown["job"]["status"] == "blocked"
    assert shown["attempts"] == []
    code, out, _ = await cli("jobs", "show", parent, "--json")
    assert json.loads(out)["job"]["dependents"] == [child]

    await runner.drain()
    code, out, _ = await cli("jobs", "show", child)
    assert code == 0
    fields = dict(line.split(None, 1) for line in out.splitlines() if line and " " in line)
    assert fields["status"].strip() == "completed"
    assert fields["depends_on"].strip() == parent
    assert '"child": true' in fields["result"]
    assert "ATTEMPT" in out and "completed" in out.split("ATTEMPT", 1)[1]


async def test_jobs_list_limit_goes_past_one_page(cli: Cli, runner: Harness) -> None:
    """A listing page holds at most MAX_PAGE jobs; --limit (up to 10,000) follows the cursor."""
    specs = [JobSpec("echo", "acme", {"n": n}) for n in range(MAX_PAGE + 2)]
    submitted = [job.id for job in await runner.ej.submit_many(specs)]
    code, out, _ = await cli("jobs", "list", "--limit", str(MAX_PAGE + 1), "--json")
    assert code == 0
    assert [job["id"] for job in json.loads(out)] == submitted[::-1][: MAX_PAGE + 1]
    code, out, _ = await cli("jobs", "list", "--limit", "10000", "--json")
    assert code == 0 and len(json.loads(out)) == MAX_PAGE + 2


async def test_jobs_list_goes_on_through_short_and_empty_pages_to_limit_or_the_end(
    cli: Cli, runner: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A filtered page walks at most HISTORY_WALK jobs of the history, so it may come back
    short or empty with a cursor: the listing follows it until --limit jobs or the end."""
    monkeypatch.setattr(store_jobs, "HISTORY_WALK", 4)
    specs = [JobSpec("fails" if n % 9 == 4 else "echo", "acme", {"n": n}) for n in range(40)]
    submitted = [job.id for job in await runner.ej.submit_many(specs)]
    matches = [job_id for n, job_id in enumerate(submitted) if n % 9 == 4][::-1]
    page, after = await runner.ej.list_jobs(job_type="fails", limit=50)
    assert page == [] and after is not None  # the newest four jobs are echoes
    code, out, _ = await cli("jobs", "list", "--type", "fails", "--json")
    assert code == 0 and [job["id"] for job in json.loads(out)] == matches
    code, out, _ = await cli("jobs", "list", "--type", "fails", "--limit", "2", "--json")
    assert code == 0 and [job["id"] for job in json.loads(out)] == matches[:2]


async def test_job_text_reaches_the_terminal_with_its_control_characters_escaped(
    cli: Cli, runner: Harness
) -> None:
    """Error messages, tracebacks, progress messages and cancel reasons come from handlers
    and submitters: printed raw, an escape sequence in them cleared the operator's screen,
    set the window title or wrote the clipboard (OSC 52) of whoever ran ``jobs show``."""
    hostile = "no disk\x1b]52;c;ZXZpbA==\x07\x1b[2J\x1b]0;owned\x07"
    code, out, _ = await cli(
        "submit", "fails", "--org", "acme", "--params", json.dumps({"message": hostile})
    )
    job_id = out.strip()
    await runner.drain()
    code, out, _ = await cli("jobs", "show", job_id)
    assert code == 0
    assert "\x1b" not in out and "\x07" not in out
    escaped = "RuntimeError: no disk\\x1b]52;c;ZXZpbA==\\x07\\x1b[2J\\x1b]0;owned\\x07"
    error_line, traceback_line, attempt_row = (
        line for line in out.splitlines() if "RuntimeError: no disk" in line
    )
    assert error_line.split(None, 1)[1] == escaped
    assert traceback_line.strip() == escaped
    assert attempt_row.endswith(escaped)
    code, _, _ = await cli("jobs", "retry", job_id)
    code, _, _ = await cli("jobs", "cancel", job_id, "--reason", "bye\x1b[2J")
    code, out, _ = await cli("jobs", "show", job_id)
    assert "\x1b" not in out and "bye\\x1b[2J" in out
    # The live progress line of ``submit --wait`` too.
    job = dataclasses.replace(await runner.get(job_id), progress_message="half\x1b[2Jway")
    assert describe(job).endswith("half\\x1b[2Jway")


async def test_failed_job_show_retry_cancel(cli: Cli, runner: Harness) -> None:
    code, out, _ = await cli(
        "submit", "fails", "--org", "acme", "--params", '{"message": "no disk"}'
    )
    job_id = out.strip()
    await runner.drain()

    code, out, _ = await cli("jobs", "show", job_id)
    assert code == 0
    assert "RuntimeError: no disk" in out
    assert "traceback:" in out and "Traceback (most recent call last)" in out
    assert "core_handlers.py" in out  # the handler's own frame
    attempts_table = out.split("ATTEMPT", 1)[1]
    assert "failed" in attempts_table and "RuntimeError: no disk" in attempts_table
    code, out, _ = await cli("jobs", "show", job_id, "--json")
    shown = json.loads(out)
    assert shown["job"]["error"]["type"] == "RuntimeError"
    assert "Traceback" in shown["job"]["error"]["traceback"]
    assert [a["outcome"] for a in shown["attempts"]] == ["failed"]

    code, out, _ = await cli("jobs", "retry", job_id)
    assert code == 0 and out.split() == [job_id, "queued"]
    code, _, err = await cli("jobs", "retry", job_id)
    assert code == 1
    _one_line_error(err, job_id, "queued")
    code, out, _ = await cli("jobs", "cancel", job_id, "--reason", "not needed")
    assert code == 0 and out.split() == [job_id, "canceled"]
    assert (await runner.get(job_id)).cancel_reason == "not needed"
    code, _, err = await cli("jobs", "cancel", job_id)
    assert code == 1
    _one_line_error(err, "canceled")
    code, out, _ = await cli("jobs", "show", job_id, "--json")
    assert [a["outcome"] for a in json.loads(out)["attempts"]] == ["failed"]
    # --json: the job object as the API gives it (SPEC §5: "table or --json").
    code, out, _ = await cli("jobs", "retry", job_id, "--json")
    assert code == 0
    retried = json.loads(out)
    assert (retried["id"], retried["status"], retried["attempts"]) == (job_id, "queued", 1)
    code, out, _ = await cli("jobs", "cancel", job_id, "--json")
    assert code == 0 and json.loads(out)["status"] == "canceled"


async def test_stats_and_prune(cli: Cli, runner: Harness, config: Path) -> None:
    for n in range(3):
        await cli("submit", "echo", "--org", "acme", "--params", json.dumps({"n": n}))
    await cli("submit", "fails", "--org", "beta")
    await runner.drain()
    await cli("submit", "echo", "--org", "beta", "--delay", "600")

    code, out, _ = await cli("stats", "--json")
    stats = json.loads(out)
    assert code == 0
    assert stats["by_status"]["completed"] == 3 and stats["by_status"]["failed"] == 1
    assert stats["by_status"]["scheduled"] == 1 and stats["by_status"]["running"] == 0
    assert stats["by_type"]["echo"] == {"completed": 3, "scheduled": 1}
    assert stats["by_org"]["beta"] == {"failed": 1, "scheduled": 1}
    code, out, _ = await cli("stats", "--org", "beta", "--json")
    beta = json.loads(out)
    assert beta["by_status"]["completed"] == 0 and beta["by_status"]["failed"] == 1
    assert "by_org" not in beta
    code, out, _ = await cli("stats")
    assert code == 0 and "completed" in out and "echo" in out and "beta" in out
    # Counts set apart by a hand edit are rebuilt from the jobs table on request.
    db = load_config(config, environ={}).database.path
    with closing(sqlite3.connect(db)) as conn, conn:
        conn.execute("UPDATE job_counts SET n = n + 7 WHERE org = 'acme' AND status = 'completed'")
    code, out, err = await cli("stats", "--org", "acme", "--json")
    assert json.loads(out)["by_status"]["completed"] == 10
    code, out, err = await cli("stats", "--recount", "--org", "acme", "--json")
    assert code == 0 and err.strip() == "recounted: 1 kept counts were wrong"
    assert json.loads(out)["by_status"]["completed"] == 3

    code, out, _ = await cli("prune")  # default: [retention] days = 30
    assert code == 0 and out.strip().startswith("deleted 0 jobs")
    code, out, _ = await cli("prune", "--older-than-days", "0")
    assert code == 0 and out.strip().startswith("deleted 4 jobs")
    db = load_config(config, environ={}).database.path
    assert count_status(db, "completed") == count_status(db, "failed") == 0
    assert count_status(db, "scheduled") == 1


async def test_submit_wait_exit_code_follows_the_outcome(cli: Cli, runner: Harness) -> None:
    async def submit_and_drain(*args: str) -> Result:
        command = asyncio.ensure_future(cli("submit", *args, "--wait"))
        while not command.done():
            await runner.drain()
            await asyncio.sleep(0.02)
        return command.result()

    # stdout: the id first, the final status last (progress lines may come between).
    code, out, err = await submit_and_drain("echo", "--org", "acme")
    lines = out.splitlines()
    assert code == 0 and lines[-1] == "completed", (out, err)
    assert (await runner.get(lines[0])).status.value == "completed"
    code, out, err = await submit_and_drain(
        "fails", "--org", "acme", "--params", '{"message": "x"}'
    )
    assert code == 1 and out.splitlines()[-1] == "failed"
    _one_line_error(err, "RuntimeError: x")


# -- user errors: one line on stderr, never a traceback --------------------------------------------


def nested(levels: int) -> str:
    """A JSON object whose value ``a`` is ``levels`` arrays deep (``levels + 1`` in all)."""
    return '{"a": ' + "[" * levels + "]" * levels + "}"


@pytest.mark.parametrize(
    ("args", "code", "needles"),
    [
        (("submit", "echo", "--org", "a", "--params", "{bad"), 2, ("--params", "JSON")),
        (("submit", "echo", "--org", "a", "--params", "[1, 2]"), 2, ("JSON object",)),
        # Deeper than a request body of the HTTP API may nest (64 levels); thousands of
        # levels once ended in a RecursionError traceback.
        (("submit", "echo", "--org", "a", "--params", nested(64)), 2, ("--params", "64 levels")),
        (("submit", "echo", "--org", "a", "--params", nested(20_000)), 2, ("64 levels",)),
        (("submit", "nope", "--org", "a"), 1, ("unknown job type", "nope")),
        (("submit", "echo", "--org", "a", "--after", "01NOPE"), 1, ("unknown parent",)),
        (("submit", "echo", "--org", "a", "--priority", "urgent"), 2, ("priority",)),
        (("submit", "echo", "--org", "a", "--delay", "-1"), 2, ("--delay",)),
        # Beyond what a due time can hold (it once crashed with OverflowError).
        (("submit", "echo", "--org", "a", "--delay", "1e20"), 2, ("--delay",)),
        (("submit", "echo", "--org", "a", "--delay", "nan"), 2, ("--delay",)),
        # Refused as not JSON, as the HTTP API does (it said "not JSON-serializable", exit 1).
        (("submit", "echo", "--org", "a", "--params", '{"n": NaN}'), 2, ("--params", "NaN")),
        (("submit", "echo", "--org", "a", "--params", '{"n": 1e400}'), 2, ("--params", "range")),
        (("submit", "echo", "--org", "a", "--params", '{"s": "\\ud800"}'), 1, ("surrogate",)),
        (("submit", "echo", "--org", "bad org!"), 1, ("org",)),
        (("submit", "echo"), 2, ("--org",)),
        (("jobs", "show", "01NOPE"), 1, ("no job 01NOPE",)),
        (("jobs", "cancel", "01NOPE"), 1, ("no job",)),
        (("jobs", "retry", "01NOPE"), 1, ("no job",)),
        (("jobs", "list", "--status", "bogus"), 2, ("bogus",)),
        (("jobs", "list", "--limit", "0"), 2, ("--limit",)),
        (("jobs",), 2, ("ACTION",)),
        (("prune", "--older-than-days", "-3"), 2, ("days",)),
        (("prune", "--older-than-days", "1e12"), 2, ("days",)),
        (("worker", "--workers", "0"), 2, ("workers",)),
    ],
)
async def test_user_errors_are_one_clear_line(
    cli: Cli, database: Path, args: tuple[str, ...], code: int, needles: tuple[str, ...]
) -> None:
    got, _, err = await cli(*args)
    assert got == code, err
    _one_line_error(err, *needles)


@pytest.mark.parametrize("argv", [["--log-level", "foo", "stats"], ["stats", "--log-level", "foo"]])
async def test_an_unknown_log_level_is_a_usage_error(
    database: Path, config: Path, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    code = await asyncio.to_thread(exit_code_of, [*argv, "--config", str(config)])
    out, err = capsys.readouterr()
    assert code == 2 and out == "", (code, out, err)
    _one_line_error(err, "--log-level", "DEBUG, INFO, WARNING or ERROR", "'foo'")


async def test_the_log_level_may_be_any_case(
    database: Path,
    config: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # From a level that is neither Python's default (WARNING) nor the command line's (INFO),
    # so that only the flag can set the one asserted; restored after the test.
    monkeypatch.setattr(logging.getLogger(), "level", logging.NOTSET)
    argv = ["stats", "--json", "--log-level", "eRRor", "--config", str(config)]
    assert await asyncio.to_thread(exit_code_of, argv) == 0
    assert logging.getLogger().level == logging.ERROR


async def test_params_may_nest_as_deep_as_the_http_api_allows(cli: Cli, database: Path) -> None:
    code, out, err = await cli("submit", "echo", "--org", "a", "--params", nested(63))
    assert code == 0 and out.strip(), err


# What Python makes of an argument byte that is not UTF-8 (here 0xff): a lone surrogate.
NOT_UTF8 = b"\xff".decode("utf-8", "surrogateescape")


@pytest.mark.parametrize(
    "args",
    [
        ("jobs", "show", NOT_UTF8),
        ("jobs", "list", "--type", NOT_UTF8),
        ("submit", "echo", "--org", "a", "--after", NOT_UTF8),
        ("submit", "echo", "--org", "a", "--params", f'{{"s": "{NOT_UTF8}"}}'),
        ("token", "create", "--org", "a", "--role", "viewer", "--name", NOT_UTF8),
        ("token", "revoke", NOT_UTF8),
        ("stats", "--org", NOT_UTF8),
        ("backup", f"/tmp/{NOT_UTF8}.db"),
    ],
)
async def test_arguments_that_are_not_utf8_are_a_usage_error(
    cli: Cli, database: Path, args: tuple[str, ...]
) -> None:
    got, out, err = await cli(*args)
    assert got == 2 and out == "", (got, out, err)
    _one_line_error(err, "is not valid UTF-8", "\\xff")


def test_an_argument_byte_that_is_not_utf8_is_named_in_the_error(tmp_path: Path) -> None:
    result = run_cli("jobs", "show", NOT_UTF8, cwd=tmp_path)  # the byte 0xff itself
    assert result.returncode == 2, result.stderr
    assert result.stderr == "edgejobs: argument '\\xff' is not valid UTF-8 text\n"


@pytest.mark.parametrize(
    "args",
    [
        ("jobs", "list"),
        ("jobs", "show", "01NOPE"),
        ("jobs", "cancel", "01NOPE"),
        ("stats",),
        ("jobs", "retry", "01NOPE"),
        ("prune",),
        ("audit",),
        ("token", "list"),
        ("token", "revoke", "tok_nope"),
    ],
)
async def test_client_commands_refuse_a_database_that_does_not_exist(
    cli: Cli, tmp_path: Path, args: tuple[str, ...]
) -> None:
    """A wrong folder or config must not leave an empty database behind and answer from it
    ("no jobs match"). (``submit``, ``token create`` and the job types' and schedules'
    commands may come before the first runner: tested below and in tests/control.)"""
    got, out, err = await cli(*args)
    assert got == 1 and out == "", (got, out, err)
    _one_line_error(err, "no database at", str(tmp_path / "jobs.db"))
    assert not (tmp_path / "jobs.db").exists()


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (("submit", "nope", "--org", "acme"), ("unknown job type 'nope'", "no database at")),
        (("submit", "echo", "--org", "bad org!"), ("org",)),
    ],
)
async def test_a_submit_refused_before_the_first_runner_leaves_no_database(
    cli: Cli, config: Path, tmp_path: Path, args: tuple[str, ...], needles: tuple[str, ...]
) -> None:
    """``submit`` may create the database (the job waits for the runner), but one it refuses
    left an empty database behind — in the wrong-folder case, where the type is unknown
    because no config was found, exactly what the other commands avoid."""
    got, out, err = await cli(*args)
    assert got == 1 and out == "", (got, out, err)
    _one_line_error(err, *needles)
    assert not (tmp_path / "jobs.db").exists()


async def test_tokens_and_jobs_may_come_before_the_first_runner(
    cli: Cli, config: Path, tmp_path: Path
) -> None:
    got, out, err = await cli("token", "create", "--org", "acme", "--role", "admin")
    assert got == 0, err
    assert out.strip().splitlines()[-1]  # the secret
    (tmp_path / "jobs.db").unlink()
    got, out, err = await cli("submit", "echo", "--org", "acme")
    assert got == 0, err
    job_id = out.strip()
    got, out, err = await cli("token", "list", "--json")
    assert got == 0 and json.loads(out) == [], err
    # The runner that starts later runs the job.
    loaded = load_config(config, environ={})
    async with Harness(config=loaded, database=loaded.database.path, clock=SystemClock()) as h:
        await h.drain()
        assert (await h.get(job_id)).status is Status.COMPLETED


async def test_database_that_cannot_be_opened_is_a_user_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "a-directory.db"
    folder.mkdir()
    config = write_config(tmp_path, f'[database]\npath = "{folder.name}"\n', name="dir.toml")
    code = await asyncio.to_thread(exit_code_of, ["jobs", "list", "--config", str(config)])
    err = capsys.readouterr().err
    assert code == 1
    _one_line_error(err, "cannot open the database")


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[runner]\nwrokers = 3\n", "wrokers"),
        ('[runner]\nworkers = "8"\n', "workers"),
        ("[runner]\nworkers = 0\n", "workers"),
        ("[retry]\nbase_delay_s = -1\n", "base_delay_s"),
        ("[databse]\npath = 'x.db'\n", "databse"),
        ("[database]\nsynchronous = 'sometimes'\n", "synchronous"),
        ('[[job_types]]\nname = "a"\nhandler = "m:f"\ntimeout_s = "soon"\n', "timeout_s"),
        ('[[job_types]]\nname = "a"\nhandler = "not a path"\n', "handler"),
        (
            '[[schedules]]\nname = "s"\ncron = "0 2 * * *"\njob_type = "a"\norg = "o"\n'
            "params = { x = nan }\n",
            "params.x",
        ),
        ('[database]\npath = "jobs\\u0000.db"\n', "path"),
    ],
)
@pytest.mark.parametrize("command", [("worker",), ("jobs", "list"), ("submit", "a", "--org", "o")])
async def test_config_errors_exit_2_naming_the_key(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    text: str,
    key: str,
    command: tuple[str, ...],
) -> None:
    cli = Cli(write_config(tmp_path, text, name="bad.toml"), capsys)
    code, out, err = await cli(*command)
    assert code == 2 and out == ""
    _one_line_error(err, key)


async def test_init_into_a_missing_folder_is_one_clear_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "no-such-folder" / "edgejobs.toml"
    code = await asyncio.to_thread(exit_code_of, ["init", "--config", str(target)])
    assert code == 1
    _one_line_error(capsys.readouterr().err, "cannot write", "no-such-folder")
    assert not target.exists()


async def test_backup_of_a_file_that_is_not_a_database_is_one_clear_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "notes.db").write_text("not a database\n" * 100)
    config = write_config(tmp_path, '[database]\npath = "notes.db"\n', name="notes.toml")
    argv = ["backup", str(tmp_path / "copy.db"), "--config", str(config)]
    code = await asyncio.to_thread(exit_code_of, argv)
    assert code == 1
    _one_line_error(capsys.readouterr().err, "cannot open the database", "not a database")
    assert not (tmp_path / "copy.db").exists()


@pytest.mark.parametrize(
    ("handler", "needles"),
    [
        ("core_handlers:no_such_function", ("'typo'", "core_handlers", "no_such_function")),
        ("no_such_module_here:run", ("'typo'", "no_such_module_here")),
    ],
)
async def test_a_runner_whose_handler_cannot_be_imported_refuses_to_start(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], handler: str, needles: tuple[str, ...]
) -> None:
    text = f'[database]\npath = "jobs.db"\n\n[[job_types]]\nname = "typo"\nhandler = "{handler}"\n'
    config = write_config(tmp_path, text, name="typo.toml")
    code = await asyncio.to_thread(exit_code_of, ["worker", "--config", str(config)])
    assert code == 2
    _one_line_error(capsys.readouterr().err, *needles)
