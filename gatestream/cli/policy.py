"""``gatestream policy ...`` and ``gatestream policy-consumer``: retention policies into jobs."""

from __future__ import annotations

import argparse
import functools
import json
import sys
from collections.abc import Callable
from typing import Any

import psycopg

from gatestream.consumers.policy.engines import EngineUnavailable
from gatestream.consumers.policy.model import JobKind, PolicyError
from gatestream.database import connect_once
from gatestream.roles import POLICY_NEEDS, require
from gatestream.settings import PolicySettings


def _positive(value: str) -> int:
    try:
        n = int(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {value!r}") from exc
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {n}")
    return n


def _one_line(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """What the policy engine refuses (a missing migration or pg_cron, a policy table that
    cannot be reconciled) is the operator's to fix: one line and exit 1, no traceback."""

    @functools.wraps(fn)
    def run(args: argparse.Namespace) -> int:
        try:
            return fn(args)
        except (EngineUnavailable, PolicyError) as exc:
            name = f"policy {args.policy_command}" if getattr(args, "policy_command", None) else args.command
            print(f"gatestream {name}: {exc}", file=sys.stderr)
            return 1

    return run


def _engine(conn: psycopg.Connection[Any], settings: PolicySettings) -> Any:
    from gatestream.consumers.policy.reconcile import make_engine

    engine = make_engine(conn, settings)
    engine.prepare()
    return engine


def print_plan(plan: Any, out: Any = sys.stdout) -> None:
    print(
        f"engine: {plan.engine} (TimescaleDB {plan.edition} edition); planned in {plan.seconds * 1000:.0f} ms", file=out
    )
    for reason in plan.state.unavailable:
        print(f"unavailable: {reason}", file=out)
    print(f"\n{'resource':<28}{'default':>9}{'longest':>9}{'overrides':>11}{'shorter':>9}", file=out)
    for rt, p in sorted(plan.state.policies.items()):
        print(f"{rt:<28}{p.default_days:>9}{p.max_days:>9}{p.overrides:>11}{p.shorter:>9}", file=out)
    print(f"\njobs: {len(plan.state.jobs)} wanted, {plan.unchanged} as wanted, {len(plan.changes)} to change", file=out)
    for c in plan.changes:
        print(f"  {c.describe()}", file=out)
    if plan.foreign:
        print(f"\nforeign jobs (not on our tables; left alone): {len(plan.foreign)}", file=out)
        for j in plan.foreign:
            print(f"  foreign {j.key} (job {j.job_id})", file=out)
    if plan.impact:
        print("\nwould delete now (rows per organization; whole chunks past the longest retention):", file=out)
        for item in plan.impact:
            rows = item["rows_to_delete"]
            detail = ", ".join(f"org {o}: {n}" for o, n in list(rows.items())[:20]) or "nothing"
            more = f" (+{len(rows) - 20} more organizations)" if len(rows) > 20 else ""
            print(f"  {item['hypertable']}: {item['chunks_to_drop']} chunks; {detail}{more}", file=out)


@_one_line
def cmd_plan(args: argparse.Namespace) -> int:
    from gatestream.consumers.policy.reconcile import impact, make_plan

    settings = PolicySettings()
    with connect_once(settings.database_url) as conn:
        plan = make_plan(conn, settings, _engine(conn, settings))
        if not args.no_impact:
            plan.impact = impact(conn, plan.state.policies)
    if args.json:
        print(
            json.dumps(
                {
                    "engine": plan.engine,
                    "edition": plan.edition,
                    "unchanged": plan.unchanged,
                    "changes": [c.describe() for c in plan.changes],
                    "foreign": [f"{j.key} (job {j.job_id})" for j in plan.foreign],
                    "unavailable": plan.state.unavailable,
                    "impact": plan.impact,
                }
            )
        )
    else:
        print_plan(plan)
    return 0


@_one_line
def cmd_apply(args: argparse.Namespace) -> int:
    from gatestream.consumers.policy.reconcile import reconcile

    settings = PolicySettings()
    with connect_once(settings.database_url) as conn:
        require(conn, POLICY_NEEDS)
        plan = reconcile(conn, settings, _engine(conn, settings))
    print_plan(plan)
    print("applied" if plan.changes else "nothing to change")
    return 0


def _publish(settings: PolicySettings, event: dict[str, Any]) -> None:
    from confluent_kafka import Producer

    from gatestream.kafka import base_config
    from gatestream.topics import ensure_topics

    ensure_topics(settings, [settings.policy_topic], partitions=1)
    p = Producer({**base_config(settings), "enable.idempotence": True})
    p.produce(settings.policy_topic, key=event["resource_type"].encode(), value=json.dumps(event).encode())
    if p.flush(15) != 0:
        raise RuntimeError(f"the change event was not delivered to {settings.policy_topic}")


def cmd_set(args: argparse.Namespace) -> int:
    settings = PolicySettings()
    with connect_once(settings.database_url) as conn:
        try:
            conn.execute(
                """INSERT INTO monitoring.retention_policies (organization_id, resource_type, retention_days, action)
                   VALUES (%s, %s, %s, 'delete')
                   ON CONFLICT (resource_type, organization_id)
                   DO UPDATE SET retention_days = excluded.retention_days, updated_at = now()""",
                (args.org, args.resource, args.days),
            )
        except psycopg.errors.ForeignKeyViolation:
            known = [r[0] for r in conn.execute("SELECT resource_type FROM gatestream.retention_resources")]
            print(
                f"gatestream policy set: unknown resource type {args.resource!r}; known: {', '.join(known)}",
                file=sys.stderr,
            )
            return 2
    _publish(settings, {"resource_type": args.resource, "organization_id": args.org, "op": "set"})
    who = f"organization {args.org}" if args.org is not None else "the default"
    print(f"{args.resource}: {who} keeps {args.days} days (change event published to {settings.policy_topic})")
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    settings = PolicySettings()
    with connect_once(settings.database_url) as conn:
        n = conn.execute(
            "DELETE FROM monitoring.retention_policies WHERE resource_type = %s "
            "AND organization_id IS NOT DISTINCT FROM %s",
            (args.resource, args.org),
        ).rowcount
    if not n:
        print("no such policy", file=sys.stderr)
        return 1
    _publish(settings, {"resource_type": args.resource, "organization_id": args.org, "op": "delete"})
    print(f"{args.resource}: policy of {'organization ' + str(args.org) if args.org else 'the default'} removed")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    settings = PolicySettings()
    with connect_once(settings.database_url, autocommit=False) as conn:
        rows = conn.execute(
            "SELECT resource_type, organization_id, retention_days, action, updated_at "
            "FROM monitoring.retention_policies ORDER BY 1, 2 NULLS FIRST"
        ).fetchall()
    print(f"{'resource':<28}{'organization':>14}{'days':>7}  action  updated")
    for rt, org, days, action, upd in rows:
        print(f"{rt:<28}{'default' if org is None else org:>14}{days:>7}  {action:<6}  {upd:%Y-%m-%d %H:%M}")
    print(f"({len(rows)} policies; resource types without a default keep {settings.default_retention_days} days)")
    return 0


@_one_line
def cmd_run_jobs(args: argparse.Namespace) -> int:
    settings = PolicySettings()
    with connect_once(settings.database_url) as conn:
        engine = _engine(conn, settings)
        jobs = engine.actual()
        for key in sorted(jobs, key=lambda k: (not k.startswith("retention:"), k)):  # whole chunks first
            if args.kind and not key.startswith(args.kind + ":"):
                continue
            engine.run_now(jobs[key])
            print(f"ran {key}")
    return 0


@_one_line
def cmd_consumer(args: argparse.Namespace) -> int:
    from gatestream.consumers.policy.consumer import PolicyConsumer
    from gatestream.httpserver import OpsServer
    from gatestream.kafka_access import KafkaNeeds
    from gatestream.kafka_access import require as kafka_require

    overrides = {
        k: v
        for k, v in (("metrics_port", args.metrics_port), ("full_reconcile_interval_s", args.full_interval))
        if v is not None
    }
    settings = PolicySettings(**overrides)
    needs = KafkaNeeds(
        read=(settings.policy_topic, settings.cdc_topic),
        write=(settings.dlq_topic,),
        groups=(settings.policy_group_id,),
    )
    kafka_require(settings, needs)
    pc = PolicyConsumer(settings)
    server = OpsServer(settings.metrics_port, pc.ready).start() if settings.metrics_port else None
    try:
        pc.run()
    finally:
        if server is not None:
            server.stop()
    return 0


def add_parsers(sub: Any) -> None:
    pol = sub.add_parser(
        "policy",
        help="retention policies: list, set, delete, plan, apply, run-jobs",
        description="Per-organization retention (monitoring.retention_policies) reconciled into TimescaleDB "
        "jobs (Community edition) or pg_cron jobs (Apache edition). Jobs grow with hypertables, not with "
        "organizations.",
    ).add_subparsers(dest="policy_command", required=True, metavar="ACTION")
    pol.add_parser("list", help="the policies in the table").set_defaults(fn=cmd_list)
    for name, fn, text in (
        ("set", cmd_set, "set a retention (upsert) and publish a change event"),
        ("delete", cmd_delete, "remove a policy and publish a change event"),
    ):
        p = pol.add_parser(name, help=text)
        p.add_argument("--resource", required=True, help="resource type (a hypertable), e.g. active_windows")
        p.add_argument("--org", type=_positive, help="organization id (omit for the resource type's default)")
        if name == "set":
            p.add_argument("--days", type=_positive, required=True, help="keep this many days")
        p.set_defaults(fn=fn)
    pp = pol.add_parser("plan", help="print the jobs to add/alter/delete and what they would delete; change nothing")
    pp.add_argument("--no-impact", action="store_true", help="skip counting what would be deleted (large tables)")
    pp.add_argument("--json", action="store_true", help="print JSON")
    pp.set_defaults(fn=cmd_plan)
    pol.add_parser("apply", help="make the jobs match the table (what the consumer does continuously)").set_defaults(
        fn=cmd_apply
    )
    rj = pol.add_parser("run-jobs", help="run the reconciled jobs now (chunk drops first)")
    rj.add_argument(
        "--kind",
        choices=[k.value for k in JobKind],
        help="only jobs of this kind",
    )
    rj.set_defaults(fn=cmd_run_jobs)

    pc = sub.add_parser("policy-consumer", help="run the policy consumer (change events + periodic drift repair)")
    pc.add_argument("--metrics-port", type=int, help="serve /metrics, /healthz, /readyz on this port")
    pc.add_argument("--full-interval", type=float, help="seconds between full reconciles (default 300)")
    pc.set_defaults(fn=cmd_consumer)
