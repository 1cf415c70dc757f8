"""The package as users get it: a wheel that installs and works outside the checkout
(its migrations and schemas are package data)."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import uuid
import zipfile
from pathlib import Path

import psycopg
import pytest

from tests.services import ROOT, Services


@pytest.mark.integration
@pytest.mark.slow
def test_the_wheel_installs_outside_the_checkout_and_migrates(services: Services, tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(dist), str(ROOT)], check=True, timeout=300
    )
    wheel = next(dist.glob("gatestream-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        top = z.read(next(n for n in names if n.endswith("top_level.txt"))).decode().split()
    assert top == ["gatestream"], "one import root"
    assert {"gatestream/sql/001_schemas.sql", "gatestream/schemas/catalog.json"} <= names
    assert any(n.startswith("gatestream/sql/tsl/") for n in names)
    assert any(n.startswith("gatestream/sql/apache/") for n in names)

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    site = next(venv.glob("lib/python*/site-packages"))
    # the dependencies come from the test's own environment (a path, not a site dir: its
    # editable gatestream is not visible), gatestream itself only from the wheel
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q", "--no-deps",
         str(wheel)],
        check=True, timeout=300,
    )  # fmt: skip
    name = f"gs_wheel_{uuid.uuid4().hex[:8]}"
    admin = psycopg.conninfo.make_conninfo(services.database_url, dbname="postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("GATESTREAM_", "PYTHON"))}
        env["GATESTREAM_DATABASE_URL"] = psycopg.conninfo.make_conninfo(services.database_url, dbname=name)

        def run(*a: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [str(venv / "bin" / "gatestream"), *a],
                cwd=tmp_path,
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
            )

        where = subprocess.run(
            [str(venv / "bin" / "python"), "-c", "import gatestream.migrate as m; print(m.__file__)"],
            cwd=tmp_path, env=env, capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        assert where.startswith(str(site)), f"gatestream came from {where}, not from the wheel"
        migrated = run("db", "migrate")
        assert migrated.returncode == 0, migrated.stderr[-2000:]
        assert "008_dead_letters.sql" in migrated.stdout
        assert run("ingest", "--help").returncode == 0
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
