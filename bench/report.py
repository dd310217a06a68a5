"""Print the bench results of one run as a table, with edgejobs' figures as ratios to the
peers and to the SQLite ceiling measured in the same run, against the targets."""

from __future__ import annotations

import json
import sys
from typing import Any


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.2f}"


def _figures(lines: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for record in lines:
        for figure in record.get("figures", []):
            found[(record["subject"], figure["figure"])] = figure
    return found


def _errors(lines: list[dict[str, Any]]) -> dict[str, str]:
    """The failures a record reported (failed requests, missing deliveries), by its figures."""
    found: dict[str, str] = {}
    for record in lines:
        errors = record.get("errors") or {}
        if errors:
            text = ", ".join(f"{kind}: {count}" for kind, count in sorted(errors.items()))
            for figure in record.get("figures", []):
                found[figure["figure"]] = text
    return found


# (edgejobs figure, what it is compared with, comparison figure, target text, check or None
# for a figure with no target)
COMPARISONS: list[tuple[str, str, tuple[str, str] | None, str, Any]] = [
    (
        "e2e_submit_many_normal",
        "huey enqueue+drain (serial equivalent)",
        ("peer_huey", "serial"),
        ">= 20,000 jobs/s and >= 2x huey",
        lambda v, r: v >= 20000 and r is not None and r >= 2,
    ),
    (
        "e2e_submit_50_normal",
        "huey enqueue+drain (serial equivalent)",
        ("peer_huey", "serial"),
        ">= 10,000 jobs/s",
        lambda v, r: v >= 10000,
    ),
    (
        "e2e_submit_50_full",
        "stock huey (FULL) draining a filled queue",
        ("peer_huey", "end_to_end_full"),
        ">= 2x stock huey",
        lambda v, r: r is not None and r >= 2,
    ),
    # huey's latency ends when its result row is visible (after the task ran), so it is held
    # against ej.wait() returning, not against the handler's start.
    ("pickup_p50", "-", None, "<= 1 ms", lambda v, r: v <= 1),
    ("pickup_p99", "-", None, "<= 10 ms", lambda v, r: v <= 10),
    (
        "wait_p50",
        "huey submit -> result visible p50 (1 ms polling)",
        ("peer_huey", "latency_p50"),
        "<= 2 ms",
        lambda v, r: v <= 2,
    ),
    ("idle_cpu", "huey idle CPU", ("peer_huey", "idle_cpu"), "<= 0.5 %", lambda v, r: v <= 0.5),
    ("claim_cost_ratio_1M_vs_empty", "-", None, "<= 1.5", lambda v, r: v <= 1.5),
    ("rss_idle", "-", None, "<= 60 MiB", lambda v, r: v <= 60),
    ("rss_100k_queued", "-", None, "<= 150 MiB", lambda v, r: v <= 150),
    # Figures 3 and 5 of the issue are measured, with no target to meet.
    ("http_submit_p50", "-", None, "measured", None),
    ("http_submit_p99", "-", None, "measured", None),
    ("sse_fanout_p50", "-", None, "measured", None),
    ("sse_fanout_p99", "-", None, "measured", None),
]


# The other SQLite queues of the peer harness, each as its enqueue and its consume figure (one
# item's whole life is both), held against edgejobs' end-to-end figure at the same durability.
OTHER_QUEUES: list[tuple[str, str, str, str, str]] = [
    ("persist-queue SQLiteAckQueue", "peer_persistqueue", "put_normal", "get_ack_normal", "normal"),
    ("persist-queue SQLiteAckQueue", "peer_persistqueue", "put_full", "get_ack_full", "full"),
    ("litequeue LiteQueue", "peer_litequeue", "put", "pop_done", "normal"),
    ("huey SqliteHuey", "peer_huey", "enqueue_normal", "end_to_end_normal", "normal"),
    ("huey SqliteHuey", "peer_huey", "enqueue_full", "end_to_end_full", "full"),
]


# The issue set its throughput targets on the machine whose SQLite ceiling (this harness's
# lifecycle_3tx, three transactions per job) ran at ~17,500 jobs/s. Hosts differ by more than
# two times on that figure (7,400-8,600 on a slower one, measured with the same script), so
# beside the verdict as written the report gives the same targets scaled by the same-run
# ceiling: what "20,000 jobs/s" asks of a host that runs SQLite at that fraction of the
# reference speed. Never instead of the verdict as written.
REFERENCE_CEILING = 17_500.0
"""The lifecycle_3tx figure the issue's absolute targets were set against (jobs/s)."""
SCALED_TARGETS: list[tuple[str, str, float]] = [
    ("e2e_submit_many_normal", "1(b)", 20_000.0),
    ("e2e_submit_50_normal", "1(a)", 10_000.0),
]


def _scaled_targets(figures: dict[tuple[str, str], dict[str, Any]]) -> None:
    """The throughput targets scaled to this host by the run's own SQLite ceiling."""
    ceiling = figures.get(("sqlite_ceiling", "lifecycle_3tx"))
    if not ceiling:
        return
    scale = ceiling["median"] / REFERENCE_CEILING
    print(
        f"\nThe same targets scaled to this host: its SQLite ceiling ran at "
        f"{_fmt(ceiling['median'])} jobs/s in this run, {scale:.2f}x the "
        f"{_fmt(REFERENCE_CEILING)} the issue's targets were set against (the verdict above"
        " stays the one as written):\n"
    )
    print("| edgejobs figure | target | median | target x ceiling ratio | met scaled |")
    print("|---|---|---:|---:|---|")
    for name, label, target in SCALED_TARGETS:
        mine = figures.get(("edgejobs", name))
        if mine is None:
            continue
        scaled = target * scale
        met = "yes" if mine["median"] >= scaled else "no"
        print(
            f"| {name} | {label} >= {_fmt(target)} jobs/s | {_fmt(mine['median'])} "
            f"| {_fmt(scaled)} | {met} |"
        )


def _serial(put: float, consume: float) -> float:
    """Items per second of enqueue then consume done one after the other (1 / (1/a + 1/b))."""
    return 1 / (1 / put + 1 / consume)


def _other_queues(figures: dict[tuple[str, str], dict[str, Any]]) -> None:
    """Every peer queue of the run against edgejobs, enqueue plus consume, same durability."""
    ours = {
        "normal": figures.get(("edgejobs", "e2e_submit_many_normal")),
        "full": figures.get(("edgejobs", "e2e_submit_50_full")),
    }
    rows = []
    for label, subject, put_name, consume_name, sync in OTHER_QUEUES:
        put = figures.get((subject, put_name))
        consume = figures.get((subject, consume_name))
        mine = ours[sync]
        if not (put and consume and mine):
            continue
        serial = _serial(put["median"], consume["median"])
        rows.append(
            f"| {label} | {sync.upper()} | {_fmt(put['median'])} | {_fmt(consume['median'])} "
            f"| {_fmt(serial)} | {_fmt(mine['median'])} | {mine['median'] / serial:.2f} |"
        )
    if not rows:
        return
    print(
        "\nEvery SQLite queue of the run, enqueue + consume of one item (serial equivalent) against"
        " edgejobs end to end at the same durability (NORMAL: one submit_many; FULL: 50"
        " submitters). The peers keep no attempt history and no event log:\n"
    )
    print("| queue | sync | enqueue/s | consume/s | serial items/s | edgejobs jobs/s | ratio |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for row in rows:
        print(row)


def main() -> None:
    path = sys.argv[1]
    with open(path) as handle:
        lines = [json.loads(line) for line in handle if line.strip()]
    figures = _figures(lines)
    errors = _errors(lines)
    enq = figures.get(("peer_huey", "enqueue_normal"))
    e2e = figures.get(("peer_huey", "end_to_end_normal"))
    if enq and e2e:
        serial = _serial(enq["median"], e2e["median"])
        figures[("peer_huey", "serial")] = {"median": serial, "unit": "tasks/s"}
    ceiling = figures.get(("sqlite_ceiling", "lifecycle_3tx"))
    print("| edgejobs figure | median | unit | compared with | its value | ratio | target | met |")
    print("|---|---:|---|---|---:|---:|---|---|")
    for name, label, ref, target, check in COMPARISONS:
        mine = figures.get(("edgejobs", name))
        if mine is None:
            continue
        other = figures.get(ref) if ref else None
        ratio = None
        if other:
            ratio = mine["median"] / other["median"]
        if check is None:
            met = "-"
        else:
            met = "yes" if check(mine["median"], ratio) else "no"
        if errors.get(name):
            met = f"no: {errors[name]}"  # a figure over failed requests is no result
        print(
            f"| {name} | {_fmt(mine['median'])} | {mine['unit']} | {label} "
            f"| {_fmt(other['median']) if other else '-'} | {_fmt(ratio) if ratio else '-'} "
            f"| {target} | {met} |"
        )
    api_get = figures.get(("peer_huey", "latency_api_p50"))
    if api_get:
        print(
            f"\nhuey's own Result.get() (its API, polling with a backoff), submit -> result p50:"
            f" {_fmt(api_get['median'])} ms."
        )
    mine = figures.get(("edgejobs", "e2e_submit_many_normal"))
    if ceiling and mine:
        print(
            f"\nSQLite ceiling, 3 transactions per job (same run): {_fmt(ceiling['median'])} "
            f"jobs/s; edgejobs submit_many end to end is {mine['median'] / ceiling['median']:.2f}x it."
        )
    floor = figures.get(("edgejobs", "write_plan_floor"))
    if floor and mine:
        print(
            f"edgejobs' own writes alone, one thread, no event loop (same run): "
            f"{_fmt(floor['median'])} jobs/s; submit_many end to end is "
            f"{mine['median'] / floor['median']:.2f}x it (the rest is the engine's own cost)."
        )
    _scaled_targets(figures)
    _other_queues(figures)
    print("\nEvery figure of the run:\n")
    print("| subject | figure | median | unit | runs | conditions |")
    print("|---|---|---:|---|---|---|")
    for record in lines:
        for fig in record.get("figures", []):
            runs = " / ".join(_fmt(v) for v in fig["runs"])
            print(
                f"| {record['subject']} | {fig['figure']} | {_fmt(fig['median'])} | {fig['unit']} "
                f"| {runs} | {fig.get('conditions', '')} |"
            )


if __name__ == "__main__":
    main()
