"""What a user's code gets from the package's types under ``mypy --strict``.

The package ships ``py.typed``, so its annotations are part of the API: a handler whose context
does not match how it runs must be refused by the type checker, and the everyday uses must
pass without a cast. Small user modules are checked with the mypy of this environment, in one
run: ``good.py`` and the README's example must be clean, and every line of ``bad.py`` marked
``# error: <code>`` must be reported with that code, and nothing else.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import edgejobs

pytest.importorskip("mypy")

GOOD = """
from __future__ import annotations

import functools
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Any, TypedDict

from edgejobs import EdgeJobs, Job, JobContext, SyncJobContext, Workflow
from edgejobs.testing import Harness

ej = EdgeJobs(database="jobs.db")


class Summary(TypedDict):
    rows: int


@ej.job_type("reports.build", timeout_s=120)
async def build(ctx: JobContext, params: dict[str, Any]) -> dict[str, Any]:
    await ctx.progress(50, "halfway")
    return {"rows": 42}


@ej.job_type("files.scan")
def scan(ctx: SyncJobContext, params: dict[str, Any]) -> None:
    ctx.progress(50)


@ej.job_type("reports.summary")
async def summary(ctx: Any, params: dict[str, object]) -> Summary:
    return {"rows": 1}


# The decorator gives the handler back unchanged (tests call handlers directly).
unchanged: Callable[[JobContext, dict[str, Any]], Coroutine[Any, Any, dict[str, Any]]] = build


def either(ctx: object, params: dict[str, Any], retries: int = 1) -> list[int]:
    return [retries]


class Handler:
    async def __call__(self, ctx: JobContext, params: dict[str, Any]) -> None:
        return None


def untyped(ctx, params):  # type: ignore[no-untyped-def]
    return params


ej.register("either", either)
ej.register("partial", functools.partial(either, retries=2))
ej.register("object", Handler())
ej.register("path", "myapp.jobs:build")
ej.register("lambda", lambda ctx, params: None)
ej.register("untyped", untyped)


async def test_a_report_runs_the_next_day() -> None:
    async with Harness(ej) as h:
        h.fake_clock.advance(86_400)
        h.fake_clock.set(datetime(2030, 1, 1, tzinfo=UTC))


async def submit_a_workflow() -> None:
    wf = Workflow(org="acme")
    fetch = wf.add("reports.build")
    jobs = await wf.submit(ej)
    found: Job | None = jobs.get(fetch)
    either: Job | int = jobs.get(fetch, 0)
    assert fetch in jobs and "reports.build" in jobs and jobs[fetch] is found
    names: list[str] = list(jobs)  # still a Mapping[str, Job]
"""

BAD = """
from __future__ import annotations

from typing import Any

from edgejobs import EdgeJobs, JobContext, SyncJobContext

ej = EdgeJobs(database="jobs.db")


@ej.job_type("async.sync_context")  # error: type-var
async def async_with_sync_context(ctx: SyncJobContext, params: dict[str, Any]) -> None:
    ctx.progress(50)  # (at runtime: JobContext.progress, a coroutine never awaited)


@ej.job_type("sync.async_context")  # error: type-var
def sync_with_async_context(ctx: JobContext, params: dict[str, Any]) -> None:
    pass


@ej.job_type("no.params")  # error: type-var
async def no_params(ctx: JobContext) -> None:
    pass


async def registered(ctx: SyncJobContext, params: dict[str, Any]) -> None:
    pass


def too_many(ctx: SyncJobContext, params: dict[str, Any], extra: int) -> None:
    pass


def not_json(ctx: SyncJobContext, params: dict[str, Any]) -> object:
    return object()


ej.register("registered", registered)  # error: arg-type
ej.register("too.many", too_many)  # error: arg-type
ej.register("not.json", not_json)  # error: arg-type
ej.register("number", 42)  # error: arg-type
"""

_ERROR = re.compile(r"^(?P<file>[\w.]+):(?P<line>\d+): error: .*\[(?P<code>[a-z-]+)\]$")
_EXPECTED = re.compile(r"# error: (?P<code>[a-z-]+)")


def _expected(source: str) -> set[tuple[int, str]]:
    return {
        (number, match["code"])
        for number, line in enumerate(source.splitlines(), start=1)
        if (match := _EXPECTED.search(line))
    }


def _readme_example() -> str:
    """The README's example of a handler (what a new user copies first)."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    blocks: list[str] = re.findall(r"```python\n(.*?)```", readme, re.DOTALL)
    return next(block for block in blocks if "@ej.job_type(" in block)


def test_user_modules_type_check_strictly(tmp_path: Path) -> None:
    root = Path(edgejobs.__file__).resolve().parent.parent  # the package under test
    modules = {"good.py": GOOD, "bad.py": BAD, "readme.py": _readme_example()}
    for name, source in modules.items():
        (tmp_path / name).write_text(source)
    # edgejobs is followed silently, as an installed package would be: only the user modules'
    # errors count (its own are `mypy --strict edgejobs`'s business).
    (tmp_path / "mypy.ini").write_text(
        f"[mypy]\nstrict = True\nmypy_path = {root}\ncache_dir = {tmp_path / 'cache'}\n"
        "[mypy-edgejobs.*]\nfollow_imports = silent\n"
    )
    run = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", "mypy.ini", *modules],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    errors: dict[str, set[tuple[int, str]]] = {name: set() for name in modules}
    for line in run.stdout.splitlines():
        if match := _ERROR.match(line):
            errors[match["file"]].add((int(match["line"]), match["code"]))
    expected = {name: _expected(source) for name, source in modules.items()}
    assert errors == expected, run.stdout + run.stderr
