"""Fixtures of the SSE tests: an EdgeJobs on a real SQLite file in ``tmp_path`` served by a
real uvicorn on a free loopback port (an in-process ASGI client cannot read an endless
response), and the helper modules of this folder on ``sys.path``."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from sse_support import Serve, Server, make_config, start_ej  # noqa: E402

from edgejobs.config import Config  # noqa: E402


@pytest.fixture
async def serve(tmp_path: Path) -> AsyncIterator[Serve]:
    """``await serve(config=..., clock=...)``: a started runner and server; all closed after."""
    servers: list[Server] = []

    async def start(config: Config | None = None, **kwargs: Any) -> Server:
        path = tmp_path / f"jobs{len(servers)}.db"
        ej = await start_ej(path, config or make_config(), **kwargs)
        server = Server(ej)
        servers.append(server)
        return await server.start()

    yield start
    for server in servers:
        try:
            await server.stop()
        finally:
            await server.ej.close()
