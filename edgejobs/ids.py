"""Job ids: opaque, URL-safe, time-sortable strings (26 Crockford base32 digits, like a ULID,
but not one: the two padding bits come last, so a ULID library reads a wrong time from them)."""

from __future__ import annotations

import os

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_PAIRS = [first + second for first in _ALPHABET for second in _ALPHABET]
_PAIR_SHIFTS = tuple(range(120, -1, -10))


def new_job_id(now_ms: int) -> str:
    """A 26-character id: 48 bits of milliseconds, then 80 random bits.

    Ids sort by creation time (to the millisecond) and cannot be guessed, so an id reveals
    nothing about other jobs or other orgs.
    """
    value = (now_ms & ((1 << 48) - 1)) << 80 | int.from_bytes(os.urandom(10), "big")
    # 128 bits → 26 base32 digits: 130 bits with two zero bits at the end, written as 13 pairs
    # of digits (10 bits each) from a table. This runs for every submitted job, on the
    # writer's thread: the table is three times faster than base64.b32encode and a translate.
    value <<= 2
    return "".join([_PAIRS[(value >> shift) & 1023] for shift in _PAIR_SHIFTS])


def looks_like_job_id(text: str) -> bool:
    """Whether ``text`` has the shape of a job id (cheap check before a lookup)."""
    return len(text) == 26 and all(c in _ALPHABET for c in text)
