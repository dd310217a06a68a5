"""What ``pip install edgejobs`` gets: a wheel built from the checkout carries every module,
the migrations and the dashboard, and an install of it serves the dashboard.

A checkout and an editable install find the dashboard in ``web/`` beside the package; a wheel
must carry it inside the package (``edgejobs/web``), or every ``pip install`` answers ``GET /``
with "the dashboard files (web/) are not installed".
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _pip(command: str, *args: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", command, "--quiet", "--no-deps"]
        + ["--disable-pip-version-check", *args],
        check=True,
        capture_output=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel built offline (no build isolation: the test extra brings setuptools) from a copy
    of the checkout, so the build's own folders do not land in the working tree."""
    source = tmp_path_factory.mktemp("source")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("edgejobs", "web"):
        shutil.copytree(ROOT / name, source / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    out = tmp_path_factory.mktemp("wheel")
    _pip("wheel", "--no-build-isolation", "--wheel-dir", str(out), str(source))
    (built,) = out.glob("edgejobs-*.whl")
    return built


def test_the_wheel_carries_every_module_the_migrations_and_the_dashboard(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    package = ROOT / "edgejobs"
    expected = {
        f"edgejobs/{path.relative_to(package).as_posix()}"
        for path in package.rglob("*")
        if path.is_file() and path.suffix in {".py", ".sql", ".typed"}
    }
    expected |= {f"edgejobs/web/{path.name}" for path in (ROOT / "web").iterdir() if path.is_file()}
    assert "edgejobs/web/index.html" in expected  # (the walk found the dashboard)
    assert "edgejobs/store/sql/0001_jobs.sql" in expected
    assert sorted(expected - names) == []


def test_an_installed_wheel_serves_the_dashboard_and_migrates(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
    _pip("install", "--no-index", "--target", str(target), str(wheel))
    script = textwrap.dedent(
        """
        import asyncio, sys
        from pathlib import Path
        import edgejobs
        from edgejobs import EdgeJobs
        from edgejobs.api.app import create_app, web_dir
        from starlette.testclient import TestClient

        assert Path(edgejobs.__file__).is_relative_to(sys.argv[1]), edgejobs.__file__
        print("web", web_dir())
        ej = EdgeJobs(database="jobs.db")
        asyncio.run(ej.open())  # creates the file: every migration of the package applied
        asyncio.run(ej.close())
        client = TestClient(create_app(EdgeJobs(database="jobs.db")))
        for path in ("/", "/static/app.js", "/static/app.css"):
            response = client.get(path)
            print(path, response.status_code, len(response.content))
        """
    )
    # From a folder with neither edgejobs/ nor web/ in it, the installed copy alone on the path
    # (PYTHONPATH comes before the editable install of the checkout).
    run = subprocess.run(
        [sys.executable, "-c", script, str(target)],
        cwd=tmp_path,
        env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0] == f"web {target / 'edgejobs' / 'web'}"
    for line in lines[1:]:
        path, status, size = line.split()
        assert status == "200" and int(size) > 0, line
    assert len(lines) == 4
