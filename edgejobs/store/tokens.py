"""API tokens and dashboard sessions: creation, lookup by secret, revocation.

A token secret is ``ej_`` followed by 256 random bits (``secrets.token_urlsafe(32)``); only
its SHA-256 is stored. A fast, unsalted hash is the right tool here: salts and slow hashes
(bcrypt, scrypt, argon2) protect *guessable* passwords against offline guessing, but nobody
can enumerate 2**256 random secrets, and a fast hash lets every request be checked by one
indexed lookup instead of a deliberate 100 ms of CPU. Session ids get the same treatment.

Lookups go by hash (the UNIQUE index) and the stored hash is then compared again with
:func:`hmac.compare_digest`, so no comparison in Python leaks timing about a stored secret.

Creating and revoking a token are one function each (:func:`create_token`,
:func:`revoke_token`), so an audit row can be written in the same transaction.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import secrets
import sqlite3

from edgejobs.errors import NotFound, ValidationError
from edgejobs.store.db import WriteTx

ROLES: tuple[str, ...] = ("viewer", "operator", "admin")
"""Roles from least to most privileged; each includes the rights of the ones before it."""

SECRET_PREFIX = "ej_"
"""Every token secret starts with this, so leaked secrets are easy to recognise and scan for."""

_MAX_SECRET_LEN = 256

MAX_SESSIONS_PER_TOKEN = 50
"""The most live dashboard sessions one token holds: a new login beyond it ends the oldest
(so a browser that signs in again keeps working), and no token, even a viewer's, can grow
the database by logging in again and again."""


@dataclasses.dataclass(frozen=True, slots=True)
class TokenInfo:
    """A stored token without its secret. ``org`` None is a system token (every org)."""

    id: str
    org: str | None
    role: str
    name: str
    created_at: int
    revoked_at: int | None

    @property
    def active(self) -> bool:
        """Whether the token has not been revoked."""
        return self.revoked_at is None


@dataclasses.dataclass(frozen=True, slots=True)
class NewToken:
    """A freshly created token: the only time its secret exists outside the caller's hands."""

    info: TokenInfo
    secret: str


@dataclasses.dataclass(frozen=True, slots=True)
class NewSession:
    """A freshly created dashboard session (the cookie value and its CSRF token)."""

    session_id: str
    csrf_token: str
    expires_at: int


def hash_secret(secret: str) -> str:
    """Hex SHA-256 of a token secret or session id (see the module docstring for why)."""
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def _info(row: sqlite3.Row) -> TokenInfo:
    return TokenInfo(
        id=row["id"],
        org=row["org"],
        role=row["role"],
        name=row["name"],
        created_at=row["created_at"],
        revoked_at=row["revoked_at"],
    )


def create_token(
    conn: sqlite3.Connection,
    tx: WriteTx,
    *,
    org: str | None,
    role: str,
    name: str,
    now: int,
) -> NewToken:
    """Create a token of ``org`` (None: a system token) with ``role``; return its secret once."""
    if role not in ROLES:
        raise ValidationError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    token_id = "tok_" + secrets.token_hex(8)
    secret = SECRET_PREFIX + secrets.token_urlsafe(32)
    row = conn.execute(
        "INSERT INTO tokens (id, secret_hash, org, role, name, created_at)"
        " VALUES (?, ?, ?, ?, ?, ?) RETURNING *",
        (token_id, hash_secret(secret), org, role, name, now),
    ).fetchone()
    return NewToken(_info(row), secret)


def revoke_token(conn: sqlite3.Connection, tx: WriteTx, *, token_id: str, now: int) -> TokenInfo:
    """Revoke a token and end its sessions at once (revoking twice keeps the first time)."""
    row = conn.execute(
        "UPDATE tokens SET revoked_at = coalesce(revoked_at, ?) WHERE id = ? RETURNING *",
        (now, token_id),
    ).fetchone()
    if row is None:
        raise NotFound(f"no token {token_id}")
    conn.execute("DELETE FROM sessions WHERE token_id = ?", (token_id,))
    return _info(row)


def list_tokens(conn: sqlite3.Connection) -> list[TokenInfo]:
    """Every token, oldest first (never a secret: only hashes are stored)."""
    return [_info(row) for row in conn.execute("SELECT * FROM tokens ORDER BY created_at, id")]


def lookup_secret(conn: sqlite3.Connection, secret: str) -> TokenInfo | None:
    """The active token whose secret this is, or None."""
    if not secret.startswith(SECRET_PREFIX) or len(secret) > _MAX_SECRET_LEN:
        return None
    digest = hash_secret(secret)
    row = conn.execute(
        "SELECT * FROM tokens WHERE secret_hash = ? AND revoked_at IS NULL", (digest,)
    ).fetchone()
    if row is None or not hmac.compare_digest(row["secret_hash"], digest):
        return None
    return _info(row)


def is_active(conn: sqlite3.Connection, token_id: str) -> bool:
    """Whether the token exists and has not been revoked (long-lived streams re-check this)."""
    row = conn.execute(
        "SELECT 1 FROM tokens WHERE id = ? AND revoked_at IS NULL", (token_id,)
    ).fetchone()
    return row is not None


def delete_expired_sessions(conn: sqlite3.Connection, tx: WriteTx, *, now: int) -> int:
    """Delete the sessions that have expired by ``now``; returns how many."""
    return conn.execute("DELETE FROM sessions WHERE expires_at <= ?", (now,)).rowcount


def create_session(
    conn: sqlite3.Connection, tx: WriteTx, *, token_id: str, ttl_ms: int, now: int
) -> NewSession:
    """Start a dashboard session bound to an active token. Expired sessions are swept here,
    and the token's oldest ones beyond :data:`MAX_SESSIONS_PER_TOKEN` are ended."""
    delete_expired_sessions(conn, tx, now=now)
    if not is_active(conn, token_id):
        raise NotFound(f"no active token {token_id}")
    # Room is made before the insert, so the new session is never the one ended (logins in
    # the same millisecond share created_at). The token's sessions are read by their index.
    conn.execute(
        "DELETE FROM sessions WHERE id_hash IN (SELECT id_hash FROM sessions WHERE token_id = ?"
        " ORDER BY created_at DESC, expires_at DESC LIMIT -1 OFFSET ?)",
        (token_id, MAX_SESSIONS_PER_TOKEN - 1),
    )
    session_id = secrets.token_urlsafe(32)
    csrf_token = secrets.token_urlsafe(32)
    expires_at = now + ttl_ms
    conn.execute(
        "INSERT INTO sessions (id_hash, token_id, csrf_token, created_at, expires_at)"
        " VALUES (?, ?, ?, ?, ?)",
        (hash_secret(session_id), token_id, csrf_token, now, expires_at),
    )
    return NewSession(session_id, csrf_token, expires_at)


def lookup_session(
    conn: sqlite3.Connection, session_id: str, now: int
) -> tuple[TokenInfo, str] | None:
    """The token and CSRF token of a live session (its token still active), or None."""
    if len(session_id) > _MAX_SECRET_LEN:
        return None
    digest = hash_secret(session_id)
    row = conn.execute(
        "SELECT t.*, s.id_hash AS session_hash, s.csrf_token FROM sessions s"
        " JOIN tokens t ON t.id = s.token_id"
        " WHERE s.id_hash = ? AND s.expires_at > ? AND t.revoked_at IS NULL",
        (digest, now),
    ).fetchone()
    if row is None or not hmac.compare_digest(row["session_hash"], digest):
        return None
    return _info(row), row["csrf_token"]


def delete_session(conn: sqlite3.Connection, tx: WriteTx, *, session_id: str) -> bool:
    """End a session; False when there was none."""
    cursor = conn.execute("DELETE FROM sessions WHERE id_hash = ?", (hash_secret(session_id),))
    return cursor.rowcount > 0
