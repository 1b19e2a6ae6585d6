"""The compatibility matrix's rig: one real broker per module (Mosquitto, ejabberd, NATS,
RabbitMQ, each from its own ``broker_config/``), a real ``fleetpush serve`` per test, real
device agents, and raw MQTT clients for the isolation checks.

A broker is started once per test module and shared by its tests (start-up is seconds for
the Erlang ones); tests stay apart by using their own device ids and groups, and by
targeting rollouts at explicit device ids. A broker that is not installed FAILS its tests:
CI installs every one (scripts/install).
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt
import pytest
from fault_helpers import healthy
from orch_helpers import (
    SERVE_START_S,
    TOKENS,
    Api,
    Fleet,
    root_hex,
    wait_until,
    write_orchestrator,
)

from fleetpush_protocol.topics import Topics
from fleetpush_sim.brokers import BROKERS, MatrixBroker, NatsCluster, make_broker
from fleetpush_sim.brokers.base import BrokerNotFoundError
from fleetpush_sim.replicas import ServeProcess
from orchestrator.broker.process import MosquittoNotFoundError

# Cells of the matrix known to fail, and why (docs/broker.md): run anyway, as strict xfails,
# so a fix shows up as an unexpected pass.
KNOWN_FAILURES: dict[tuple[str, str], str] = {}


AnyBroker = MatrixBroker | NatsCluster  # a rig runs on one broker, or on a cluster


def expect(request: pytest.FixtureRequest, broker: AnyBroker, cell: str) -> None:
    """Mark this test a strict xfail when ``cell`` is a known failure on ``broker``."""
    reason = KNOWN_FAILURES.get((getattr(broker, "NAME", "mosquitto"), cell))
    if reason:
        request.applymarker(pytest.mark.xfail(strict=True, reason=reason))


__all__ = [
    "BROKERS",
    "KNOWN_FAILURES",
    "Rig",
    "expect",
    "matrix_broker",
    "mqtt_client",
    "rig",
    "serve_config_lines",
]


@pytest.fixture(scope="module", params=BROKERS)
def matrix_broker(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[MatrixBroker]:
    """One broker of the matrix, shared by the module's tests."""
    name: str = request.param
    topics = Topics(prefix=f"m-{name}-{uuid.uuid4().hex[:8]}")
    try:
        b = make_broker(name, tmp_path_factory.mktemp(name) / "broker", topics)
        b.start()
    except (BrokerNotFoundError, MosquittoNotFoundError) as e:
        pytest.fail(f"{name}: {e}")
    try:
        yield b
    finally:
        b.stop()


def protocol(broker: AnyBroker) -> str:
    return getattr(broker, "MQTT_VERSION", "5")


def serve_config_lines(broker: AnyBroker) -> dict[str, str]:
    """``[mqtt]`` lines the orchestrator needs on this broker beyond URL, login, protocol."""
    if not getattr(broker, "SHARED_SUBSCRIPTIONS", True):
        return {"share_group": '""'}  # plain subscriptions: one replica here anyway
    return {}


def mqtt_client(
    broker: MatrixBroker, username: str, password: str, *, timeout: float = 20
) -> aiomqtt.Client:
    """A raw client speaking the broker's MQTT version, client id = username."""
    v5 = protocol(broker) == "5"
    version = aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311
    return aiomqtt.Client(
        broker.host, broker.port, username=username, password=password, identifier=username,
        protocol=version, clean_session=None if v5 else True,
        timeout=timeout,
    )  # fmt: skip


@dataclass
class Rig:
    """A ``fleetpush serve`` on the module's broker, its API, and a fleet of agents."""

    broker: AnyBroker
    root: Path
    serve: ServeProcess
    api: Api
    fleet: Fleet
    uid: str

    def ids(self, n: int, kind: str = "d") -> list[str]:
        return [f"{kind}-{self.uid}-{i}" for i in range(n)]

    def provision(self, *ids: str, groups: tuple[str, ...] = ()) -> None:
        for d in ids:
            self.fleet.provision(d, groups=groups)
        self.broker.reload()

    async def online(self, ids: list[str], online: bool = True) -> None:
        async def check() -> bool:
            devices = (await self.api.call(
                "GET", "/v1/devices", params={"online": "true" if online else "false"}
            ))["devices"]  # fmt: skip
            return {d["device_id"] for d in devices} >= set(ids)

        await wait_until(check, within=60, what=f"{ids} online={online}")

    async def rollout_in(self, rollout_id: int, *states: str, within: float = 120) -> Any:
        async def check() -> dict[str, Any] | None:
            st: dict[str, Any] = await self.api.status(rollout_id)
            return st if st["state"] in states else None

        return await wait_until(check, within=within, what=f"rollout in {states}")


def _write_serve_config(root: Path, broker: AnyBroker) -> tuple[Path, int]:
    config, port = write_orchestrator(root, broker, broker.topics, protocol=protocol(broker))
    extra = serve_config_lines(broker)
    lines = []
    for line in config.read_text().splitlines():
        lines.append(line)
        if line == "[mqtt]":
            lines += [f"{k} = {v}" for k, v in extra.items()]
    config.write_text("\n".join(lines) + "\n")
    return config, port


@contextlib.asynccontextmanager
async def rig_on(broker: AnyBroker, root: Path) -> AsyncIterator[Rig]:
    config, port = _write_serve_config(root, broker)
    base = f"http://127.0.0.1:{port}"
    serve = ServeProcess(config, root / "serve.log")
    (root / "devices").mkdir()
    fleet = Fleet(root / "devices", broker, broker.topics, root_hex(root), protocol(broker))
    async with aiohttp.ClientSession() as session:
        api = Api(session, base, TOKENS["operator"])
        serve.start()
        try:
            await wait_until(
                lambda: healthy(session, base), within=SERVE_START_S, what="serve healthy"
            )
            yield Rig(broker, root, serve, api, fleet, uuid.uuid4().hex[:6])
        finally:
            await fleet.stop_all()
            serve.stop()


@pytest.fixture
async def rig(matrix_broker: MatrixBroker, tmp_path: Path) -> AsyncIterator[Rig]:
    async with rig_on(matrix_broker, tmp_path) as r:
        yield r
