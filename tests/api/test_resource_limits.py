"""The API under a real open-file limit: a request that needs one more descriptor than the
process may open is answered 503 ``out_of_resources`` (never a 500 "bug" with a traceback per
request), and the same requests work again once descriptors are free.

The limit is set with ``setrlimit`` in a child process, so the test process keeps its own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

resource = pytest.importorskip("resource")

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]

ROUTES = ("/static/app.js", "/api/v1/jobs", "/api/v1/stats", "/metrics", "/api/v1/openapi.json")

CHILD = textwrap.dedent(
    """
    import asyncio, json, os, resource, sys
    from pathlib import Path
    from api_support import lifespan, make_api
    from edgejobs.errors import OutOfResources
    from edgejobs.store.db import Pragmas, Reader

    ROUTES = {routes!r}

    def lowest_free_descriptor():
        fd = os.open(os.devnull, os.O_RDONLY)
        os.close(fd)
        return fd

    async def main():
        api = await make_api(Path(sys.argv[1]))
        try:
            async with lifespan(api.app):
                headers = api.auth("admin")
                soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
                # No new descriptor from here on: the lowest free number is the limit.
                resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free_descriptor(), hard))
                limited = []
                for path in ROUTES:
                    response = await api.client.get(path, headers=headers)
                    limited.append([path, response.status_code, response.headers.get(
                        "retry-after"), response.text[:300]])
                # A read connection opened now (a pool thread's first read) cannot open the
                # database: that is the same shortage, not a raw SQLite error.
                fresh = Reader(Path(sys.argv[1]), Pragmas(), threads=1)
                try:
                    fresh.run_sync(lambda conn: conn.execute("SELECT 1").fetchone())
                    store_read = "read"
                except OutOfResources:
                    store_read = "OutOfResources"
                except Exception as exc:
                    store_read = repr(exc)
                fresh.close()
                resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
                freed = []
                for path in ROUTES:
                    response = await api.client.get(path, headers=headers)
                    freed.append([path, response.status_code])
                print(json.dumps({{"limited": limited, "freed": freed, "store_read": store_read}}))
        finally:
            await api.client.aclose()
            await api.ej.close()

    asyncio.run(main())
    """
).format(routes=ROUTES)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs RLIMIT_NOFILE semantics")
def test_requests_without_a_free_descriptor_are_503_and_work_again_once_freed(
    tmp_path: Path,
) -> None:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(HERE)])}
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "api.db")],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    statuses = {path: status for path, status, _, _ in report["limited"]}
    assert 500 not in statuses.values(), report["limited"]
    refused = [row for row in report["limited"] if row[1] == 503]
    assert refused, report["limited"]  # the static file at least needs a descriptor
    for _, _, retry_after, body in refused:
        assert json.loads(body)["error"]["code"] == "out_of_resources", body
        assert retry_after is not None and int(retry_after) >= 1
    # One line for the operator, not a traceback per request.
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert done.stderr.count("answered 503 out_of_resources") == 1, done.stderr[-3000:]
    assert report["store_read"] == "OutOfResources", report["store_read"]
    assert all(status == 200 for _, status in report["freed"]), report["freed"]
