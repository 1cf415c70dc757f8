"""PostgreSQL's client programs (pg_dump, pg_restore) for a given server, and how to run them.

A dump must be taken by a pg_dump at least as new as the server (pg_dump refuses a newer
server). The programs are looked for in ``--pg-bindir`` when given, else in
``pg_config --bindir`` and on PATH (Debian's ``/usr/bin/pg_dump`` is a wrapper that runs the
newest installed version). Whatever is found is checked with ``--version``; a missing or
too-old program is one line saying what to install.

Connection settings go to the programs as a conninfo string without the password (which
would show in ``ps``): the password travels in PGPASSWORD.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import psycopg

_VERSION = re.compile(r"\(PostgreSQL\) (\d+)")


class ToolError(Exception):
    """A client program is missing, too old, or failed (one line, its own words)."""


def _candidates(name: str) -> list[Path]:
    found: list[Path] = []
    if shutil.which("pg_config"):
        done = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, timeout=30, check=False)
        if done.returncode == 0 and done.stdout.strip():
            found.append(Path(done.stdout.strip()) / name)
    on_path = shutil.which(name)
    if on_path:
        found.append(Path(on_path))
    return found


def tool_major(path: Path) -> int | None:
    """The PostgreSQL major version of a client program (``pg_dump (PostgreSQL) 15.18``)."""
    try:
        done = subprocess.run([str(path), "--version"], capture_output=True, text=True, timeout=30, check=False)
    except OSError:
        return None
    m = _VERSION.search(done.stdout)
    return int(m.group(1)) if m else None


def find_tool(name: str, server_major: int, bindir: Path | None = None) -> Path:
    """``name`` (pg_dump, pg_restore) of the server's major version, or a newer one; ToolError
    saying what was found and what to install otherwise. ``bindir``: look only there."""
    seen: list[str] = []
    for path in [bindir / name] if bindir else _candidates(name):
        if not path.exists():
            continue
        major = tool_major(path)
        if major is not None and major >= server_major:
            return path
        seen.append(f"{path} is PostgreSQL {major if major is not None else '?'}")
    where = f" in {bindir}" if bindir else ""
    found = f" ({'; '.join(seen)})" if seen else ""
    raise ToolError(
        f"no {name} of PostgreSQL {server_major} or newer found{where}{found}: install "
        f"postgresql-client-{server_major} (the server runs PostgreSQL {server_major})"
    )


def server_major(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT current_setting('server_version_num')::int / 10000").fetchone()
    assert row is not None
    return int(row[0])


def conninfo_and_env(url: str, dbname: str | None = None) -> tuple[str, dict[str, str]]:
    """The conninfo to pass with ``--dbname`` (password removed, database replaced when
    given) and the environment to run the program in (PGPASSWORD when the URL had one)."""
    params = psycopg.conninfo.conninfo_to_dict(url)
    password = params.pop("password", None)
    if dbname is not None:
        params["dbname"] = dbname
    env = dict(os.environ)
    if password:
        env["PGPASSWORD"] = str(password)
    return psycopg.conninfo.make_conninfo(**{k: str(v) for k, v in params.items() if v is not None}), env


# pg_dump's warnings that TimescaleDB's documentation says to ignore: its catalog tables
# reference each other, which pg_dump notes for each of them.
_HARMLESS = ("circular foreign-key constraints", "consider using a full dump instead of a --data-only",
             "you might not be able to restore the dump without using --disable-triggers")  # fmt: skip


def run_tool(argv: list[str], env: dict[str, str], what: str, *, stdout: bool = False) -> list[str]:
    """Run a client program; its noteworthy stderr lines (harmless warnings dropped), or its
    output lines with ``stdout``, on success; ToolError with the last of them on failure."""
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    lines = [ln for ln in done.stderr.splitlines() if ln.strip() and not any(h in ln for h in _HARMLESS)]
    if done.returncode != 0:
        tail = " | ".join(lines[-3:]) or f"exit code {done.returncode}"
        raise ToolError(f"{what} failed: {tail}")
    if stdout:
        return done.stdout.splitlines()
    # pg_dump names the circular tables on "detail"/"hint" lines after the warning
    return [ln for ln in lines if not ln.lstrip().startswith(("pg_dump: detail:", "pg_dump: hint:"))]
