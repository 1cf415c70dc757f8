"""gatestream import / import verify against real databases: a legacy table in a second database
on the same server, copied into a fresh migrated database's hypertable."""

from __future__ import annotations

import os
import signal
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from gatestream.cli import main
from gatestream.legacy.mapping import event_id_of
from tests.conftest import gatestream_cmd
from tests.helpers import wait_for
from tests.services import ROOT, Services

ROWS = 20_000
# The product's table as a Prisma model makes it: timestamp(3) without time zone (UTC), its own column names.
LEGACY_TABLE = """
CREATE TABLE app.active_window (
    id SERIAL PRIMARY KEY,
    organization_id INT NOT NULL,
    user_on_computer_id INT NOT NULL,
    datetime TIMESTAMP(3) NOT NULL,
    title VARCHAR(500),
    process_name TEXT,
    icon TEXT,
    active_time SMALLINT,
    created_at TIMESTAMP(3) DEFAULT now()
);
INSERT INTO app.active_window (organization_id, user_on_computer_id, datetime, title, process_name, active_time)
SELECT 1 + g % 3, 1 + g % 40,
       date_trunc('day', now() AT TIME ZONE 'UTC') - interval '3 days' + g * interval '15 seconds',
       'Window ' || g || CASE WHEN g % 7 = 0 THEN ' — ünïcode, "quoted", (parens)' ELSE '' END,
       CASE WHEN g % 5 = 0 THEN NULL ELSE 'proc' || g % 11 || '.exe' END, g % 600
  FROM generate_series(1, %s) g;
"""
MAPPING = """
[source]
table = "app.active_window"
[target]
table = "active_windows"
[columns]
users_on_computers_id = "user_on_computer_id"
"""


@pytest.fixture
def legacy_url(services: Services) -> Iterator[str]:
    """A second, plain database on the same server: the legacy application's."""
    name = f"gs_legacy_{uuid.uuid4().hex[:10]}"
    admin = psycopg.conninfo.make_conninfo(services.database_url, dbname="postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')  # name is ours, not input
    url = psycopg.conninfo.make_conninfo(services.database_url, dbname=name)
    with psycopg.connect(url) as conn:
        conn.execute("CREATE SCHEMA app")
        conn.execute(LEGACY_TABLE.replace("%s", str(ROWS)))
    yield url
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _environ(db_url: str, legacy_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATESTREAM_")}
    env.update(GATESTREAM_DATABASE_URL=db_url, GATESTREAM_IMPORT_SOURCE_URL=legacy_url, GATESTREAM_LOG_FORMAT="json")
    return env


def _run(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], environ: dict[str, str], *args: str
) -> tuple[int, str, str]:
    """``gatestream <args>`` in this process (a start of Python costs seconds on a loaded machine)."""
    for k, v in environ.items():
        if k.startswith("GATESTREAM_"):
            monkeypatch.setenv(k, v)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(list(args))
    out, err = capsys.readouterr()
    return int(exc.value.code or 0), out, err


def _checkpoint(db_url: str) -> tuple[int | None, int]:
    with psycopg.connect(db_url) as conn:
        row = conn.execute("SELECT last_pk, rows_inserted FROM gatestream.import_checkpoints").fetchone()
    return (None, 0) if row is None else (row[0], int(row[1]))


def _target_ids(db_url: str) -> list[uuid.UUID]:
    with psycopg.connect(db_url) as conn:
        return [r[0] for r in conn.execute("SELECT event_id FROM monitoring.active_windows").fetchall()]


def test_an_import_killed_midway_resumes_to_exactly_the_legacy_rows_and_verify_finds_a_changed_row(
    db_url: str, legacy_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    mapping = tmp_path / "active_windows.toml"
    mapping.write_text(MAPPING)
    environ = _environ(db_url, legacy_url)
    args = ("import", "--mapping", str(mapping), "--no-progress")

    # 1. killed -9 in the middle of its batches
    proc = subprocess.Popen(
        gatestream_cmd(*args, "--batch-rows", "1000", "--pause", "0.2"),
        env=environ, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        assert wait_for(lambda: (_checkpoint(db_url)[0] or 0) >= 4000, timeout=60), "no checkpoint past id 4000"
        # while it runs, a second run of the same import is refused (their checkpoints would interleave)
        code, _, err = _run(monkeypatch, capsys, environ, *args)
        assert code == 2 and "another import of app.active_window -> monitoring.active_windows" in err, err
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    last_pk, inserted = _checkpoint(db_url)
    assert last_pk is not None and 4000 <= last_pk < ROWS, f"killed too late to prove a resume: at id {last_pk}"
    # the rows and the checkpoint committed together: exactly the legacy rows up to the checkpoint, each once
    ids = _target_ids(db_url)
    assert sorted(ids) == sorted(event_id_of("app.active_window", pk) for pk in range(1, last_pk + 1))
    assert inserted == last_pk

    # 2. run again: resumes after the checkpoint and copies only the rest
    code, out, err = _run(monkeypatch, capsys, environ, *args, "--batch-rows", "3000")
    assert code == 0, err
    assert f"resuming after id {last_pk}" in err
    assert f"read {ROWS - last_pk}, inserted {ROWS - last_pk}, already there 0, rejected 0" in out
    assert sorted(_target_ids(db_url)) == sorted(event_id_of("app.active_window", pk) for pk in range(1, ROWS + 1))

    # 3. verify: every organization-day matches (counts and row text, timestamp(3) read as UTC, varchar into text)
    code, out, _ = _run(monkeypatch, capsys, environ, "import", "verify", "--mapping", str(mapping))
    assert code == 0, out
    assert f"all 12 organization-days match: {ROWS} rows" in out  # 3 organizations x 4 UTC days

    # 4. idempotent: from the start again, nothing is added
    code, out, err = _run(monkeypatch, capsys, environ, *args, "--restart")
    assert code == 0, err
    assert f"read {ROWS}, inserted 0, already there {ROWS}, rejected 0" in out
    assert len(_target_ids(db_url)) == ROWS

    # 5. a deliberate difference on each side: verify names exactly those days, and fails
    with psycopg.connect(db_url) as conn:
        changed = conn.execute(
            """UPDATE monitoring.active_windows SET title = title || '!' WHERE event_id = %s
               RETURNING organization_id, (datetime AT TIME ZONE 'UTC')::date""",
            (event_id_of("app.active_window", 100),),
        ).fetchone()
    with psycopg.connect(legacy_url) as conn:
        deleted = conn.execute(
            "DELETE FROM app.active_window WHERE id = 15000 RETURNING organization_id, datetime::date"
        ).fetchone()
    assert changed and deleted
    code, out, _ = _run(monkeypatch, capsys, environ, "import", "verify", "--mapping", str(mapping))
    assert code == 1
    lines = out.splitlines()
    assert f"organization {changed[0]} day {changed[1]}: 1920 rows each, contents differ" in lines, out
    assert any(line.startswith(f"organization {deleted[0]} day {deleted[1]}: source ") for line in lines), out
    assert "2 of 12 organization-days differ" in out


# Each case: flags added to a working command line, and what the one line says.
BAD_SETUPS = [
    (["--source-table", "app.nope", "--target", "active_windows"], "source table app.nope does not exist"),
    (["--source-table", "app.active_window", "--target", "nope"], "target table monitoring.nope does not exist"),
    (["--column", "nope=id"], "target column 'nope', which monitoring.active_windows does not have"),
    (["--column", "icon=nope"], "source column 'nope', which app.active_window does not have"),
    (["--column", "active_time=title"], "type mismatch: source column title is character varying(500), target"),
    (["--primary-key", "title"], "primary key title is character varying(500); the import pages on an integer"),
    (["--primary-key", "organization_id"], "organization_id is not the primary key (nor unique)"),
    (["--source-timezone", "Mars/Olympus"], "unknown time zone 'Mars/Olympus'"),
    (["--source-url", "postgresql://postgres@127.0.0.1:1/x"], "legacy database: the database at 127.0.0.1:1/x"),
]


def test_a_mapping_or_source_that_cannot_work_exits_2_with_one_line(
    db_url: str, legacy_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """One test for all cases (a database pair per case would cost seconds each)."""
    base = ["--source-table", "app.active_window", "--target", "active_windows", "--column",
            "users_on_computers_id=user_on_computer_id"]  # fmt: skip
    environ = _environ(db_url, legacy_url)
    for flags, says in BAD_SETUPS:
        for action in ([], ["verify"]):
            code, out, err = _run(monkeypatch, capsys, environ, "import", *action, *base, *flags)
            assert code == 2 and says in err, (flags, err)
            assert len(err.strip().splitlines()) == 1 and not out, (flags, err)
    assert _checkpoint(db_url) == (None, 0)  # nothing started
    code, out, err = _run(monkeypatch, capsys, environ, "import", "verify", *base)  # the base itself works
    assert code == 1 and "12 of 12 organization-days differ" in out, err  # (nothing imported yet)

    # a legacy row the hypertable refuses is recorded with its reason, not lost, and verify shows its day
    with psycopg.connect(legacy_url) as conn:
        conn.execute("UPDATE app.active_window SET active_time = -1 WHERE id = 5")
    code, out, err = _run(monkeypatch, capsys, environ, "import", *base, "--no-progress")
    assert code == 0 and f"read {ROWS}, inserted {ROWS - 1}, already there 0, rejected 1" in out, err
    with psycopg.connect(db_url) as conn:
        rejects = conn.execute("SELECT pk, reason, detail FROM gatestream.import_rejects").fetchall()
    assert len(rejects) == 1 and rejects[0][:2] == (5, "rejected-by-database"), rejects
    assert "active_windows_active_time_check" in rejects[0][2]
    code, out, err = _run(monkeypatch, capsys, environ, "import", "verify", *base)
    assert code == 1 and "source 1920 rows, target 1919 rows" in out and "1 of 12 organization-days differ" in out
    assert "1 source rows were refused at import" in out
