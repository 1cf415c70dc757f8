"""Finding pg_dump/pg_restore of the server's version, and passing connection settings to them."""

from __future__ import annotations

from pathlib import Path

import pytest

from gatestream.pg_tools import ToolError, conninfo_and_env, find_tool, run_tool


def _fake(bindir: Path, name: str, version: str) -> None:
    bindir.mkdir(exist_ok=True)
    tool = bindir / name
    tool.write_text(f"#!/bin/sh\necho '{name} (PostgreSQL) {version}'\n")
    tool.chmod(0o755)


def test_a_tool_of_the_servers_version_or_newer_is_taken(tmp_path: Path) -> None:
    _fake(tmp_path / "bin", "pg_dump", "16.4")
    assert find_tool("pg_dump", 15, tmp_path / "bin") == tmp_path / "bin" / "pg_dump"
    assert find_tool("pg_dump", 16, tmp_path / "bin") == tmp_path / "bin" / "pg_dump"


def test_an_older_or_missing_tool_is_one_line_saying_what_to_install(tmp_path: Path) -> None:
    _fake(tmp_path / "bin", "pg_dump", "14.9 (Debian 14.9-1)")
    with pytest.raises(ToolError) as old:
        find_tool("pg_dump", 15, tmp_path / "bin")
    assert "is PostgreSQL 14" in str(old.value) and "postgresql-client-15" in str(old.value)
    with pytest.raises(ToolError) as missing:
        find_tool("pg_restore", 15, tmp_path / "bin")
    assert "no pg_restore of PostgreSQL 15 or newer" in str(missing.value)
    assert "\n" not in str(old.value) + str(missing.value)


def test_the_password_travels_in_the_environment_not_on_the_command_line() -> None:
    conninfo, env = conninfo_and_env("postgresql://u:s3cret@db.example:6543/gatestream?sslmode=require", "other")
    assert "s3cret" not in conninfo and env["PGPASSWORD"] == "s3cret"
    assert "dbname=other" in conninfo and "port=6543" in conninfo and "sslmode=require" in conninfo


def test_a_failing_tool_is_reported_with_its_last_words_and_harmless_warnings_are_dropped(tmp_path: Path) -> None:
    script = tmp_path / "tool"
    script.write_text(
        "#!/bin/sh\necho 'pg_dump: warning: there are circular foreign-key constraints on this table:' >&2\n"
        "echo 'pg_dump: detail: hypertable' >&2\necho 'pg_dump: error: connection refused' >&2\nexit ${1:-0}\n"
    )
    script.chmod(0o755)
    assert run_tool([str(script), "0"], {}, "pg_dump") == ["pg_dump: error: connection refused"]
    with pytest.raises(ToolError, match=r"^pg_dump failed: .*connection refused$"):
        run_tool([str(script), "1"], {}, "pg_dump")
