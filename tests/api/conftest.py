"""Fixtures of the HTTP API tests (helpers live in ``api_support.py`` on ``sys.path``)."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from api_support import Api, lifespan, make_api  # noqa: E402


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    """An app with its lifespan running, a token per role and an ASGI client."""
    api = await make_api(tmp_path / "api.db")
    try:
        async with lifespan(api.app):
            yield api
    finally:
        await api.client.aclose()
        await api.ej.close()
