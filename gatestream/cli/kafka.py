"""``gatestream kafka``: the broker's side of least privilege (ACLs) and a principal's check."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from gatestream.cli.args import UsageError

NEEDS_HELP = (
    "what the process of ROLE needs: gateway (write the event topics), ingest (read them and its group, write "
    "the dead-letter topic), replay (read them, write the dead-letter topic), policy (read the policy and CDC "
    "topics and its group, write the dead-letter topic), exporter (describe)"
)


def cmd_acls(args: argparse.Namespace) -> int:
    from confluent_kafka import KafkaError, KafkaException

    from gatestream.kafka_acls import AclSettings, ensure, plan

    settings = AclSettings()
    if args.acls_command == "plan":
        for acl in plan(settings):
            print(acl)
        return 0
    try:
        todo, present = ensure(settings, dry_run=args.dry_run)
    except KafkaException as exc:
        err = exc.args[0]
        if err.code() == KafkaError.SECURITY_DISABLED:
            raise UsageError(
                f"the broker at {settings.bootstrap_servers} has no authorizer (a plain broker): no ACLs to make"
            ) from None
        if err.code() == KafkaError.CLUSTER_AUTHORIZATION_FAILED:
            raise UsageError(
                f"{settings.kafka_principal} may not manage ACLs: run this as the admin (ops/stack env)"
            ) from None
        raise
    verb = "would create" if args.dry_run else "created"
    for acl in todo:
        print(f"{verb}: {acl}")
    print(f"ACLs: {len(todo)} {verb}, {len(present)} already there")
    return 0


def needs_of(role: str, settings: Any) -> Any:
    """The topics and groups a role's process needs (the same ``probe`` the processes run)."""
    from gatestream.kafka_access import KafkaNeeds
    from gatestream.schemas import event_topics

    events = tuple(sorted(event_topics(settings)))
    return {
        "gateway": KafkaNeeds(write=events),
        "ingest": KafkaNeeds(read=events, write=(settings.dlq_topic,), groups=(settings.group_id,)),
        "replay": KafkaNeeds(read=events, write=(settings.dlq_topic,)),
        "policy": KafkaNeeds(
            read=(settings.policy_topic, settings.cdc_topic),
            write=(settings.dlq_topic,),
            groups=(settings.policy_group_id,),
        ),  # fmt: skip
        "exporter": KafkaNeeds(describe=(*events, settings.dlq_topic)),
    }[role]


def cmd_check(args: argparse.Namespace) -> int:
    from gatestream.kafka_access import probe
    from gatestream.kafka_acls import AclSettings

    settings = AclSettings()
    if not probe(settings, needs_of(args.role, settings)):
        print(f"gatestream kafka check: no answer from the broker at {settings.bootstrap_servers}", file=sys.stderr)
        return 1
    print(f"{settings.kafka_principal} may do the {args.role}'s job on {settings.bootstrap_servers}")
    return 0


def add_parsers(sub: Any) -> None:
    k = sub.add_parser(
        "kafka",
        help="Kafka access: the principals' ACLs, and whether this process's user may do a role's job",
        description="Kafka access. The stack's broker takes SASL_SSL with SCRAM-SHA-512 users and enforces ACLs; "
        "the user and password come from GATESTREAM_KAFKA_SASL_USERNAME / _PASSWORD (ops/stack env PRINCIPAL).",
    ).add_subparsers(dest="kafka_command", required=True, metavar="COMMAND")
    acls = k.add_parser("acls", help="the ACLs of gatestream's principals").add_subparsers(
        dest="acls_command", required=True, metavar="COMMAND"
    )
    acls.add_parser(
        "plan", help="print every ACL the principals need (from the settings and the schema catalog; no broker)"
    ).set_defaults(fn=cmd_acls)
    en = acls.add_parser(
        "ensure",
        help="create the ACLs the broker lacks, as the admin; leaves every other ACL alone",
        description="Create the ACLs of gatestream's principals (gateway, ingest, replay, policy, exporter, connect) "
        "that the broker lacks. Run as the admin (a super user). Idempotent: a second run creates none.",
    )
    en.add_argument("--dry-run", action="store_true", help="print what would be created, create nothing")
    en.set_defaults(fn=cmd_acls)
    ch = k.add_parser(
        "check",
        help="ask the broker whether this user may do a role's job (exit 2 with one line if not)",
    )
    ch.add_argument("role", choices=["gateway", "ingest", "replay", "policy", "exporter"], help=NEEDS_HELP)
    ch.set_defaults(fn=cmd_check)
