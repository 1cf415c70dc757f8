"""The long-running policy consumer: reconcile on change events and periodically.

Change events (JSON on the policy topic, from ``gatestream policy set/delete`` or any
other writer: ``{"resource_type": "...", "organization_id": 12 | null, "op": "set" |
"delete"}``; and Debezium's change events of the table itself on the CDC topic, from any
writer of it, see ``changes`` and gatestream.cdc; GATESTREAM_POLICY_CHANGE_SOURCE picks
which) only say that something changed; the table is the truth, so every
reconcile is a full, idempotent one. A periodic reconcile repairs drift (jobs deleted,
altered or added by hand). The consumer's offsets are stored in the database in the
same transaction as the job changes (when pg_cron lives in the same database, or on
the Community edition), through the same offset store and checkpoint as the ingest
consumers (``consumers.offsets``, ``consumers.checkpoint``): an invalid event is
dead-lettered once, and its offset moves only with the reconcile that follows it. Once
stored they are mirrored to Kafka's group (asynchronously, never read back), so lag tools
see the policy consumer as they see ingest.

The presence sweep (marking silent gateways and agents OFFLINE) is one of the reconciled
jobs (``JobKind.PRESENCE_SWEEP``): it runs on the database's scheduler, not in this loop,
so it keeps running while this consumer is down or restarting.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import psycopg
import structlog
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from gatestream.consumers.checkpoint import Checkpoint
from gatestream.consumers.deadletter import DeadLetterError, DeadLetters, Reason, Reject
from gatestream.consumers.offsets import FencedError, Moves, OffsetStore, mirror_to_kafka, start_of
from gatestream.consumers.policy import metrics
from gatestream.consumers.policy.changes import parse_change
from gatestream.consumers.policy.model import PolicyError
from gatestream.consumers.policy.reconcile import Plan, impact, make_engine, reconcile
from gatestream.database import connect, connect_once, sever
from gatestream.kafka import base_config, group_config
from gatestream.kafka_access import AUTHORIZATION_FAILURES, is_authorization_error
from gatestream.roles import POLICY_NEEDS, require
from gatestream.settings import PolicySettings
from gatestream.signals import on_stop_signals
from gatestream.topics import ensure_topics
from gatestream.waiting import after_stuck_stop

log = structlog.get_logger("gatestream.policy")

TP = tuple[str, int]
KNOWN_OPS = {"set", "delete"}


def parse_event(value: bytes | None, known: set[str]) -> dict[str, Any]:
    """A policy change event, or ValueError saying what is wrong with it."""
    if value is None:
        raise ValueError("empty message")
    try:
        ev = json.loads(value)
    except ValueError as exc:
        raise ValueError(f"not JSON: {exc}") from exc
    if not isinstance(ev, dict):
        raise ValueError("not a JSON object")
    rt, org, op = ev.get("resource_type"), ev.get("organization_id"), ev.get("op", "set")
    if rt not in known:
        raise ValueError(f"unknown resource_type {str(rt)[:80]!r}; known: {sorted(known)}")
    if org is not None and (not isinstance(org, int) or isinstance(org, bool) or org < 1):
        raise ValueError(f"organization_id must be a positive integer or null, got {str(org)[:40]!r}")
    if op not in KNOWN_OPS:
        raise ValueError(f"op must be one of {sorted(KNOWN_OPS)}, got {str(op)[:40]!r}")
    return {"resource_type": rt, "organization_id": org, "op": op}


class PolicyConsumer:
    def __init__(self, settings: PolicySettings) -> None:
        self.settings = settings
        self.stop_event = threading.Event()
        self.conn = connect(settings.database_url, stop=self.stop_event)
        require(self.conn, POLICY_NEEDS)  # a role without a grant: one line and exit 2, now
        self.engine = make_engine(self.conn, settings)
        self.engine.prepare()
        self.known = {r[0] for r in self.conn.execute("SELECT resource_type FROM gatestream.retention_resources")}
        conf = {
            **base_config(settings),
            **group_config(settings, settings.policy_group_id),
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "fetch.wait.max.ms": 50,
        }
        self.consumer = Consumer(conf)
        self.dead_letters = DeadLetters(base_config(settings), settings.dlq_topic, settings.policy_group_id)
        self.offsets = OffsetStore(settings.policy_group_id, settings.database_url, stop=self.stop_event)
        self.checkpoint = Checkpoint(self.offsets, self.dead_letters)
        self.last_plan: Plan | None = None
        self.runs = 0
        self.topics = self.change_topics(settings)

    @staticmethod
    def change_topics(settings: PolicySettings) -> list[str]:
        """The topics whose messages trigger a reconcile, by GATESTREAM_POLICY_CHANGE_SOURCE."""
        source = settings.policy_change_source
        return [
            *([settings.policy_topic] if source in ("events", "both") else []),
            *([settings.cdc_topic] if source in ("cdc", "both") else []),
        ]

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        claimed = self.offsets.claim((p.topic, p.partition) for p in partitions)
        for p in partitions:
            p.offset = start_of(claimed[(p.topic, p.partition)])
        consumer.incremental_assign(partitions)

    def _mirror_to_kafka(self, moves: Moves) -> None:
        """The offsets just stored, to Kafka's group for lag tools (as ingest does); never read
        back: the database's, committed with the reconcile, rule."""
        mirror_to_kafka(self.consumer, {tp: new for tp, (_, new) in moves.items()})

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.offsets.release((p.topic, p.partition) for p in partitions)

    def reconcile_now(
        self,
        trigger: str,
        moves: Moves | None = None,
        rejects: list[Reject] | None = None,
        changed: set[str] | None = None,
    ) -> Plan:
        """Reconcile; with ``moves``, the change events' checkpoint joins its transaction.
        With ``changed``, the data the next job runs delete for those resource types is said
        too, before the "reconciled" line: that line ends the database work of an event."""
        t0 = time.perf_counter()

        def checkpoint() -> None:
            if moves:
                self.checkpoint.commit(self.conn, moves, rejects or [])

        try:
            plan = reconcile(self.conn, self.settings, self.engine, also=checkpoint)
        except PolicyError as exc:
            # The table holds something we refuse; nothing was executed. The events carry no
            # state of their own, so move past them: the fixed table is reconciled on the
            # next event or periodic run.
            metrics.RECONCILE_RUNS.labels(trigger, "refused").inc()
            log.error("reconcile refused", error=str(exc))
            if moves:
                with self.conn.transaction():
                    checkpoint()
                self.offsets.advanced(moves)
                self._mirror_to_kafka(moves)
            raise
        except Exception:
            metrics.RECONCILE_RUNS.labels(trigger, "error").inc()
            raise
        metrics.RECONCILE_RUNS.labels(trigger, "ok").inc()
        metrics.RECONCILE_SECONDS.observe(time.perf_counter() - t0)
        metrics.JOBS.set(len(plan.state.jobs))
        for c in plan.changes:
            metrics.JOBS_CHANGED.labels(c.action).inc()
        if trigger == "periodic" and plan.changes:
            metrics.DRIFT_FOUND.inc(len(plan.changes))
            log.warning("drift repaired", changes=[c.describe() for c in plan.changes])
        if moves:
            self.offsets.advanced(moves)
            self._mirror_to_kafka(moves)
        self.last_plan = plan
        self.runs += 1
        if changed:
            self._log_deletions(plan, changed)
        log.info(
            "reconciled",
            trigger=trigger,
            engine=plan.engine,
            changes=len(plan.changes),
            unchanged=plan.unchanged,
            jobs=len(plan.state.jobs),
            seconds=round(time.perf_counter() - t0, 3),
        )
        return plan

    def _log_deletions(self, plan: Plan, changed: set[str]) -> None:
        """A policy change may delete data without changing any job (an organization's days
        shrank below the others'): say what the next runs will delete."""
        if plan.impact:  # already logged with the job changes
            return
        policies = {rt: p for rt, p in plan.state.policies.items() if rt in changed}
        for item in impact(self.conn, policies):
            if item["chunks_to_drop"] or item["rows_to_delete"]:
                log.warning("retention will delete data at the next job run", **item)

    def _handle(self, msgs: list[Message]) -> None:
        ends: dict[TP, int] = {}
        rejects: list[Reject] = []
        changed: set[str] = set()
        for m in msgs:
            err = m.error()
            if err is not None:
                if is_authorization_error(err):  # an ACL missing: an outage, nothing read (or lost)
                    AUTHORIZATION_FAILURES.labels("consume").inc()
                    log.error("Kafka refused the policy consumer: waiting for an ACL", error=str(err))
                elif err.code() != KafkaError._PARTITION_EOF:
                    log.warning("consumer error", error=str(err))
                continue
            tp = (m.topic() or "", m.partition() or 0)
            if tp not in self.offsets.expected:
                continue  # from before a revoke
            ends[tp] = (m.offset() or 0) + 1
            if tp[0] == self.settings.cdc_topic:
                self._change(m, tp, changed, rejects)
                continue
            try:
                ev = parse_event(m.value(), self.known)
                changed.add(ev["resource_type"])
                metrics.POLICY_EVENTS.labels("ok").inc()
                log.info("policy change event", **ev, partition=tp[1], offset=m.offset())
            except ValueError as exc:
                metrics.POLICY_EVENTS.labels("invalid").inc()
                log.warning("invalid policy change event", error=str(exc), partition=tp[1], offset=m.offset())
                rejects.append(Reject(m, Reason.INVALID_POLICY_EVENT, str(exc), type(exc).__name__))
        moves = self.offsets.moves(ends)
        if moves:
            try:
                self.reconcile_now("event", moves, rejects, changed)
            except FencedError as exc:
                log.warning("offsets moved by another policy consumer; re-reading", partitions=exc.partitions)
                for tp, off in self.offsets.reload(list(moves)).items():
                    self.consumer.seek(TopicPartition(tp[0], tp[1], start_of(off)))

    def _change(self, m: Message, tp: TP, changed: set[str], rejects: list[Reject]) -> None:
        """One message of the CDC topic: a change of the table, a tombstone, or a dead letter."""
        try:
            ch = parse_change(m.value())
        except ValueError as exc:
            metrics.POLICY_EVENTS.labels("invalid").inc()
            log.warning("invalid change event", error=str(exc), topic=tp[0], partition=tp[1], offset=m.offset())
            rejects.append(Reject(m, Reason.INVALID_CHANGE_EVENT, str(exc), type(exc).__name__))
            return
        if ch is None:
            return  # a tombstone: its delete came just before
        if ch["resource_type"] is not None:
            changed.add(ch["resource_type"])
        metrics.POLICY_EVENTS.labels("ok").inc()
        log.info("table change", **ch, topic=tp[0], partition=tp[1], offset=m.offset())

    def _reconnect(self) -> None:
        try:
            self.conn.close()
            self.conn = connect_once(self.settings.database_url)
            self.engine = make_engine(self.conn, self.settings)
        except psycopg.OperationalError:
            pass  # still down: the loop retries

    def _rewind(self) -> None:
        """After a failed checkpoint: read the change events again from the stored offsets."""
        for (topic, partition), off in self.offsets.expected.items():
            try:
                self.consumer.seek(TopicPartition(topic, partition, start_of(off)))
            except KafkaException as exc:
                log.warning("seek failed; events re-read after the next rebalance", error=str(exc))

    def request_stop(self, *_: Any) -> None:
        self.stop_event.set()

    def run(self) -> None:
        on_stop_signals(self.request_stop)
        # events stay in order; the CDC topic is made here too, so the consumer runs before Connect does
        ensure_topics(self.settings, self.topics, partitions=1)
        self.consumer.subscribe(self.topics, on_assign=self._on_assign, on_revoke=self._on_revoke)
        log.info(
            "policy consumer started",
            engine=self.engine.name,
            topics=self.topics,
            change_source=self.settings.policy_change_source,
        )
        next_full = 0.0  # a full reconcile at start
        finished = threading.Event()
        after_stuck_stop(self.stop_event, finished, self.settings.stop_grace_s, self._cut_database)
        try:
            while not self.stop_event.is_set():
                try:
                    msgs = self.consumer.consume(num_messages=500, timeout=0.5)
                    if msgs:
                        self._handle(msgs)
                    if time.monotonic() >= next_full:
                        next_full = time.monotonic() + self.settings.full_reconcile_interval_s
                        self.reconcile_now("periodic" if self.runs else "startup")
                except PolicyError:
                    pass  # logged; retried on the next event or period
                except psycopg.OperationalError as exc:
                    log.error("database unreachable; retrying", error=str(exc).strip())
                    if self.stop_event.wait(2):
                        break
                    self._reconnect()
                    self._rewind()
                except DeadLetterError as exc:
                    log.error("dead-letter topic unavailable; change events will be read again", error=str(exc))
                    self.stop_event.wait(2)
                    self._rewind()
        except (psycopg.OperationalError, psycopg.InterfaceError):  # while stopping: that is the stop
            if not self.stop_event.is_set():
                raise
        finally:
            try:
                self.consumer.close()
            except (KafkaException, RuntimeError, psycopg.Error):
                pass
            self.dead_letters.close()
            self.offsets.close()
            self.conn.close()
            finished.set()
        log.info("policy consumer stopped", reconciles=self.runs)

    def _cut_database(self) -> None:
        """Stopping, and the reconcile in hand did not end within ``stop_grace_s``: cut
        the database links a hung server holds the process on (the transaction rolls back)."""
        sever(self.conn)
        self.offsets.sever()
        cron = getattr(self.engine, "cron", None)  # pg_cron's own database, when it is another one
        if isinstance(cron, psycopg.Connection) and cron is not self.conn:
            sever(cron)

    def ready(self) -> tuple[bool, str]:
        if self.last_plan is None:
            return False, "no reconcile yet"
        return True, f"ok: {len(self.last_plan.state.jobs)} jobs ({self.engine.name})"
