"""``edgejobs submit``, ``jobs list/show/cancel/retry`` and ``stats`` (placeholder; see register)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any


def register(subparsers: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add the job commands."""
