"""``fleetpush demo --broker-cluster N``: the devices' broker node SIGKILLed mid-rollout.

Every device starts on node a of a nats-server cluster (its ``[broker] urls`` list every
node, a first), the orchestrator is on node b. Once the first device has verified its
notice, node a is SIGKILLed; the devices move on to the next node of their list, and this
records when the last of them was connected again and where each one ended up.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from typing import Any

from device_client.agent import DeviceAgent
from device_client.transport.session import MqttSession
from fleetpush_sim.brokers.nats_cluster import NatsCluster
from fleetpush_sim.fleet import SimFleet

__all__ = ["NodeLoss"]

logger = logging.getLogger(__name__)

DEVICES_NODE = 0  # node a: where every device starts, and the one killed
ORCHESTRATOR_NODE = 1  # node b


def _session(agent: DeviceAgent) -> MqttSession | None:
    """The agent's MQTT session (None before its first connect attempt)."""
    return agent.session if isinstance(agent.session, MqttSession) else None


class NodeLoss:
    """Kills the devices' node once (``kill`` False: only watches) and times the move."""

    def __init__(self, cluster: NatsCluster, fleet: SimFleet, *, kill: bool) -> None:
        self.cluster = cluster
        self.fleet = fleet
        self.kill = kill
        self.killed = ""  # the letter of the node killed
        self._killed_at: float | None = None
        self.reconnected_s: float | None = None  # from the SIGKILL to every device back

    @property
    def devices_url(self) -> str:
        return self.cluster.nodes[DEVICES_NODE].url

    async def maybe_kill(self, verified: int) -> None:
        """SIGKILL node a once some device verified its notice (through node a)."""
        if not self.kill or self.killed or not verified:
            return
        node = self.cluster.nodes[DEVICES_NODE]
        await asyncio.to_thread(self.cluster.kill, DEVICES_NODE)
        self.killed = node.letter
        self._killed_at = time.perf_counter()
        logger.warning("demo: SIGKILLed broker node %s, which every device was on", node.letter)

    def check_moved(self) -> None:
        """Record the time once every device is connected to a node still alive."""
        if self._killed_at is None or self.reconnected_s is not None:
            return
        for agent in self.fleet.agents.values():
            session = _session(agent)
            if session is None or not session.connected.is_set():
                return
            if session.broker_url == self.devices_url:
                return
        self.reconnected_s = round(time.perf_counter() - self._killed_at, 3)

    def where(self) -> dict[str, int]:
        """How many devices are on each node now (every node listed)."""
        on = Counter(
            self.cluster.node_of(s.broker_url if (s := _session(a)) else "")
            for a in self.fleet.agents.values()
        )
        return {n.letter: on.get(n.letter, 0) for n in self.cluster.nodes}

    def summary(self) -> dict[str, Any]:
        nodes = self.cluster.nodes
        return {
            "broker_nodes": len(nodes),
            "devices_started_on": nodes[DEVICES_NODE].letter,
            "orchestrator_on": nodes[ORCHESTRATOR_NODE].letter,
            "killed_broker_node": self.killed or None,
            "devices_by_node": self.where(),
            "time_to_reconnect_s": self.reconnected_s,
        }
