"""Job types declared in code (``register`` and ``@job_type``) follow the rules of a
``[[job_types]]`` table (SPEC §3, §4). They once went unchecked: ``concurrency=0`` left every
job queued forever, a NaN timeout meant no timeout at all, a negative base delay made a retry
due before the failure, and a misspelled option was a raw TypeError."""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Any

import pytest

from edgejobs import EdgeJobs, Priority
from edgejobs.config import JOB_TYPE_OPTIONS, load_config
from edgejobs.errors import ConfigError, ValidationError


def handler(ctx: Any, params: dict[str, Any]) -> None:
    return None


REFUSED: list[tuple[str, dict[str, Any], str]] = [
    ("concurrency 0", {"concurrency": 0}, "concurrency: expected an integer >= 1, got 0"),
    ("concurrency -1", {"concurrency": -1}, "concurrency: expected an integer >= 1, got -1"),
    ("org_concurrency 0", {"org_concurrency": 0}, "org_concurrency: expected an integer >= 1"),
    ("NaN timeout", {"timeout_s": math.nan}, "timeout_s: expected a number > 0"),
    ("infinite timeout", {"timeout_s": math.inf}, "timeout_s: expected a number > 0"),
    ("zero timeout", {"timeout_s": 0}, "timeout_s: expected a number > 0"),
    (
        "timeout as text",
        {"timeout_s": "5"},
        'timeout_s: expected a number > 0 and <= 315360000, got "5"',
    ),
    ("negative base delay", {"base_delay_s": -5}, "base_delay_s: expected a number between 0"),
    (
        "max delay below base delay",
        {"base_delay_s": 100, "max_delay_s": 1},
        "max_delay_s: expected a number >= base_delay_s (100), got 1",
    ),
    ("fractional retries", {"max_retries": 1.5}, "max_retries: expected an integer between 0"),
    ("retries as a bool", {"max_retries": True}, "max_retries: expected an integer"),
    ("dedup as text", {"dedup": "no"}, 'dedup: expected true or false, got "no"'),
    ("unknown priority", {"priority": "urgent"}, 'priority: expected "critical", "high"'),
    ("unknown isolation", {"isolation": "fork"}, 'isolation: expected "thread" or "process"'),
    ("bad rate limit", {"rate_limit": "10/fortnight"}, "rate_limit: expected a rate"),
]


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    return "nan" if isinstance(value, float) and math.isnan(value) else str(value)


@pytest.mark.parametrize(
    ("options", "needle"), [pytest.param(o, n, id=name) for name, o, n in REFUSED]
)
def test_impossible_options_are_refused_like_in_the_config_file(
    tmp_path: Path, options: dict[str, Any], needle: str
) -> None:
    ej = EdgeJobs(database=tmp_path / "jobs.db")
    with pytest.raises(ValidationError) as info:
        ej.register("t.work", handler, **options)
    assert info.value.message.startswith("job type 't.work': ") and needle in info.value.message
    with pytest.raises(ValidationError, match="concurrency"):
        ej.job_type("t.deco", concurrency=0)(handler)
    assert "t.work" not in ej.registry and "t.deco" not in ej.registry

    # The same value in edgejobs.toml gets the same words: one set of rules for both.
    config = tmp_path / "edgejobs.toml"
    config.write_text(
        '[[job_types]]\nname = "t.work"\nhandler = "m:f"\n'
        + "".join(f"{key} = {_toml(value)}\n" for key, value in options.items()),
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as from_file:
        load_config(config, environ={})
    assert info.value.message.removeprefix("job type 't.work': ") in from_file.value.message


def test_own_delays_must_fit_the_inherited_retry_section(tmp_path: Path) -> None:
    ej = EdgeJobs(database=tmp_path / "jobs.db")  # [retry] max_delay_s = 3600
    with pytest.raises(ValidationError, match=r"base_delay_s: max_delay_s \(3600\) is below"):
        ej.register("t.work", handler, base_delay_s=7200)


def test_a_misspelled_option_is_named_with_the_valid_ones(tmp_path: Path) -> None:
    ej = EdgeJobs(database=tmp_path / "jobs.db")
    misspelled: dict[str, Any] = {"timeout": 10}
    with pytest.raises(ValidationError) as info:
        ej.register("t.work", handler, **misspelled)
    message = info.value.message
    assert "unknown option 'timeout' (did you mean 'timeout_s'?)" in message
    assert f"the options are {', '.join(JOB_TYPE_OPTIONS)}" in message
    with pytest.raises(ValidationError, match="unknown option 'concurency'"):
        ej.job_type("t.deco", concurency=2)(handler)


@pytest.mark.parametrize(
    ("name", "ref"),
    [("has space", handler), ("", handler), ("t.work", "m.f"), ("t.work", 42)],
)
def test_a_bad_name_or_handler_is_refused(tmp_path: Path, name: str, ref: Any) -> None:
    ej = EdgeJobs(database=tmp_path / "jobs.db")
    with pytest.raises(ValidationError, match="name|handler"):
        ej.register(name, ref)


def test_valid_options_are_kept(tmp_path: Path) -> None:
    ej = EdgeJobs(database=tmp_path / "jobs.db")
    job_type = ej.register(
        "t.work",
        handler,
        timeout_s=1,  # an integer where a number is expected, as in TOML
        max_retries=0,
        base_delay_s=0,
        max_delay_s=0,
        priority=Priority.HIGH,
        concurrency=1,
        org_concurrency=1,
        rate_limit="5/minute",
        dedup=False,
        isolation="process",
    )
    assert job_type.policy() | {"jitter": None} == {
        "timeout_s": 1.0,
        "max_retries": 0,
        "base_delay_s": 0.0,
        "max_delay_s": 0.0,
        "jitter": None,
        "priority": "high",
        "concurrency": 1,
        "org_concurrency": 1,
        "rate_limit": "5/minute",
        "dedup": False,
        "isolation": "process",
    }
    assert ej.registry.declared("t.work") is job_type


def _closure() -> Any:
    def inner(ctx: Any, params: dict[str, Any]) -> None:
        return None

    return inner


@pytest.mark.parametrize(
    ("ref", "what"),
    [
        (_closure(), "'_closure.<locals>.inner', defined inside a function"),
        (lambda ctx, params: None, "a lambda"),
        (functools.partial(handler), "a partial object, which has no module path"),
    ],
    ids=["closure", "lambda", "partial"],
)
def test_process_isolation_refuses_a_handler_the_child_cannot_import(
    tmp_path: Path, ref: Any, what: str
) -> None:
    """Such a handler once failed every attempt in the child (ConfigError), retry after retry."""
    ej = EdgeJobs(database=tmp_path / "jobs.db")
    with pytest.raises(ValidationError) as info:
        ej.register("t.work", ref, isolation="process")
    message = info.value.message
    assert what in message and "define it at module level" in message
    with pytest.raises(ValidationError, match="define it at module level"):
        ej.job_type("t.deco", isolation="process")(ref)
    assert "t.work" not in ej.registry and "t.deco" not in ej.registry
    ej.register("t.work", ref)  # a thread runs it as it is
    ej.register("t.path", "core_handlers:sync_sleep", isolation="process")
    ej.register("t.module", handler, isolation="process")


async def test_a_handler_module_that_exits_when_imported_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A module with a script's top-level code (argparse) ended the runner at start with the
    script's usage message (``error: unrecognized arguments: --config … worker``), naming
    neither the job type nor the handler."""
    (tmp_path / "script_like.py").write_text(
        "import sys\nsys.exit('usage: script_like.py FILE')\ndef handler(ctx, params): ...\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    ej = EdgeJobs(database=tmp_path / "jobs.db")
    ej.register("t.script", "script_like:handler")
    try:
        with pytest.raises(ConfigError) as info:
            await ej.start()
    finally:
        await ej.close()
    message = info.value.message
    assert "'t.script'" in message and "raised SystemExit" in message
    assert "usage: script_like.py FILE" in message and "__main__" in message


def test_a_name_registered_twice_is_refused_saying_where_it_was_first(tmp_path: Path) -> None:
    """The second registration silently replaced the first (a copy-pasted decorator, or a
    code type shadowing one declared in edgejobs.toml, ran the wrong handler with no word),
    while two [[job_types]] tables of one name were refused."""
    ej = EdgeJobs(database=tmp_path / "jobs.db")
    first = ej.register("t.work", handler, timeout_s=5)
    with pytest.raises(ValidationError, match="already registered.*earlier register"):
        ej.register("t.work", handler, timeout_s=300)
    with pytest.raises(ValidationError, match="already registered"):
        ej.job_type("t.work")(handler)
    assert ej.registry.get("t.work") is first

    config = tmp_path / "edgejobs.toml"
    config.write_text(
        '[[job_types]]\nname = "t.conf"\nhandler = "core_handlers:echo"\n', encoding="utf-8"
    )
    configured = EdgeJobs(database=tmp_path / "jobs.db", config=load_config(config, environ={}))
    with pytest.raises(ValidationError, match=r"already registered \(in \[\[job_types\]\]"):
        configured.register("t.conf", handler)
    assert configured.registry.get("t.conf").handler_ref == "core_handlers:echo"
