"""``bench/ab.py``, the tool that judges a performance change: two builds in alternating pairs.

It is run by hand, so nothing else would notice it break. These run it for real on two
checkout directories (this one, twice) with tiny figures: the numbers are noise, what is
checked is that every pair is measured in turn and that its ratio points the right way for a
rate and for a latency.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
AB = ROOT / "bench" / "ab.py"


def _ab(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # No peers' harness: the figures' functions must not need it.
    env = dict(os.environ, EDGEJOBS_PEER_BENCH=str(tmp_path / "no-harness-here"))
    return subprocess.run(
        [sys.executable, str(AB), *args],
        capture_output=True,
        text=True,
        timeout=110,
        env=env,
        cwd=tmp_path,
    )


def _report(out: subprocess.CompletedProcess[str]) -> tuple[list[str], dict[str, Any]]:
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    return lines, json.loads(lines[-1])


def test_a_rate_is_measured_in_pairs_and_its_ratio_is_new_over_old(tmp_path: Path) -> None:
    out = _ab(
        tmp_path, str(ROOT), str(ROOT), "--figure", "floor", "--pairs", "3", "--n", "300", "--json"
    )
    lines, report = _report(out)
    assert lines[0].startswith("floor (jobs/s), n=300")
    assert [line.split(":")[0] for line in lines if line.startswith("pair ")] == [
        "pair 1",
        "pair 2",
        "pair 3",
    ]
    assert len(report["pairs"]) == 3
    assert all(old > 0 and new > 0 for old, new in report["pairs"])
    assert report["ratios"] == [new / old for old, new in report["pairs"]]
    assert report["new_better"] == sum(1 for r in report["ratios"] if r > 1)
    assert "median ratio" in lines[-2]


def test_a_latency_ratio_is_old_over_new_so_above_one_is_still_faster(tmp_path: Path) -> None:
    out = _ab(
        tmp_path, str(ROOT), str(ROOT), "--figure", "pickup", "--pairs", "1", "--n", "5", "--json"
    )
    lines, report = _report(out)
    assert lines[0].startswith("pickup (ms (p50)), n=5")
    [(old, new)] = report["pairs"]
    assert old > 0 and new > 0
    assert report["ratios"] == [old / new]


def test_a_build_that_is_neither_a_directory_nor_a_revision_is_refused(tmp_path: Path) -> None:
    out = _ab(tmp_path, "no-such-revision-anywhere", str(ROOT), "--pairs", "1")
    assert out.returncode != 0
    assert "'no-such-revision-anywhere' is neither a directory nor a revision" in out.stderr
