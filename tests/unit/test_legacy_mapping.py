"""The legacy import's mapping file and flags: what they give, and one clear line when they cannot work."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import pytest

from gatestream.cli import build_parser
from gatestream.legacy.mapping import (
    Mapping,
    MappingError,
    build_mapping,
    event_id_of,
    load_mapping_file,
    parse_column_flag,
    parse_mapping,
)

FULL = """
[source]
table = "legacy.active_windows"
primary_key = "window_id"
timezone = "Asia/Tashkent"
id_scope = "shard-2"

[target]
table = "active_windows"

[columns]
users_on_computers_id = "user_on_computer_id"
datetime = "created"
"""


def test_a_full_mapping_file_gives_every_setting() -> None:
    m = build_mapping(parse_mapping(FULL))
    assert m == Mapping(
        source_table=("legacy", "active_windows"),
        target_table=("monitoring", "active_windows"),
        primary_key="window_id",
        columns={"users_on_computers_id": "user_on_computer_id", "datetime": "created"},
        source_timezone="Asia/Tashkent",
        id_scope="shard-2",
    )
    assert m.scope == "shard-2"


def test_defaults_public_source_monitoring_target_id_key_utc_and_the_table_as_scope() -> None:
    m = build_mapping(parse_mapping('[source]\ntable = "visited_sites"\n[target]\ntable = "x.visited_sites"'))
    assert (m.source_table, m.target_table, m.primary_key, m.columns) == (
        ("public", "visited_sites"), ("x", "visited_sites"), "id", {},
    )  # fmt: skip
    assert (m.source_timezone, m.scope) == ("UTC", "public.visited_sites")


def test_flags_complete_a_file(tmp_path: Path) -> None:
    f = tmp_path / "m.toml"
    f.write_text('[source]\ntable = "aw"\n[columns]\ntitle = "window_title"\n')
    values = load_mapping_file(f)
    values.update({"target_table": "active_windows"})
    values["columns"].update(dict([parse_column_flag("icon = app_icon")]))
    m = build_mapping(values)
    assert m.columns == {"title": "window_title", "icon": "app_icon"}
    assert m.target_table == ("monitoring", "active_windows")


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("[source\ntable = 1", "not valid TOML"),
        ('[sauce]\ntable = "a"', "unknown section [sauce]"),
        ('[source]\ntabel = "a"', "unknown key 'tabel' in [source]"),
        ('[source]\ntable = ""', "source.table must be a non-empty string"),
        ("[source]\ntable = 3", "source.table must be a non-empty string, got 3"),
        ('[columns]\ntitle = ["a"]', "columns.title must be a non-empty string"),
        ('source = "a"', "source must be a [source] table"),
    ],
)
def test_a_malformed_file_gets_one_line_naming_the_problem(text: str, says: str) -> None:
    with pytest.raises(MappingError, match="^m.toml: ") as exc:
        parse_mapping(text, "m.toml")
    assert says in str(exc.value) and "\n" not in str(exc.value)


@pytest.mark.parametrize(
    ("values", "says"),
    [
        ({"target_table": "active_windows"}, "no source table"),
        ({"source_table": "aw"}, "no target table"),
        ({"source_table": "a.b.c", "target_table": "t"}, "source table 'a.b.c' is not [schema.]table"),
        ({"source_table": "aw", "target_table": ".t"}, "target table '.t' is not [schema.]table"),
        ({"source_table": "aw", "target_table": "t", "columns": {"event_id": "id"}}, "event_id cannot be mapped"),
    ],
)
def test_a_mapping_that_cannot_work_is_refused(values: dict[str, object], says: str) -> None:
    with pytest.raises(MappingError, match=re.escape(says)):
        build_mapping(values)


@pytest.mark.parametrize("flag", ["title", "=title", "title=", " = "])
def test_a_column_flag_needs_target_and_source(flag: str) -> None:
    with pytest.raises(MappingError, match="expected target_column=source_column"):
        parse_column_flag(flag)


def test_an_unreadable_mapping_file_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(MappingError, match="cannot read the mapping file"):
        load_mapping_file(tmp_path / "missing.toml")
    bad = tmp_path / "latin1.toml"
    bad.write_bytes(b'[source]\ntable = "\xe9"\n')
    with pytest.raises(MappingError, match="is not UTF-8"):
        load_mapping_file(bad)


def test_event_ids_are_uuid5_of_scope_and_key_the_same_every_run_and_distinct() -> None:
    a = event_id_of("public.active_windows", 1)
    assert a == event_id_of("public.active_windows", 1)
    assert a.version == 5 and str(a)[14] == "5"  # verify tells imported rows by this nibble
    assert a != event_id_of("public.active_windows", 2) != event_id_of("public.visited_sites", 1)
    # pinned: a changed namespace or name format would make a re-import add every row again
    assert a == uuid.UUID("25304675-a099-5ebd-b854-65cad52626f9")


def test_import_and_import_verify_parse() -> None:
    p = build_parser()
    run = p.parse_args(["import", "--mapping", "m.toml", "--batch-rows", "10", "--pause", "0.5", "--restart"])
    assert (run.action, run.import_batch_rows, run.import_pause_s, run.restart) == (None, 10, 0.5, True)
    ver = p.parse_args(["import", "verify", "--source-table", "aw", "--target", "active_windows", "--column", "a=b"])
    assert (ver.action, ver.source_table, ver.column) == ("verify", "aw", ["a=b"])
