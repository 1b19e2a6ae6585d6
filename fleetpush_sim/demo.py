"""``fleetpush demo``: a whole installation in one process, watching a three-phase rollout.

Mosquitto (a child process), the orchestrator (SQLite in a temporary folder, the HTTP API on
a free port) and N devices running the real device agent start; a small release is uploaded
and rolled out in three gated phases while progress bars show each phase; then everything
stops and the folder is removed.

With ``replicas`` > 0 the orchestrator is that many real ``fleetpush serve`` processes on
PostgreSQL (the one at ``database``, or a private server the demo starts with ``initdb`` and
``pg_ctl``), behind a small load balancer for the payloads; ``kill_replica`` SIGKILLs the
replica driving the rollout once its first phase is notified, and the others finish it.

With ``broker_cluster`` = N the broker is N nats-server nodes (MQTT 3.1.1); every device
starts on node a, the orchestrator is on node b, and node a is SIGKILLed once the first
device verified its notice (``fleetpush_sim.node_loss``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import aiohttp

from fleetpush_sim.api import AsyncApi
from fleetpush_sim.fleet import (
    Observer,
    SimDevice,
    SimFleet,
    assign_behaviours,
    provision_passwords,
)
from fleetpush_sim.limits import freeze_heap, raise_open_files
from fleetpush_sim.node_loss import NodeLoss
from fleetpush_sim.release import sample_release
from fleetpush_sim.replicas import Balancer, ReplicaSet
from fleetpush_sim.stack import LocalStack
from fleetpush_sim.timing import RolloutClock, phase_summary, terminal_times
from orchestrator.config import DatabaseConfig
from orchestrator.store import open_store
from orchestrator.store.postgres.local import LocalPostgres

__all__ = ["DemoOptions", "run_demo"]

logger = logging.getLogger(__name__)

END_STATES = ("completed", "canceled", "aborted")
StatusHook = Callable[[dict[str, Any], int], None]


@dataclass(frozen=True, slots=True)
class DemoOptions:
    devices: int = 50
    phases: tuple[float, ...] = (10.0, 50.0, 100.0)
    success_pct: float = 100.0
    soak_s: float = 1.0
    fail_share: float = 0.0
    payload_bytes: int = 0  # random filler added to the release (benchmarks)
    health_check: bool = True  # each device runs /bin/true as its health check
    timeout_s: float = 300.0  # give up on the rollout after this long
    poll_s: float = 0.1  # seconds between status polls
    replicas: int = 0  # 0: one in-process orchestrator on SQLite; N: N serve processes
    kill_replica: bool = False  # SIGKILL the rollout's driver mid-rollout (with replicas)
    database: str = ""  # postgresql://... for the replicas; "": a private server
    broker_cluster: int = 0  # 0: Mosquitto; N: N nats-server nodes, devices on the first
    kill_broker_node: bool = True  # with broker_cluster: SIGKILL the devices' node mid-rollout


def _rollout_body(o: DemoOptions) -> dict[str, Any]:
    return {
        "target": {"all": True},
        "phases": list(o.phases),
        "success_pct": o.success_pct,
        "soak_s": o.soak_s,
        "failure_pct": 50.0,
        "min_attempts": 5,
        "on_failure": "pause",
        "device_timeout_s": max(120.0, o.timeout_s),
    }


_Sent = dict[str, int]  # update notices each replica sent


class _Replicas:
    """The demo's replicas: the set, its balancer, and the one killed."""

    def __init__(self, stack: LocalStack, o: DemoOptions) -> None:
        assert stack.broker is not None  # noqa: S101 - started by LocalStack
        self.balancer = Balancer()
        self.set = ReplicaSet(stack.root, stack.broker, o.replicas, public_url=self.balancer.url)
        self.balancer.backends = [r.base for r in self.set.items]
        self.url = stack.database_url
        self.kill = o.kill_replica
        self.killed = ""

    async def start(self, session: aiohttp.ClientSession) -> None:
        await self.balancer.start()
        self.set.start()
        deadline = time.monotonic() + 60
        for r in self.set.items:
            while not await _healthy(session, r.base):
                if not r.running or time.monotonic() > deadline:
                    raise RuntimeError(f"replica {r.name} did not start; see {r.log}")
                await asyncio.sleep(0.2)

    async def stop(self) -> None:
        await asyncio.to_thread(self.set.stop)
        await self.balancer.stop()

    def _db(
        self, rollout_id: int
    ) -> tuple[dict[int, tuple[str, float]], dict[str, int], dict[str, int]]:
        store = open_store(DatabaseConfig(url=self.url), migrate=False)
        try:
            return store.rollout_leases(), store.counters(), store.notices_by_replica(rollout_id)
        finally:
            store.close()

    async def counters(self, rollout_id: int) -> tuple[dict[str, int], dict[str, int]]:
        """The store's counters, and the update notices each replica sent."""
        _, counters, sent = await asyncio.to_thread(self._db, rollout_id)
        return counters, sent

    async def maybe_kill(self, rollout_id: int, status: dict[str, Any]) -> None:
        """SIGKILL the rollout's driver once its first phase is all notified (once)."""
        if not self.kill or self.killed or status["phases"][0]["pending"]:
            return
        leases, _, _ = await asyncio.to_thread(self._db, rollout_id)
        holder = leases.get(rollout_id, ("", 0.0))[0]
        if holder:
            self.killed = holder
            await asyncio.to_thread(self.set.by_name(holder).kill)
            logger.warning("demo: SIGKILLed replica %s, which drove rollout %d", holder,
                           rollout_id)  # fmt: skip


async def _healthy(session: aiohttp.ClientSession, base: str) -> bool:
    try:
        async with session.get(base + "/healthz") as resp:
            return resp.status == 200
    except aiohttp.ClientError:
        return False


async def _watch(
    api: AsyncApi, rollout_id: int, clock: RolloutClock, o: DemoOptions, *,
    observer: Observer, on_status: StatusHook | None, replicas: _Replicas | None = None,
    node_loss: NodeLoss | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Poll the rollout until it ends (or pauses with nothing left in flight)."""
    deadline = time.monotonic() + o.timeout_s
    while True:
        status = await api.status(rollout_id)
        if replicas is not None:
            await replicas.maybe_kill(rollout_id, status)
        if node_loss is not None:
            await node_loss.maybe_kill(len(observer.notified(str(rollout_id))))
            node_loss.check_moved()
        clock.seen(status)
        if on_status is not None:
            on_status(status, len(observer.notified(str(rollout_id))))
        if status["state"] in END_STATES:
            return status
        idle = all(p["in_flight"] == 0 for p in status["phases"])
        if status["state"] == "paused" and idle:
            return status
        if time.monotonic() > deadline:
            logger.warning("rollout %d still %s after %.0fs", rollout_id, status["state"],
                           o.timeout_s)  # fmt: skip
            return status
        await asyncio.sleep(o.poll_s)


def _make_fleet(
    stack: LocalStack, ids: list[str], observer: Observer
) -> tuple[SimFleet, dict[str, str]]:
    """The devices' fleet and their passwords: on Mosquitto, or on every node of the cluster
    (each device starting on node a)."""
    if stack.cluster is not None:
        passwords = stack.cluster.add_devices(ids, groups=("demo",))
        stack.cluster.reload()
        fleet = SimFleet(
            stack.devices_dir, broker_url="", broker_urls=stack.cluster.urls,
            topic_prefix=stack.topics.prefix, root_keys=[stack.root_key], groups=("demo",),
            observer=observer, protocol="3.1.1",
        )  # fmt: skip
        return fleet, passwords
    assert stack.broker is not None  # noqa: S101 - started by LocalStack
    passwords = provision_passwords(stack.broker, ids, groups=("demo",))
    fleet = SimFleet(
        stack.devices_dir, broker_url=stack.broker.url, topic_prefix=stack.topics.prefix,
        root_keys=[stack.root_key], groups=("demo",), observer=observer,
    )  # fmt: skip
    return fleet, passwords


async def _run(stack: LocalStack, o: DemoOptions, on_status: StatusHook | None) -> dict[str, Any]:
    task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    if task is not None:
        loop.add_signal_handler(signal.SIGTERM, task.cancel)
    replicas = _Replicas(stack, o) if o.replicas else None
    orch = None if replicas else await stack.start_orchestrator()
    ids = [f"demo-{i:05d}" for i in range(1, o.devices + 1)]
    observer = Observer()
    fleet, passwords = _make_fleet(stack, ids, observer)
    node_loss = NodeLoss(stack.cluster, fleet, kill=o.kill_broker_node) if stack.cluster else None
    behaviours = assign_behaviours(ids, fail_share=o.fail_share, seed=1)
    fleet.add(
        SimDevice(d, passwords[d], replace(behaviours[d], health_check=o.health_check)) for d in ids
    )
    try:
        async with aiohttp.ClientSession() as session:
            api_url = stack.api_url
            if replicas is not None:
                await replicas.start(session)
                api_url = replicas.balancer.url  # any replica answers; one will be killed
            api = AsyncApi(session, api_url, stack.token)
            t = time.perf_counter()
            await fleet.start()
            await api.wait_online(o.devices, within=60 + o.devices * 0.02)
            online_s = time.perf_counter() - t
            freeze_heap()
            payload = sample_release("2.0.0", filler_bytes=o.payload_bytes)
            release = await api.upload("demo-app", "2.0.0", payload)
            clock = RolloutClock()
            created = await api.rollout(release["id"], **_rollout_body(o))
            rid = int(created["id"])
            status = await _watch(api, rid, clock, o, observer=observer, on_status=on_status,
                                  replicas=replicas, node_loss=node_loss)  # fmt: skip
            targets = await api.targets(rid)
            if node_loss is not None:
                node_loss.check_moved()
            sent: dict[str, int] = {}
            if replicas is not None:
                counters, sent = await replicas.counters(rid)
            else:
                counters = await orch.db.run(lambda s: s.counters()) if orch and orch.db else {}
            notified = observer.notified(str(rid))
            last_notified = max(notified.values()) if len(notified) == o.devices else None
            done = terminal_times(observer, str(rid))
            last_done = max(done.values()) if len(done) == o.devices else None
            return {
                "devices": o.devices,
                "rollout_state": status["state"],
                "final_states": dict(sorted(status["states"].items())),
                "device_final_states": dict(sorted(observer.final_states(str(rid)).items())),
                "time_to_notify_s": clock.since_start(last_notified),
                "time_to_complete_s": clock.since_start(clock.finished),
                "time_to_all_finished_s": clock.since_start(last_done),
                "devices_notified": len(notified),
                "time_to_online_s": round(online_s, 3),
                "phases": phase_summary(clock, observer, str(rid), status, targets),
                "payload_bytes": len(payload),
                "reports_ingested": counters.get("reports_ingested", 0),
                "notices_published": counters.get("notices_published", 0),
                "soak_s": o.soak_s,
                "error_codes": dict(observer.errors),
                "devices_succeeded": status["states"].get("succeeded", 0),
                **(_replica_summary(replicas, sent) if replicas else {}),
                **(node_loss.summary() if node_loss else {}),
            }
    finally:
        await fleet.stop()
        if replicas is not None:
            await replicas.stop()
        await stack.stop_orchestrator()
        with contextlib.suppress(Exception):
            loop.remove_signal_handler(signal.SIGTERM)


def _replica_summary(replicas: _Replicas, sent: dict[str, int]) -> dict[str, Any]:
    return {
        "replicas": len(replicas.set.items),
        "killed_replica": replicas.killed or None,
        "notices_by_replica": {r.name: sent.get(r.name, 0) for r in replicas.set.items},
    }


def run_demo(o: DemoOptions, on_status: StatusHook | None = None) -> dict[str, Any]:
    """Run the demo; return its summary. Leaves nothing running, also on Ctrl-C.

    Raises:
        MosquittoNotFoundError: Mosquitto is not installed.
        BrokerNotFoundError: ``broker_cluster``, and nats-server is not installed.
        PostgresNotFoundError: replicas without ``database``, and no initdb/pg_ctl.
        KeyboardInterrupt, asyncio.CancelledError: interrupted (SIGINT, SIGTERM).
    """
    raise_open_files()
    if not o.replicas:
        with LocalStack(broker_cluster=o.broker_cluster) as stack:
            return asyncio.run(_run(stack, o, on_status))
    with contextlib.ExitStack() as stop:
        url = o.database
        if not url:
            pg = stop.enter_context(LocalPostgres())
            url = pg.create_database("demo")
        stack = stop.enter_context(LocalStack(database_url=url))
        return asyncio.run(_run(stack, o, on_status))
