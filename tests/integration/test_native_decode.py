"""The native decode path against the real stack: refused where the text would not arrive as written."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import psycopg
import pytest

from gatestream.producers.events import ActiveWindow
from gatestream.producers.loadgen import Fleet, generate
from gatestream.schemas import EventType
from tests.conftest import Env
from tests.helpers import publish, start_ingest_thread, wait_for

pytestmark = pytest.mark.integration


def test_text_lands_as_written_when_the_connection_does_not_speak_utf8(env: Env, tmp_path: Path) -> None:
    """The native transcoder writes text as the Avro string's UTF-8 bytes; through a
    connection whose client_encoding is LATIN1 the server would read them as LATIN1
    ("café" stored as "cafÃ©"). Such a connection (like a database whose server_encoding
    is not UTF8) takes the Python path, which encodes for the connection. Two events one
    after the other: the first teaches the consumer the schema id, the second would be
    transcoded natively."""
    generated = generate(2, Fleet(orgs=1, devices_per_org=1), [EventType.ACTIVE_WINDOWS.value])
    first, second = (dataclasses.replace(e, title="café") for e in generated if isinstance(e, ActiveWindow))
    url = psycopg.conninfo.make_conninfo(env.database_url, client_encoding="LATIN1")
    ing, t = start_ingest_thread(env.ingest(database_url=url))
    try:
        with psycopg.connect(env.database_url) as conn:

            def title(event: ActiveWindow) -> object:
                row = conn.execute(
                    "SELECT title FROM monitoring.active_windows WHERE event_id = %s", (event.event_id,)
                ).fetchone()
                return None if row is None else row[0]

            for i, event in enumerate((first, second)):
                publish(env, tmp_path / f"spool{i}.sqlite3", [event])
                assert wait_for(lambda e=event: title(e) is not None, timeout=60), "the event's row never landed"
                assert title(event) == "café"
        assert ing._native is None, "the native path was refused"
    finally:
        ing.request_stop()
        t.join(30)


def test_native_decode_off_takes_the_python_path(env: Env) -> None:
    ing, t = start_ingest_thread(env.ingest(native_decode="off", stop_after_idle_s=0.5))
    t.join(60)
    assert not t.is_alive()
    assert ing._native is None
