"""Retry policy: the backoff schedule and what a failed attempt leads to (pure functions)."""

from __future__ import annotations

import dataclasses
import random

from edgejobs.models import Outcome, Status


@dataclasses.dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Backoff settings of one job type (SPEC §2 rule 2)."""

    base_delay_s: float = 60.0
    max_delay_s: float = 3600.0
    jitter: bool = True


def backoff_delay_s(
    retry_number: int, policy: RetryPolicy, rng: random.Random | None = None
) -> float:
    """Delay before retry ``retry_number`` (1 for the first retry).

    ``min(max_delay_s, base_delay_s * 2**(n-1))``, then, with jitter, a uniform factor in
    [0.9, 1.1] so that many jobs failing together do not retry in lockstep.
    """
    if retry_number < 1:
        raise ValueError("retry_number starts at 1")
    exponent = min(retry_number - 1, 62)  # 2**62 s is beyond any max_delay_s; avoids overflow
    delay = float(min(policy.max_delay_s, policy.base_delay_s * float(2**exponent)))
    if policy.jitter and delay > 0:
        delay *= (rng or random).uniform(0.9, 1.1)
    return delay


def after_failure(
    *,
    attempts: int,
    retry_base: int,
    max_retries: int,
    outcome: Outcome,
    permanent: bool,
) -> tuple[Status, int | None]:
    """The status a job takes after a failed, timed-out or lost attempt.

    Returns the status and, when it is ``retrying``, the retry number (1-based) whose delay
    applies. ``attempts - retry_base`` attempts have run in the current retry budget; the first
    is not a retry. No retry allowed at all (``max_retries = 0``) ends ``failed``/``timed_out``;
    retries used up end ``dead_letter``; a lost attempt with no retry left is ``dead_letter``.
    """
    if permanent:
        return Status.FAILED, None
    retries_done = attempts - retry_base - 1
    if retries_done < max_retries:
        return Status.RETRYING, retries_done + 1
    if max_retries == 0 and outcome is Outcome.FAILED:
        return Status.FAILED, None
    if max_retries == 0 and outcome is Outcome.TIMED_OUT:
        return Status.TIMED_OUT, None
    return Status.DEAD_LETTER, None
