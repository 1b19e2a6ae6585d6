"""A real fleet for the dashboard tests: orchestrator, Mosquitto, device agents, tokens.

Everything is real: the orchestrator (SQLite in a temp dir, its HTTP API and rollout
engine), the test's own Mosquitto, and ``device_client.DeviceAgent`` instances in this
event loop that verify signed notices, download payloads from the orchestrator, install
them into slot folders and run their health check.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from device_helpers import make_tar, wait_for, write_config

from device_client.agent import DeviceAgent
from device_client.config import load_config
from device_client.wiring import build_agent
from fleetpush_common.clock import Clock
from fleetpush_protocol.topics import Topics
from orchestrator.app import Orchestrator
from orchestrator.broker import MosquittoBroker
from orchestrator.broker.mosquitto import free_port
from orchestrator.config import (
    AuthConfig,
    HttpConfig,
    IngestConfig,
    MqttConfig,
    OrchestratorConfig,
    RegistrySection,
    RolloutConfig,
)
from orchestrator.security.auth import hash_token
from orchestrator.security.keystore import KeyStore

TOKENS = {
    "admin": "fp_test-admin-token-0123456789",
    "operator": "fp_test-operator-token-0123456789",
    "viewer": "fp_test-viewer-token-0123456789",
}
RELEASE_TAR = make_tar({"bin/app": b"#!/bin/sh\necho v2\n", "VERSION": b"2.0.0\n"})


@dataclass
class Fleet:
    """A running orchestrator with agents; ``api`` calls it with a role's token."""

    tmp: Path
    broker: MosquittoBroker
    topics: Topics
    orch: Orchestrator | None = None
    agents: dict[str, tuple[DeviceAgent, asyncio.Task[None]]] = field(default_factory=dict)
    http: aiohttp.ClientSession | None = None
    clock: Clock | None = None  # the orchestrator's (None: the real one)

    @property
    def url(self) -> str:
        assert self.orch is not None
        return f"http://127.0.0.1:{self.orch.port}"

    async def start(self) -> None:
        data = self.tmp / "orch"
        keys = KeyStore(data / "keys")
        keys.init(data / "root-keys", roots=1, threshold=1, validity_s=30 * 86400,
                  now=int(time.time()))  # fmt: skip
        tokens = self.tmp / "tokens.toml"
        tokens.write_text("".join(
            f'[[token]]\nname = "{role}-user"\nrole = "{role}"\nsha256 = "{hash_token(tok)}"\n'
            for role, tok in TOKENS.items()
        ))  # fmt: skip
        port = free_port()
        config = OrchestratorConfig(
            data_dir=data,
            http=HttpConfig(listen=f"127.0.0.1:{port}"),
            mqtt=MqttConfig(
                url=self.broker.url,
                username=MosquittoBroker.ORCHESTRATOR_USER,
                password=self.broker.orchestrator_password,
                topic_prefix=self.topics.prefix,
            ),
            ingest=IngestConfig(batch_interval_s=0.05),
            rollouts=RolloutConfig(tick_s=0.2),
            auth=AuthConfig(tokens_file=tokens),
            registry=RegistrySection(file=self.broker.registry.path),
        )
        self.orch = Orchestrator(config, clock=self.clock)
        await self.orch.start()
        self.http = aiohttp.ClientSession()

    async def add_device(
        self, device_id: str, *, healthy: bool = True, claims: tuple[str, ...] = ("lab",),
        sections: dict[str, dict[str, Any]] | None = None,
    ) -> None:  # fmt: skip
        """Provision ``device_id`` in group ``lab`` and run its agent, whose configuration
        lists ``claims`` as its groups (what its inventory will say); ``sections`` adds
        configuration tables."""
        assert self.orch is not None
        password = self.broker.add_device(device_id, ("lab",))
        self.broker.set_model(device_id, "rpi4")  # as provisioning does: the registry's fact
        self.broker.reload()
        root = self.orch.keys.anchor().keyring.root_keys[0].hex()
        health = {"command": ["/bin/true" if healthy else "/bin/false"], "timeout": "10s"}
        path = write_config(
            self.tmp / f"{device_id}.toml", broker=self.broker, topics=self.topics,
            device_id=device_id, password=password, root_hex=root, groups=claims,
            sections={"health": health, **(sections or {})},
        )  # fmt: skip
        agent = build_agent(load_config(path))
        self.agents[device_id] = (agent, asyncio.create_task(agent.run()))

    async def wait_registered(self, n: int) -> None:
        async def listed() -> bool:
            devices = (await self.api("viewer", "GET", "/v1/devices"))["devices"]
            return sum(1 for d in devices if d["online"] and d["claimed_model"]) >= n

        deadline = time.monotonic() + 30
        while not await listed():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {n} devices to register")
            await asyncio.sleep(0.1)

    async def api(self, role: str, method: str, path: str, **kw: Any) -> Any:
        """Call the API as ``role``; raise on an error status."""
        status, body = await self.call(role, method, path, **kw)
        if status >= 400:
            raise AssertionError(f"{method} {path} as {role}: {status} {body}")
        return body

    async def call(self, role: str, method: str, path: str, **kw: Any) -> tuple[int, Any]:
        assert self.http is not None
        headers = {"Authorization": f"Bearer {TOKENS[role]}"}
        async with self.http.request(method, self.url + path, headers=headers, **kw) as resp:
            return resp.status, await resp.json()

    async def upload_release(self, version: str = "2.0.0") -> dict[str, Any]:
        query = f"?name=app&version={version}&model=rpi4"
        result: dict[str, Any] = await self.api(
            "operator", "POST", "/v1/releases" + query, data=RELEASE_TAR
        )
        return result

    async def stop(self) -> None:
        for agent, task in self.agents.values():
            agent.stop()
            with contextlib.suppress(asyncio.CancelledError, asyncio.TimeoutError):
                await asyncio.wait_for(task, 15)
        if self.http is not None:
            await self.http.close()
        if self.orch is not None:
            await self.orch.stop()


__all__ = ["TOKENS", "Fleet", "wait_for"]


@pytest.fixture
async def fleet(tmp_path: Path, broker: MosquittoBroker, topics: Topics) -> AsyncIterator[Fleet]:
    """A started orchestrator with its dashboard (import it into the test module)."""
    f = Fleet(tmp_path, broker, topics)
    await f.start()
    try:
        yield f
    finally:
        await f.stop()
