"""``gatestream bench storage``: bytes per row per hypertable, and the columnstore ratio.

Loads the generated dataset (``gatestream.benches.dataset``) into a scratch database,
then per hypertable: rows and bytes per row of the heap, the indexes and TOAST
(``hypertable_detailed_size``). On the Community edition it then applies the columnstore
settings the policy consumer applies (``gatestream.consumers.policy.columnstore``:
segmentby organization_id, orderby <device>, <time> DESC), compresses every chunk and
reports bytes per row after (``hypertable_columnstore_stats``: heap + indexes + TOAST of
the compressed chunks), and the ratio of the rowstore as loaded (heap + indexes + TOAST,
the "total" column) to that. Each run compresses and then decompresses again, so the runs
measure the same rows; medians are reported. The rowstore is measured once, as loaded:
TimescaleDB's own "before" of a later run counts the chunk rebuilt by the decompression,
whose indexes are packed tighter than those of a chunk that grew by inserts, and would
tell a different ratio for the same rows each run. The Apache edition has no columnstore: that part says so.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from gatestream.bench_output import table, write_json
from gatestream.benches.dataset import SHARES, DatasetSpec, load
from gatestream.benches.scratch import scratch_database
from gatestream.consumers.policy import columnstore
from gatestream.database import connect_once
from gatestream.edition import Edition
from gatestream.schemas import catalog_of
from gatestream.settings import CommonSettings

APACHE_REASON = (
    "not available: this server runs the TimescaleDB Apache edition, which has no columnstore "
    "(compression is a Community-edition (TSL) feature)"
)
TIME_COLUMNS = {"gateway_status_snapshots": "timestamp"}


@dataclass
class TableSize:
    table: str
    rows: int
    heap: int
    indexes: int
    toast: int

    def per_row(self, n: int) -> float:
        return n / self.rows if self.rows else 0.0


def sizes(conn: psycopg.Connection[Any], table: str) -> TableSize:
    rel = f"monitoring.{table}"
    rows = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier("monitoring", table))).fetchone()
    size = conn.execute(
        "SELECT table_bytes, index_bytes, toast_bytes FROM hypertable_detailed_size(%s::regclass)", (rel,)
    ).fetchone()
    assert rows is not None and size is not None
    return TableSize(table, int(rows[0]), *(int(x or 0) for x in size))


def settings_of(
    catalog_keys: dict[str, str], table: str, override: str | None = None, sparse_index: str | None = None
) -> tuple[str, str, str]:
    """(segmentby, orderby, sparse indexes) the policy consumer applies to monitoring.<table>
    (or the overrides: the orderby's ``<time>`` replaced by the table's time column)."""
    time_column = TIME_COLUMNS.get(table, "datetime")
    order = (
        override.replace("<time>", time_column)
        if override
        else columnstore.orderby(time_column, catalog_keys.get(f"monitoring.{table}"))
    )
    return columnstore.SEGMENTBY, order, columnstore.SPARSE_INDEX if sparse_index is None else sparse_index


def compress(
    conn: psycopg.Connection[Any], table: str, segmentby: str, orderby: str, sparse_index: str
) -> tuple[int, float]:
    """Compress every chunk; (bytes after, as TimescaleDB counts them, seconds)."""
    new_api = columnstore.apply(conn, f"monitoring.{table}", segmentby, orderby, sparse_index)
    t0 = time.perf_counter()
    conn.execute(
        sql.SQL("SELECT count(compress_chunk(c)) FROM show_chunks({}) c").format(sql.Literal(f"monitoring.{table}"))
    )
    seconds = time.perf_counter() - t0
    stats = "hypertable_columnstore_stats" if new_api else "hypertable_compression_stats"
    row = conn.execute(
        sql.SQL("SELECT sum(after_compression_total_bytes) FROM {}(%s::regclass)")
        .format(sql.Identifier(stats)), (f"monitoring.{table}",),
    ).fetchone()  # fmt: skip
    assert row is not None
    return int(row[0] or 0), seconds


def decompress(conn: psycopg.Connection[Any], table: str) -> None:
    conn.execute(
        sql.SQL("SELECT count(decompress_chunk(c, true)) FROM show_chunks({}) c").format(
            sql.Literal(f"monitoring.{table}")
        )
    )


def bench_storage(
    settings: CommonSettings,
    *,
    spec: DatasetSpec,
    runs: int,
    json_path: str | None,
    keep: bool,
    orderby: str | None = None,
    sparse_index: str | None = None,
) -> int:
    rows = spec.rows
    keys = columnstore.key_columns(catalog_of(settings))
    print(
        f"bench storage: {rows:,} rows over {spec.days} days, {spec.orgs} organizations, {spec.devices:,} devices, "
        f"{spec.gateways:,} gateways; {runs} runs"
    )
    with scratch_database(settings.database_url, "bench_storage", keep=keep) as (url, edition):
        loaded = load(url, spec, progress=print)
        print(f"loaded {sum(loaded.rows.values()):,} rows in {loaded.seconds:.1f} s ({loaded.rows_per_s:,.0f} rows/s)")
        with connect_once(url) as conn:
            before = {t: sizes(conn, t) for t in SHARES}
            ratios: dict[str, list[tuple[int, float]]] = {t: [] for t in SHARES}  # (bytes after, seconds) per run
            loaded_bytes = sum(s.heap + s.indexes + s.toast for s in before.values())
            if edition == Edition.COMMUNITY:
                for i in range(runs):
                    for t in SHARES:
                        ratios[t].append(compress(conn, t, *settings_of(keys, t, orderby, sparse_index)))
                        if i < runs - 1:
                            decompress(conn, t)
                    total_a = sum(r[-1][0] for r in ratios.values())
                    print(f"  run {i + 1}: columnstore {loaded_bytes / max(total_a, 1):.1f}:1 over all hypertables")
    figures: dict[str, Any] = {
        "rows": rows,
        "runs": runs,
        "edition": str(edition),
        "dataset": spec.__dict__,
        "tables": {},
    }
    out_rows = []
    for t in SHARES:
        s = before[t]
        entry: dict[str, Any] = {
            "rows": s.rows, "heap_bytes_per_row": s.per_row(s.heap), "index_bytes_per_row": s.per_row(s.indexes),
            "toast_bytes_per_row": s.per_row(s.toast), "total_bytes_per_row": s.per_row(s.heap + s.indexes + s.toast),
        }  # fmt: skip
        if ratios[t]:
            seg, order, sparse = settings_of(keys, t, orderby, sparse_index)
            b = s.heap + s.indexes + s.toast  # the rowstore as loaded (see the module docstring)
            a = statistics.median(r[0] for r in ratios[t])
            entry |= {
                "segmentby": seg, "orderby": order, "sparse_index": sparse,
                "columnstore_bytes_per_row": s.per_row(int(a)),
                "ratio": b / a if a else None, "compress_seconds": statistics.median(r[1] for r in ratios[t]),
            }  # fmt: skip
        figures["tables"][t] = entry
        out_rows.append([
            t, s.rows, entry["heap_bytes_per_row"], entry["index_bytes_per_row"], entry["toast_bytes_per_row"],
            entry["total_bytes_per_row"], entry.get("columnstore_bytes_per_row"),
            f"{entry['ratio']:.1f}:1" if entry.get("ratio") else None,
        ])  # fmt: skip
    all_rows = sum(s.rows for s in before.values())
    total: dict[str, Any] = {"rows": all_rows, "total_bytes_per_row": loaded_bytes / max(all_rows, 1)}
    if edition == Edition.COMMUNITY:
        b = loaded_bytes
        a = sum(statistics.median(r[0] for r in ratios[t]) for t in SHARES)
        total |= {"columnstore_bytes_per_row": a / max(all_rows, 1), "ratio": b / a if a else None}
    else:
        total["columnstore"] = APACHE_REASON
    figures["total"] = total
    out_rows.append([
        "all", all_rows, None, None, None, total["total_bytes_per_row"], total.get("columnstore_bytes_per_row"),
        f"{total['ratio']:.1f}:1" if total.get("ratio") else None,
    ])  # fmt: skip
    print()
    print(table(["hypertable", "rows", "heap B/row", "index B/row", "toast B/row", "total B/row",
                 "columnstore B/row", "ratio"], out_rows))  # fmt: skip
    if edition == Edition.COMMUNITY:
        which = (
            f"orderby {orderby} (a comparison)" if orderby else "orderby <device>, <time> DESC (the policy consumer's)"
        )
        sparse = (
            f"sparse indexes {sparse_index!r} (a comparison)"
            if sparse_index is not None
            else f"sparse indexes {columnstore.SPARSE_INDEX} (the policy consumer's)"
        )
        print(f"columnstore: segmentby {columnstore.SEGMENTBY}, {which}, {sparse}; medians of the runs; goal >= 10:1")
    else:
        print(f"columnstore: {APACHE_REASON}")
    write_json(json_path, "storage", figures)
    return 0
