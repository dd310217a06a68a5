"""The ``edgejobs`` console script imports a project's own handlers from the project's folder.

``python -m edgejobs`` (what the other CLI tests run) puts the current folder on the import
path; the installed ``edgejobs`` command does not, and ``edgejobs serve`` run in a project's
folder refused to start: "cannot import myapp.jobs: No module named 'myapp'" (Celery and RQ
workers import from there).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from core_support import write_config

CONSOLE_SCRIPT = Path(sys.executable).parent / "edgejobs"


def _project(root: Path) -> Path:
    package = root / "myproj"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "jobs.py").write_text(
        "async def hello(ctx, params):\n    return {'hello': params.get('name', 'world')}\n"
    )
    return write_config(
        root,
        '[database]\npath = "jobs.db"\n\n'
        '[[job_types]]\nname = "hello"\nhandler = "myproj.jobs:hello"\n'
        'isolation = "{isolation}"\n',
    )


def _env() -> dict[str, str]:
    # Nothing that would make the project importable by itself.
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEJOBS_")}
    env.pop("PYTHONPATH", None)
    return env


def _edgejobs(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CONSOLE_SCRIPT), *args],
        capture_output=True,
        text=True,
        env=_env(),
        cwd=cwd,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("isolation", ["thread", "process"])
@pytest.mark.parametrize("started_from", ["project", "elsewhere"])
def test_the_console_script_runs_handlers_of_the_project_beside_its_config(
    tmp_path: Path, isolation: str, started_from: str
) -> None:
    assert CONSOLE_SCRIPT.exists(), "the project's set-up installs the edgejobs command"
    root = tmp_path / "app"
    config = _project(root)
    config.write_text(config.read_text().replace("{isolation}", isolation))
    cwd = root if started_from == "project" else tmp_path
    worker = subprocess.Popen(
        [str(CONSOLE_SCRIPT), "worker", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=_env(),
        cwd=cwd,
    )
    try:
        submitted = _edgejobs(
            "submit",
            "hello",
            "--org",
            "acme",
            "--params",
            '{"name": "edgejobs"}',
            "--wait",
            "--config",
            str(config),
            cwd=cwd,
        )
        assert submitted.returncode == 0, (submitted.stderr, worker.poll())
        shown = _edgejobs(
            "jobs",
            "show",
            submitted.stdout.split()[0],
            "--json",
            "--config",
            str(config),
            cwd=cwd,
        )
        assert '"hello": "edgejobs"' in shown.stdout, shown
    finally:
        worker.terminate()
        out, _ = worker.communicate(timeout=30)
    assert worker.returncode == 0, out


def test_a_handler_that_cannot_be_imported_says_where_it_was_looked_for(tmp_path: Path) -> None:
    config = write_config(
        tmp_path, '[[job_types]]\nname = "hello"\nhandler = "nowhere_to_be_found.jobs:hello"\n'
    )
    result = _edgejobs("worker", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 2, result
    assert "No module named 'nowhere_to_be_found'" in result.stderr
    assert "PYTHONPATH" in result.stderr and "config file's folder" in result.stderr
