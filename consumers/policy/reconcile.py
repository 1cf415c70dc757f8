"""Plan and apply: the diff between desired and actual jobs, and what it would delete.

Level-triggered and idempotent: a plan is computed from the table and the jobs as they
are now, whatever event led here; applying a plan with no changes changes nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg
import structlog

from gatestream.consumers.policy.engines import ActualJob, CronJobs, Engine, TimescaleJobs
from gatestream.consumers.policy.model import DesiredJob, DesiredState, ResourcePolicy, desired_state
from gatestream.edition import Edition, timescaledb_edition
from gatestream.settings import PolicySettings

log = structlog.get_logger("gatestream.policy")


@dataclass(frozen=True)
class Change:
    action: str  # add | alter | delete
    key: str
    want: DesiredJob | None
    have: ActualJob | None

    def describe(self) -> str:
        if self.action == "add" and self.want:
            return f"add    {self.key}: {self.want.describe()}"
        if self.action == "alter" and self.want and self.have:
            return f"alter  {self.key}: {self.have.schedule} {self.have.params} -> {self.want.describe()}"
        return f"delete {self.key} (job {self.have.job_id if self.have else '?'})"


@dataclass
class Plan:
    engine: str
    edition: str
    changes: list[Change]
    unchanged: int
    state: DesiredState
    seconds: float = 0.0
    impact: list[dict[str, Any]] = field(default_factory=list)
    foreign: list[ActualJob] = field(default_factory=list)  # other tables' jobs: listed, left alone

    @property
    def empty(self) -> bool:
        return not self.changes


def make_engine(conn: psycopg.Connection[Any], settings: PolicySettings) -> Engine:
    """The Community edition's own jobs where available, pg_cron otherwise."""
    if timescaledb_edition(conn) is Edition.COMMUNITY:
        return TimescaleJobs(conn)
    return CronJobs.connect(conn, settings.database_url)


def make_plan(conn: psycopg.Connection[Any], settings: PolicySettings, engine: Engine) -> Plan:
    t0 = time.perf_counter()
    edition = timescaledb_edition(conn)
    state = desired_state(conn, settings, edition)
    have = engine.actual()
    changes: list[Change] = []
    unchanged = 0
    for key, want in state.jobs.items():
        got = have.get(key)
        if got is None:
            changes.append(Change("add", key, want, None))
        elif not engine.matches(want, got):
            changes.append(Change("alter", key, want, got))
        else:
            unchanged += 1
    for key, got in have.items():
        if key not in state.jobs:  # ours (by name) but not wanted, or a duplicate made by hand
            changes.append(Change("delete", key, None, got))
    foreign = engine.foreign()
    return Plan(engine.name, edition, changes, unchanged, state, time.perf_counter() - t0, foreign=foreign)


def apply_plan(plan: Plan, engine: Engine) -> None:
    """Make the plan so, in the caller's transaction (jobs APIs and pg_cron are transactional)."""
    for c in plan.changes:
        if c.action == "add" and c.want:
            engine.add(c.want)
        elif c.action == "alter" and c.want and c.have:
            engine.alter(c.have, c.want)
        elif c.action == "delete" and c.have:
            engine.delete(c.have)
        log.info("job changed", change=c.describe(), engine=plan.engine)


def impact(conn: psycopg.Connection[Any], policies: dict[str, ResourcePolicy]) -> list[dict[str, Any]]:
    """What the jobs would delete if they ran now: rows per organization and chunks, per hypertable."""
    out: list[dict[str, Any]] = []
    for rt, pol in sorted(policies.items()):
        # counted by the owner (sql/054): the policy role reads no event row
        row = conn.execute(
            "SELECT gatestream.retention_impact(%s::regclass, %s, %s)",
            (pol.resource.hypertable, pol.default_days, pol.max_days),
        ).fetchone()
        found: dict[str, Any] = row[0] if row and row[0] else {}
        rows = sorted((int(org), int(n)) for org, n in (found.get("rows_to_delete") or {}).items())
        out.append({
            "resource_type": rt, "hypertable": pol.resource.hypertable, "max_days": pol.max_days,
            "default_days": pol.default_days, "chunks_to_drop": int(found.get("chunks_to_drop") or 0),
            "rows_to_delete": dict(rows),
        })  # fmt: skip
    return out


def reconcile(
    conn: psycopg.Connection[Any],
    settings: PolicySettings,
    engine: Engine,
    *,
    with_impact: bool = True,
    also: Callable[[], None] | None = None,
) -> Plan:
    """Plan, log what the change would delete, apply - one transaction, which ``also`` joins
    (the policy consumer advances its offsets there)."""
    with conn.transaction():
        plan = make_plan(conn, settings, engine)
        if not plan.empty:
            if with_impact:
                plan.impact = impact(conn, plan.state.policies)
                for item in plan.impact:
                    if item["chunks_to_drop"] or item["rows_to_delete"]:
                        log.warning("retention will delete data", **item)
            apply_plan(plan, engine)
        if also is not None:
            also()
    return plan
