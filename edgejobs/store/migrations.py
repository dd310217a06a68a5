"""Numbered schema migrations, tracked with ``PRAGMA user_version``.

Each ``sql/NNNN_name.sql`` file is applied in its own ``BEGIN IMMEDIATE`` transaction together
with the version bump, so a crash leaves the schema at a whole version, never half of one.
"""

from __future__ import annotations

import functools
import re
import sqlite3
from importlib import resources

from edgejobs.errors import EdgeJobsError, SchemaTooNew

_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


@functools.cache
def available() -> tuple[tuple[int, str, str], ...]:
    """Every migration shipped with the package as (version, name, sql), in order.

    Read once per process: every open asks for the newest version (:func:`latest_version`)
    and then migrates, and the shipped files do not change under a running process.
    """
    found: list[tuple[int, str, str]] = []
    for entry in resources.files("edgejobs.store").joinpath("sql").iterdir():
        match = _NAME.match(entry.name)
        if match:
            found.append((int(match.group(1)), entry.name, entry.read_text(encoding="utf-8")))
    found.sort()
    for expected, (version, name, _) in enumerate(found, start=1):
        if version != expected:
            raise EdgeJobsError(f"migration {name} is out of sequence (expected {expected:04d})")
    return tuple(found)


def current_version(conn: sqlite3.Connection) -> int:
    """The schema version recorded in the database file."""
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def latest_version() -> int:
    """The schema version this edgejobs migrates files to."""
    shipped = available()
    return shipped[-1][0] if shipped else 0


def migrate(conn: sqlite3.Connection) -> int:
    """Apply every migration newer than the file's version; return the new version."""
    migrations = available()
    latest = migrations[-1][0] if migrations else 0
    version = current_version(conn)
    if version > latest:
        raise SchemaTooNew(
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
    _complete_first_jobs_table(conn)
    return current_version(conn)


def _complete_first_jobs_table(conn: sqlite3.Connection) -> None:
    """Give a ``jobs`` table created by the first ``0001`` what the current one has.

    ``0001`` was changed after databases had been created with it: ``has_dependents`` was
    added and the ``(org, status, seq)`` index dropped. Those databases carry on at the same
    version numbers, so no numbered migration can tell them apart, and without the column
    every completion, submission with parents and event read fails. Adding it takes its
    value from ``job_deps``: a job is a parent exactly when some row names it. Idempotent
    and checked on every open (one PRAGMA), inside the write lock like a migration.
    """
    if not _lacks_has_dependents(conn):
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        if _lacks_has_dependents(conn):  # another process may have added it meanwhile
            conn.execute("ALTER TABLE jobs ADD COLUMN has_dependents INTEGER NOT NULL DEFAULT 0")
            conn.execute(
                "UPDATE jobs SET has_dependents = 1 WHERE seq IN (SELECT parent_seq FROM job_deps)"
            )
            conn.execute("DROP INDEX IF EXISTS jobs_org_status")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _lacks_has_dependents(conn: sqlite3.Connection) -> bool:
    columns = {row[1] for row in conn.execute("PRAGMA table_info(jobs)")}
    return bool(columns) and "has_dependents" not in columns


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
