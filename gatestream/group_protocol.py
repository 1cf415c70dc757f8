"""Which consumer-group protocol a member uses: the one set, or for ``auto`` the broker's choice.

KIP-848's ``consumer`` protocol keeps members working while others join and leave (a
churn of kill -9 and replacements every 3 s kept ~90 % of the load flowing; under
``classic`` nothing was assigned for 70 s). It needs a broker that offers it, which a
Kafka >= 4.0 does unless its operator turned it off, and a Kafka 3.x or a managed
service may not. ``auto`` asks the broker once per process: its
``group.coordinator.rebalance.protocols`` names ``consumer`` -> ``consumer``; it does
not, does not say, or cannot be asked (no DescribeConfigs permission, unreachable) ->
``classic``. One log line says which and why.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, Literal, Protocol

import structlog
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, ConfigEntry, ConfigResource, ResourceType  # type: ignore[attr-defined]

from gatestream.settings import GroupMemberSettings

log = structlog.get_logger("gatestream.kafka")

GroupProtocol = Literal["classic", "consumer"]
REBALANCE_PROTOCOLS = "group.coordinator.rebalance.protocols"
PROBE_TIMEOUT_S = 10.0
PROBE_ATTEMPTS = 3  # a time-out is asked again; at most 30 s, then classic

Verdict = tuple[bool | None, str]  # does the broker offer KIP-848 (None: cannot tell), and why


class BrokerAdmin(Protocol):
    """The two calls of confluent_kafka's AdminClient the probe makes."""

    def list_topics(self, *args: Any, **kwargs: Any) -> Any: ...

    def describe_configs(
        self, resources: list[ConfigResource], **kwargs: Any
    ) -> dict[ConfigResource, Future[dict[str, ConfigEntry]]]: ...


def broker_offers_consumer_protocol(
    admin: BrokerAdmin, timeout: float = PROBE_TIMEOUT_S, attempts: int = PROBE_ATTEMPTS
) -> Verdict:
    """Ask one broker whether its group coordinator offers the ``consumer`` protocol.

    A time-out is asked again (``attempts`` in all): a broker that is slow to answer, on a
    loaded machine or while it starts, must not turn a process classic for its whole life; a
    refusal (no permission) is an answer and is not asked again."""
    for attempt in range(1, attempts + 1):
        try:
            brokers = sorted(admin.list_topics(timeout=timeout).brokers)
            if not brokers:
                return None, "the cluster metadata lists no broker"
            resource = ConfigResource(ResourceType.BROKER, str(brokers[0]))
            configs = admin.describe_configs([resource], request_timeout=timeout)[resource].result(timeout=timeout)
            break
        except (KafkaException, TimeoutError) as exc:
            if attempt < attempts and _transient(exc):
                log.info("the broker did not answer the group-protocol probe in time; asking again",
                         attempt=attempt, error=_one_line(exc))  # fmt: skip
                continue
            return None, f"cannot read the broker's configuration ({_one_line(exc)})"
    entry = configs.get(REBALANCE_PROTOCOLS)
    if entry is None or entry.value is None:
        return None, f"the broker does not report {REBALANCE_PROTOCOLS} (Kafka < 3.7 or a managed service hiding it)"
    offered = [p.strip() for p in str(entry.value).split(",")]
    if "consumer" in offered:
        return True, f"the broker offers it ({REBALANCE_PROTOCOLS}={entry.value})"
    return False, f"the broker does not offer it ({REBALANCE_PROTOCOLS}={entry.value})"


def resolve(setting: str, probe: Callable[[], Verdict]) -> tuple[GroupProtocol, str]:
    """The protocol for ``setting`` ('auto', 'classic' or 'consumer'); ``probe`` is asked for 'auto' only."""
    if setting == "classic":
        return "classic", "set explicitly"
    if setting == "consumer":
        return "consumer", "set explicitly"
    offered, why = probe()
    if offered:
        return "consumer", f"auto: {why}"
    return "classic", f"auto: {why}; falling back to classic"


_resolved: dict[str, GroupProtocol] = {}
_lock = threading.Lock()


def group_protocol_for(settings: GroupMemberSettings, client_config: dict[str, Any]) -> GroupProtocol:
    """The protocol a member of these settings uses; for ``auto`` the broker is asked once per
    process and cluster (the answer is kept, so every client of the process agrees), by an
    admin client of ``client_config`` (``gatestream.kafka.base_config``: the same broker,
    security and extra properties as the member's)."""
    if settings.group_protocol != "auto":
        return settings.group_protocol
    key = json.dumps([settings.bootstrap_servers, settings.kafka_extra], sort_keys=True, default=str)
    with _lock:
        if key not in _resolved:
            admin = AdminClient(client_config)
            try:
                protocol, why = resolve("auto", lambda: broker_offers_consumer_protocol(admin))
            finally:
                admin.poll(0)  # hand its librdkafka log lines (why it could not connect) to the logger
            log.info(f"consumer group protocol: {protocol}", group_protocol=protocol, reason=why)
            _resolved[key] = protocol
        return _resolved[key]


def _transient(exc: BaseException) -> bool:
    """A time-out or a connection that did not come up: worth asking again."""
    if isinstance(exc, TimeoutError):
        return True
    err = exc.args[0] if exc.args else None
    code = err.code() if isinstance(err, KafkaError) else None
    return code in (
        KafkaError._TIMED_OUT,
        KafkaError._TRANSPORT,
        KafkaError.REQUEST_TIMED_OUT,
        KafkaError._ALL_BROKERS_DOWN,
    )


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300]
