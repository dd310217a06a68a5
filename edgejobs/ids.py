"""Job ids: opaque, URL-safe, time-sortable strings (ULID layout, Crockford base32)."""

from __future__ import annotations

import base64
import os

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_FROM_RFC4648 = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", _ALPHABET)


def new_job_id(now_ms: int) -> str:
    """A 26-character id: 48 bits of milliseconds, then 80 random bits.

    Ids sort by creation time (to the millisecond) and cannot be guessed, so an id reveals
    nothing about other jobs or other orgs.
    """
    value = (now_ms & ((1 << 48) - 1)) << 80 | int.from_bytes(os.urandom(10), "big")
    # 128 bits → 26 base32 digits: pad to 130 bits (two leading zero bits), encode 17 bytes
    # (the last byte only carries padding) and map RFC 4648 letters to Crockford's alphabet.
    encoded = base64.b32encode((value << 8).to_bytes(17, "big")).decode("ascii")
    return encoded[:26].translate(_FROM_RFC4648)


def looks_like_job_id(text: str) -> bool:
    """Whether ``text`` has the shape of a job id (cheap check before a lookup)."""
    return len(text) == 26 and all(c in _ALPHABET for c in text)
