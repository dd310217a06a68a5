"""Maintenance under a real open-file limit (set in a child process, so the test process keeps
its own): a WAL checkpoint that cannot open its connection says the process is out of file
descriptors, not SQLite's "unable to open database file", which reads like a missing or
damaged database."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest
from ej_testkit import run_script

resource = pytest.importorskip("resource")

CHILD = textwrap.dedent(
    """
    import asyncio, logging, os, resource, sys
    from edgejobs import EdgeJobs

    async def noop(ctx, params):
        return None

    async def main():
        logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
        ej = EdgeJobs(database=sys.argv[1])
        ej.register("t.noop", noop)
        await ej.start(run_workers=False)
        try:
            await ej.submit("t.noop", org="acme")  # the WAL holds frames: a checkpoint is due
            lowest_free = os.open(os.devnull, os.O_RDONLY)
            os.close(lowest_free)
            soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free, hard))
            try:
                await ej.maintenance.checkpoint_task(ej.clock.now_ms())
            finally:
                resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        finally:
            await ej.close()

    asyncio.run(main())
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs RLIMIT_NOFILE semantics")
def test_a_checkpoint_without_a_free_descriptor_says_so(tmp_path: Path) -> None:
    done = run_script(tmp_path, CHILD, str(tmp_path / "jobs.db"), timeout=60)
    assert done.returncode == 0, done.stderr[-3000:]
    failed = [line for line in done.stderr.splitlines() if "WAL checkpoint failed" in line]
    assert len(failed) == 1, done.stderr[-3000:]
    assert "out of file descriptors" in failed[0], failed
    assert "unable to open database file" not in failed[0], failed
