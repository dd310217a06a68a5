"""Numbered schema migrations, tracked with ``PRAGMA user_version``.

Each ``sql/NNNN_name.sql`` file is applied in its own ``BEGIN IMMEDIATE`` transaction together
with the version bump, so a crash leaves the schema at a whole version, never half of one.
"""

from __future__ import annotations

import re
import sqlite3
from importlib import resources

from edgejobs.errors import EdgeJobsError

_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


def available() -> list[tuple[int, str, str]]:
    """Every migration shipped with the package as (version, name, sql), in order."""
    found: list[tuple[int, str, str]] = []
    for entry in resources.files("edgejobs.store").joinpath("sql").iterdir():
        match = _NAME.match(entry.name)
        if match:
            found.append((int(match.group(1)), entry.name, entry.read_text(encoding="utf-8")))
    found.sort()
    for expected, (version, name, _) in enumerate(found, start=1):
        if version != expected:
            raise EdgeJobsError(f"migration {name} is out of sequence (expected {expected:04d})")
    return found


def current_version(conn: sqlite3.Connection) -> int:
    """The schema version recorded in the database file."""
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def migrate(conn: sqlite3.Connection) -> int:
    """Apply every migration newer than the file's version; return the new version."""
    migrations = available()
    latest = migrations[-1][0] if migrations else 0
    version = current_version(conn)
    if version > latest:
        raise EdgeJobsError(
            f"the database schema is version {version}, newer than this edgejobs ({latest}); "
            "upgrade edgejobs"
        )
    for number, _name, sql in migrations:
        if number <= version:
            continue
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Re-read inside the lock: another process may have migrated meanwhile.
            if current_version(conn) >= number:
                conn.execute("ROLLBACK")
                continue
            for statement in _statements(sql):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {number:d}")
            conn.execute("COMMIT")
        except BaseException:
            # SQLite rolls the transaction back itself on some errors (a full disk): a second
            # ROLLBACK would then fail and hide the error that matters.
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
    return current_version(conn)


def _statements(sql: str) -> list[str]:
    """Split a migration into statements (executescript would COMMIT our transaction)."""
    statements: list[str] = []
    buffer = ""
    for line in sql.splitlines(keepends=True):
        if not buffer and line.strip().startswith("--"):
            continue
        buffer += line
        if sqlite3.complete_statement(buffer):
            if buffer.strip():
                statements.append(buffer.strip())
            buffer = ""
    if buffer.strip():
        statements.append(buffer.strip())
    return statements
