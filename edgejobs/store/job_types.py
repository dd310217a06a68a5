"""Declared job types and their runtime state (pause, policy overrides)."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from collections.abc import Mapping
from typing import Any

from edgejobs.store.db import WriteTx
from edgejobs.store.rows import dumps


@dataclasses.dataclass(frozen=True, slots=True)
class JobTypeState:
    """A job type as stored: declared policy, pause flag and overrides."""

    name: str
    policy: dict[str, Any]
    paused: bool
    overrides: dict[str, Any]

    @property
    def effective_policy(self) -> dict[str, Any]:
        """The declared policy with the overrides applied (removed overrides are not stored)."""
        return {**self.policy, **self.overrides}


def declare(
    conn: sqlite3.Connection, tx: WriteTx, *, policies: Mapping[str, Mapping[str, Any]], now: int
) -> None:
    """Record the job types this runner serves (keeps pause flags and overrides)."""
    conn.executemany(
        "INSERT INTO job_types (name, policy, updated_at) VALUES (?, ?, ?)"
        " ON CONFLICT (name) DO UPDATE SET policy = excluded.policy, updated_at = excluded.updated_at",
        [(name, dumps(dict(policy)), now) for name, policy in policies.items()],
    )


def load_states(conn: sqlite3.Connection) -> dict[str, JobTypeState]:
    """Every stored job type by name."""
    return {
        row["name"]: JobTypeState(
            name=row["name"],
            policy=json.loads(row["policy"]),
            paused=bool(row["paused"]),
            overrides=json.loads(row["overrides"]),
        )
        for row in conn.execute("SELECT * FROM job_types ORDER BY name")
    }


def set_paused(conn: sqlite3.Connection, tx: WriteTx, *, name: str, paused: bool, now: int) -> None:
    """Pause or resume a job type."""
    conn.execute(
        "INSERT INTO job_types (name, paused, updated_at) VALUES (?, ?, ?)"
        " ON CONFLICT (name) DO UPDATE SET paused = excluded.paused, updated_at = excluded.updated_at",
        (name, int(paused), now),
    )


def set_overrides(
    conn: sqlite3.Connection, tx: WriteTx, *, name: str, changes: Mapping[str, Any], now: int
) -> dict[str, Any]:
    """Merge ``changes`` into a job type's overrides (a None value removes that override)."""
    row = conn.execute("SELECT overrides FROM job_types WHERE name = ?", (name,)).fetchone()
    current: dict[str, Any] = json.loads(row["overrides"]) if row else {}
    for key, value in changes.items():
        if value is None:
            current.pop(key, None)
        else:
            current[key] = value
    conn.execute(
        "INSERT INTO job_types (name, overrides, updated_at) VALUES (?, ?, ?)"
        " ON CONFLICT (name) DO UPDATE SET overrides = excluded.overrides,"
        " updated_at = excluded.updated_at",
        (name, dumps(current), now),
    )
    return current
