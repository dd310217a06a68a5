"""Compare two builds of edgejobs on one figure of the bench, in alternating pairs.

This machine's speed drifts by a quarter within an hour, so a figure measured for one build
now and for the other later says little. Here the two builds take turns (A B, then B A, ...),
each measurement in a fresh process, and what is reported is each pair's ratio: the median of the
ratios, and in how many pairs the new build was better. The measurements behind the "Where the
time goes" section of ARCHITECTURE.md were taken as alternating pairs like these.

    .venv/bin/python bench/ab.py OLD NEW [--figure floor] [--pairs 8] [--n 20000]

OLD and NEW are git revisions of this repository (checked out into temporary worktrees and
removed afterwards) or directories holding a checkout (a throwaway build, say). Each side runs
its own ``bench/edgejobs_subject.py`` with its own ``edgejobs`` package first on the path,
under this interpreter (the peers' harness is needed only by revisions older than this tool). Ratios are "how much better the new build is": new/old for rates,
old/new for latencies, so above 1 is always faster.

Run the same build on both sides first (``bench/ab.py HEAD HEAD``): what it prints is the noise
of the hour. On the 2-core reference machine identical code gave medians from 0.98 to 1.04
in three rounds of 8 submit_many pairs (2, 7 and 5 of them "better"), so a lever worth keeping
shows more than that, in most pairs, and again in a second round.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Figure:
    """One figure of ``bench/edgejobs_subject.py``, as a call that prints one number."""

    call: str
    unit: str
    higher_is_better: bool
    default_n: int = 20_000
    """Jobs (or, for a latency, samples) per measurement unless ``--n`` says otherwise."""


# The call is evaluated in the side's own edgejobs_subject module (``s``) with ``n`` jobs or
# samples; it prints the figure.
FIGURES = {
    "floor": Figure("n / s.write_plan_floor(n)", "jobs/s", True),
    "submit_many": Figure("n / s.end_to_end(n, mode='submit_many')", "jobs/s", True),
    "submit_50": Figure("n / s.end_to_end(n, mode='concurrent')", "jobs/s", True),
    "submit_50_full": Figure(
        "n / s.end_to_end(n, mode='concurrent', synchronous='full')", "jobs/s", True
    ),
    "pickup": Figure("s.pickup_latency(n)['pickup_p50']", "ms (p50)", False, default_n=300),
    "wait": Figure("s.pickup_latency(n)['wait_p50']", "ms (p50)", False, default_n=300),
}


@contextlib.contextmanager
def checkout(spec: str, scratch: Path, label: str) -> Iterator[Path]:
    """A directory holding the build ``spec`` names: itself, or a worktree of a revision
    (in ``scratch``, named after ``label``, so that both sides may name the same one)."""
    if Path(spec).is_dir():
        yield Path(spec).resolve()
        return
    rev = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--verify", f"{spec}^{{commit}}"],
        capture_output=True,
        text=True,
    )
    if rev.returncode != 0:
        raise SystemExit(f"ab: {spec!r} is neither a directory nor a revision of {REPO}")
    path = scratch / f"{label}-{rev.stdout.strip()[:12]}"
    subprocess.run(
        ["git", "-C", str(REPO), "worktree", "add", "--detach", "--quiet", str(path), spec],
        check=True,
    )
    try:
        yield path
    finally:
        subprocess.run(
            ["git", "-C", str(REPO), "worktree", "remove", "--force", str(path)], check=False
        )


def measure(side: Path, figure: Figure, n: int) -> float:
    """One measurement of ``figure`` for the build in ``side``, in a fresh process."""
    code = (
        "import sys; sys.path.insert(0, 'bench'); import edgejobs_subject as s;"
        f" n = {n}; print(repr(float({figure.call})))"
    )
    env = dict(os.environ, PYTHONPATH=str(side), PYTHONDONTWRITEBYTECODE="1")
    # Revisions before bench/ab.py imported the peers' harness at the top of the subject and
    # looked for it beside their own checkout, which is a temporary worktree here.
    env.setdefault("EDGEJOBS_PEER_BENCH", str(REPO.parent / "shared" / "bench"))
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=side, env=env, capture_output=True, text=True
    )
    if out.returncode != 0:
        raise SystemExit(f"ab: the measurement failed in {side}:\n{out.stderr}")
    return float(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    """Parse the arguments, run the pairs, print each pair and the summary."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("old", help="a git revision or a checkout directory")
    parser.add_argument("new", help="a git revision or a checkout directory")
    parser.add_argument("--figure", choices=sorted(FIGURES), default="floor")
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--n", type=int, help="jobs (or latency samples) per measurement")
    parser.add_argument("--json", action="store_true", help="one JSON object at the end")
    args = parser.parse_args(argv)
    if args.pairs < 1:
        parser.error("--pairs must be at least 1")
    if args.n is not None and args.n < 1:
        parser.error("--n must be at least 1")
    figure = FIGURES[args.figure]
    n = args.n if args.n is not None else figure.default_n
    with tempfile.TemporaryDirectory(prefix="edgejobs-ab-") as tmp:
        scratch = Path(tmp)
        with checkout(args.old, scratch, "old") as old, checkout(args.new, scratch, "new") as new:
            print(f"{args.figure} ({figure.unit}), n={n}: old={args.old} new={args.new}")
            ratios: list[float] = []
            pairs: list[tuple[float, float]] = []
            for i in range(1, args.pairs + 1):
                # Which build goes first alternates (A B, B A, ...): a drift of the machine's
                # speed, or whatever the first run leaves behind, then favours neither.
                if i % 2:
                    a = measure(old, figure, n)
                    b = measure(new, figure, n)
                else:
                    b = measure(new, figure, n)
                    a = measure(old, figure, n)
                ratio = b / a if figure.higher_is_better else a / b
                pairs.append((a, b))
                ratios.append(ratio)
                print(f"pair {i}: old {a:,.3f}  new {b:,.3f}  ratio {ratio:.3f}", flush=True)
    better = sum(1 for r in ratios if r > 1)
    median = statistics.median(ratios)
    print(
        f"median ratio {median:.3f} (new better in {better} of {len(ratios)} pairs;"
        f" range {min(ratios):.3f}-{max(ratios):.3f}); medians old"
        f" {statistics.median(a for a, _ in pairs):,.3f} new {statistics.median(b for _, b in pairs):,.3f}"
    )
    if args.json:
        print(
            json.dumps(
                {
                    "figure": args.figure,
                    "unit": figure.unit,
                    "n": n,
                    "pairs": pairs,
                    "ratios": ratios,
                    "median_ratio": median,
                    "new_better": better,
                }
            )
        )


if __name__ == "__main__":
    main()
