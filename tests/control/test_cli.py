"""``edgejobs types``, ``schedules list`` and ``audit`` (SPEC §5), run in-process on a
config file and its database (as a client: no runner needed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from control_support import query

from edgejobs.cli import main

CONFIG = """
[database]
path = "jobs.db"

[[job_types]]
name = "reports.build"
handler = "json:dumps"
timeout_s = 120
concurrency = 4

[[job_types]]
name = "mail.send"
handler = "json:dumps"

[[schedules]]
name = "nightly"
cron = "0 2 * * *"
timezone = "Europe/Berlin"
job_type = "reports.build"
org = "acme"
params = { month = "current" }

[[schedules]]
name = "digest"
cron = "0 8 * * 1"
job_type = "mail.send"
org = "globex"
"""


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "edgejobs.toml"
    path.write_text(CONFIG, encoding="utf-8")
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as exc:  # argparse's usage errors
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def test_types_pause_resume_set_and_list(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = str(config)
    assert run(capsys, "types", "pause", "reports.build", "--config", cfg)[0] == 0
    code, out, _ = run(capsys, "--config", cfg, "types", "set", "reports.build",
                       "concurrency=1", "rate_limit=10/minute", "priority=high")  # fmt: skip
    assert code == 0 and "1*" in out and "10/minute*" in out

    code, out, _ = run(capsys, "types", "list", "--json", "--config", cfg)
    listed = {item["name"]: item for item in json.loads(out)}
    assert listed["reports.build"]["paused"] is True
    assert listed["reports.build"]["overrides"] == {
        "concurrency": 1,
        "priority": "high",
        "rate_limit": "10/minute",
    }
    assert listed["reports.build"]["policy"]["timeout_s"] == 120
    assert listed["mail.send"]["paused"] is False

    assert run(capsys, "types", "set", "reports.build", "concurrency=null", "--config", cfg)[0] == 0
    assert run(capsys, "types", "resume", "reports.build", "--config", cfg)[0] == 0
    code, out, _ = run(capsys, "types", "list", "--config", cfg)
    assert code == 0
    line = next(row for row in out.splitlines() if row.startswith("reports.build"))
    assert line.split()[1:4] == ["no", "120.0", "3"] and " 4 " in line

    db = config.parent / "jobs.db"
    assert query(db, "SELECT paused, overrides FROM job_types WHERE name = 'reports.build'") == [
        (0, '{"priority":"high","rate_limit":"10/minute"}')
    ]


def test_types_errors(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = str(config)
    code, _, err = run(capsys, "types", "pause", "nope", "--config", cfg)
    assert code == 1 and "no job type 'nope'" in err
    # Bad overrides are usage errors (exit 2, SPEC §5), like a malformed pair.
    for pair, needle in [
        ("timeout_s=-1", "timeout_s"),
        ("concurrency=0", "concurrency"),
        ("bogus=1", "bogus"),
        ("concurrency", "KEY=VALUE"),
    ]:
        code, _, err = run(capsys, "types", "set", "reports.build", pair, "--config", cfg)
        assert code == 2 and needle in err and "Traceback" not in err, (pair, code, err)
    code, _, err = run(capsys, "audit", "--limit", "0", "--config", cfg)
    assert code == 2 and "--limit" in err


def test_audit_lists_cli_actions(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = str(config)
    run(capsys, "types", "pause", "mail.send", "--config", cfg)
    run(capsys, "types", "resume", "mail.send", "--config", cfg)
    run(capsys, "types", "set", "mail.send", "timeout_s=2.5", "--config", cfg)
    code, out, _ = run(capsys, "audit", "--json", "--config", cfg)
    assert code == 0
    entries = json.loads(out)
    assert [(e["action"], e["token_id"], e["role"]) for e in entries] == [
        ("override", "cli", "admin"),
        ("resume", "cli", "admin"),
        ("pause", "cli", "admin"),
    ]
    assert entries[0]["details"] == {"changes": {"timeout_s": 2.5}}
    code, out, _ = run(capsys, "audit", "--limit", "1", "--config", cfg)
    assert code == 0 and len(out.strip().splitlines()) == 2 and "override" in out


def test_schedules_list(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "schedules", "list", "--json", "--config", str(config))
    assert code == 0
    items = json.loads(out)
    assert [item["name"] for item in items] == ["digest", "nightly"]
    nightly = items[1]
    assert nightly["timezone"] == "Europe/Berlin" and nightly["last_run_at"] is None
    assert nightly["next_run_at"] is not None and nightly["params"] == {"month": "current"}
    code, out, _ = run(capsys, "schedules", "list", "--org", "acme", "--config", str(config))
    assert code == 0 and "nightly" in out and "digest" not in out and "never" in out


def test_listings_of_a_missing_database_answer_from_the_config_and_create_no_file(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Pointed at a folder without a database, the listings must not leave an empty one
    behind; the changing commands still create it, and then the listings read it alike."""
    cfg = str(config)
    db = config.parent / "jobs.db"
    listings = [("types", "list", "--json"), ("types", "list"), ("schedules", "list", "--json"),
                ("schedules", "list", "--org", "acme")]  # fmt: skip
    before = [run(capsys, *listing, "--config", cfg) for listing in listings]
    assert all(code == 0 and not err for code, _, err in before), before
    assert not db.exists() and list(config.parent.iterdir()) == [config]
    assert "reports.build" in before[1][1] and "nightly" in before[3][1]

    assert run(capsys, "types", "pause", "mail.send", "--config", cfg)[0] == 0
    assert run(capsys, "types", "resume", "mail.send", "--config", cfg)[0] == 0
    assert db.exists()
    assert [run(capsys, *listing, "--config", cfg) for listing in listings] == before


def test_token_create_and_revoke_are_audited_without_the_secret(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = str(config)
    code, out, _ = run(
        capsys, "token", "create", "--org", "acme", "--role", "admin", "--config", cfg
    )
    assert code == 0
    secret = out.strip().splitlines()[-1]
    code, out, _ = run(capsys, "token", "list", "--json", "--config", cfg)
    token_id = json.loads(out)[0]["id"]
    assert run(capsys, "token", "revoke", token_id, "--config", cfg)[0] == 0

    code, out, _ = run(capsys, "audit", "--json", "--config", cfg)
    entries = json.loads(out)
    assert [(e["action"], e["target"], e["token_id"], e["org"]) for e in entries] == [
        ("token_revoke", token_id, "cli", "acme"),
        ("token_create", token_id, "cli", "acme"),
    ]
    assert entries[1]["details"] == {"name": "", "role": "admin", "system": False}
    dump = "".join(str(row) for row in query(config.parent / "jobs.db", "SELECT * FROM audit_log"))
    assert secret.startswith("ej_") and secret not in dump
