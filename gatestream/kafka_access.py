"""Whether the broker lets this process do its job, asked at start, and its refusals in one line.

librdkafka reports a wrong password, a plaintext client on a TLS listener and a failed TLS
handshake alike as a bare ``_TRANSPORT`` ("Broker transport failure") from the request that
hit it; the reason is only in its log lines and error callbacks. ``probe`` connects the way
the process will (``gatestream.kafka.base_config``), collects those, and asks the broker for
the topics and groups the process needs with the operations this principal may run on them
(``include_authorized_operations``). A refusal raises ``KafkaRefused``: one line naming the
principal, the resource and what was refused; the CLI exits 2 with it (waiting cannot fix
it). A broker that does not answer at all is not a refusal: ``probe`` returns and the
process waits for it as before.

At run time an authorization failure is an outage, not bad data (``AUTHORIZATION_ERRORS``,
``is_authorization_error``): the process retries, reports not ready and counts it in
``gatestream_kafka_authorization_failures_total{operation}``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import structlog
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AclOperation, AdminClient  # type: ignore[attr-defined]
from prometheus_client import Counter

from gatestream.kafka import base_config
from gatestream.kafka_log import ClientLog
from gatestream.settings import KafkaClientSettings

log = structlog.get_logger("gatestream.kafka")

AUTHORIZATION_FAILURES = Counter(
    "gatestream_kafka_authorization_failures_total",
    "Kafka requests the broker refused for want of an ACL (topic, group or cluster authorization failed), by "
    "what was refused: an outage to fix with an ACL, never a reason to drop or dead-letter events.",
    ["operation"],
)

AUTHORIZATION_ERRORS = frozenset({
    KafkaError.TOPIC_AUTHORIZATION_FAILED,
    KafkaError.GROUP_AUTHORIZATION_FAILED,
    KafkaError.CLUSTER_AUTHORIZATION_FAILED,
    KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
})  # fmt: skip
_AUTHENTICATION = frozenset({KafkaError._AUTHENTICATION, KafkaError.SASL_AUTHENTICATION_FAILED})

ACLS_HINT = "an ACL must allow it: `gatestream kafka acls ensure` as admin, or ask the cluster's operator"


def is_authorization_error(err: KafkaError | None) -> bool:
    return err is not None and err.code() in AUTHORIZATION_ERRORS


@dataclass
class KafkaRefused(Exception):
    """The broker refuses this process something it needs: waiting cannot fix it."""

    principal: str
    resource: str
    refused: str
    hint: str

    def __str__(self) -> str:
        return f"Kafka refused {self.principal}: {self.refused} on {self.resource} ({self.hint})"


@dataclass(frozen=True)
class KafkaNeeds:
    """What a process does on Kafka: the topics it reads and writes, the groups it uses."""

    read: tuple[str, ...] = ()
    write: tuple[str, ...] = ()
    describe: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()


class _Collected:
    """librdkafka's log lines and error callbacks of the probe's client (never its config),
    kept to read the refusal from and passed on to the log like any client's (``ClientLog``):
    while the broker is away the probe waits up to its timeout, and says why meanwhile."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.errors: list[KafkaError] = []
        self._lock = threading.Lock()
        self._out = ClientLog()

    def log(self, level: int, fmt: str, *args: Any) -> None:
        with self._lock:
            self.lines.append(fmt % args if args else fmt)
        self._out.log(level, fmt, *args)

    def error(self, err: KafkaError) -> None:
        with self._lock:
            self.errors.append(err)

    def texts(self) -> list[str]:
        with self._lock:
            return [*self.lines, *(e.str() for e in self.errors)]


def connection_refusal(
    settings: KafkaClientSettings, codes: Iterable[int], texts: Iterable[str]
) -> KafkaRefused | None:
    """What the client's errors and log lines say about why it could not connect, when it is
    a refusal (authentication, TLS, a plaintext client on a TLS listener); None when the broker
    is only away (connection refused, unknown host: the process waits for it)."""
    who = settings.kafka_principal
    where = f"broker {settings.bootstrap_servers}"
    protocol = settings.effective_security_protocol
    codes = set(codes)
    texts = list(texts)
    if codes & _AUTHENTICATION or any("SASL authentication error" in t or "Authentication failed" in t for t in texts):
        return KafkaRefused(
            who, where, "authentication (SASL " + (settings.kafka_sasl_mechanism or "SCRAM-SHA-512") + ") failed",
            "wrong GATESTREAM_KAFKA_SASL_USERNAME or GATESTREAM_KAFKA_SASL_PASSWORD, or no such user on the broker",
        )  # fmt: skip
    if KafkaError._SSL in codes or any("SSL handshake failed" in t or "certificate verify failed" in t for t in texts):
        reason = next((t for t in texts if "certificate" in t or "SSL handshake" in t), "")
        return KafkaRefused(
            who, where, "the TLS handshake failed",
            "the broker's certificate is not signed by the CA of GATESTREAM_KAFKA_SSL_CA_LOCATION"
            f" ({settings.kafka_ssl_ca_location or 'unset: the system CAs'}), or the listener is not TLS"
            + (f"; librdkafka: {_tail(reason)}" if reason else ""),
        )  # fmt: skip
    if any("APIVERSION_QUERY" in t and "Disconnected" in t for t in texts) or any(
        "incorrect security.protocol" in t for t in texts
    ):
        return KafkaRefused(
            who, where, f"a {protocol} connection was closed by the broker before its first answer",
            f"GATESTREAM_KAFKA_SECURITY_PROTOCOL is {protocol}: the listener likely wants TLS and SASL "
            "(SASL_SSL, with the user's settings: `ops/stack env PRINCIPAL`)",
        )  # fmt: skip
    return None


def _tail(text: str, limit: int = 160) -> str:
    text = text.split(": ", 1)[-1] if ": " in text else text
    return text if len(text) <= limit else text[: limit - 3] + "..."


def probe(settings: KafkaClientSettings, needs: KafkaNeeds, timeout_s: float = 15.0) -> bool:
    """Raise KafkaRefused for the first thing the broker refuses (authentication, TLS, a
    topic, a group); return True when all is allowed, False when the broker does not answer
    within ``timeout_s`` for a reason that is not a refusal (the process then waits as before)."""
    seen = _Collected()
    conf: dict[str, Any] = {**base_config(settings), "logger": seen, "error_cb": seen.error}
    admin = AdminClient(conf)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            admin.list_topics(timeout=min(2.0, max(0.1, deadline - time.monotonic())))
            break
        except KafkaException:
            admin.poll(0)  # serves the client's log and error callbacks (an admin client has no thread for them)
        refusal = connection_refusal(settings, (e.code() for e in seen.errors), seen.texts())
        if refusal is not None:
            raise refusal
        if time.monotonic() >= deadline:
            return False  # away, not refusing: the process waits for it
    _check_topics(admin, settings, needs)
    _check_groups(admin, settings, needs.groups)
    return True


def require(settings: KafkaClientSettings, needs: KafkaNeeds, timeout_s: float = 15.0) -> None:
    """``probe`` at a process's start: a refusal raises (the CLI exits 2); a broker that does not
    answer is logged and left to the process, which waits for it."""
    if not probe(settings, needs, timeout_s):
        log.warning(
            "Kafka access not checked: the broker did not answer; starting anyway (it is waited for)",
            bootstrap_servers=settings.bootstrap_servers, principal=settings.kafka_principal,
        )  # fmt: skip


def _wanted(needs: KafkaNeeds) -> dict[str, set[AclOperation]]:
    ops: dict[str, set[AclOperation]] = {}
    for names, op in ((needs.read, AclOperation.READ), (needs.write, AclOperation.WRITE),
                      (needs.describe, AclOperation.DESCRIBE)):  # fmt: skip
        for name in names:
            ops.setdefault(name, set()).add(op)
    return ops


def _check_topics(admin: AdminClient, settings: KafkaClientSettings, needs: KafkaNeeds) -> None:
    from confluent_kafka import TopicCollection

    wanted = _wanted(needs)
    if not wanted:
        return
    futures = admin.describe_topics(TopicCollection(sorted(wanted)), include_authorized_operations=True)
    for name, fut in futures.items():
        try:
            desc = fut.result()
        except KafkaException as exc:
            err = exc.args[0]
            if err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED:
                refused = "/".join(sorted(op.name for op in wanted[name]))
                raise KafkaRefused(settings.kafka_principal, f"topic {name}", f"no {refused}", ACLS_HINT) from None
            continue  # e.g. the topic does not exist yet: not a refusal; the process reports it its own way
        if desc.authorized_operations is None:  # the broker did not say: nothing to check
            continue
        allowed = set(desc.authorized_operations)
        if AclOperation.ALL in allowed:
            continue
        for op in sorted(wanted[name] - allowed, key=lambda o: o.name):
            raise KafkaRefused(settings.kafka_principal, f"topic {name}", f"no {op.name}", ACLS_HINT)


def _check_groups(admin: AdminClient, settings: KafkaClientSettings, groups: tuple[str, ...]) -> None:
    if not groups:
        return
    futures = admin.describe_consumer_groups(list(groups), include_authorized_operations=True)
    for name, fut in futures.items():
        try:
            desc = fut.result()
        except KafkaException as exc:
            if exc.args[0].code() == KafkaError.GROUP_AUTHORIZATION_FAILED:
                raise KafkaRefused(settings.kafka_principal, f"group {name}", "no READ", ACLS_HINT) from None
            continue
        allowed = set(getattr(desc, "authorized_operations", None) or ())
        if allowed and AclOperation.READ not in allowed and AclOperation.ALL not in allowed:
            raise KafkaRefused(settings.kafka_principal, f"group {name}", "no READ", ACLS_HINT)
