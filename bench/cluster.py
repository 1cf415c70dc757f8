"""A three-node Kafka cluster of one's own (``ops/kafka/cluster``), to kill -9 a partition's
leader and start it again at will.

Used by the fault bench's leader-kill-9 scenario and its test; the local stack's broker is
never touched. Every topic on it has three replicas and needs two in sync to take a write."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType  # type: ignore[attr-defined]

from bench.brokers import _free_ports

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_SCRIPT = ROOT / "ops" / "kafka" / "cluster"
NODES = (1, 2, 3)


class PrivateCluster:
    """Three combined KRaft nodes (node ids 1-3, their logs on disk under ``state``)."""

    def __init__(self, state: Path) -> None:
        self.state = state
        ports = _free_ports(6)
        self.ports, self.controller_ports = ports[:3], ports[3:]
        self.start_s = 0.0  # the last start's wall time (format included the first time)

    @property
    def bootstrap(self) -> str:
        return ",".join(f"127.0.0.1:{p}" for p in self.ports)

    def _run(self, *args: str, timeout: float = 240) -> str:
        done = subprocess.run(
            [str(CLUSTER_SCRIPT), *args], capture_output=True, text=True, timeout=timeout, check=False
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"ops/kafka/cluster {' '.join(args)} failed: {done.stderr[-2000:]}")
        return done.stdout

    def start(self) -> None:
        """Format (once) and start every node that is down; returns once all three serve."""
        t0 = time.monotonic()
        self._run("start", str(self.state), *map(str, self.ports), *map(str, self.controller_ports))
        self.start_s = time.monotonic() - t0

    def stop(self) -> None:
        """Controlled shutdown of every node (SIGTERM); a cluster that never started is left alone."""
        if (self.state / "cluster.id").exists():
            self._run("stop", str(self.state))

    def kill9(self, node: int) -> None:
        """A crash of one node: SIGKILL, no shutdown; its log on disk is all that survives."""
        self._run("kill", str(self.state), str(node))

    def kill_all(self) -> None:
        """SIGKILL every node still running (clean-up: also after a start that failed half-way)."""
        if (self.state / "cluster.id").exists():
            for node in NODES:
                self.kill9(node)

    def restart(self, node: int) -> None:
        """Start ``node`` again from its log; returns once it serves."""
        self._run("restart", str(self.state), str(node))

    def rss_mb(self) -> dict[int, float]:
        """Each running node's resident memory."""
        out: dict[int, float] = {}
        for n in NODES:
            try:
                pid = (self.state / f"node-{n}" / "broker.pid").read_text().strip()
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        out[n] = round(int(line.split()[1]) / 1024, 1)
            except (OSError, ValueError):
                continue
        return out

    def metadata_client(self) -> Consumer:
        """A client that only reads metadata and watermarks (it never joins a group). Metadata
        requests go to whichever node answers: librdkafka's AdminClient kept asking the dead node
        and timed out for as long as it was down, so leaders are read from metadata instead."""
        return Consumer({"bootstrap.servers": self.bootstrap, "group.id": "cluster-metadata", "log_level": 2})

    def min_insync_replicas(self, topics: list[str], timeout: float = 10.0) -> int:
        """The smallest ``min.insync.replicas`` in effect on ``topics`` (the cluster's default
        unless a topic overrides it): the replicas an ``acks=all`` write must reach."""
        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        resources = [ConfigResource(ResourceType.TOPIC, t) for t in topics]
        found = admin.describe_configs(resources, request_timeout=timeout)
        return min(int(f.result(timeout=timeout)["min.insync.replicas"].value) for f in found.values())

    def leader_of(self, client: Consumer, topic: str, partition: int, timeout: float = 2.0) -> tuple[int, int]:
        """(leader node id, replicas in sync) of one partition, as the cluster's metadata says
        now (leader -1 while it has none)."""
        p = client.list_topics(topic, timeout=timeout).topics[topic].partitions[partition]
        return int(p.leader), len(p.isrs)

    def under_replicated(self, client: Consumer, topics: list[str], timeout: float = 2.0) -> int:
        """Partitions of ``topics`` with fewer than three replicas in sync."""
        md = client.list_topics(timeout=timeout).topics
        return sum(1 for t in topics for p in md[t].partitions.values() if len(p.isrs) < 3)


def high_watermark(consumer: Consumer, topic: str, partition: int, timeout: float = 5.0) -> int:
    """The partition's high watermark: the offset below which every message is on the in-sync
    replicas, i.e. acknowledged to an ``acks=all`` producer."""
    return int(consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=timeout)[1])
