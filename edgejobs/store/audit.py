"""The operator audit log: who did what to which job, job type or token, and when.

Rows are written by :func:`record_action` inside the transaction of the action itself (a
cancel, a retry, a pause, a token creation...), so an action is never done without its entry
nor logged without being done. Only token ids are stored, never a token's secret.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from collections.abc import Mapping
from typing import Any, Protocol

from edgejobs.models import iso_ms
from edgejobs.store.db import WriteTx
from edgejobs.store.rows import dumps
from edgejobs.store.tokens import NewToken, TokenInfo, create_token, revoke_token

ACTIONS = frozenset(
    {"cancel", "retry", "pause", "resume", "override", "token_create", "token_revoke"}
)
"""The operator actions the log records."""


class Actor(Protocol):
    """Who acts: an authenticated API principal, or :data:`CLI_ACTOR`.

    ``org`` is None for a system token (all orgs). Any object with these three attributes
    fits (the HTTP layer passes its principal as it is).
    """

    @property
    def token_id(self) -> str:
        """The acting token's public id (``cli`` for the command line)."""
        ...

    @property
    def role(self) -> str:
        """``viewer``, ``operator`` or ``admin``."""
        ...

    @property
    def org(self) -> str | None:
        """The token's org; None for a system token."""
        ...


@dataclasses.dataclass(frozen=True, slots=True)
class OperatorActor:
    """A plain :class:`Actor` value."""

    token_id: str
    role: str
    org: str | None = None


CLI_ACTOR = OperatorActor(token_id="cli", role="admin", org=None)
"""The actor of command-line actions (the CLI has direct access to the database file)."""


@dataclasses.dataclass(frozen=True, slots=True)
class AuditEntry:
    """One audit log row. ``at`` is unix milliseconds."""

    id: int
    at: int
    token_id: str
    role: str
    actor_org: str | None
    org: str | None
    action: str
    target: str
    details: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """The API shape (times as ISO 8601 UTC)."""
        return {
            "id": self.id,
            "at": iso_ms(self.at),
            "token_id": self.token_id,
            "role": self.role,
            "actor_org": self.actor_org,
            "org": self.org,
            "action": self.action,
            "target": self.target,
            "details": self.details,
        }


def _text(value: object) -> str:
    # A role may arrive as a StrEnum or a plain Enum; store its API spelling.
    raw = getattr(value, "value", value)
    return str(raw)


def record_action(
    conn: sqlite3.Connection,
    tx: WriteTx,
    *,
    actor: Actor,
    action: str,
    target: str,
    org: str | None,
    now: int,
    details: Mapping[str, Any] | None = None,
) -> int:
    """Append one entry in the caller's transaction; return its id.

    ``org`` is the org the action concerns (the job's or the token's org; None for job types).
    ``details`` must not hold secrets.
    """
    if action not in ACTIONS:
        raise ValueError(f"unknown audit action {action!r}")
    row = conn.execute(
        "INSERT INTO audit_log (at, token_id, role, actor_org, org, action, target, details)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
        (
            now,
            str(actor.token_id),
            _text(actor.role),
            actor.org,
            org,
            action,
            target,
            dumps(dict(details or {})),
        ),
    ).fetchone()
    return int(row[0])


def record_job_action(
    conn: sqlite3.Connection,
    tx: WriteTx,
    actor: Actor,
    action: str,
    job: sqlite3.Row,
    now: int,
    details: Mapping[str, Any] | None = None,
) -> int:
    """:func:`record_action` for an action on a job (its ``jobs`` row): target and org are
    the job's."""
    return record_action(
        conn,
        tx,
        actor=actor,
        action=action,
        target=str(job["id"]),
        org=str(job["org"]),
        now=now,
        details=details,
    )


def create_token_audited(
    conn: sqlite3.Connection,
    tx: WriteTx,
    *,
    actor: Actor,
    org: str | None,
    role: str,
    name: str,
    now: int,
) -> NewToken:
    """:func:`~edgejobs.store.tokens.create_token` and its audit entry, in one transaction
    (the entry names the new token's id, never its secret)."""
    new = create_token(conn, tx, org=org, role=role, name=name, now=now)
    record_action(
        conn,
        tx,
        actor=actor,
        action="token_create",
        target=new.info.id,
        org=org,
        now=now,
        details={"role": role, "name": name, "system": org is None},
    )
    return new


def revoke_token_audited(
    conn: sqlite3.Connection, tx: WriteTx, *, actor: Actor, token_id: str, now: int
) -> TokenInfo:
    """:func:`~edgejobs.store.tokens.revoke_token` and its audit entry, in one transaction.

    Revoking a revoked token changes nothing, so it writes no entry (the log would show two
    revocations of one token)."""
    before = conn.execute("SELECT revoked_at FROM tokens WHERE id = ?", (token_id,)).fetchone()
    info = revoke_token(conn, tx, token_id=token_id, now=now)
    if before is not None and before["revoked_at"] is not None:
        return info
    record_action(
        conn, tx, actor=actor, action="token_revoke", target=info.id, org=info.org, now=now
    )
    return info


def _entry(row: sqlite3.Row) -> AuditEntry:
    return AuditEntry(
        id=row["id"],
        at=row["at"],
        token_id=row["token_id"],
        role=row["role"],
        actor_org=row["actor_org"],
        org=row["org"],
        action=row["action"],
        target=row["target"],
        details=json.loads(row["details"]),
    )


def list_entries(
    conn: sqlite3.Connection, *, org: str | None, limit: int, before_id: int | None = None
) -> tuple[list[AuditEntry], int | None]:
    """A page of entries, newest first, and the id to continue before (None: last page).

    ``org`` None lists every entry (system callers only); otherwise only that org's entries.
    """
    conditions: list[str] = []
    params: dict[str, object] = {"limit": limit + 1}
    if org is not None:
        conditions.append("org = :org")
        params["org"] = org
    if before_id is not None:
        conditions.append("id < :before")
        params["before"] = before_id
    where = " AND ".join(conditions) if conditions else "1"
    sql = "SELECT * FROM audit_log WHERE " + where + " ORDER BY id DESC LIMIT :limit"  # noqa: S608 - constant fragments only
    rows = conn.execute(sql, params).fetchall()
    entries = [_entry(row) for row in rows[:limit]]
    more = len(rows) > limit
    return entries, (entries[-1].id if more and entries else None)


def delete_old_entries(conn: sqlite3.Connection, tx: WriteTx, *, cutoff_ms: int, batch: int) -> int:
    """Delete up to ``batch`` entries older than ``cutoff_ms``; return how many."""
    return conn.execute(
        "DELETE FROM audit_log WHERE id IN"
        " (SELECT id FROM audit_log WHERE at < ? ORDER BY at LIMIT ?)",
        (cutoff_ms, batch),
    ).rowcount
