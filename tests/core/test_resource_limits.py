"""Handlers under a real memory limit (``RLIMIT_AS``, set in a child process so the test
process keeps its own): a result whose JSON does not fit in the memory the process may use
fails the attempt at once as ``ResultTooLarge``, for async and sync handlers alike. (An async
handler's attempt held its slot until its timeout and ended ``timed_out``.)"""

from __future__ import annotations

import json
import os
import sys
import textwrap
from pathlib import Path

import pytest
from ej_testkit import run_script

resource = pytest.importorskip("resource")

# The child's address space now, to set RLIMIT_AS just above it.
ADDRESS_SPACE = textwrap.dedent(
    """
    def address_space():
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError("no VmSize")
    """
)

CHILD = ADDRESS_SPACE + textwrap.dedent(
    """
    import asyncio, json, resource, sys
    from edgejobs import EdgeJobs

    HEADROOM = 64 * 1024 * 1024

    def result():
        # An 8 MB list whose JSON takes ~100 MB: more than the headroom allows.
        return ["x" * 100] * 1_000_000

    async def big_async(ctx, params):
        return result()

    def big_sync(ctx, params):
        return result()

    async def main():
        ej = EdgeJobs(database=sys.argv[1])
        # The timeout is the test's bound: an attempt that ran into it kept its slot.
        ej.register("t.async", big_async, timeout_s=20, max_retries=0)
        ej.register("t.sync", big_sync, timeout_s=20, max_retries=0)
        async with ej:
            hard = resource.getrlimit(resource.RLIMIT_AS)[1]
            resource.setrlimit(resource.RLIMIT_AS, (address_space() + HEADROOM, hard))
            jobs = [await ej.submit(name, org="acme") for name in ("t.async", "t.sync")]
            ended = [await ej.wait(job.id, timeout=60) for job in jobs]
            resource.setrlimit(resource.RLIMIT_AS, (hard, hard))
        print(json.dumps([[job.job_type, job.status.value, job.error and job.error.type]
                          for job in ended]))

    asyncio.run(main())
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_a_result_too_big_for_the_memory_limit_fails_at_once_as_too_large(
    tmp_path: Path,
) -> None:
    done = run_script(tmp_path, CHILD, str(tmp_path / "jobs.db"))
    assert done.returncode == 0, done.stderr[-3000:]
    ended = json.loads(done.stdout.strip().splitlines()[-1])
    assert ended == [
        ["t.async", "failed", "ResultTooLarge"],
        ["t.sync", "failed", "ResultTooLarge"],
    ], done.stderr[-3000:]
    # A handler that ran is not one that "could not start".
    assert "could not start the handler" not in done.stderr, done.stderr[-3000:]


WORKER = ADDRESS_SPACE + textwrap.dedent(
    """
    import resource, sys
    import edgejobs.cli as cli

    cli.build_parser()  # every command module imported before the limit

    # No room for another thread's stack: what TasksMax or a small MemoryMax does to a start.
    hard = resource.getrlimit(resource.RLIMIT_AS)[1]
    resource.setrlimit(resource.RLIMIT_AS, (address_space() + 1024 * 1024, hard))
    sys.exit(cli.main(sys.argv[1:]))
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_a_worker_that_cannot_start_a_thread_says_so_in_one_line(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEJOBS_")}
    env["EDGEJOBS_DB"] = str(tmp_path / "jobs.db")
    done = run_script(tmp_path, WORKER, "worker", env=env, timeout=60)
    assert done.returncode == 1, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edgejobs: this process is out of"), lines
