"""Job ids: opaque, URL-safe, time-sortable strings (ULID layout, Crockford base32)."""

from __future__ import annotations

import os

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def new_job_id(now_ms: int) -> str:
    """A 26-character id: 48 bits of milliseconds, then 80 random bits.

    Ids sort by creation time (to the millisecond) and cannot be guessed, so an id reveals
    nothing about other jobs or other orgs.
    """
    value = (now_ms & ((1 << 48) - 1)) << 80 | int.from_bytes(os.urandom(10), "big")
    chars = []
    for _ in range(26):
        chars.append(_ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(chars))


def looks_like_job_id(text: str) -> bool:
    """Whether ``text`` has the shape of a job id (cheap check before a lookup)."""
    return len(text) == 26 and all(c in _ALPHABET for c in text)
