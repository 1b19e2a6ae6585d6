"""A cluster of nats-server 2.9 nodes on one machine, each with its MQTT listener.

Every node is a ``NatsBroker`` (the same users and permissions, rendered from the one
registry the nodes share) with a ``cluster`` block: its own route port, and routes to the
other nodes, protected by a route login only the nodes know. JetStream is clustered, and
``mqtt { stream_replicas: N }`` puts every MQTT stream (``$MQTT_sess``: sessions and their
subscriptions; ``$MQTT_rmsgs``: retained messages; ``$MQTT_msgs``: QoS 1 messages waiting
for a session) on every node, so all of it survives the loss of a node while a quorum
(2 of 3) stays up. docs/broker.md, "Cluster", says what was measured.

``start()`` returns once MQTT works across the cluster: a login on every node, and a
retained message published on the first running node read back on the last one (only a
node that sees a JetStream leader accepts MQTT logins, and the retained message went
through the replicated stream). ``kill(i)`` is SIGKILL; ``restart(i)`` brings the node
back with its store, and waits the same way.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

from fleetpush_common.atomic import make_private_dir
from fleetpush_protocol.topics import Topics
from orchestrator.broker.process import free_port
from orchestrator.broker.registry import IdentityRegistry

from .base import ExternalBroker, SharedIdentities
from .mqtt_probe import MqttProbe, ProbeError
from .nats import NatsBroker

__all__ = ["NatsCluster", "NatsNode"]

logger = logging.getLogger(__name__)

LETTERS = "abcdefg"  # node names: a, b, c... (nats-server allows up to any size; 7 is plenty)


class NatsNode(NatsBroker):
    """One node: a ``NatsBroker`` whose configuration also joins the cluster."""

    def __init__(
        self, workdir: Path, *, topics: Topics, host: str, shared: SharedIdentities,
        letter: str, cluster_name: str, cluster_port: int, route_login: tuple[str, str],
        replicas: int,
    ) -> None:  # fmt: skip
        super().__init__(workdir, topics=topics, host=host, shared=shared)
        self.letter = letter
        self.server_name = f"{cluster_name}-{letter}"  # unique in the cluster, kept on restart
        self.cluster_name = cluster_name
        self.cluster_port = cluster_port
        self.route_login = route_login
        self.replicas = replicas
        self.routes: list[int] = []  # the other nodes' route ports (set by the cluster)

    def ports(self) -> Sequence[int]:
        return [*super().ports(), self.cluster_port]

    def cluster_lines(self) -> tuple[str, str]:
        user, password = self.route_login
        routes = ", ".join(
            json.dumps(f"nats-route://{user}:{password}@{self.host}:{p}") for p in self.routes
        )
        cluster = (
            "cluster {\n"
            f'  name: "{self.cluster_name}"\n'
            f'  listen: "{self.host}:{self.cluster_port}"\n'
            # Without a login, any local process could join as a route and read everything.
            f'  authorization {{ user: "{user}", password: "{password}" }}\n'
            f"  routes: [{routes}]\n"
            "}"
        )
        return cluster, f"  stream_replicas: {self.replicas}"


class NatsCluster:
    """``size`` nodes (``a``, ``b``, ``c``...) in ``workdir/node-<letter>``, on free ports.

    It is a ``BrokerEndpoint``: identities are added once for every node, ``reload()``
    applies them on every running node, and ``url`` is node ``home``'s (where the
    orchestrator connects); ``urls`` lists every node's, for the devices' ``[broker] urls``.
    """

    NAME = "nats"
    MQTT_VERSION = "3.1.1"
    SHARED_SUBSCRIPTIONS = False
    ORCHESTRATOR_USER = ExternalBroker.ORCHESTRATOR_USER
    START_TIMEOUT = 90.0  # three JVM-free processes, but JetStream elections on a busy machine

    def __init__(
        self, workdir: Path, *, topics: Topics, size: int = 3, home: int = 0,
        host: str = "127.0.0.1",
    ) -> None:  # fmt: skip
        if not 1 <= size <= len(LETTERS):
            raise ValueError(f"a cluster has 1 to {len(LETTERS)} nodes, not {size}")
        self.workdir = Path(workdir).resolve()
        make_private_dir(self.workdir)
        self.topics = topics
        self.host = host
        self.home = home
        self.shared = SharedIdentities(IdentityRegistry(self.workdir / "identities.json"))
        name = f"fp-{uuid.uuid4().hex[:8]}"
        login = ("fleetpush-route", secrets.token_urlsafe(18))
        route_ports = [free_port(host) for _ in range(size)]
        self.nodes = [
            NatsNode(
                self.workdir / f"node-{letter}", topics=topics, host=host, shared=self.shared,
                letter=letter, cluster_name=name, cluster_port=port, route_login=login,
                replicas=size,
            )
            for letter, port in zip(LETTERS, route_ports, strict=False)
        ]  # fmt: skip
        for node in self.nodes:
            node.routes = [p for p in route_ports if p != node.cluster_port]
        self.orchestrator_password = self.nodes[0].orchestrator_password
        self.registry = self.shared.registry
        self.port = self.nodes[home].port

    # --- BrokerEndpoint ------------------------------------------------------------------

    @property
    def url(self) -> str:
        return self.nodes[self.home].url

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    def add_device(
        self, device_id: str, groups: tuple[str, ...] = (), password: str | None = None
    ) -> str:
        """As ``ExternalBroker.add_device``, for every node (they share the registry)."""
        return self.nodes[0].add_device(device_id, groups, password)

    def add_devices(
        self, device_ids: Sequence[str], groups: tuple[str, ...] = ()
    ) -> dict[str, str]:
        return self.nodes[0].add_devices(device_ids, groups)

    def add_orchestrator(self, username: str, password: str | None = None) -> str:
        return self.nodes[0].add_orchestrator(username, password)

    def password(self, username: str) -> str:
        return self.nodes[0].password(username)

    def reload(self, timeout: float = 5.0) -> bool:
        """Apply registry changes on every running node (a stopped one gets them when it
        starts again); False when none runs."""
        applied = [n.reload(timeout) for n in self.nodes]
        return any(applied)

    # --- nodes ---------------------------------------------------------------------------

    def node(self, letter: str) -> NatsNode:
        return next(n for n in self.nodes if n.letter == letter)

    def node_of(self, url: str) -> str:
        """The letter of the node listening at ``url`` ("" if none)."""
        return next((n.letter for n in self.nodes if n.url == url), "")

    @property
    def running(self) -> bool:
        return any(n.running for n in self.nodes)

    def start(self, timeout: float | None = None) -> None:
        """Start every node; return once MQTT works across the cluster."""
        timeout = self.START_TIMEOUT if timeout is None else timeout
        deadline = time.monotonic() + timeout
        try:
            for n in self.nodes:  # each listens at once; JetStream waits for its peers
                n.start(max(1.0, deadline - time.monotonic()))
            self.wait_ready(max(1.0, deadline - time.monotonic()))
        except BaseException:
            self.stop()
            raise

    def kill(self, index: int) -> None:
        """SIGKILL node ``index`` (what a crashed machine looks like to its peers)."""
        self.nodes[index].kill()
        logger.info("nats cluster: node %s SIGKILLed", self.nodes[index].letter)

    def restart(self, index: int, timeout: float | None = None) -> None:
        """Start node ``index`` again on its store; return once MQTT works across the cluster."""
        timeout = self.START_TIMEOUT if timeout is None else timeout
        deadline = time.monotonic() + timeout
        self.nodes[index].start(timeout)
        self.wait_ready(max(1.0, deadline - time.monotonic()))

    def stop(self, timeout: float = 20.0) -> None:
        for n in self.nodes:
            n.stop(timeout)

    def __enter__(self) -> NatsCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- readiness -----------------------------------------------------------------------

    def wait_ready(self, timeout: float) -> None:
        """Until every running node accepts an MQTT login and a retained message published
        on the first running node is read on the last one.

        Raises:
            RuntimeError: not so within ``timeout`` seconds (the last refusal is said).
        """
        deadline = time.monotonic() + timeout
        up = [n for n in self.nodes if n.running]
        last = "no attempt"
        while True:
            try:
                self._roundtrip(up[0], up[-1], up, max(1.0, deadline - time.monotonic()))
            except (OSError, ProbeError) as e:
                last = str(e) or type(e).__name__
            else:
                return
            if time.monotonic() > deadline:
                logs = ", ".join(str(n.log_path) for n in up)
                raise RuntimeError(f"nats cluster not ready in {timeout:.0f}s ({last}); see {logs}")
            time.sleep(0.2)

    def _probe(self, node: NatsNode, timeout: float) -> MqttProbe:
        return MqttProbe(
            node.host, node.port, self.ORCHESTRATOR_USER, self.orchestrator_password,
            f"fleetpush-probe-{uuid.uuid4().hex[:10]}", timeout=min(timeout, 10.0),
        )  # fmt: skip

    def _roundtrip(
        self, writer: NatsNode, reader: NatsNode, every: list[NatsNode], timeout: float
    ) -> None:
        topic = f"{self.topics.prefix}/probe/{uuid.uuid4().hex[:10]}"
        token = secrets.token_bytes(8)
        for n in every:
            with self._probe(n, timeout):
                pass  # a CONNACK 0: this node's MQTT has its JetStream streams
        with self._probe(writer, timeout) as w:
            w.publish(topic, token, retain=True)
        try:
            with self._probe(reader, timeout) as r:
                r.subscribe([topic])
                got = r.receive(topic)
            if got.payload != token:
                raise ProbeError(f"node {reader.letter} returned another retained message")
        finally:
            with self._probe(writer, timeout) as w:
                w.publish(topic, b"", retain=True)  # an empty retained message deletes it
