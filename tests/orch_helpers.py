"""Test support for the orchestrator: a configured service, API calls, real device agents.

The orchestrator runs in-process (or as a real ``fleetpush serve`` subprocess), against
the test's own Mosquitto; devices are real ``device_client.DeviceAgent`` instances with
their own state folders. Waits are bounded polls of a condition.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from device_helpers import make_tar, write_config

from device_client.agent import DeviceAgent
from device_client.config import load_config as load_device_config
from device_client.wiring import build_agent
from fleetpush_common.clock import Clock
from fleetpush_protocol.topics import Topics
from fleetpush_sim.api import AsyncApi
from fleetpush_sim.brokers.base import BrokerEndpoint
from fleetpush_sim.stack import write_orchestrator_files
from orchestrator.app import Orchestrator
from orchestrator.broker import MosquittoBroker
from orchestrator.config import load_config
from orchestrator.security.keystore import KeyStore

TOKENS = {"admin": "fp_test_admin", "operator": "fp_test_operator", "viewer": "fp_test_viewer"}
PAYLOAD = make_tar({"app/VERSION": b"2.0\n", "app/run.sh": b"#!/bin/sh\necho hi\n"})


def write_orchestrator(
    root: Path,
    broker: BrokerEndpoint,
    topics: Topics,
    *,
    tick: str = "200ms",
    database_url: str = "",
    extra_toml: str = "",
    protocol: str = "5",
) -> tuple[Path, int]:
    """Write orchestrator.toml (``extra_toml`` appended), keys (keyring v1) and role tokens;
    return (config, port). The store is SQLite in the data folder, or the (empty)
    database at ``database_url``; ``protocol`` is the MQTT version ("5" or "3.1.1")."""
    port, _ = write_orchestrator_files(
        root, broker, topics, tokens={role: (role, token) for role, token in TOKENS.items()},
        tick=tick, key_validity_s=30 * 86400, database_url=database_url, protocol=protocol,
    )  # fmt: skip
    config = root / "orchestrator.toml"
    if extra_toml:
        config.write_text(config.read_text() + extra_toml)
    return config, port


def root_hex(config_dir: Path) -> str:
    return KeyStore(config_dir / "orch" / "keys").anchor().keyring.root_keys[0].hex()


class Api(AsyncApi):
    """The product's API client; uploads default to the test payload."""

    async def upload(
        self, name: str, version: str, payload: bytes = PAYLOAD, handler: str = "directory"
    ) -> dict[str, Any]:
        return await super().upload(name, version, payload, handler)


class Fleet:
    """Real device agents against the test broker, started and stopped at will; they speak
    MQTT ``protocol`` ("5" or "3.1.1")."""

    def __init__(
        self, root: Path, broker: BrokerEndpoint, topics: Topics, root_key: str,
        protocol: str = "5",
    ) -> None:  # fmt: skip
        self.root = root
        self.protocol = protocol
        self.broker = broker
        self.topics = topics
        self.root_key = root_key
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.agents: dict[str, DeviceAgent] = {}
        self.configs: dict[str, Path] = {}

    def provision(
        self, device_id: str, *, groups: tuple[str, ...] = (), healthy: bool = True,
        sections: dict[str, dict[str, Any]] | None = None,
    ) -> None:  # fmt: skip
        password = self.broker.add_device(device_id, groups)
        sections = dict(sections or {})
        sections["broker"] = {"protocol": self.protocol, **sections.get("broker", {})}
        if not healthy:
            sections["health"] = {"command": ["/bin/false"], "timeout": "5s"}
        self.configs[device_id] = write_config(
            self.root / f"{device_id}.toml", broker=self.broker, topics=self.topics,
            device_id=device_id, password=password, root_hex=self.root_key, groups=groups,
            sections=sections,
        )  # fmt: skip

    def start(self, device_id: str) -> None:
        agent = build_agent(load_device_config(self.configs[device_id]), durable=False)
        self.agents[device_id] = agent
        self.tasks[device_id] = asyncio.create_task(agent.run(), name=device_id)

    async def stop(self, device_id: str) -> None:
        agent = self.agents.pop(device_id)
        agent.stop()
        task = self.tasks.pop(device_id)
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 15)

    async def stop_all(self) -> None:
        for device_id in list(self.agents):
            await self.stop(device_id)


# How long a `fleetpush serve` process may take to answer /healthz: three start at once in
# the replica tests, and a soak runs the suite beside two CPU hogs on 2 cores.
SERVE_START_S = 90.0


async def wait_until(
    check: Callable[[], Awaitable[Any]], *, within: float = 30.0, what: str = "condition"
) -> Any:
    """Poll ``check`` until it returns something truthy; fail after ``within`` seconds."""
    deadline = time.monotonic() + within
    last: Any = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


@dataclass
class Setup:
    orch: Orchestrator
    api: Api
    fleet: Fleet
    broker: MosquittoBroker
    session: aiohttp.ClientSession


async def start_devices(s: Setup, *ids: str, **provision: Any) -> None:
    """Provision ``ids`` (with ``Fleet.provision``'s options), start their agents, and wait
    until the API lists every one online."""
    for d in ids:
        s.fleet.provision(d, **provision)
    s.broker.reload()
    for d in ids:
        s.fleet.start(d)

    async def online() -> bool:
        devices = (await s.api.call("GET", "/v1/devices", params={"online": "true"}))["devices"]
        return {d["device_id"] for d in devices} >= set(ids)

    await wait_until(online, what=f"{ids} online")


async def rollout_in(s: Setup, rollout_id: int, *states: str, within: float = 90) -> dict[str, Any]:
    """The rollout's status once it is in one of ``states``."""

    async def check() -> dict[str, Any] | None:
        st = await s.api.status(rollout_id)
        return st if st["state"] in states else None

    found: dict[str, Any] = await wait_until(check, within=within, what=f"rollout in {states}")
    return found


def assert_spoke(broker: MosquittoBroker, protocol: str, clients: list[str]) -> None:
    """Every client in ``clients`` connected to ``broker`` with MQTT ``protocol``, as the
    broker's log says (Mosquitto writes "as <id> (p2, ..." for 3.1.1, "p5" for 5)."""
    log = broker.log_path.read_text()
    level = "p2" if protocol == "3.1.1" else "p5"
    for c in clients:
        seen = re.findall(rf" as {re.escape(c)} \((p\d),", log)
        assert seen, f"{c} never connected"
        assert set(seen) == {level}, (c, seen)


@contextlib.asynccontextmanager
async def running(
    root: Path,
    broker: MosquittoBroker,
    topics: Topics,
    clock: Clock | None = None,
    *,
    database_url: str = "",
    extra_toml: str = "",
    protocol: str = "5",
) -> AsyncIterator[Setup]:
    """An orchestrator (on ``clock``, the real one by default), its API and a fleet; on
    SQLite, or on the database at ``database_url``; ``extra_toml`` adds configuration;
    the orchestrator and the devices speak MQTT ``protocol`` ("5" or "3.1.1")."""
    config_path, port = write_orchestrator(
        root, broker, topics, database_url=database_url, extra_toml=extra_toml,
        protocol=protocol,
    )  # fmt: skip
    orch = Orchestrator(load_config(config_path), clock=clock)
    await orch.start()
    fleet = Fleet(root / "devices", broker, topics, root_hex(root), protocol)
    (root / "devices").mkdir()
    async with aiohttp.ClientSession() as session:
        api = Api(session, f"http://127.0.0.1:{port}", TOKENS["operator"])
        try:
            yield Setup(orch, api, fleet, broker, session)
        finally:
            await fleet.stop_all()
            await orch.stop()


@pytest.fixture
async def setup(
    tmp_path: Path, broker: MosquittoBroker, topics: Topics, mqtt_protocol: str
) -> AsyncIterator[Setup]:
    async with running(tmp_path, broker, topics, protocol=mqtt_protocol) as s:
        yield s


@pytest.fixture(params=["sqlite", "postgresql"])
async def setup_any_backend(
    request: pytest.FixtureRequest, tmp_path: Path, broker: MosquittoBroker, topics: Topics,
    mqtt_protocol: str,
) -> AsyncIterator[Setup]:  # fmt: skip
    """``setup`` once on SQLite and once on PostgreSQL (a database of its own)."""
    url = ""
    if request.param == "postgresql":
        url = request.getfixturevalue("postgres_database").url
    async with running(tmp_path, broker, topics, database_url=url, protocol=mqtt_protocol) as s:
        yield s
