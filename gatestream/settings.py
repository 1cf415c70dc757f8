"""Settings, one pydantic-settings model per process, all read from ``GATESTREAM_*``.

``CommonSettings`` holds what every process needs (where the broker, the database and
the schemas are); each process's model extends it with its own knobs.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal, Self

from pydantic import Field, SecretStr, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from gatestream.cron import EXPRESSIBLE, unschedulable

TOPIC_NAME_MAX = 249  # Kafka's limit on a topic name
EVENT_TYPE_NAME_MAX = 63  # the catalog's limit on an event type name (gatestream/schemas/catalog.py, _NAME)
TOPIC_PREFIX_MAX = TOPIC_NAME_MAX - EVENT_TYPE_NAME_MAX  # a topic is <prefix><event type>
_TOPIC_CHARS = re.compile(r"[A-Za-z0-9._-]*")


DatabasePooler = Literal["none", "transaction"]

DATABASE_POOLER_HELP = (
    "What is between gatestream and PostgreSQL: 'none' (a direct connection) or 'transaction' (PgBouncer or "
    "another pooler in transaction mode: a server connection is shared between clients transaction by "
    "transaction, so gatestream prepares no statements and sends no startup options; see README 'Through "
    "PgBouncer'). gatestream/database.py reads it from the environment for every connection it makes."
)


class DatabasePoolerSettings(BaseSettings):
    """How gatestream/database.py connects (mixed into every process's settings, for --help and validation)."""

    model_config = SettingsConfigDict(env_prefix="GATESTREAM_", extra="ignore")

    database_pooler: DatabasePooler = Field("none", description=DATABASE_POOLER_HELP)


class CommonSettings(DatabasePoolerSettings):
    model_config = SettingsConfigDict(env_prefix="GATESTREAM_", extra="ignore")

    bootstrap_servers: str = Field("127.0.0.1:9092", description="Kafka bootstrap servers.")
    database_url: str = Field(
        "postgresql://postgres@127.0.0.1:5432/gatestream", description="TimescaleDB connection URL."
    )
    schema_registry_url: str | None = Field(
        None, description="Confluent-compatible Schema Registry; unset = the shipped schema catalog."
    )
    schema_registry_timeout_s: float = Field(
        10.0,
        gt=0,
        description="Time-out of each schema registry request. A registry that does not answer in time counts as "
        "unreachable: ingest pauses and retries the same events, it never dead-letters them for it.",
    )
    schema_dir: Path | None = Field(None, description="Schema catalog folder; unset = the shipped one.")
    topic_prefix: str = Field("gatestream.", description="Topics are <prefix><event type>.")
    dlq_topic: str = Field("gatestream.dead-letter", description="Where undecodable events go.")
    log_format: str = Field("auto", description="auto (JSON unless a TTY), json or console.")
    presence_offline_after_s: int = Field(
        300,
        ge=1,
        description="A gateway or agent that sent no event for this long is OFFLINE (the presence sweep, the "
        "exporter's gatestream_gateways/agents and the silent-gateway alert).",
    )
    presence_grain_s: int = Field(
        30,
        ge=0,
        description="Ingest moves a gateway's or agent's last_seen_at only in steps of at least this many seconds "
        "(one row update per grain, not per batch, for a gateway or agent that keeps talking); a status change "
        "(back ONLINE) or a newer status report applies at once. last_seen_at lags the newest event by less than "
        "this. 0: every newer event. Must be under a quarter of GATESTREAM_PRESENCE_OFFLINE_AFTER_S.",
    )
    log_level: str = Field("info")

    @field_validator("topic_prefix", "dlq_topic")
    @classmethod
    def _legal_topic_name(cls, value: str, info: ValidationInfo) -> str:
        """Kafka topic names: ASCII letters, digits, '.', '_' and '-', 1 to 249 (TOPIC_NAME_MAX) characters,
        neither '.' nor '..'. The prefix may be empty, and is at most 186 (TOPIC_PREFIX_MAX) characters so
        that <prefix><event type> stays a topic name for every event type name the catalog allows."""
        if not _TOPIC_CHARS.fullmatch(value):
            raise ValueError(f"{value!r}: Kafka topic names take only ASCII letters, digits, '.', '_' and '-'")
        if info.field_name == "topic_prefix":
            if len(value) > TOPIC_PREFIX_MAX:
                raise ValueError(
                    f"the topic prefix has {len(value)} characters, at most {TOPIC_PREFIX_MAX}: a topic is "
                    f"<prefix><event type>, at most {TOPIC_NAME_MAX} characters, and an event type takes up to "
                    f"{EVENT_TYPE_NAME_MAX}"
                )
        elif value in ("", ".", ".."):
            raise ValueError(f"{value!r} is not a Kafka topic name")
        elif len(value) > TOPIC_NAME_MAX:
            raise ValueError(f"the topic name has {len(value)} characters, at most {TOPIC_NAME_MAX}")
        return value

    @model_validator(mode="after")
    def _grain_well_under_the_threshold(self) -> Self:
        """last_seen_at may lag by up to a grain: the sweep would mark a gateway that keeps
        talking OFFLINE if the grain came near the threshold."""
        if self.presence_grain_s * 4 >= self.presence_offline_after_s:
            raise ValueError(
                f"GATESTREAM_PRESENCE_GRAIN_S ({self.presence_grain_s}) must be under a quarter of "
                f"GATESTREAM_PRESENCE_OFFLINE_AFTER_S ({self.presence_offline_after_s}): last_seen_at lags the newest "
                "event by up to a grain"
            )
        return self

    def topic_for(self, event_type: str) -> str:
        return f"{self.topic_prefix}{event_type}"


class OpsServerSettings(BaseSettings):
    """The ops HTTP server of a long-running process (mixed into its settings)."""

    model_config = SettingsConfigDict(env_prefix="GATESTREAM_", extra="ignore")

    metrics_port: int | None = Field(None, description="Serve /metrics, /healthz and /readyz on this port.")


KafkaSecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]


class KafkaClientSettings(CommonSettings):
    """Client tuning shared by producers and consumers (see docs/broker notes in README), and
    how the client proves who it is (README, Security (Kafka))."""

    kafka_extra: dict[str, str | int | float | bool] = Field(
        default_factory=dict, description="Extra librdkafka properties, JSON object."
    )
    kafka_security_protocol: KafkaSecurityProtocol | None = Field(
        None,
        description="librdkafka security.protocol: PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL (ops/stack's broker). "
        "Unset: SASL_SSL when GATESTREAM_KAFKA_SASL_USERNAME is set, else PLAINTEXT.",
    )
    kafka_sasl_mechanism: str | None = Field(
        None,
        pattern=r"^[A-Z0-9-]+$",
        description="SASL mechanism; unset: SCRAM-SHA-512 when a user name is set.",
    )
    kafka_sasl_username: str | None = Field(
        None, min_length=1, description="The SCRAM user this process is (its principal: User:<name> in the ACLs)."
    )
    kafka_sasl_password: SecretStr | None = Field(
        None, description="That user's password (a secret: never logged, never in --help or a metric)."
    )
    kafka_ssl_ca_location: Path | None = Field(
        None, description="PEM file of the CA the broker's certificate is checked against (ops/stack: tls/ca.pem)."
    )

    @model_validator(mode="after")
    def _sasl_complete(self) -> Self:
        """A user name without a password (or the other way round) cannot log in: say so at start."""
        if (self.kafka_sasl_username is None) != (self.kafka_sasl_password is None):
            raise ValueError(
                "GATESTREAM_KAFKA_SASL_USERNAME and GATESTREAM_KAFKA_SASL_PASSWORD go together: set both or neither"
            )
        if self.kafka_sasl_username is not None and self.effective_security_protocol in ("PLAINTEXT", "SSL"):
            raise ValueError(
                f"GATESTREAM_KAFKA_SASL_USERNAME is set but GATESTREAM_KAFKA_SECURITY_PROTOCOL is "
                f"{self.effective_security_protocol}: a SASL user needs SASL_SSL (or SASL_PLAINTEXT)"
            )
        return self

    @property
    def effective_security_protocol(self) -> str:
        if self.kafka_security_protocol is not None:
            return self.kafka_security_protocol
        return "SASL_SSL" if self.kafka_sasl_username is not None else "PLAINTEXT"

    @property
    def kafka_principal(self) -> str:
        """Who the broker sees: User:<name>, or User:ANONYMOUS without SASL."""
        return f"User:{self.kafka_sasl_username or 'ANONYMOUS'}"


GroupProtocolSetting = Literal["auto", "classic", "consumer"]

GROUP_PROTOCOL_HELP = (
    "Consumer group protocol: 'auto' (default: 'consumer' where the broker offers it, asked once at start; "
    "'classic' where it does not or cannot tell, with a log line saying why), 'classic' (cooperative-sticky "
    "assignment, client-side session timeout; every Kafka >= 2.4 and managed Kafka) or 'consumer' (KIP-848, "
    "Kafka >= 4.0: the broker assigns partitions and owns session timeout and heartbeat, set by its "
    "group.consumer.* settings; members keep working while others join and leave)."
)

GROUP_INSTANCE_ID_HELP = (
    "Static membership (librdkafka group.instance.id), for the classic protocol: a member that restarts with "
    "the same id within session_timeout_ms gets its partitions back without a rebalance. Every process of the "
    "group needs its own id, stable across its restarts (e.g. the pod name of a StatefulSet); two live "
    "processes with one id fence each other. A static member that stops does not leave the group: its "
    "partitions wait session_timeout_ms. Unset = dynamic membership."
)


class GroupMemberSettings(KafkaClientSettings):
    """What a consumer-group member needs besides the broker: how it takes part in its group."""

    group_protocol: GroupProtocolSetting = Field("auto", description=GROUP_PROTOCOL_HELP)
    group_instance_id: str | None = Field(None, min_length=1, max_length=249, description=GROUP_INSTANCE_ID_HELP)
    session_timeout_ms: int = Field(10000, description="classic protocol only: a silent member's partitions move.")
    heartbeat_interval_ms: int = Field(3000, description="classic protocol only.")
    stop_grace_s: float = Field(
        5.0,
        gt=0,
        description="On SIGTERM/SIGINT the work in hand (a batch, a reconcile) gets this long to commit; past "
        "that a database that does not answer is cut off (its transaction rolls back, the next owner reads the "
        "events again) so the process still ends.",
    )


class ProducerSettings(KafkaClientSettings, OpsServerSettings):
    spool_path: Path = Field(Path("gatestream-spool.sqlite3"), description="Durable local spool file.")
    spool_synchronous: str = Field(
        "NORMAL",
        description="SQLite synchronous mode of the spool: NORMAL survives a process crash, FULL a power cut.",
    )
    max_in_flight: int = Field(20000, description="Events handed to the Kafka client but not yet acknowledged.")
    message_timeout_ms: int = Field(30000, description="After this an unacknowledged event is retried from the spool.")
    linger_ms: int = Field(
        5,
        ge=0,
        description="How long the Kafka client waits to fill a batch before sending (part of each event's latency).",
    )
    compression: str = Field("lz4")
    gateway_id: uuid.UUID | None = Field(
        None,
        description="The gateway this producer runs in: stamped on every record (header gatestream.gateway_id); "
        "ingest tracks the gateway's presence and checks each event's organization against it.",
    )
    agent_hostname: str | None = Field(
        None, max_length=255, description="The agent's host name where the gateway knows it (header)."
    )
    partitions: int = Field(6, description="Partitions per event topic when gatestream creates topics.")


class IngestSettings(GroupMemberSettings, OpsServerSettings):
    group_id: str = Field("gatestream-ingest", description="Consumer group; start more processes to scale.")
    batch_max_rows: int = Field(
        5000,
        ge=1,
        description="A micro-batch commits at this many rows at most (it grows to it while a backlog is read).",
    )
    batch_max_ms: int = Field(
        100, ge=0, description="A micro-batch commits this long after its first event at the latest."
    )
    batch_adaptive: bool = Field(
        True,
        description="Commit a micro-batch as soon as the consumer has nothing more buffered and the previous batch "
        "has committed (low latency at any rate, large batches while a backlog is read); false: only at "
        "batch_max_rows or batch_max_ms.",
    )
    earliest_event_time: datetime = Field(
        datetime(2000, 1, 1, tzinfo=UTC),
        description="Events whose time is before this go to the dead-letter topic (event-time-out-of-range): "
        "a gateway clock reset to 1970 or a corrupt value must not create absurd chunks.",
    )
    max_future_skew_s: float = Field(
        86400,
        ge=0,
        description="Events more than this many seconds ahead of the consumer's clock go to the dead-letter topic "
        "(event-time-out-of-range).",
    )
    fault_hooks: str | None = Field(
        None,
        description="Fault-injection runs only: points where the process kills itself, with odds "
        "(e.g. 'before-commit:0.05,on-revoke:0.2'), or commits that fail ('fail-commit:1'); see "
        "gatestream.consumers.faults. Never set in production.",
    )
    async_commit: bool = Field(
        False,
        description="Commit each batch with SET LOCAL synchronous_commit = off. Rows and offsets rewind together "
        "on a server crash, but a partition that receives nothing more after the crash keeps the rewound rows "
        "missing until its next event or rebalance. bench ingest measured no gain from it; leave it off.",
    )
    fetch_wait_max_ms: int = Field(
        20,
        description="How long the broker holds a fetch that finds nothing new (with fetch.min.bytes 1 it answers as "
        "soon as one event arrives: no latency added).",
    )
    stop_after_idle_s: float | None = Field(
        None,
        description="Exit 0 after this many seconds with no new events (demo, tests); unset = run forever.",
    )
    metrics_enabled: bool = Field(True, description="Record metrics (off only to measure their cost).")
    presence_tracking: bool = Field(
        True,
        description="Keep monitoring.gateway_instances/agent_instances from the events that name their gateway "
        "(the Publisher's gateway headers, or the record's field) and check that each such event's organization "
        "is its gateway's (else dead letter tenant-mismatch); false: neither (to measure their cost).",
    )
    unknown_gateway: Literal["register", "refuse"] = Field(
        "register",
        description="An event from a gateway not in monitoring.gateway_instances: register the gateway under the "
        "event's organization (first sight), or refuse the event (dead letter unknown-gateway) so only gateways "
        "the product registered are accepted.",
    )
    native_decode: Literal["auto", "off"] = Field(
        "auto",
        description="auto: decode Avro in the native transcoder where it is built and the database takes UTF-8 "
        "text (the start-up line 'avro decoding path' says which path runs, and why); off: always the Python "
        "path (to compare the two, or to rule the native one out).",
    )


CDC_TABLE = "monitoring.retention_policies"  # the one table captured (sql/052_policy_cdc.sql)


class CdcTopicSettings(BaseSettings):
    """Where Debezium writes the table's change events: <prefix>.monitoring.retention_policies."""

    model_config = SettingsConfigDict(env_prefix="GATESTREAM_", extra="ignore")

    cdc_topic_prefix: str = Field(
        "gatestream.cdc",
        min_length=1,
        max_length=200,
        pattern=r"^[A-Za-z0-9._-]+$",
        description="Debezium's topic.prefix: its change events of retention_policies go to "
        "<prefix>.monitoring.retention_policies.",
    )

    @property
    def cdc_topic(self) -> str:
        return f"{self.cdc_topic_prefix}.{CDC_TABLE}"


class CdcSettings(CommonSettings, CdcTopicSettings):
    """``gatestream cdc``: the Debezium connector that captures retention_policies, on Kafka Connect."""

    connect_url: str | None = Field(
        None, description="Kafka Connect's REST API (ops/stack: http://127.0.0.1:PORT); unset = no Connect here."
    )
    cdc_connector: str = Field(
        "gatestream-policies", pattern=r"^[A-Za-z0-9._-]+$", description="The connector's name on Connect."
    )
    cdc_slot: str = Field(
        "gatestream_policies",
        pattern=r"^[a-z0-9_]{1,63}$",
        description="The connector's logical replication slot (one per connector and database).",
    )
    cdc_publication: str = Field(
        "gatestream_policies", description="The publication it reads (created by sql/052_policy_cdc.sql)."
    )
    cdc_user: str = Field("gatestream_cdc", description="The role it logs in as (sql/052_policy_cdc.sql).")
    cdc_password: SecretStr | None = Field(
        None, description="That role's password: `gatestream cdc register` sets it on the role."
    )
    cdc_password_ref: str | None = Field(
        None,
        description="What the connector config says instead of the password: a Connect config-provider reference "
        "(e.g. ${file:/path/secrets.properties:cdc_password}), so the password is never in Connect's config topic "
        "or REST answers. Unset = the password itself.",
    )
    cdc_database_url: str | None = Field(
        None,
        description="The database as the Connect worker reaches it (host, port, database name); unset = "
        "GATESTREAM_DATABASE_URL. Always the server itself, never a pooler: a replication connection does not "
        "go through PgBouncer.",
    )
    cdc_heartbeat_ms: int = Field(
        10000,
        ge=1000,
        description="Debezium's heartbeat: lets the slot move on while the table is quiet and other tables write "
        "(else the slot pins the server's WAL).",
    )


ChangeSource = Literal["both", "events", "cdc"]


class PolicySettings(GroupMemberSettings, OpsServerSettings, CdcTopicSettings):
    """The policy consumer and the ``gatestream policy`` commands."""

    policy_topic: str = Field("gatestream.policy-changes", description="Change events of retention_policies.")
    policy_change_source: ChangeSource = Field(
        "both",
        description="What the policy consumer reconciles on besides its periodic run: 'events' (the policy topic, "
        "written by `gatestream policy set/delete`), 'cdc' (Debezium's change events of the table, "
        "<cdc_topic_prefix>.monitoring.retention_policies: every writer of the table) or 'both' (ops/stack runs "
        "Connect; without it the CDC topic stays empty and 'both' works as 'events').",
    )
    policy_group_id: str = Field("gatestream-policy", description="Consumer group of the policy consumer.")
    default_retention_days: int = Field(365, ge=1, description="Retention where the table has no default row.")
    compress_after_days: int = Field(60, ge=1, description="Compress chunks older than this (Community edition).")
    cagg_retention_days: int = Field(
        400,
        ge=1,
        description="Retention of the daily aggregates (monitoring.active_windows_daily, visited_sites_daily).",
    )
    hourly_aggregate_retention_days: int = Field(
        90,
        ge=1,
        description="Retention of the hourly aggregates (monitoring.active_windows_hourly, visited_sites_hourly).",
    )
    cagg_refresh_window_days: int = Field(
        3,
        ge=1,
        description="Community edition: how far back each refresh of a continuous aggregate looks; events arriving "
        "later than that count once gatestream.refresh_dashboard_aggregates covers their day. (The Apache edition's "
        "refresh takes every row inserted since its last run, however old its time.)",
    )
    aggregate_refresh_interval_s: int = Field(
        300, ge=60, description="How often the dashboards' aggregates are refreshed (their staleness, at most)."
    )
    chunk_retention_interval_s: int = Field(86400, ge=60, description="How often whole expired chunks are dropped.")
    row_retention_interval_s: int = Field(
        3600, ge=60, description="How often each organization's expired rows are deleted (its maximum delay)."
    )

    @field_validator("chunk_retention_interval_s", "row_retention_interval_s", "aggregate_refresh_interval_s")
    @classmethod
    def _cron_repeats_it_exactly(cls, value: int) -> int:
        """These jobs run on pg_cron under the Apache edition, which repeats only some
        intervals exactly (gatestream.cron): refused at start on either edition, so one
        configuration works on both."""
        problem = unschedulable(value)
        if problem is not None:
            raise ValueError(f"{problem}; pg_cron can run a job exactly every {EXPRESSIBLE}")
        return value

    compression_interval_s: int = Field(43200, ge=60)
    full_reconcile_interval_s: float = Field(300, gt=0, description="Full reconcile (drift repair) period.")


class ImportSettings(CommonSettings):
    """``gatestream import``: a legacy plain-PostgreSQL table into its hypertable (the target is
    GATESTREAM_DATABASE_URL)."""

    import_source_url: str | None = Field(
        None, description="The legacy database's connection URL (read only: the import sets its session read-only)."
    )
    import_source_name: str | None = Field(
        None,
        min_length=1,
        description="Names the source in the checkpoint (default: host:port/dbname of the source URL). Set it when "
        "the same legacy database is reached under another address, so a run resumes instead of starting over.",
    )
    import_batch_rows: int = Field(
        50_000, ge=1, le=10_000_000, description="Rows per batch (one source query, one target transaction)."
    )
    import_pause_s: float = Field(
        0.0, ge=0, description="Pause between batches, so the legacy database keeps serving its application."
    )
