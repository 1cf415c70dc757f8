"""The columnstore settings the policy consumer applies reach databases whose compression
job already exists: a hypertable compressed with other settings (an older release's
orderby or sparse indexes, a hand edit) is drift, and apply brings it to the settings of
``gatestream.consumers.policy.columnstore``."""

from __future__ import annotations

import json

import psycopg
import pytest

from gatestream.consumers.policy import columnstore
from gatestream.edition import Edition
from tests.conftest import Env, run_gatestream

SETTINGS = (
    "SELECT segmentby, orderby, index FROM timescaledb_information.hypertable_columnstore_settings "
    "WHERE hypertable = 'monitoring.active_windows'::regclass"
)
WANTED = ("organization_id", "users_on_computers_id,datetime DESC", "bloom(event_id)")


def settings(conn: psycopg.Connection[tuple[str, str, list[dict[str, str]]]]) -> tuple[str, str, str]:
    row = conn.execute(SETTINGS).fetchone()
    assert row is not None
    return row[0], row[1], columnstore.sparse_index_text(row[2])


@pytest.mark.parametrize("edition", [Edition.COMMUNITY], indirect=True)
def test_apply_brings_an_older_orderby_to_the_current_one(edition: Edition, edition_env: Env) -> None:
    environ = edition_env.environ()
    first = run_gatestream(environ, "policy", "apply")
    assert first.returncode == 0, first.stderr[-2000:]
    with psycopg.connect(edition_env.database_url, autocommit=True) as conn:
        assert settings(conn) == WANTED
        # as a release before this one left it: time only, TimescaleDB's own sparse indexes
        conn.execute(
            "ALTER TABLE monitoring.active_windows SET (timescaledb.orderby = 'datetime DESC', "
            "timescaledb.sparse_index = 'bloom(title)')"
        )
        assert settings(conn) == ("organization_id", "datetime DESC", "bloom(title)")
    plan = run_gatestream(environ, "policy", "plan", "--json")
    assert plan.returncode == 0, plan.stderr[-2000:]
    assert "compression:monitoring.active_windows" in json.dumps(json.loads(plan.stdout)["changes"])
    again = run_gatestream(environ, "policy", "apply")
    assert again.returncode == 0, again.stderr[-2000:]
    with psycopg.connect(edition_env.database_url, autocommit=True) as conn:
        assert settings(conn) == WANTED
    replanned = run_gatestream(environ, "policy", "plan", "--json")
    assert replanned.returncode == 0 and json.loads(replanned.stdout)["changes"] == [], replanned.stdout
