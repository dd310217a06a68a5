"""What ``submit`` refuses from Python callers: a clear :class:`ValidationError` for values that
cannot be stored (they once surfaced as OverflowError, ValueError or UnicodeEncodeError from
deep inside, or, for NaN in params, were stored as text that is not JSON), and nothing written."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from core_support import CoreKit

from edgejobs.app import JobSpec
from edgejobs.errors import ValidationError
from edgejobs.models import LATEST_RUN_AT_S, MAX_DELAY_S, MAX_PAGE, iso_ms


def _nested(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth - 1):
        value = [value]
    return value


def _containing_itself() -> dict[str, Any]:
    params: dict[str, Any] = {"n": 1}
    params["self"] = [params]
    return params


REFUSED: list[tuple[str, dict[str, Any], str]] = [
    ("huge delay", {"delay_s": 1e20}, "delay_s"),
    ("NaN delay", {"delay_s": math.nan}, "delay_s"),
    ("infinite delay", {"delay_s": math.inf}, "delay_s"),
    ("huge run_at", {"run_at": 1e300}, "run_at"),
    ("NaN run_at", {"run_at": math.nan}, "run_at"),
    ("negative run_at", {"run_at": -1}, "run_at"),
    ("run_at in year 1", {"run_at": datetime(1, 1, 1, tzinfo=UTC)}, "1970"),
    ("run_at ISO before 1970", {"run_at": "1969-12-31T23:59:59.999Z"}, "1970"),
    (
        "run_at 1969 in UTC",
        {"run_at": datetime(1970, 1, 1, tzinfo=timezone(timedelta(hours=1)))},
        "1970",
    ),
    ("run_at ISO after the last second", {"run_at": "9999-12-31T23:59:59.5Z"}, "9999"),
    ("NaN in params", {"params": {"n": math.nan}}, "params"),
    ("infinity in params", {"params": {"n": [1, math.inf]}}, "params"),
    ("lone surrogate in params", {"params": {"s": "\ud800"}}, "surrogate"),
    ("lone surrogate in dedup_key", {"dedup": True, "dedup_key": "k\ud800"}, "dedup_key"),
    ("params nested too deep to read back", {"params": {"v": _nested(980)}}, "nested deeper"),
    ("params nested too deep to encode", {"params": {"v": _nested(100_000)}}, "nested deeper"),
    ("params that contain themselves", {"params": _containing_itself()}, "contain themselves"),
]


@pytest.mark.parametrize(
    ("fields", "needle"), [pytest.param(f, n, id=name) for name, f, n in REFUSED]
)
async def test_values_that_cannot_be_stored_are_a_validation_error(
    kit: CoreKit, fields: dict[str, Any], needle: str
) -> None:
    with pytest.raises(ValidationError, match=needle):
        await kit.submit(**fields)
    jobs, _ = await kit.ej.list_jobs(org="acme")
    assert jobs == []


async def test_the_bounds_themselves_are_accepted(kit: CoreKit) -> None:
    later = await kit.submit(delay_s=MAX_DELAY_S)
    last = await kit.submit(run_at=LATEST_RUN_AT_S)
    assert later.run_at == kit.clock.now_ms() + MAX_DELAY_S * 1000
    assert last.run_at == LATEST_RUN_AT_S * 1000
    assert (await kit.ej.get(last.id)).to_dict()["run_at"].startswith("9999-12-31T23:59:59")
    first = await kit.submit(run_at="1970-01-01T00:00:00Z")
    assert first.run_at == 0


async def test_params_as_deep_as_the_limit_are_accepted_and_read_back(kit: CoreKit) -> None:
    """980 levels were accepted and then no read of the job could decode them again:
    ``get``, ``wait`` and listings raised ``RecursionError``. The limit is 200 levels, the
    params object included."""
    job = await kit.submit(params={"v": _nested(199)})
    assert (await kit.ej.get(job.id)).params == job.params


async def test_each_job_of_a_batch_is_checked_however_many_share_a_type_and_org(
    kit: CoreKit,
) -> None:
    """A batch looks each job type and org up once; a bad one after good ones of the same
    batch is still refused, with its index, and nothing of the batch is written."""
    good = [JobSpec("t.work", "acme", {"i": i}, dedup=False) for i in range(3)]
    bad_cases: list[tuple[JobSpec, str]] = [
        (JobSpec("t.nope", "acme", dedup=False), r"jobs\[3\]: unknown job type"),
        (JobSpec("t.work", "ac me", dedup=False), r"jobs\[3\]: org must be"),
        (JobSpec(["t.work"], "acme", dedup=False), r"jobs\[3\]: job_type must be"),  # type: ignore[arg-type]
        (JobSpec("t.work", ["acme"], dedup=False), r"jobs\[3\]: org must be"),  # type: ignore[arg-type]
        (JobSpec("t.work", "acme", [1], dedup=False), r"jobs\[3\]: params must be"),  # type: ignore[arg-type]
    ]
    for bad, needle in bad_cases:
        with pytest.raises(ValidationError, match=needle):
            await kit.ej.submit_many([*good, bad])
    jobs, _ = await kit.ej.list_jobs(org="acme")
    assert jobs == []


async def test_params_may_be_any_mapping_and_come_back_a_plain_dict(kit: CoreKit) -> None:
    from types import MappingProxyType

    job = await kit.submit(params=MappingProxyType({"b": (1, 2), "a": None}))
    assert type(job.params) is dict
    assert job.params == {"a": None, "b": [1, 2]}
    assert (await kit.ej.get(job.id)).params == job.params


def test_iso_ms_always_writes_a_four_digit_year() -> None:
    # A row stored before run_at was bounded may hold a time before year 1000.
    assert iso_ms(-62_135_596_800_000) == "0001-01-01T00:00:00.000Z"
    assert iso_ms(-30_610_224_000_001) == "0999-12-31T23:59:59.999Z"
    assert iso_ms(0) == "1970-01-01T00:00:00.000Z"


async def test_a_single_id_string_is_not_a_list_of_parents(kit: CoreKit) -> None:
    """A str is a sequence too: ``depends_on="<id>"`` was read one character at a time and
    failed with ``unknown parent job 0``; ``statuses="failed"`` with ``'f' is not a valid
    Status``."""
    parent = await kit.submit()
    parents: Any = parent.id  # what a caller who forgot the brackets passes
    with pytest.raises(ValidationError, match="depends_on must be a list of job ids, got str"):
        await kit.submit(depends_on=parents)
    spec = JobSpec("t.work", "acme", depends_on=parents, dedup=False)
    with pytest.raises(ValidationError, match=r"jobs\[1\]: depends_on must be a list of job ids"):
        await kit.ej.submit_many([JobSpec("t.work", "acme", dedup=False), spec])
    jobs, _ = await kit.ej.list_jobs(org="acme")
    assert [job.id for job in jobs] == [parent.id]
    child = await kit.submit(depends_on=[parent.id])
    assert child.depends_on == (parent.id,)

    statuses: Any = "queued"
    with pytest.raises(ValidationError, match="statuses must be a list of statuses, got str"):
        await kit.ej.list_jobs(org="acme", statuses=statuses)
    jobs, _ = await kit.ej.list_jobs(org="acme", statuses=["queued"])
    assert {job.id for job in jobs} == {parent.id}


@pytest.mark.parametrize(
    ("filters", "needle"),
    [
        ({"statuses": ["bogus"]}, "statuses must be among blocked, scheduled, queued"),
        ({"statuses": ["queued", "Failed"]}, "got 'Failed'"),
        ({"priority": "urgent"}, "priority must be one of critical, high, normal, low"),
        ({"limit": 0}, "limit must be an integer from 1 to 500"),
        ({"limit": -1}, "limit must be an integer from 1 to 500"),
        ({"limit": 501}, "limit must be an integer from 1 to 500"),
        ({"limit": 10**12}, "limit must be an integer from 1 to 500"),
        ({"limit": 2.5}, "limit must be an integer from 1 to 500"),
        ({"limit": True}, "limit must be an integer from 1 to 500"),
        ({"created_after": "2026-01-01T00:00:00Z"}, "created_after must be an aware datetime"),
        ({"created_before": 1.5e9}, "created_before must be an aware datetime"),
        ({"created_after": datetime(2026, 1, 1)}, "created_after needs a UTC offset"),
    ],
    ids=[
        "unknown status",
        "miscased status",
        "unknown priority",
        "limit 0",
        "negative limit",
        "limit past a page",
        "huge limit",
        "fractional limit",
        "boolean limit",
        "ISO created_after",
        "float created_before",
        "naive created_after",
    ],
)
async def test_bad_listing_filters_are_a_validation_error(
    kit: CoreKit, filters: dict[str, Any], needle: str
) -> None:
    """They leaked ValueError (an unknown status or priority), returned [] without a word
    (``limit`` 0 or less) or read without bound (a huge ``limit``); HTTP allows 1 to 500."""
    await kit.submit()
    with pytest.raises(ValidationError, match=needle):
        await kit.ej.list_jobs(org="acme", **filters)


async def test_time_filters_take_aware_datetimes_and_milliseconds(kit: CoreKit) -> None:
    job = await kit.submit()
    created = datetime.fromtimestamp(job.created_at / 1000, tz=UTC)
    for after, before in (
        (created - timedelta(seconds=1), created + timedelta(seconds=1)),
        (job.created_at - 1, job.created_at + 1),
    ):
        jobs, _ = await kit.ej.list_jobs(org="acme", created_after=after, created_before=before)
        assert [found.id for found in jobs] == [job.id]
    jobs, _ = await kit.ej.list_jobs(org="acme", created_after=created + timedelta(seconds=1))
    assert jobs == []


async def test_a_cancel_reason_that_cannot_be_stored_is_a_validation_error(
    kit: CoreKit,
) -> None:
    job = await kit.submit()
    for reason, needle in (("why\ud800", "surrogate"), ("x" * 501, "at most 500")):
        with pytest.raises(ValidationError, match=needle):
            await kit.ej.cancel(job.id, reason=reason)
    assert (await kit.ej.get(job.id)).status.value == "queued"


async def test_the_largest_page_is_accepted(kit: CoreKit) -> None:
    await kit.ej.submit_many([JobSpec("t.work", "acme", {"n": n}) for n in range(3)])
    jobs, cursor = await kit.ej.list_jobs(org="acme", limit=MAX_PAGE, priority="normal")
    assert len(jobs) == 3 and cursor is None
    jobs, cursor = await kit.ej.list_jobs(org="acme", limit=1, statuses=["queued"])
    assert len(jobs) == 1 and cursor is not None
