"""Kafka ACLs of gatestream's principals: what each SCRAM user may do, made idempotently.

``plan`` lists them from the settings (the event topics of the schema catalog under the topic
prefix, the dead-letter and policy topics, the consumer groups, Debezium's topics); ``ensure``
creates the ones the broker lacks, as the admin (a super user), and leaves every other ACL
alone. Topics are named one by one (LITERAL), not by the topic prefix: the prefix also starts
the dead-letter, policy and CDC topics, which only some principals may touch.

| principal | may |
|---|---|
| gateway | WRITE + DESCRIBE the event topics; IDEMPOTENT_WRITE on the cluster |
| ingest | READ the event topics and its group; WRITE the dead-letter topic; DESCRIBE_CONFIGS on the cluster |
| replay | READ the event topics; its groups (gatestream-replay-*); READ + WRITE the dead-letter |
|        | topic; WRITE the event topics (`dlq redrive`); DESCRIBE_CONFIGS |
| policy | READ the policy topic, the CDC topic and its group; WRITE the dead-letter topic; DESCRIBE_CONFIGS |
| exporter | DESCRIBE the topics and the ingest and policy groups (lag), nothing else |
| connect | Kafka Connect's worker: its topics and group (gatestream-connect), Debezium's topics
  (CREATE, WRITE), IDEMPOTENT_WRITE |
| admin | a super user (the broker's super.users): topic admin, these ACLs |
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AclBinding,
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    AdminClient,
    ResourcePatternType,
    ResourceType,
)
from pydantic import Field

from gatestream.consumers.replay_runs import GROUP_PREFIX as REPLAY_GROUP_PREFIX
from gatestream.kafka import base_config
from gatestream.schemas import event_topics
from gatestream.settings import CdcTopicSettings, KafkaClientSettings

PRINCIPALS = ("gateway", "ingest", "replay", "policy", "exporter", "connect")
CLUSTER = "kafka-cluster"  # the one name of Kafka's cluster resource
# confluent-kafka calls Kafka's CLUSTER resource type BROKER (the same wire value, 4)
_RESOURCE_TYPE = {"TOPIC": ResourceType.TOPIC, "GROUP": ResourceType.GROUP, "CLUSTER": ResourceType.BROKER}
_RESOURCE_NAME = {v: k for k, v in _RESOURCE_TYPE.items()}


class AclSettings(KafkaClientSettings, CdcTopicSettings):
    """What ``plan`` names: the same settings (and defaults) the processes read."""

    group_id: str = Field("gatestream-ingest", description="The ingest consumers' group.")
    policy_topic: str = Field("gatestream.policy-changes", description="Change events of retention_policies.")
    policy_group_id: str = Field("gatestream-policy", description="The policy consumer's group.")
    connect_group: str = Field(
        "gatestream-connect",
        pattern=r"^[A-Za-z0-9._-]+$",
        description="Kafka Connect's group id; its config/offset/status topics are <group>.configs/.offsets/.status.",
    )


@dataclass(frozen=True, order=True)
class Acl:
    """One ALLOW rule: principal, operation, resource (type, pattern, name), from any host."""

    principal: str
    resource_type: str  # TOPIC, GROUP, CLUSTER
    pattern: str  # LITERAL, PREFIXED
    name: str
    operation: str

    def __str__(self) -> str:
        kind = "prefix" if self.pattern == "PREFIXED" else self.resource_type.lower()
        what = "the cluster" if self.resource_type == "CLUSTER" else f"{kind} {self.name}"
        return f"{self.principal} ALLOW {self.operation} on {what}" + (
            f" ({self.resource_type.lower()}s)" if self.pattern == "PREFIXED" else ""
        )

    def binding(self) -> AclBinding:
        return AclBinding(
            _RESOURCE_TYPE[self.resource_type], self.name, ResourcePatternType[self.pattern], self.principal, "*",
            AclOperation[self.operation], AclPermissionType.ALLOW,
        )  # fmt: skip

    @classmethod
    def of(cls, b: Any) -> Acl:
        rtype = _RESOURCE_NAME.get(b.restype, b.restype.name)
        return cls(b.principal, rtype, b.resource_pattern_type.name, b.name, b.operation.name)


def plan(settings: AclSettings) -> list[Acl]:
    """Every ACL gatestream's principals need, sorted, without duplicates."""
    events = sorted(event_topics(settings))
    dlq = settings.dlq_topic
    out: set[Acl] = set()

    def allow(user: str, rtype: str, names: list[str], *ops: str, pattern: str = "LITERAL") -> None:
        out.update(Acl(f"User:{user}", rtype, pattern, n, op) for n in names for op in ops)

    allow("gateway", "TOPIC", events, "WRITE", "DESCRIBE")
    allow("gateway", "CLUSTER", [CLUSTER], "IDEMPOTENT_WRITE")
    allow("ingest", "TOPIC", events, "READ")
    allow("ingest", "GROUP", [settings.group_id], "READ")
    allow("ingest", "TOPIC", [dlq], "WRITE")
    allow("replay", "TOPIC", events, "READ")
    allow("replay", "GROUP", [REPLAY_GROUP_PREFIX], "READ", pattern="PREFIXED")
    allow("replay", "TOPIC", [dlq], "WRITE")  # its pipeline dead-letters what it cannot decode, as ingest's
    # the operator's backfill principal also runs `gatestream dlq` (its database side is replay's
    # too, sql/055): summary/show/redrive read the dead-letter topic, redrive publishes events back
    allow("replay", "TOPIC", [dlq], "READ")
    allow("replay", "TOPIC", events, "WRITE")
    allow("policy", "TOPIC", [settings.policy_topic, settings.cdc_topic], "READ")
    allow("policy", "GROUP", [settings.policy_group_id], "READ")
    allow("policy", "TOPIC", [dlq], "WRITE")
    # the group members read the broker's configuration once at start, to choose the group
    # protocol (GATESTREAM_GROUP_PROTOCOL=auto: KIP-848 where the broker offers it); refused,
    # they fall back to the classic protocol. Broker configs hold no secret (those are masked).
    allow("ingest", "CLUSTER", [CLUSTER], "DESCRIBE_CONFIGS")
    allow("replay", "CLUSTER", [CLUSTER], "DESCRIBE_CONFIGS")
    allow("policy", "CLUSTER", [CLUSTER], "DESCRIBE_CONFIGS")
    allow("exporter", "TOPIC", [*events, dlq, settings.policy_topic], "DESCRIBE")
    allow("exporter", "GROUP", [settings.group_id, settings.policy_group_id], "DESCRIBE")
    # Kafka Connect's worker: its own topics (created compacted, so it reads their configs)...
    worker = f"{settings.connect_group}."
    allow("connect", "TOPIC", [worker], "READ", "WRITE", "DESCRIBE", "CREATE", "DESCRIBE_CONFIGS", pattern="PREFIXED")
    allow("connect", "GROUP", [settings.connect_group], "READ")
    # ...and Debezium's change topics and heartbeat topic, which the worker creates on first use
    out.update(debezium_acls("User:connect", settings.cdc_topic_prefix))
    allow("connect", "CLUSTER", [CLUSTER], "IDEMPOTENT_WRITE")
    return sorted(out)


def debezium_acls(principal: str, cdc_topic_prefix: str) -> list[Acl]:
    """What a Connect worker needs for a Debezium connector of that topic.prefix: its change
    topics and its heartbeat topic, created by the worker on first use."""
    names = [f"{cdc_topic_prefix}.", f"__debezium-heartbeat.{cdc_topic_prefix}"]
    return [Acl(principal, "TOPIC", "PREFIXED", n, op) for n in names for op in ("WRITE", "DESCRIBE", "CREATE")]


def existing(admin: AdminClient, timeout_s: float = 15.0) -> set[Acl]:
    """Every ALLOW ACL the broker has (describing them needs the admin)."""
    flt = AclBindingFilter(
        ResourceType.ANY, None, ResourcePatternType.ANY, None, None,  # type: ignore[arg-type]  # None: any
        AclOperation.ANY, AclPermissionType.ANY,
    )  # fmt: skip
    found = admin.describe_acls(flt, request_timeout=timeout_s).result()
    return {Acl.of(b) for b in found if b.permission_type == AclPermissionType.ALLOW}


def ensure(settings: AclSettings, *, dry_run: bool = False, timeout_s: float = 15.0) -> tuple[list[Acl], list[Acl]]:
    """Create the planned ACLs the broker lacks; return (created or, dry run, to create; present)."""
    admin = AdminClient(base_config(settings))
    have = existing(admin, timeout_s)
    wanted = plan(settings)
    missing = [a for a in wanted if a not in have]
    present = [a for a in wanted if a in have]
    if missing and not dry_run:
        create(admin, missing, timeout_s)
    return missing, present


def create(admin: AdminClient, acls: list[Acl], timeout_s: float = 15.0) -> None:
    """Create ``acls`` (as a user that may: the admin); return once the broker enforces them."""
    futures = admin.create_acls([a.binding() for a in acls], request_timeout=timeout_s)
    for binding, fut in futures.items():
        try:
            fut.result()
        except KafkaException as exc:
            if exc.args[0].code() in (KafkaError.SECURITY_DISABLED, KafkaError.CLUSTER_AUTHORIZATION_FAILED):
                raise  # the broker's or the user's, not this ACL's: the caller says which
            raise RuntimeError(f"creating the ACL {Acl.of(binding)} failed: {exc.args[0].str()}") from None
    # the controller has them; the broker enforces them once its metadata has caught up
    # (a moment, longer under load): return then, so what runs next is allowed
    deadline = time.monotonic() + timeout_s
    while not set(acls) <= existing(admin, timeout_s):
        if time.monotonic() >= deadline:
            raise RuntimeError(f"the broker does not show the {len(acls)} ACLs created after {timeout_s:.0f} s")
        time.sleep(0.2)
