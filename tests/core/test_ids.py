"""Job ids: the layout (48 bits of time, 80 random bits, Crockford base32) and its order."""

from __future__ import annotations

import base64
import os

import pytest

from edgejobs import ids
from edgejobs.ids import looks_like_job_id, new_job_id

RFC4648_TO_CROCKFORD = str.maketrans(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
)


def _reference(value: int) -> str:
    """The same 128 bits through the standard library's base32 (the layout ids always had)."""
    encoded = base64.b32encode((value << 8).to_bytes(17, "big")).decode("ascii")
    return encoded[:26].translate(RFC4648_TO_CROCKFORD)


def test_an_id_is_the_crockford_base32_of_time_and_randomness(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for _ in range(500):
        random_part = os.urandom(10)
        now_ms = int.from_bytes(os.urandom(6), "big")
        with monkeypatch.context() as patch:
            patch.setattr(ids.os, "urandom", lambda n, fixed=random_part: fixed)
            job_id = new_job_id(now_ms)
        assert job_id == _reference(now_ms << 80 | int.from_bytes(random_part, "big"))
        assert looks_like_job_id(job_id)


def test_ids_sort_by_creation_time() -> None:
    made = [new_job_id(ms) for ms in (1, 2, 1_000, 1_764_390_000_000, 2**48 - 1)]
    assert made == sorted(made)
    assert len({new_job_id(5) for _ in range(1000)}) == 1000
