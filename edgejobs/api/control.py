"""Runtime-control routes: job-type pause/resume/overrides, schedules, audit (placeholder)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.routing import BaseRoute

if TYPE_CHECKING:
    from edgejobs.app import EdgeJobs


def routes(ej: EdgeJobs) -> list[BaseRoute]:
    """Routes this module serves."""
    return []


async def on_startup(ej: EdgeJobs) -> None:
    """Called from the app's lifespan after the runner started."""


async def on_shutdown(ej: EdgeJobs) -> None:
    """Called from the app's lifespan before the runner stops (close open streams here)."""
