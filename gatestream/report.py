"""``gatestream show``: what landed in the hypertables, and where the consumers are."""

from __future__ import annotations

from psycopg import sql

from gatestream.consumers.routes import event_time_field
from gatestream.database import connect_once
from gatestream.edition import timescaledb_edition
from gatestream.schemas import catalog_of
from gatestream.settings import CommonSettings


def print_report(settings: CommonSettings) -> None:
    with connect_once(settings.database_url, autocommit=False) as conn:
        edition = timescaledb_edition(conn)
        version = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'").fetchone()
        print(f"TimescaleDB {version[0] if version else '?'} ({edition} edition)\n")
        catalog = catalog_of(settings)
        print(f"{'hypertable':<36}{'rows':>10}{'orgs':>6}{'chunks':>8}  newest event")
        for et in catalog.event_types():
            info = catalog.info(et)
            time_col = event_time_field(catalog.latest(et).schema)
            q = sql.SQL("SELECT count(*), count(DISTINCT organization_id), max({}) FROM {}.{}").format(
                sql.Identifier(time_col), sql.Identifier(info.schema), sql.Identifier(info.table)
            )
            rows, orgs, newest = conn.execute(q).fetchone() or (0, 0, None)
            chunks = conn.execute(
                "SELECT count(*) FROM timescaledb_information.chunks WHERE hypertable_schema = %s "
                "AND hypertable_name = %s",
                (info.schema, info.table),
            ).fetchone()
            name = f"{info.schema}.{info.table}"
            print(f"{name:<36}{rows:>10}{orgs:>6}{chunks[0] if chunks else 0:>8}  {newest or '-'}")
        print("\nconsumer offsets (stored with the rows):")
        offs = conn.execute(
            "SELECT consumer_group, topic, count(*), sum(next_offset) FROM gatestream.consumer_offsets "
            "GROUP BY 1, 2 ORDER BY 1, 2"
        ).fetchall()
        if not offs:
            print("  none yet")
        for group, topic, parts, total in offs:
            print(f"  {group:<24}{topic:<44}{parts:>3} partitions  {total:>10} events consumed")
