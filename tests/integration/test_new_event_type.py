"""A new event type takes its schema, its catalog entry and its migration, nothing else:
its topic, table mapping, metrics labels and the commands' ``--types`` follow from the
catalog. Proven with a type that exists only in this test."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import psycopg
import pytest
from prometheus_client import REGISTRY

from gatestream.migrate import SQL_DIR, migrate
from gatestream.schemas.catalog import DEFAULT_DIR
from gatestream.settings import ProducerSettings
from gatestream.topics import delete_topics
from tests.conftest import Env, read_topic, run_gatestream
from tests.helpers import start_ingest_thread

pytestmark = pytest.mark.integration

TYPE = "test_door_events"
SCHEMA = {
    "type": "record",
    "name": "DoorEvent",
    "namespace": "io.gatestream.test",
    "doc": "A badge reader opened (or refused to open) a door.",
    "fields": [
        {"name": "event_id", "type": {"type": "string", "logicalType": "uuid"}},
        {"name": "organization_id", "type": "int"},
        {"name": "door_id", "type": "string"},
        {"name": "opened_at", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "granted", "type": "boolean"},
        {"name": "badge", "type": ["null", "string"], "default": None},
    ],
}
MIGRATION = """
CREATE TABLE IF NOT EXISTS monitoring.test_door_events (
    event_id        uuid        NOT NULL,
    organization_id integer     NOT NULL,
    door_id         text        NOT NULL,
    opened_at       timestamptz NOT NULL,
    granted         boolean     NOT NULL,
    badge           text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (event_id, opened_at)
);
SELECT create_hypertable('monitoring.test_door_events', 'opened_at', chunk_time_interval => INTERVAL '1 day',
                         if_not_exists => TRUE);
INSERT INTO gatestream.retention_resources (resource_type, hypertable)
VALUES ('test_door_events', 'monitoring.test_door_events') ON CONFLICT DO NOTHING;
"""


def _add_the_type(tmp_path: Path) -> tuple[Path, Path]:
    """What a developer adds: the schema file and catalog entry, and the migration."""
    schemas = tmp_path / "schemas"
    shutil.copytree(DEFAULT_DIR, schemas, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    (schemas / f"{TYPE}.v1.avsc").write_text(json.dumps(SCHEMA, indent=2))
    index = json.loads((schemas / "catalog.json").read_text())
    index["event_types"][TYPE] = {"table": "monitoring.test_door_events", "key": "door_id"}
    index["schemas"].append({"id": 9001, "event_type": TYPE, "version": 1, "file": f"{TYPE}.v1.avsc"})
    (schemas / "catalog.json").write_text(json.dumps(index, indent=2))
    sql_dir = tmp_path / "sql"
    shutil.copytree(SQL_DIR, sql_dir, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    (sql_dir / f"100_{TYPE}.sql").write_text(MIGRATION)
    return schemas, sql_dir


def _sample(name: str, labels: dict[str, str]) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.mark.slow
def test_a_new_event_type_needs_only_its_schema_catalog_entry_and_migration(env: Env, tmp_path: Path) -> None:
    schemas, sql_dir = _add_the_type(tmp_path)
    assert f"100_{TYPE}.sql" in migrate(env.database_url, sql_dir), "the same checksummed runner applies it"
    assert migrate(env.database_url, sql_dir) == [], "and only once"
    environ = env.environ(schema_dir=schemas)
    topic = f"{env.prefix}{TYPE}"

    # The commands know the type from the catalog: help, topics, produce (a generator from the schema).
    helped = run_gatestream(environ, "produce", "--help")
    assert TYPE in helped.stdout, helped.stdout
    made = run_gatestream(environ, "topics", "ensure")
    assert made.returncode == 0 and topic in made.stdout, made.stdout + made.stderr
    produced = run_gatestream(
        environ, "produce", "--types", TYPE, "--count", "300", "--spool-path", str(tmp_path / "spool.sqlite3")
    )
    assert produced.returncode == 0, produced.stderr
    assert json.loads(produced.stdout.splitlines()[-1])["delivered"] == 300

    # Keyed by the catalog's key field: one door's events share a key and a partition.
    msgs = read_topic(env.services.bootstrap_servers, topic, 300)
    assert len(msgs) == 300
    partitions_of: dict[bytes, set[int]] = {}
    for m in msgs:
        partitions_of.setdefault(m.key(), set()).add(m.partition())
    assert all(len(p) == 1 for p in partitions_of.values())

    # Ingest routes it to the catalog's table; the metrics carry its topic and table.
    table = {"hypertable": "monitoring.test_door_events"}
    consumed_before = _sample("gatestream_ingest_events_consumed_total", {"topic": topic})
    inserted_before = _sample("gatestream_ingest_rows_inserted_total", table)
    ing, t = start_ingest_thread(env.ingest(schema_dir=schemas, stop_after_idle_s=3.0))
    t.join(120)
    assert not t.is_alive()
    assert ing.summary.inserted == 300 and ing.summary.dead_lettered == 0
    with psycopg.connect(env.database_url) as conn:
        rows = conn.execute(
            "SELECT count(*), count(DISTINCT door_id), bool_or(granted), bool_and(opened_at < now()) "
            "FROM monitoring.test_door_events"
        ).fetchone()
    assert rows is not None and rows[0] == 300 and rows[1] > 1 and rows[3] is True
    assert {m.key().decode() for m in msgs} <= _doors(env.database_url), "the key is the record's door_id"
    assert _sample("gatestream_ingest_events_consumed_total", {"topic": topic}) - consumed_before == 300
    assert _sample("gatestream_ingest_rows_inserted_total", table) - inserted_before == 300

    # Replay and show take it too.
    replayed = run_gatestream(environ, "replay", "--types", TYPE, "--no-progress")
    assert replayed.returncode == 0, replayed.stderr
    summary: dict[str, Any] = json.loads(replayed.stdout.splitlines()[-1])
    assert (summary["read"], summary["inserted"], summary["already_present"]) == (300, 0, 300)
    shown = run_gatestream(environ, "show")
    assert "monitoring.test_door_events" in shown.stdout, shown.stdout + shown.stderr

    # Without the catalog entry, the same command says what it knows instead.
    unknown = run_gatestream(env.environ(), "produce", "--types", TYPE, "--count", "1")
    assert unknown.returncode == 2 and f"unknown event type {TYPE}" in unknown.stderr
    delete_topics(ProducerSettings(**{**env.common(), "schema_dir": schemas}), [topic])


def _doors(db_url: str) -> set[str]:
    with psycopg.connect(db_url) as conn:
        return {r[0] for r in conn.execute("SELECT DISTINCT door_id FROM monitoring.test_door_events")}
