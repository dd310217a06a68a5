"""The dashboard's per-minute series reads what is waiting, not the whole history.

Its current queue depth is asked up to once a second while jobs run. Counted through the
org's ``(org, seq)`` index it walked every job the org ever had (~76 ms per call with
1,000,000 finished jobs); counted on the waiting statuses' partial indexes it reads the queue.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from contextlib import closing
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from ej_testkit import vm_steps
from ops_support import DAY_MS, connect, insert_jobs

from edgejobs.store import jobs as store_jobs
from edgejobs.store.jobs import JobFilter, list_jobs
from edgejobs.store.stats import minute_series
from edgejobs.store.store import Store
from edgejobs.testing import FakeClock


def _database(path: Path, clock: FakeClock, finished: int) -> None:
    """``finished`` completed jobs from a day ago, then 3 queued, 2 retrying, 1 scheduled and
    2 running (orgs org0–org6 in turn: see ``insert_jobs``)."""
    Store(path).prepare()
    now = clock.now_ms()
    old = now - DAY_MS
    insert_jobs(path, finished, prefix="done", status="completed", created_at=old, finished_at=old)
    for status, count in (("queued", 3), ("retrying", 2), ("scheduled", 1), ("running", 2)):
        insert_jobs(path, count, prefix=status, status=status, created_at=now, finished_at=None)


def test_the_current_queue_depth_counts_waiting_jobs_of_every_org_and_of_one(
    tmp_path: Path, clock: FakeClock
) -> None:
    path = tmp_path / "jobs.db"
    _database(path, clock, finished=700)
    with closing(connect(path)) as conn:
        orgs = {
            row["org"]: row["n"]
            for row in conn.execute(
                "SELECT org, count(*) AS n FROM jobs"
                " WHERE status IN ('queued', 'retrying', 'scheduled') GROUP BY org"
            )
        }
        assert sum(orgs.values()) == 6
        assert minute_series(conn, None, clock.now_ms())[-1].queue_depth == 6
        for org, waiting in orgs.items():
            assert minute_series(conn, org, clock.now_ms())[-1].queue_depth == waiting
        assert minute_series(conn, "nobody", clock.now_ms())[-1].queue_depth == 0


def test_the_series_reads_the_same_however_many_jobs_have_finished(
    tmp_path: Path, clock: FakeClock
) -> None:
    steps: dict[int, dict[str | None, int]] = {}
    for finished in (1_000, 100_000):
        path = tmp_path / f"history-{finished}.db"
        _database(path, clock, finished)
        with closing(connect(path)) as conn:
            steps[finished] = {
                org: vm_steps(conn, partial(minute_series, conn, org, clock.now_ms()))
                for org in (None, "org1")
            }
    for org in (None, "org1"):
        assert steps[100_000][org] <= steps[1_000][org] + 2, steps


def _listing(conn: Any, org: str | None, statuses: tuple[str, ...], **more: Any) -> list[str]:
    jobs, _ = list_jobs(conn, JobFilter(org=org, statuses=statuses, **more), 0)
    return [job.id for job in jobs]


def test_listing_running_or_waiting_jobs_reads_them_not_the_orgs_history(
    tmp_path: Path, clock: FakeClock
) -> None:
    """The dashboard's "running" link and the waiting views list a few jobs of an org with
    a long history: read on the statuses' partial indexes, the same few rows whatever the
    history (it walked every finished job of the org, ~200 ms with 380,000 of them)."""
    steps: dict[int, dict[tuple[str | None, tuple[str, ...]], int]] = {}
    for finished in (1_000, 100_000):
        path = tmp_path / f"history-{finished}.db"
        _database(path, clock, finished)
        with closing(connect(path)) as conn:
            expected = {
                (org, statuses): _unindexed(conn, org, statuses)
                for org in (None, "org1", "org4")
                for statuses in (("running",), ("queued", "retrying", "scheduled"))
            }
            for (org, statuses), ids in expected.items():
                assert _listing(conn, org, statuses) == ids
            # Paged one job at a time, the same rows in the same order.
            assert (
                _paged(conn, None, ("queued", "retrying", "scheduled"))
                == expected[(None, ("queued", "retrying", "scheduled"))]
            )
            steps[finished] = {
                key: vm_steps(conn, partial(_listing, conn, *key)) for key in expected
            }
    for key, few in steps[1_000].items():
        assert steps[100_000][key] <= few + 2, (key, steps)


def _unindexed(conn: Any, org: str | None, statuses: tuple[str, ...]) -> list[str]:
    """The first page of such a listing read without any index: what it must return."""
    return [
        row["id"]
        for row in conn.execute(
            "SELECT id FROM jobs NOT INDEXED WHERE (:org IS NULL OR org = :org)"
            " AND status IN (SELECT value FROM json_each(:statuses))"
            " ORDER BY seq DESC LIMIT 50",
            {"org": org, "statuses": json.dumps(statuses)},
        )
    ]


def _paged(conn: Any, org: str | None, statuses: tuple[str, ...]) -> list[str]:
    ids: list[str] = []
    before: int | None = None
    while True:
        jobs, before = list_jobs(
            conn, JobFilter(org=org, statuses=statuses, limit=1, before_seq=before), 0
        )
        ids += [job.id for job in jobs]
        if before is None:
            return ids


def test_listing_unsuccessful_jobs_reads_them_not_the_orgs_history(
    tmp_path: Path, clock: FakeClock
) -> None:
    """The dead-letter view and a listing filtered to failed, timed_out, dead_letter or
    canceled jobs read the partial index of those statuses: the same few rows whatever the
    history (they walked every finished job of the org, ~0.6 s with 1,000,000 of them, to
    find none)."""
    unsuccessful = ("failed", "timed_out", "dead_letter", "canceled")
    steps: dict[int, dict[tuple[str | None, tuple[str, ...]], int]] = {}
    for finished in (1_000, 30_000):
        path = tmp_path / f"history-{finished}.db"
        _database(path, clock, finished)
        old = clock.now_ms() - DAY_MS
        for status, count in (("failed", 3), ("timed_out", 1), ("dead_letter", 9)):
            insert_jobs(path, count, prefix=status, status=status, created_at=old, finished_at=old)
        insert_jobs(path, 1, prefix="canceled", status="canceled", created_at=old, finished_at=old)
        with closing(connect(path)) as conn:
            expected = {
                (org, statuses): _unindexed(conn, org, statuses)
                for org in (None, "org1", "org4", "nobody")
                for statuses in (("dead_letter",), ("failed", "running"), unsuccessful)
            }
            assert expected[(None, unsuccessful)] and not expected[("nobody", unsuccessful)]
            for (org, statuses), ids in expected.items():
                assert _listing(conn, org, statuses) == ids, (org, statuses)
            assert _paged(conn, "org1", unsuccessful) == expected[("org1", unsuccessful)]
            steps[finished] = {
                key: vm_steps(conn, partial(_listing, conn, *key)) for key in expected
            }
    for key, few in steps[1_000].items():
        assert steps[30_000][key] <= few + 2, (key, steps)


_FEW = {"text": '"n":12', "job_type": "nosuch", "statuses": ("completed",), "priority_rank": 2}
"""Filters of the history walk: a few matches, none, all but the waiting ones, all."""


def _pages(conn: sqlite3.Connection, flt: JobFilter) -> list[list[str]]:
    """Every page of a listing, following its cursor to the end."""
    pages: list[list[str]] = []
    before: int | None = None
    while True:
        jobs, before = list_jobs(conn, dataclasses.replace(flt, before_seq=before), 0)
        pages.append([job.id for job in jobs])
        if before is None:
            return pages


def test_a_filtered_listing_pages_through_a_bounded_walk_and_misses_nothing(
    tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A page whose filters match few jobs of a long history ends after HISTORY_WALK rows,
    with what it found (possibly nothing) and a cursor there: the pages together are the
    unbounded listing, each match once and in order."""
    path = tmp_path / "history.db"
    _database(path, clock, 2_000)
    with closing(connect(path)) as conn:
        for org in (None, "org1"):
            for key, value in _FEW.items():
                flt = JobFilter(org=org, limit=7, **{key: value})
                whole = _pages(conn, flt)  # one walk: the bound is far above the history
                assert len(whole) > 1 or key == "job_type", (org, key)
                monkeypatch.setattr(store_jobs, "HISTORY_WALK", 40)
                bounded = _pages(conn, flt)
                monkeypatch.undo()
                assert sum(bounded, []) == sum(whole, []), (org, key)
                assert all(len(page) <= 7 for page in bounded)
                if key in ("text", "job_type"):  # few matches: short pages, then go on
                    assert len(bounded) > len(whole) and [] in bounded[:-1], (org, key)
                else:  # every row matches: full pages, as before
                    assert bounded == whole, (org, key)


def test_a_page_of_no_match_costs_the_same_however_long_the_history(
    tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The live search's page of "the newest matches" when nothing matches: ~0.6 s with
    1,000,000 jobs of the org, as it read each of them."""
    monkeypatch.setattr(store_jobs, "HISTORY_WALK", 200)
    steps: dict[int, dict[tuple[str | None, str], int]] = {}
    for finished in (2_000, 20_000):
        path = tmp_path / f"history-{finished}.db"
        _database(path, clock, finished)
        with closing(connect(path)) as conn:
            steps[finished] = {}
            for org in (None, "org1"):
                for key in ("text", "job_type"):
                    flt = JobFilter(org=org, **{key: "nothing-matches"})
                    jobs, after = list_jobs(conn, flt, 0)
                    assert jobs == [] and after is not None
                    steps[finished][(org, key)] = vm_steps(conn, partial(list_jobs, conn, flt, 0))
    for key, few in steps[2_000].items():
        assert steps[20_000][key] <= few + 2, (key, steps)
