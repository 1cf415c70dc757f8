"""Settings: topic names Kafka accepts, and each knob declared once."""

from __future__ import annotations

import inspect

import pytest
from pydantic import ValidationError

from gatestream import settings
from gatestream.schemas.catalog import _NAME as EVENT_TYPE_NAME
from gatestream.settings import (
    EVENT_TYPE_NAME_MAX,
    TOPIC_NAME_MAX,
    TOPIC_PREFIX_MAX,
    CommonSettings,
    IngestSettings,
    PolicySettings,
    ProducerSettings,
)


def test_the_prefix_leaves_room_for_the_longest_event_type_the_catalog_allows() -> None:
    assert EVENT_TYPE_NAME.fullmatch("a" * EVENT_TYPE_NAME_MAX)
    assert not EVENT_TYPE_NAME.fullmatch("a" * (EVENT_TYPE_NAME_MAX + 1))
    longest = CommonSettings(topic_prefix="p" * TOPIC_PREFIX_MAX).topic_for("a" * EVENT_TYPE_NAME_MAX)
    assert len(longest) == TOPIC_NAME_MAX == 249
    CommonSettings(dlq_topic=longest)  # the longest topic a prefix can make is a legal topic name


@pytest.mark.parametrize("prefix", ["", "gatestream.", "a-b_c.", pytest.param("p" * TOPIC_PREFIX_MAX, id="186-chars")])
def test_legal_prefixes(prefix: str) -> None:
    assert CommonSettings(topic_prefix=prefix).topic_prefix == prefix


@pytest.mark.parametrize(
    ("prefix", "says"),
    [
        pytest.param("p" * (TOPIC_PREFIX_MAX + 1), "at most 186", id="187-chars"),
        ("a b.", "ASCII letters"),
        ("é.", "ASCII letters"),
    ],
)
def test_illegal_prefixes_get_a_clear_error(prefix: str, says: str) -> None:
    with pytest.raises(ValidationError, match=says):
        CommonSettings(topic_prefix=prefix)


@pytest.mark.parametrize("topic", ["d", "gatestream.dead-letter", pytest.param("x" * TOPIC_NAME_MAX, id="249-chars")])
def test_legal_dead_letter_topics(topic: str) -> None:
    assert CommonSettings(dlq_topic=topic).dlq_topic == topic


@pytest.mark.parametrize(
    ("topic", "says"),
    [
        ("", "not a Kafka topic name"),
        (".", "not a Kafka topic name"),
        ("..", "not a Kafka topic name"),
        pytest.param("x" * (TOPIC_NAME_MAX + 1), "at most 249", id="250-chars"),
        ("dead letter", "ASCII letters"),
    ],
)
def test_illegal_dead_letter_topics_get_a_clear_error(topic: str, says: str) -> None:
    with pytest.raises(ValidationError, match=says):
        CommonSettings(dlq_topic=topic)


def test_metrics_port_is_declared_once_and_every_server_process_has_it() -> None:
    declaring = [
        name
        for name, cls in inspect.getmembers(settings, inspect.isclass)
        if cls.__module__ == settings.__name__ and "metrics_port" in cls.__dict__.get("__annotations__", {})
    ]
    assert declaring == ["OpsServerSettings"]
    for cls in (ProducerSettings, IngestSettings, PolicySettings):
        assert cls(metrics_port=9400).metrics_port == 9400


def test_the_presence_grain_stays_well_under_the_offline_threshold() -> None:
    """last_seen_at lags by up to a grain: a grain near the threshold would sweep gateways
    that keep talking, so it must be under a quarter of it (0: exact)."""
    assert CommonSettings().presence_grain_s == 30 and CommonSettings().presence_offline_after_s == 300
    assert IngestSettings(presence_grain_s=74, presence_offline_after_s=300).presence_grain_s == 74
    assert CommonSettings(presence_grain_s=0, presence_offline_after_s=1).presence_grain_s == 0
    for grain, after in ((75, 300), (30, 60)):
        with pytest.raises(ValidationError, match="must be under a quarter of GATESTREAM_PRESENCE_OFFLINE_AFTER_S"):
            IngestSettings(presence_grain_s=grain, presence_offline_after_s=after)
