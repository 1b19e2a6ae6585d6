"""Shared harness of the device benchmarks: a byte-counting TCP proxy, a payload server, a
report watcher and an agent started as its own process (the signer is
``fleetpush_sim.signing.Signer``). Not a benchmark itself."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiomqtt
from aiohttp import web

from fleetpush_protocol.envelope import decode_message
from fleetpush_protocol.messages import Report
from fleetpush_protocol.topics import Topics
from orchestrator.broker import MosquittoBroker

REPO = Path(__file__).resolve().parents[1]


class CountingProxy:
    """TCP proxy to ``target`` that counts the bytes in each direction."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.up = 0  # client -> server
        self.down = 0  # server -> client
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()

    def reset(self) -> None:
        self.up = self.down = 0

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        r2, w2 = await asyncio.open_connection(*self.target)

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, up: bool) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await src.read(65536):
                    if up:
                        self.up += len(data)
                    else:
                        self.down += len(data)
                    dst.write(data)
                    await dst.drain()
            with contextlib.suppress(Exception):
                dst.close()

        await asyncio.gather(pump(reader, w2, True), pump(r2, writer, False))


def write_config(
    path: Path,
    *,
    port: int,
    password: str,
    prefix: str,
    root: bytes,
    keepalive: int,
    health: list[str],
) -> None:
    state = path.parent / "state"
    path.write_text(
        f"""[device]
id = "bench-dev"
model = "bench"
state_dir = "{state}"

[broker]
url = "mqtt://127.0.0.1:{port}"
username = "bench-dev"
password = "{password}"
keepalive = "{keepalive}s"
topic_prefix = "{prefix}"

[trust]
root_keys = ["{root.hex()}"]

[download]
progress_interval = "5s"

[install]
handler = "directory"

[health]
command = {health!r}
""".replace("'", '"')
    )
    path.chmod(0o600)  # it holds the broker password: the agent refuses it otherwise


def spawn_agent(config: Path) -> subprocess.Popen[bytes]:
    log = (config.parent / "agent.log").open("ab")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-m", "device_client", "--config", str(config)],
        stdout=log, stderr=log, env=env, cwd=REPO,
    )  # fmt: skip


def stop_agent(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class Watcher:
    """Subscribes to reports and presence with its own orchestrator identity."""

    def __init__(self, broker: MosquittoBroker, topics: Topics) -> None:
        self.broker = broker
        self.topics = topics
        self.reports: list[tuple[float, Report]] = []
        self.online = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    async def __aenter__(self) -> Watcher:
        user = "bench-watcher"
        password = self.broker.add_orchestrator(user)
        self.broker.reload()
        self._task = asyncio.create_task(self._run(user, password))
        await asyncio.wait_for(self._ready.wait(), 10)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _run(self, user: str, password: str) -> None:
        async with aiomqtt.Client(
            self.broker.host, self.broker.port, username=user, password=password,
            identifier=user, protocol=aiomqtt.ProtocolVersion.V5,
        ) as client:  # fmt: skip
            await client.subscribe(
                [(self.topics.reports_filter, 1), (self.topics.presence_filter, 1)]
            )
            self._ready.set()
            async for m in client.messages:
                if not isinstance(m.payload, bytes) or not m.payload:
                    continue
                msg = decode_message(m.payload)
                if isinstance(msg, Report):
                    self.reports.append((time.perf_counter(), msg))
                elif getattr(msg, "online", False):
                    self.online.set()

    async def wait_state(self, notice_id: str, state: str, within: float = 120) -> float:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            for at, r in self.reports:
                if r.notice_id == notice_id and r.state.value == state:
                    return at
                if r.notice_id == notice_id and r.state.value in (
                    "failed",
                    "rolled_back",
                    "rejected",
                ):
                    raise RuntimeError(f"{notice_id}: {r.state.value} {r.error}")
            await asyncio.sleep(0.002)
        raise TimeoutError(f"{notice_id} never reached {state}")


async def publish(broker: MosquittoBroker, topic: str, payload: bytes) -> None:
    async with aiomqtt.Client(
        broker.host, broker.port, username=broker.ORCHESTRATOR_USER,
        password=broker.orchestrator_password, protocol=aiomqtt.ProtocolVersion.V5,
    ) as client:  # fmt: skip
        await client.publish(topic, payload, qos=1, retain=True)


@contextlib.asynccontextmanager
async def file_server(folder: Path) -> AsyncIterator[int]:
    """aiohttp serving ``folder`` (FileResponse: sendfile, Range); yields the port."""
    app = web.Application()
    app.router.add_static("/", folder)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()
