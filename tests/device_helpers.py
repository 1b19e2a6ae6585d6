"""Test support for the device client: signer, payload server, report collector, configs.

Everything here is real: Ed25519 signatures, an aiohttp server on a free port, aiomqtt
clients against the test's own Mosquitto. Waits are bounded polls of a condition, never
fixed sleeps that a test's outcome depends on.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt
from aiohttp import web

from fleetpush_common.tasks import cancel_and_wait
from fleetpush_protocol.envelope import decode_message, encode_message
from fleetpush_protocol.messages import Ack, Report
from fleetpush_protocol.topics import Topics
from fleetpush_sim.brokers.base import BrokerEndpoint
from fleetpush_sim.release import make_tar
from fleetpush_sim.signing import Signer
from orchestrator.broker import MosquittoBroker

REPO = Path(__file__).resolve().parents[1]


# --- the payload server --------------------------------------------------------------------


@dataclass
class Served:
    data: bytes
    rate: int = 0  # bytes per second, 0 = as fast as possible
    cut_after: int | None = None  # close the connection after this many bytes, once
    endless: bool = False  # keep sending past the end, without a Content-Length
    chunk: int = 16384


class PayloadServer:
    """An aiohttp server with Range support and misbehaviours, counting bytes sent."""

    def __init__(self) -> None:
        self.files: dict[str, Served] = {}
        self.bytes_sent: dict[str, int] = {}
        self.ranges: list[tuple[str, str | None]] = []
        self.port = 0
        self._runner: web.AppRunner | None = None
        self.gate: asyncio.Event | None = None  # when set, responses wait for it first

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/p/{name}"

    def add(self, name: str, data: bytes, **kw: Any) -> str:
        self.files[name] = Served(data, **kw)
        return self.url(name)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/p/{name}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        served = self.files.get(name)
        rng = request.headers.get("Range")
        self.ranges.append((name, rng))
        if served is None:
            return web.Response(status=404)
        data = served.data
        start = 0
        if rng and rng.startswith("bytes=") and not served.endless:
            start = int(rng[6:].split("-", 1)[0])
            if start >= len(data):
                return web.Response(status=416)
        resp = web.StreamResponse(status=206 if start else 200)
        if not served.endless:
            resp.content_length = len(data) - start
        if start:
            resp.headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        await resp.prepare(request)
        sent = 0
        pos = start
        began = time.monotonic()
        while True:
            if pos >= len(data):
                if not served.endless:
                    break
                block = b"\0" * served.chunk
            else:
                block = data[pos : pos + served.chunk]
            if served.cut_after is not None and sent + len(block) > served.cut_after:
                block = block[: served.cut_after - sent]
                await resp.write(block)
                self.bytes_sent[name] = self.bytes_sent.get(name, 0) + len(block)
                served.cut_after = None
                assert request.transport is not None
                # Close (FIN after the buffered bytes), not abort: every byte "sent" reaches
                # the client, so the byte count measures what the client had to fetch.
                request.transport.close()
                return resp
            try:
                await resp.write(block)
            except (ConnectionResetError, RuntimeError):
                return resp
            sent += len(block)
            pos += len(block)
            self.bytes_sent[name] = self.bytes_sent.get(name, 0) + len(block)
            if served.rate:
                ahead = sent / served.rate - (time.monotonic() - began)
                if ahead > 0:
                    await asyncio.sleep(ahead)
            if served.endless and sent > 64 * len(data) + 1_000_000:
                break  # a bounded "endless" stream, so a broken client cannot hang the test
        with contextlib.suppress(ConnectionResetError, RuntimeError):
            await resp.write_eof()
        return resp


# --- MQTT helpers --------------------------------------------------------------------------


def orchestrator_client(broker: MosquittoBroker, identifier: str | None = None) -> aiomqtt.Client:
    """A client logged in as the orchestrator: only while no orchestrator runs (the broker
    makes the username the client id, so the two would take each other's session over).
    A test that reads beside a running orchestrator adds an identity of its own
    (``broker.add_orchestrator``), as ``ReportCollector`` does."""
    return aiomqtt.Client(
        broker.host,
        broker.port,
        username=broker.ORCHESTRATOR_USER,
        password=broker.orchestrator_password,
        identifier=identifier,
        protocol=aiomqtt.ProtocolVersion.V5,
    )


async def publish(
    broker: MosquittoBroker, topic: str, payload: bytes, *, retain: bool = True
) -> None:
    """Publish once as the orchestrator (QoS 1, retained by default)."""
    async with orchestrator_client(broker) as client:
        await client.publish(topic, payload, qos=1, retain=retain)


class ReportCollector:
    """Collects every report, presence and inventory message; survives broker restarts.

    Like the orchestrator, it confirms each report it holds with an ``Ack`` on the device's
    ack topic, so agents empty their outboxes.
    """

    def __init__(self, broker: MosquittoBroker, topics: Topics) -> None:
        self.broker = broker
        self.topics = topics
        self.reports: list[Report] = []
        self.presence: list[tuple[str, bool]] = []
        self.inventory: list[Any] = []
        self._task: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()

    async def __aenter__(self) -> ReportCollector:
        # Its own identity: the broker uses the username as client id, so sharing the
        # orchestrator's would make every publish() take over the collector's session.
        self._user = f"collector-{id(self) % 100000}"
        self._password = self.broker.add_orchestrator(self._user)
        self.broker.reload()
        self._task = asyncio.create_task(self._run())
        await asyncio.wait_for(self._subscribed.wait(), 10)
        return self

    async def __aexit__(self, *exc: object) -> None:
        # Its loop awaits PUBACKs through aiomqtt's wait_for, which can swallow one cancel.
        await cancel_and_wait(self._task)

    async def _run(self) -> None:
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = 3600
        while True:
            try:
                client = aiomqtt.Client(
                    self.broker.host,
                    self.broker.port,
                    username=self._user,
                    password=self._password,
                    identifier=self._user,
                    protocol=aiomqtt.ProtocolVersion.V5,
                    clean_start=False,
                    properties=props,
                )
                async with client:
                    await client.subscribe(
                        [
                            (self.topics.reports_filter, 1),
                            (self.topics.presence_filter, 1),
                            (self.topics.inventory_filter, 1),
                        ]
                    )
                    self._subscribed.set()
                    async for message in client.messages:
                        report = self._take(message.topic.value, bytes(message.payload))
                        if report is not None:
                            ack = Ack(device_id=report.device_id,
                                      stored=((report.counter, report.counter),))  # fmt: skip
                            topic = self.topics.ack(report.device_id)
                            await client.publish(topic, encode_message(ack), qos=1)
            except aiomqtt.MqttError:
                await asyncio.sleep(0.2)

    def _take(self, topic: str, payload: bytes) -> Report | None:
        if not payload:
            return None
        msg = decode_message(payload)
        if topic.endswith("/report"):
            assert isinstance(msg, Report)
            if all(r.counter != msg.counter or r.device_id != msg.device_id for r in self.reports):
                self.reports.append(msg)
            return msg
        if topic.endswith("/presence"):
            self.presence.append((msg.device_id, msg.online))  # type: ignore[attr-defined]
        else:
            self.inventory.append(msg)
        return None

    def states(self, notice_id: str | None = None, *, progress: bool = False) -> list[str]:
        """Report states in counter order (progress reports left out unless asked)."""
        out = sorted(self.reports, key=lambda r: r.counter)
        return [
            r.state.value
            for r in out
            if (notice_id is None or r.notice_id == notice_id) and (progress or r.progress is None)
        ]

    def last(self, notice_id: str | None = None) -> Report | None:
        rs = [r for r in self.reports if notice_id is None or r.notice_id == notice_id]
        return max(rs, key=lambda r: r.counter) if rs else None

    async def wait_state(
        self, state: str, notice_id: str | None = None, within: float = 30
    ) -> Report:
        def found() -> Report | None:
            for r in sorted(self.reports, key=lambda r: r.counter):
                if r.state.value == state and (notice_id is None or r.notice_id == notice_id):
                    return r
            return None

        await wait_for(lambda: found() is not None, within, f"report {state} for {notice_id}")
        report = found()
        assert report is not None
        return report


async def wait_for(
    condition: Callable[[], bool], within: float = 30, what: str = "condition"
) -> None:
    """Poll ``condition`` until true; fail the test after ``within`` seconds."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(0.02)


async def wait_async(
    condition: Callable[[], Awaitable[bool]], within: float = 30, what: str = "condition"
) -> None:
    deadline = time.monotonic() + within
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(0.05)


# --- device configuration ------------------------------------------------------------------


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(value)


def write_config(
    path: Path,
    *,
    broker: BrokerEndpoint,
    topics: Topics,
    device_id: str,
    password: str,
    root_hex: str,
    groups: tuple[str, ...] = (),
    sections: dict[str, dict[str, Any]] | None = None,
) -> Path:
    """Write a device.toml for a device of the test broker; ``sections`` override tables."""
    state = path.parent / f"state-{device_id}"
    tables: dict[str, dict[str, Any]] = {
        "device": {"id": device_id, "model": "rpi4", "groups": list(groups), "state_dir": state},
        "broker": {
            "url": broker.url,
            "username": device_id,
            "password": password,
            "keepalive": "10s",
            "session_expiry": "1h",
            "topic_prefix": topics.prefix,
        },
        "trust": {"root_keys": [root_hex], "root_threshold": 1},
        "download": {
            "connect_timeout": "2s",
            "read_timeout": "3s",
            "max_attempts": 5,
            "progress_interval": "200ms",
        },
        "install": {"handler": "directory", "slots_dir": state / "slots"},
        "health": {"command": ["/bin/true"], "timeout": "10s"},
        "policy": {"download_ahead": True},
    }
    for name, values in (sections or {}).items():
        tables.setdefault(name, {}).update(values)
    lines = []
    for name, values in tables.items():
        lines.append(f"[{name}]")
        lines += [f"{k} = {toml_value(v)}" for k, v in values.items() if v is not None]
        lines.append("")
    path.write_text("\n".join(lines))
    path.chmod(0o600)  # it holds the broker password: the agent refuses it otherwise
    return path


# --- agents as real processes --------------------------------------------------------------


class AgentProcess:
    """``python -m device_client --config ...`` as a child process, SIGKILL-able."""

    def __init__(self, config: Path, log: Path) -> None:
        self.config = config
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "device_client", "-v", "--config", str(self.config)],
                stdout=log,
                stderr=log,
                env=env,
                cwd=REPO,
            )

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def terminate(self, timeout: float = 15) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


__all__ = [
    "AgentProcess",
    "PayloadServer",
    "ReportCollector",
    "Signer",
    "make_tar",
    "orchestrator_client",
    "publish",
    "wait_for",
    "write_config",
]
