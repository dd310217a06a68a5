"""Who may read the files edgejobs writes: the database holds job params and results (often
secrets), token hashes and the audit log, so it is not left readable by every local user."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from ops_support import make_app

from edgejobs.store.maintenance import backup_database


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(autouse=True)
def usual_umask() -> Iterator[None]:
    """The umask most systems give a login shell and a service: new files 0644."""
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


async def test_a_new_database_and_its_wal_and_shm_are_readable_by_their_owner_only(
    tmp_path: Path,
) -> None:
    db = tmp_path / "jobs.db"
    ej = make_app(db)
    async with ej:
        await ej.submit("quick", org="acme", params={"api_key": "s3cret"})
        # While the runner has it open: the WAL and shared-memory files exist now.
        files = [db, Path(f"{db}-wal"), Path(f"{db}-shm")]
        assert {f.name: mode(f) for f in files} == {f.name: 0o600 for f in files}


async def test_an_existing_database_keeps_the_mode_its_operator_gave_it(tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    async with make_app(db):
        pass
    db.chmod(0o640)  # shared with a reporting group on purpose
    ej = make_app(db)
    async with ej:
        await ej.submit("quick", org="acme")
        assert mode(db) == 0o640
        assert mode(Path(f"{db}-wal")) == 0o640


async def test_a_backup_gets_the_database_files_permissions(tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    ej = make_app(db)
    async with ej:
        await ej.submit("quick", org="acme", params={"api_key": "s3cret"})
        backup_database(db, tmp_path / "private.db", ej.store.pragmas)
        db.chmod(0o640)
        backup_database(db, tmp_path / "shared.db", ej.store.pragmas)
    assert mode(tmp_path / "private.db") == 0o600
    assert mode(tmp_path / "shared.db") == 0o640
