"""What ``import edgejobs`` offers: every error a user can meet is importable from the package
(ShuttingDown, ConfigError and StoreTooOld were once only in ``edgejobs.errors``)."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

import edgejobs
from edgejobs import errors


def test_every_error_is_exported_from_the_package() -> None:
    classes = {
        name: cls
        for name, cls in inspect.getmembers(errors, inspect.isclass)
        if issubclass(cls, Exception) and cls.__module__ == errors.__name__
    }
    assert {"ShuttingDown", "ConfigError", "StoreTooOld", "PermanentError"} <= classes.keys()
    for name, cls in classes.items():
        assert name in edgejobs.__all__, name
        assert getattr(edgejobs, name) is cls


def test_every_name_in_all_exists() -> None:
    for name in edgejobs.__all__:
        assert hasattr(edgejobs, name), name


async def test_submit_after_stop_raises_the_exported_shutting_down(tmp_path: Path) -> None:
    ej = edgejobs.EdgeJobs(database=tmp_path / "jobs.db")
    ej.register("t.work", _noop)
    await ej.start(run_workers=False)
    await ej.stop()
    try:
        with pytest.raises(edgejobs.ShuttingDown):
            await ej.submit("t.work", org="acme")
    finally:
        await ej.close()


def _noop(ctx: object, params: dict[str, object]) -> None:
    return None
