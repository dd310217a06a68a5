"""Configuration loading (SPEC §4): defaults, files, environment, flags and error messages."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pydantic
import pytest

from edgejobs import EdgeJobs
from edgejobs.config import (
    Config,
    DatabaseConfig,
    JobTypeConfig,
    RunnerConfig,
    ScheduleConfig,
    default_config_text,
    load_config,
    parse_rate_limit,
)
from edgejobs.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parent.parent

JOB_TYPE = '[[job_types]]\nname = "reports.build"\nhandler = "myapp.jobs:build_report"\n'
SCHEDULE = (
    '[[schedules]]\nname = "nightly"\ncron = "0 2 * * *"\njob_type = "reports.build"\n'
    'org = "acme"\n'
)

JSON_PARAMS = (
    "[[schedules]] #1 params.{}: params must be JSON (no nan, inf, dates or times), got {}"
)


def write(folder: Path, text: str, name: str = "edgejobs.toml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def config_error(path: Path | None, text: str | None = None, **kwargs: Any) -> str:
    """Load and return the ConfigError's message, checking it is one clean line."""
    if path is not None and text is not None:
        path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path, **kwargs)
    message = str(info.value)
    assert message == info.value.message
    assert "\n" not in message and message.strip() == message and message
    assert "Traceback" not in message and "pydantic" not in message.lower()
    assert "input_value" not in message and "errors.pydantic.dev" not in message
    # Never chained to a pydantic error: no second traceback for the CLI to print.
    assert info.value.__cause__ is None
    assert info.value.__context__ is None or info.value.__suppress_context__
    assert info.value.code == "config_error"
    return message


# ---------------------------------------------------------------------------------------------
# Defaults and valid files


def test_defaults_without_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = load_config(environ={})
    assert config.source is None
    assert config.database.path == tmp_path / "edgejobs.db"
    assert config.database.synchronous == "normal"
    assert config.database.busy_timeout_ms == 5000
    assert config.database.journal_size_limit_bytes == 64 * 1024 * 1024
    assert (config.runner.workers, config.runner.tick_interval_s) == (8, 1.0)
    assert (config.runner.lease_s, config.runner.shutdown_grace_s) == (30.0, 30.0)
    assert (config.retry.base_delay_s, config.retry.max_delay_s, config.retry.jitter) == (
        60.0,
        3600.0,
        True,
    )
    assert (config.retention.days, config.retention.interval_s) == (30.0, 3600.0)
    assert config.retention.batch_size == 500
    assert config.progress.min_interval_ms == 250
    assert config.events.replay_max_events == 10000
    assert config.events.replay_max_age_s == 3600.0
    assert config.events.keepalive_s == 15.0
    assert config.events.subscriber_buffer == 1000
    assert (config.server.host, config.server.port, config.server.metrics_token) == (
        "127.0.0.1",
        8000,
        "",
    )
    assert config.server.max_body_bytes == 1_048_576
    assert config.server.session_ttl_s == 86400.0
    assert config.limits.max_params_bytes == 65536
    assert config.limits.max_batch == 1000
    assert config.limits.max_result_bytes == 1_048_576
    assert config.job_types == [] and config.schedules == []
    # Everything but the resolved database path equals the models' own defaults.
    assert config.model_copy(update={"database": DatabaseConfig()}) == Config()


def test_models_are_frozen_and_refuse_unknown_keys() -> None:
    config = Config()
    with pytest.raises(pydantic.ValidationError):
        config.runner.workers = 3
    with pytest.raises(pydantic.ValidationError):
        RunnerConfig(wrokers=3)  # type: ignore[call-arg]


def test_full_valid_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
[database]
path = "data/jobs.db"
synchronous = "full"
busy_timeout_ms = 100
journal_size_limit_bytes = 0

[runner]
workers = 2
tick_interval_s = 0.5
lease_s = 10
shutdown_grace_s = 0

[retry]
base_delay_s = 1
max_delay_s = 1
jitter = false

[retention]
days = 0.5
interval_s = 60
batch_size = 10

[progress]
min_interval_ms = 0

[events]
replay_max_events = 0
replay_max_age_s = 0
keepalive_s = 1.5
subscriber_buffer = 1

[server]
host = "0.0.0.0"
port = 0
metrics_token = "s3cret"
max_body_bytes = 1
session_ttl_s = 60

[limits]
max_params_bytes = 10
max_batch = 1
max_result_bytes = 10

[[job_types]]
name = "reports.build"
handler = "myapp.jobs:build_report"
timeout_s = 0.25
max_retries = 0
base_delay_s = 5
max_delay_s = 50
priority = "critical"
concurrency = 4
org_concurrency = 1
rate_limit = "100/min"
dedup = false
isolation = "process"

[[job_types]]
name = "mail:send-1"
handler = "myapp.mail.tasks:Sender.send"

[[schedules]]
name = "nightly-report"
cron = "0 2 * * *"
timezone = "Europe/Berlin"
job_type = "reports.build"
org = "acme"
params = { month = "current", nested = { a = [1, 2] } }
priority = "low"
catch_up = "skip"

[[schedules]]
name = "every-5"
cron = "*/5 * * * mon-fri"
job_type = "mail:send-1"
org = "acme"
""",
    )
    config = load_config(path, environ={})
    assert config.source == path
    assert config.database.path == tmp_path / "data" / "jobs.db"
    assert config.database.synchronous == "full"
    assert config.runner.workers == 2 and config.runner.lease_s == 10.0
    assert isinstance(config.runner.lease_s, float)
    assert config.retry.jitter is False
    assert config.server.host == "0.0.0.0" and config.server.port == 0
    assert config.server.metrics_token == "s3cret"
    build, mail = config.job_types
    assert build == JobTypeConfig(
        name="reports.build",
        handler="myapp.jobs:build_report",
        timeout_s=0.25,
        max_retries=0,
        base_delay_s=5,
        max_delay_s=50,
        priority="critical",
        concurrency=4,
        org_concurrency=1,
        rate_limit="100/min",
        dedup=False,
        isolation="process",
    )
    assert (mail.timeout_s, mail.max_retries, mail.priority) == (300.0, 3, "normal")
    assert mail.base_delay_s is None and mail.concurrency is None and mail.rate_limit is None
    assert (mail.dedup, mail.isolation) == (True, "thread")
    nightly, every5 = config.schedules
    assert nightly.params == {"month": "current", "nested": {"a": [1, 2]}}
    assert (nightly.timezone, nightly.priority, nightly.catch_up) == (
        "Europe/Berlin",
        "low",
        "skip",
    )
    assert every5 == ScheduleConfig(
        name="every-5", cron="*/5 * * * mon-fri", job_type="mail:send-1", org="acme"
    )
    assert (every5.timezone, every5.priority, every5.catch_up, every5.params) == (
        "UTC",
        None,
        "once",
        {},
    )


def test_implicit_file_in_current_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path, "[runner]\nworkers = 3\n")
    monkeypatch.chdir(tmp_path)
    config = load_config(environ={})
    assert config.runner.workers == 3
    assert config.source == tmp_path / "edgejobs.toml"
    assert config.database.path == tmp_path / "edgejobs.db"
    # Errors in the implicit file name it as the user knows it.
    write(tmp_path, "[runner]\nworkers = 0\n")
    message = config_error(None, environ={})
    assert message.startswith("edgejobs.toml: [runner] workers: ")


def test_edgejobs_config_variable_names_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "[runner]\nworkers = 99\n")  # ignored: EDGEJOBS_CONFIG wins
    other = write(tmp_path / "etc", "[runner]\nworkers = 5\n", name="custom.toml")
    assert load_config(environ={"EDGEJOBS_CONFIG": str(other)}).runner.workers == 5
    # An explicit path argument wins over the variable.
    explicit = write(tmp_path / "x", "[runner]\nworkers = 6\n")
    config = load_config(explicit, environ={"EDGEJOBS_CONFIG": str(other)})
    assert config.runner.workers == 6


# ---------------------------------------------------------------------------------------------
# Environment, flags, precedence, paths


def test_environment_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    env = {"EDGEJOBS_DB": "env.db", "EDGEJOBS_HOST": "0.0.0.0", "EDGEJOBS_PORT": "9001"}
    config = load_config(environ=env)
    assert config.database.path == tmp_path / "env.db"
    assert (config.server.host, config.server.port) == ("0.0.0.0", 9001)
    # Empty variables count as unset.
    empty = {"EDGEJOBS_DB": "", "EDGEJOBS_HOST": "", "EDGEJOBS_PORT": "", "EDGEJOBS_CONFIG": ""}
    assert load_config(environ=empty).server.port == 8000


def test_allowed_hosts_are_normalised_and_read_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert load_config(environ={}).server.allowed_hosts is None  # unset: serve decides
    path = write(tmp_path, '[server]\nallowed_hosts = ["Box.Local.", "*.Example.com", "::1"]\n')
    config = load_config(path, environ={})
    assert config.server.allowed_hosts == ["box.local", "*.example.com", "[::1]"]
    env = {"EDGEJOBS_ALLOWED_HOSTS": " jobs.example.com, *.lan ,"}
    assert load_config(path, environ=env).server.allowed_hosts == ["jobs.example.com", "*.lan"]
    assert load_config(path, environ={"EDGEJOBS_ALLOWED_HOSTS": " "}).server.allowed_hosts == [
        "box.local",
        "*.example.com",
        "[::1]",
    ]
    message = config_error(None, environ={"EDGEJOBS_ALLOWED_HOSTS": "box.local:80"})
    assert message.startswith(
        "environment: EDGEJOBS_ALLOWED_HOSTS ([server] allowed_hosts): expected a host name"
    )


def test_os_environ_is_the_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("EDGEJOBS_CONFIG", raising=False)
    monkeypatch.delenv("EDGEJOBS_DB", raising=False)
    monkeypatch.delenv("EDGEJOBS_HOST", raising=False)
    monkeypatch.setenv("EDGEJOBS_PORT", "8123")
    assert load_config().server.port == 8123


def test_precedence_flags_over_env_over_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf = write(
        tmp_path / "conf",
        '[server]\nhost = "10.0.0.1"\nport = 7000\n[database]\npath = "file.db"\n',
    )
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    env = {"EDGEJOBS_PORT": "8001", "EDGEJOBS_DB": "env.db"}
    flags = {"server.port": 9000, "database.path": "flag.db", "runner.workers": None}

    file_only = load_config(conf, environ={})
    assert (file_only.server.host, file_only.server.port) == ("10.0.0.1", 7000)
    assert file_only.database.path == tmp_path / "conf" / "file.db"

    with_env = load_config(conf, environ=env)
    assert (with_env.server.host, with_env.server.port) == ("10.0.0.1", 8001)
    assert with_env.database.path == cwd / "env.db"

    with_flags = load_config(conf, environ=env, overrides=flags)
    assert (with_flags.server.host, with_flags.server.port) == ("10.0.0.1", 9000)
    assert with_flags.database.path == cwd / "flag.db"
    assert with_flags.runner.workers == 8  # None means "flag not given"

    no_file = load_config(environ={}, overrides={"server.host": "::1", "runner.workers": 2})
    assert (no_file.server.host, no_file.runner.workers) == ("::1", 2)


def test_relative_db_path_resolves_against_the_config_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "etc" / "edgejobs"
    monkeypatch.chdir(tmp_path)
    conf = write(folder, '[database]\npath = "data/jobs.db"\n')
    assert load_config(conf, environ={}).database.path == folder / "data" / "jobs.db"
    # Also when the file is named relative to the current folder.
    relative = load_config(Path("etc/edgejobs/edgejobs.toml"), environ={})
    assert relative.database.path == folder / "data" / "jobs.db"
    assert relative.source == folder / "edgejobs.toml"
    # The default path lives next to the config file too.
    write(folder, "[runner]\nworkers = 1\n")
    assert load_config(conf, environ={}).database.path == folder / "edgejobs.db"
    # Absolute paths are kept.
    absolute = tmp_path / "abs.db"
    write(folder, f"[database]\npath = {str(absolute)!r}\n")
    assert load_config(conf, environ={}).database.path == absolute


def test_an_in_memory_database_is_refused_naming_the_key(tmp_path: Path) -> None:
    """``:memory:`` was accepted, then failed at start setting WAL mode, with a message that
    named neither the key nor what to use instead; it is refused where the path is given."""
    conf = write(tmp_path, '[database]\npath = ":memory:"\n')
    with pytest.raises(ConfigError) as raised:
        load_config(conf, environ={})
    assert "[database] path" in str(raised.value) and "temporary_database" in str(raised.value)
    other = write(tmp_path / "other", "[runner]\nworkers = 1\n")
    with pytest.raises(ConfigError, match="EDGEJOBS_DB"):
        load_config(other, environ={"EDGEJOBS_DB": ":memory:"})
    with pytest.raises(ConfigError, match="temporary_database"):
        EdgeJobs(database=":memory:")


# ---------------------------------------------------------------------------------------------
# Refusals: one line, naming the file, the key and what was expected

ERROR_CASES: list[tuple[str, str, list[str]]] = [
    ("unknown section", "[runer]\nworkers = 3\n", ["unknown section [runer]", "'runner'"]),
    ("unknown top-level key", "wrokers = 3\n", ["unknown key 'wrokers'"]),
    ("source is not a key", 'source = "x.toml"\n', ["unknown key 'source'"]),
    (
        "unknown key in section",
        "[runner]\nwrokers = 3\n",
        ["[runner] unknown key 'wrokers'", "did you mean 'workers'"],
    ),
    (
        "unknown key in job type",
        JOB_TYPE + "timeout = 3\n",
        ["[[job_types]] #1 unknown key 'timeout'", "'timeout_s'"],
    ),
    (
        "string for an integer",
        '[runner]\nworkers = "8"\n',
        ["[runner] workers: expected an integer", 'got "8"'],
    ),
    (
        "float for an integer",
        "[runner]\nworkers = 8.5\n",
        ["[runner] workers: expected an integer"],
    ),
    ("number for a boolean", "[retry]\njitter = 1\n", ["[retry] jitter: expected true or false"]),
    (
        "wrong literal",
        '[database]\nsynchronous = "off"\n',
        ['[database] synchronous: expected "normal" or "full", got "off"'],
    ),
    ("section is not a table", "runner = 5\n", ["runner: expected a table, got 5"]),
    ("job_types not an array", "job_types = 5\n", ["job_types: expected an array of tables"]),
    (
        "workers 0",
        "[runner]\nworkers = 0\n",
        ["[runner] workers: expected an integer between 1 and 1024, got 0"],
    ),
    ("workers too many", "[runner]\nworkers = 5000\n", ["[runner] workers:", "got 5000"]),
    (
        "lease 0",
        "[runner]\nlease_s = 0\n",
        ["[runner] lease_s: expected a number > 0 and <= 86400, got 0"],
    ),
    ("infinite lease", "[runner]\nlease_s = inf\n", ["[runner] lease_s:", "got inf"]),
    # Finite, but beyond what a due time in milliseconds can hold (once: a runner that started
    # and then failed every claim, or a retention that failed every run).
    ("huge lease", "[runner]\nlease_s = 1e300\n", ["[runner] lease_s:", "86400"]),
    ("huge retention", "[retention]\ndays = 1e12\n", ["[retention] days:", "36500"]),
    ("huge retry delay", "[retry]\nbase_delay_s = 1e300\n", ["[retry] base_delay_s:"]),
    ("huge timeout", JOB_TYPE + "timeout_s = 1e300\n", ["[[job_types]] #1 timeout_s:"]),
    ("huge retries", JOB_TYPE + "max_retries = 1000001\n", ["[[job_types]] #1 max_retries:"]),
    (
        "busy timeout past a C int",
        "[database]\nbusy_timeout_ms = 3000000000\n",
        ["[database] busy_timeout_ms:", "2147483647"],
    ),
    ("port out of range", "[server]\nport = 70000\n", ["[server] port:", "65535", "got 70000"]),
    ("empty db path", '[database]\npath = ""\n', ["[database] path: expected a non-empty"]),
    (
        "NUL in the db path",
        '[database]\npath = "jobs\\u0000.db"\n',
        ['[database] path: expected a file path without NUL characters, got "jobs\\u0000.db"'],
    ),
    (
        "max_delay below base_delay",
        "[retry]\nbase_delay_s = 60\nmax_delay_s = 30\n",
        ["[retry] max_delay_s: expected a number >= base_delay_s (60), got 30"],
    ),
    (
        "job type max_delay below the base of [retry]",
        "[retry]\nbase_delay_s = 100\n" + JOB_TYPE + "max_delay_s = 10\n",
        ["[[job_types]] #1 max_delay_s:", "below base_delay_s (100)", "[retry]"],
    ),
    (
        "job type base_delay above the bound of [retry]",
        "[retry]\nmax_delay_s = 100\n" + JOB_TYPE + "base_delay_s = 500\n",
        ["[[job_types]] #1 base_delay_s:", "max_delay_s (100)"],
    ),
    (
        "job type max_delay below base_delay",
        JOB_TYPE + "base_delay_s = 10\nmax_delay_s = 1\n",
        ["[[job_types]] #1 max_delay_s: expected a number >= base_delay_s (10), got 1"],
    ),
    (
        "negative timeout in 2nd job type",
        JOB_TYPE + '[[job_types]]\nname = "b"\nhandler = "m:f"\ntimeout_s = -1\n',
        ["[[job_types]] #2 timeout_s: expected a number > 0 and <= 315360000, got -1"],
    ),
    (
        "bad handler path",
        '[[job_types]]\nname = "a"\nhandler = "myapp.jobs.build_report"\n',
        ["[[job_types]] #1 handler: expected an import path", 'got "myapp.jobs.build_report"'],
    ),
    (
        "handler with a bad module",
        '[[job_types]]\nname = "a"\nhandler = "my-app.jobs:run"\n',
        ["[[job_types]] #1 handler:"],
    ),
    (
        "missing handler",
        '[[job_types]]\nname = "a"\n',
        ["[[job_types]] #1 handler: required key is missing"],
    ),
    (
        "bad job type name",
        '[[job_types]]\nname = "has space"\nhandler = "m:f"\n',
        ["[[job_types]] #1 name:", 'got "has space"'],
    ),
    (
        "bad rate limit",
        JOB_TYPE + 'rate_limit = "10/fortnight"\n',
        ["[[job_types]] #1 rate_limit:", "N/minute", 'got "10/fortnight"'],
    ),
    ("zero rate limit", JOB_TYPE + 'rate_limit = "0/s"\n', ["[[job_types]] #1 rate_limit:"]),
    (
        "bad priority",
        JOB_TYPE + 'priority = "urgent"\n',
        ['[[job_types]] #1 priority: expected "critical", "high", "normal" or "low"'],
    ),
    ("concurrency 0", JOB_TYPE + "concurrency = 0\n", ["[[job_types]] #1 concurrency:", ">= 1"]),
    (
        "bad isolation",
        JOB_TYPE + 'isolation = "fork"\n',
        ['[[job_types]] #1 isolation: expected "thread" or "process"'],
    ),
    (
        "cron with four fields",
        SCHEDULE.replace("0 2 * * *", "0 2 * *"),
        ["[[schedules]] #1 cron: expected a five-field cron expression", 'got "0 2 * *"'],
    ),
    (
        "cron with six fields",
        SCHEDULE.replace("0 2 * * *", "0 0 2 * * *"),
        ["[[schedules]] #1 cron:"],
    ),
    ("cron out of range", SCHEDULE.replace("0 2 * * *", "61 2 * * *"), ["[[schedules]] #1 cron:"]),
    (
        "cron that never fires",
        SCHEDULE.replace("0 2 * * *", "0 0 31 2 *"),
        ["#1 cron:", "'0 0 31 2 *' never runs: no month it allows has that day of the month"],
    ),
    ("cron macro", SCHEDULE.replace("0 2 * * *", "@daily"), ["[[schedules]] #1 cron:"]),
    # croniter's random R was accepted, and drawn anew at every look: the schedule fired at
    # random minutes, several times an hour.
    (
        "random minute",
        SCHEDULE.replace("0 2 * * *", "R * * * *"),
        ["#1 cron:", "the random field R is not supported"],
    ),
    (
        "random minute within a range",
        SCHEDULE.replace("0 2 * * *", "R(0-29) * * * *"),
        ["#1 cron:", "the random field R is not supported"],
    ),
    (
        "random step of the minute",
        SCHEDULE.replace("0 2 * * *", "R/5 * * * *"),
        ["#1 cron:", "the random field R is not supported"],
    ),
    (
        "unknown timezone",
        SCHEDULE + 'timezone = "Mars/Olympus_Mons"\n',
        ["[[schedules]] #1 timezone: expected an IANA time zone", 'got "Mars/Olympus_Mons"'],
    ),
    ("timezone path", SCHEDULE + 'timezone = "../etc/passwd"\n', ["[[schedules]] #1 timezone:"]),
    ("empty org", SCHEDULE.replace('org = "acme"', 'org = ""'), ["[[schedules]] #1 org:"]),
    (
        "params not a table",
        SCHEDULE + "params = 3\n",
        ["[[schedules]] #1 params: expected a table"],
    ),
    ("bad catch_up", SCHEDULE + 'catch_up = "all"\n', ['#1 catch_up: expected "once" or "skip"']),
    # Params are stored as JSON at every firing: what JSON cannot carry is refused here, not
    # when the runner starts (the other commands accepted the file).
    ("nan param", SCHEDULE + "params = { x = nan }\n", [JSON_PARAMS.format("x", "nan")]),
    ("inf param", SCHEDULE + "params = { x = -inf }\n", [JSON_PARAMS.format("x", "-inf")]),
    (
        "date param",
        SCHEDULE + "params = { day = 1979-05-27 }\n",
        [JSON_PARAMS.format("day", "1979-05-27")],
    ),
    (
        "time param",
        SCHEDULE + "params = { at = 07:32:00 }\n",
        [JSON_PARAMS.format("at", "07:32:00")],
    ),
    (
        "datetime param",
        SCHEDULE + "params = { at = 1979-05-27T07:32:00Z }\n",
        [JSON_PARAMS.format("at", "1979-05-27T07:32:00+00:00")],
    ),
    (
        "nested param",
        SCHEDULE + "params = { ok = 1, list = [1, { inner = nan }] }\n",
        [JSON_PARAMS.format("list.1.inner", "nan")],
    ),
    (
        "param in the 2nd schedule",
        SCHEDULE + SCHEDULE.replace("nightly", "other") + "[schedules.params]\nx = inf\n",
        ["[[schedules]] #2 params.x: params must be JSON"],
    ),
    (
        "root_path without a leading slash",
        '[server]\nroot_path = "jobs"\n',
        ['[server] root_path: expected "" or a path like "/jobs"', "got 'jobs'"],
    ),
    ("root_path with a trailing slash", '[server]\nroot_path = "/jobs/"\n', ["root_path:"]),
    (
        "allowed host with a port",
        '[server]\nallowed_hosts = ["box.local:8000"]\n',
        ["[server] allowed_hosts: expected a host name without a port (any port is allowed)"],
    ),
    (
        "allowed host that is no name",
        '[server]\nallowed_hosts = ["ok.example", "http://box.local/"]\n',
        ['[server] allowed_hosts: expected a host name, an IP address, "*.example.com" or "*"'],
    ),
    ("allowed hosts as a string", '[server]\nallowed_hosts = "box.local"\n', ["an array of"]),
    ("allowed hosts empty", "[server]\nallowed_hosts = []\n", ["leave the key out"]),
    ("allowed host not a string", "[server]\nallowed_hosts = [1]\n", ["got 1"]),
    (
        "duplicate job type names",
        JOB_TYPE + JOB_TYPE.replace("build_report", "other"),
        ['[[job_types]] #2 name: duplicate job type name "reports.build"', "#1"],
    ),
    (
        "duplicate schedule names",
        SCHEDULE + SCHEDULE,
        ['[[schedules]] #2 name: duplicate schedule name "nightly"'],
    ),
]


@pytest.mark.parametrize(
    ("text", "expected"),
    [pytest.param(text, expected, id=name) for name, text, expected in ERROR_CASES],
)
def test_refused_with_a_one_line_message(tmp_path: Path, text: str, expected: list[str]) -> None:
    path = tmp_path / "edgejobs.toml"
    message = config_error(path, text, environ={})
    assert message.startswith(f"{path}: ")
    for part in expected:
        assert part in message


def test_several_errors_are_joined_on_one_line(tmp_path: Path) -> None:
    path = tmp_path / "edgejobs.toml"
    message = config_error(path, "[runner]\nworkers = 0\nlease_s = -1\n", environ={})
    assert message == (
        f"{path}: [runner] workers: expected an integer between 1 and 1024, got 0; "
        "[runner] lease_s: expected a number > 0 and <= 86400, got -1"
    )


def test_missing_explicit_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    missing = tmp_path / "nope.toml"
    message = config_error(missing, environ={})
    assert message == f"{missing}: config file not found"
    message = config_error(None, environ={"EDGEJOBS_CONFIG": "nope.toml"})
    assert "EDGEJOBS_CONFIG" in message and "nope.toml" in message and "not found" in message
    assert "expected a config file" in config_error(tmp_path, environ={})


def test_toml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "edgejobs.toml"
    message = config_error(path, "[runner]\nworkers = = 3\n", environ={})
    assert message.startswith(f"{path}: line 2, column ")
    assert "invalid TOML" in message
    message = config_error(path, "[runner]\nworkers = 1\nworkers = 2\n", environ={})
    assert message.startswith(f"{path}: line 3")
    message = config_error(path, "[runner]\nworkers = ", environ={})
    assert message.startswith(f"{path}: line 2") and "invalid TOML" in message
    path.write_bytes(b'[server]\nhost = "\xff"\n')
    assert "not UTF-8" in config_error(path, environ={})
    deep = "x = " + "[" * 5000 + "]" * 5000 + "\n"  # the TOML reader recursed past the stack
    assert config_error(path, deep, environ={}) == (
        f"{path}: invalid TOML: arrays or tables nested too deeply"
    )


def test_environment_errors_name_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    message = config_error(None, environ={"EDGEJOBS_PORT": "eighty"})
    assert message.startswith("environment: EDGEJOBS_PORT")
    assert 'expected an integer between 0 and 65535, got "eighty"' in message
    assert "EDGEJOBS_PORT" in config_error(None, environ={"EDGEJOBS_PORT": "80.5"})
    message = config_error(None, environ={"EDGEJOBS_PORT": "70000"})
    assert message.startswith("environment: EDGEJOBS_PORT ([server] port): ")
    assert "got 70000" in message


def test_flag_errors_name_the_command_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    message = config_error(None, environ={}, overrides={"server.port": -1})
    assert message.startswith("command line: [server] port: expected an integer")
    message = config_error(None, environ={}, overrides={"server.prot": 1})
    assert message == "command line: [server] unknown key 'prot' (did you mean 'port'?)"
    assert "invalid config key" in config_error(None, environ={}, overrides={"server.": 1})
    # A file error is still blamed on the file when flags are also given.
    path = tmp_path / "edgejobs.toml"
    message = config_error(path, "[runner]\nworkers = 0\n", overrides={"server.port": 1})
    assert message.startswith(f"{path}: [runner] workers")


# ---------------------------------------------------------------------------------------------
# Rate limits


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("100/minute", (100, 60.0)),
        ("100/min", (100, 60.0)),
        ("5/second", (5, 1.0)),
        ("5/s", (5, 1.0)),
        ("2/hour", (2, 3600.0)),
        ("2/h", (2, 3600.0)),
        ("1/day", (1, 86400.0)),
        ("1/d", (1, 86400.0)),
        (" 7 / Minutes ", (7, 60.0)),
    ],
)
def test_parse_rate_limit(text: str, expected: tuple[int, float]) -> None:
    assert parse_rate_limit(text) == expected


@pytest.mark.parametrize(
    "text", ["", "100", "/minute", "0/minute", "-1/s", "1.5/s", "3/week", "x/s"]
)
def test_parse_rate_limit_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="expected a rate"):
        parse_rate_limit(text)


# ---------------------------------------------------------------------------------------------
# The documented default file


def test_repo_edgejobs_toml_is_the_default_text() -> None:
    assert (REPO_ROOT / "edgejobs.toml").read_text(encoding="utf-8") == default_config_text()


def test_default_text_loads_back_to_the_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    path = write(tmp_path / "conf", default_config_text())
    config = load_config(path, environ={})
    assert config.source == path
    assert config.database.path == tmp_path / "conf" / "edgejobs.db"
    assert config.job_types == [] and config.schedules == []  # examples are commented out
    defaults = load_config(environ={})
    assert config.model_copy(update={"database": defaults.database}) == defaults.model_copy(
        update={"source": path}
    )
    assert load_config(REPO_ROOT / "edgejobs.toml", environ={}).runner == RunnerConfig()


def test_default_text_lists_every_key_with_a_comment() -> None:
    text = default_config_text()
    data = tomllib.loads(text)
    sections = {
        name
        for name, field in Config.model_fields.items()
        if isinstance(field.annotation, type) and issubclass(field.annotation, pydantic.BaseModel)
    }
    assert set(data) == sections
    for section in sections:
        model = Config.model_fields[section].annotation
        assert isinstance(model, type) and issubclass(model, pydantic.BaseModel)
        # A key whose default is "unset" has no TOML spelling: its example is commented out.
        unset = {key for key, info in model.model_fields.items() if info.default is None}
        assert set(data[section]) | unset == set(model.model_fields), section
        for key in unset:
            assert re.search(rf"^# {key} = ", text, flags=re.MULTILINE), key
    for line in text.splitlines():
        assert len(line) <= 100, line
        if re.match(r"#? ?[a-z_]+ = ", line):
            assert re.search(r"\S\s+# \S", line), f"no comment on: {line}"


def test_default_text_examples_are_valid_when_uncommented(tmp_path: Path) -> None:
    text = default_config_text()
    assert "# [[job_types]]" in text and "# [[schedules]]" in text
    assert "myapp.jobs:build_report" in text
    uncommented = re.sub(r"^# (\[\[\w+\]\]|[a-z_]+ = .*)$", r"\1", text, flags=re.MULTILINE)
    path = write(tmp_path, uncommented)
    config = load_config(path, environ={})
    (job_type,) = config.job_types
    (schedule,) = config.schedules
    assert job_type.name == "reports.build" and job_type.handler == "myapp.jobs:build_report"
    assert set(tomllib.loads(uncommented)["job_types"][0]) == set(JobTypeConfig.model_fields)
    assert set(tomllib.loads(uncommented)["schedules"][0]) == set(ScheduleConfig.model_fields)
    assert schedule.job_type == job_type.name
    assert schedule.params == {"month": "current"}


@pytest.mark.parametrize(
    "cron",
    [
        "0 0 31 2 1",  # day 31 OR Monday, in February: every Monday of February
        "0 9 * MAR-APR FRI",  # names holding an R are no random field
        "0 9 * * MON-FRI",
    ],
)
def test_crons_that_run_are_accepted(cron: str) -> None:
    """``0 0 31 2 1`` was refused as "never runs": with a day of the week as well, cron runs
    on either day, as croniter computes it."""
    assert ScheduleConfig(name="s", cron=cron, job_type="t", org="acme").cron == cron
