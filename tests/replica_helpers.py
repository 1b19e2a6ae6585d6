"""Several ``fleetpush serve`` replicas on one PostgreSQL database and one Mosquitto.

Each replica is a real process with its own configuration: its own broker identity (the
MQTT client id), its own HTTP port; they share the data folder (keys, URL-signing key,
payloads) and the database, as replicas on one machine do (docs/scaling.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
from aiohttp import web
from fault_helpers import ServeProcess, healthy
from orch_helpers import write_orchestrator

from fleetpush_common.atomic import write_secret
from fleetpush_protocol.topics import Topics
from orchestrator.broker import MosquittoBroker, free_port

__all__ = ["Balancer", "Replica", "Replicas", "write_replicas"]


@dataclass
class Replica:
    name: str  # its broker identity = MQTT client id = replica id
    config: Path
    port: int
    serve: ServeProcess = field(init=False)

    def __post_init__(self) -> None:
        self.serve = ServeProcess(self.config, self.config.with_suffix(".log"))

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def health(self, session: aiohttp.ClientSession) -> dict[str, Any] | None:
        if not await healthy(session, self.base):
            return None
        async with session.get(self.base + "/healthz") as resp:
            body: dict[str, Any] = await resp.json()
            return body

    def log_text(self) -> str:
        path = self.config.with_suffix(".log")
        return path.read_text(errors="replace") if path.exists() else ""


@dataclass
class Replicas:
    items: list[Replica]
    database_url: str

    def start_all(self) -> None:
        for r in self.items:
            r.serve.start()

    def stop_all(self) -> None:
        for r in self.items:
            r.serve.stop()

    def query(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Read the shared database directly (what the replicas wrote, not what they say)."""
        with psycopg.connect(self.database_url) as conn:
            return list(conn.execute(sql, args).fetchall())

    def lease_holder(self, rollout_id: int) -> str | None:
        rows = self.query("SELECT holder FROM rollout_leases WHERE rollout_id = %s", (rollout_id,))
        return str(rows[0][0]) if rows else None

    def by_name(self, name: str) -> Replica:
        return next(r for r in self.items if r.name == name)


def write_replicas(
    root: Path,
    broker: MosquittoBroker,
    topics: Topics,
    *,
    n: int,
    database_url: str,
    lease: str = "3s",
    public_url: str = "",
) -> Replicas:
    """Keys, tokens and a migrated database (``write_orchestrator``), then one config per
    replica: ``root/r<i>.toml``, with its own broker identity ``<prefix>-r<i>``."""
    base_config, _ = write_orchestrator(root, broker, topics, database_url=database_url)
    text = base_config.read_text()
    items = []
    for i in range(n):
        name = f"{topics.prefix}-r{i}"
        password = broker.add_orchestrator(name)
        write_secret(root / f"r{i}.password", password.encode())
        port = free_port()
        lines = []
        for original in text.splitlines():
            line = original
            if line.startswith("listen = "):
                line = f'listen = "127.0.0.1:{port}"'
            elif line.startswith("username = "):
                line = f'username = "{name}"'
            elif line.startswith("password_file = "):
                line = f'password_file = "r{i}.password"'
            elif line == "[http]" and public_url:
                line += f'\npublic_url = "{public_url}"'
            elif line == "[rollouts]":
                line += f'\nlease = "{lease}"'
            lines.append(line)
        config = root / f"r{i}.toml"
        config.write_text("\n".join(lines) + "\n")
        items.append(Replica(name, config, port))
    broker.reload()
    return Replicas(items, database_url)


class Balancer:
    """A minimal HTTP load balancer in front of the replicas (what ``[http] public_url``
    points at in production): each request goes to the next replica that answers, so a
    killed replica's devices still fetch their payload from another."""

    def __init__(self) -> None:
        self.backends: list[str] = []
        self.port = free_port()
        self._next = 0
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._session = aiohttp.ClientSession()
        app = web.Application()
        app.router.add_route("GET", "/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() in ("range",)}
        for _ in range(len(self.backends)):
            self._next = (self._next + 1) % len(self.backends)
            target = self.backends[self._next] + request.path_qs
            try:
                async with self._session.get(target, headers=headers) as up:
                    body = await up.read()
                    keep = ("content-type", "content-range", "accept-ranges", "etag")
                    out = {k: v for k, v in up.headers.items() if k.lower() in keep}
                    return web.Response(status=up.status, body=body, headers=out)
            except aiohttp.ClientConnectionError:
                continue
        return web.Response(status=502, text="no replica answers")
