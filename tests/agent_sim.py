"""An in-memory world for the device agent: no broker, no HTTP server (the fast tier).

Like python-tuf's RepositorySimulator, it stands in for everything outside the device, so
the real ``DeviceAgent`` (trust driver, message router, job runner, install handler, state
file) runs against it in one event loop:

* ``MemorySession``: the broker session. Records every publication (reports, presence,
  inventory), injects messages as the broker would deliver them, and confirms reports with
  an ``Ack`` when asked (``auto_ack``).
* ``MemoryFetcher``: serves payload bytes by URL, resuming from the partial file, checking
  them with the protocol's own ``PayloadCheck``; a ``gate`` holds a download mid-way.
* ``ManualClock``: time moves only when a test says so.

Waits are on events (a report arriving, the inbox drained, the job runner idle), each
bounded so a broken agent fails the test rather than hanging it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from device_client.agent import DeviceAgent
from device_client.config import DeviceConfig, parse_config
from device_client.errors import DownloadError
from device_client.handlers import make_handler
from device_client.store import StateStore
from device_client.transport.base import ProgressCallback, Publication, SessionWiring
from fleetpush_common.clock import ManualClock
from fleetpush_common.tasks import cancel_and_wait
from fleetpush_protocol.envelope import decode_message, encode_message
from fleetpush_protocol.errors import ContentError
from fleetpush_protocol.messages import Ack, Payload, Report
from fleetpush_protocol.payload import PayloadCheck
from fleetpush_protocol.topics import Topics
from fleetpush_sim.signing import Signer

WAIT_S = 10.0  # seconds: the longest any event of these tests may take

__all__ = ["AgentSim", "MemoryFetcher", "MemorySession", "sim_config"]


class MemorySession:
    """The agent's broker session, in memory: connected while ``run`` runs."""

    def __init__(self, wiring: SessionWiring, topics: Topics, device_id: str) -> None:
        self.wiring = wiring
        self.connected = asyncio.Event()
        self.connections = 0
        self.published: list[Publication] = []
        self.reports: list[Report] = []
        self.auto_ack = True
        self._topics = topics
        self._device_id = device_id
        self._changed = asyncio.Condition()

    async def run(self) -> None:
        self.connections += 1
        self.published += self.wiring.on_connect()
        self.wiring.outbox.rewind()
        self.connected.set()
        try:
            while True:
                entry = await self.wiring.outbox.wait_ready()
                self.wiring.outbox.sent(entry.counter)
                await self._record(Publication(entry.topic, entry.payload))
        finally:
            self.connected.clear()

    async def publish(self, pub: Publication) -> bool:
        if not self.connected.is_set():
            return False
        await self._record(pub)
        return True

    async def _record(self, pub: Publication) -> None:
        self.published.append(pub)
        if pub.topic == self._topics.report(self._device_id):
            report = decode_message(pub.payload)
            assert isinstance(report, Report)
            if report.counter not in {r.counter for r in self.reports}:
                self.reports.append(report)
            if self.auto_ack:
                ack = Ack(device_id=self._device_id, stored=((report.counter, report.counter),))
                await self.inject(self._topics.ack(self._device_id), encode_message(ack))
        async with self._changed:
            self._changed.notify_all()

    async def inject(self, topic: str, payload: bytes) -> None:
        """Deliver a message to the agent as the broker would."""
        await self.wiring.on_message(topic, payload)

    def states(self, notice_id: str | None = None) -> list[str]:
        """Report states in counter order, progress left out."""
        return [
            r.state.value
            for r in sorted(self.reports, key=lambda r: r.counter)
            if (notice_id is None or r.notice_id == notice_id) and r.progress is None
        ]

    def report(self, state: str, notice_id: str | None = None) -> Report | None:
        for r in sorted(self.reports, key=lambda r: r.counter):
            if r.state.value == state and (notice_id is None or r.notice_id == notice_id):
                return r
        return None

    async def wait_report(
        self, state: str, notice_id: str | None = None, *, count: int = 1
    ) -> Report:
        """The first report of ``state`` once it was published (``count``: the last of the
        first ``count`` such reports, once that many were)."""

        def found() -> list[Report]:
            return [r for r in sorted(self.reports, key=lambda r: r.counter)
                    if r.state.value == state and notice_id in (None, r.notice_id)]  # fmt: skip

        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(lambda: len(found()) >= count), WAIT_S)
        return found()[count - 1]


@dataclass
class MemoryFetcher:
    """Serves ``files[url]``; a URL missing from ``files`` is a transport error."""

    files: dict[str, bytes] = field(default_factory=dict)
    requests: list[tuple[str, int]] = field(default_factory=list)  # (url, resumed from)
    gate: asyncio.Event | None = None  # when set, a fetch waits for it after half the bytes
    halfway: asyncio.Event = field(default_factory=asyncio.Event)

    async def fetch(
        self, payload: Payload, part: Path, dest: Path, progress: ProgressCallback
    ) -> None:
        for url in payload.urls:
            data = self.files.get(url)
            check, offset = _resume(part, payload)
            self.requests.append((url, offset))
            if data is None:
                continue
            rest = data[offset:]
            half = len(rest) // 2
            for i, chunk in enumerate((rest[:half], rest[half:])):
                _append(part, check, chunk)
                if i == 0 and self.gate is not None:
                    self.halfway.set()
                    await self.gate.wait()
                await progress(check.done, payload.size)
            _finish(part, dest, check)
            return
        raise DownloadError("every payload URL failed")


def _resume(part: Path, payload: Payload) -> tuple[PayloadCheck, int]:
    check = PayloadCheck(payload.size, payload.sha256)
    if part.exists():
        check.update(part.read_bytes())
    return check, check.done


def _append(part: Path, check: PayloadCheck, chunk: bytes) -> None:
    try:
        check.update(chunk)
    except ContentError:
        part.unlink(missing_ok=True)
        raise
    with part.open("ab") as f:
        f.write(chunk)


def _finish(part: Path, dest: Path, check: PayloadCheck) -> None:
    try:
        check.finish()
    except ContentError:
        part.unlink(missing_ok=True)
        raise
    part.replace(dest)


def sim_config(state_dir: Path, signer: Signer, **sections: dict[str, Any]) -> DeviceConfig:
    """A device configuration for ``dev-001`` trusting ``signer``; ``sections`` override."""
    tables: dict[str, dict[str, Any]] = {
        "device": {"id": "dev-001", "model": "rpi4", "state_dir": str(state_dir)},
        "broker": {
            "url": "mqtt://127.0.0.1:1",
            "topic_prefix": "fp-fast",
            "username": "dev-001",
            "password": "unused",
        },
        "trust": {"root_keys": [signer.root_hex], "root_threshold": 1},
        "download": {"progress_interval": "100ms"},
        "install": {"handler": "directory", "slots_dir": str(state_dir / "slots")},
        "health": {"command": ["/bin/true"], "timeout": "10s"},
        "policy": {"download_ahead": True},
    }
    for name, values in sections.items():
        tables.setdefault(name, {}).update(values)
    return parse_config(tables, base=state_dir)


class AgentSim:
    """One real agent in a world of memory: ``async with AgentSim(...) as sim``."""

    def __init__(self, state_dir: Path, signer: Signer | None = None,
                 clock: ManualClock | None = None, **sections: dict[str, Any]) -> None:  # fmt: skip
        self.clock = clock or ManualClock()
        self.signer = signer or Signer(clock=self.clock.now)
        self.state_dir = state_dir
        self.config = sim_config(state_dir, self.signer, **sections)
        self.topics = self.config.broker.topics
        self.fetcher = MemoryFetcher()
        self.agent = self.new_agent()
        self._task: asyncio.Task[None] | None = None

    def new_agent(self) -> DeviceAgent:
        """An agent on this sim's state folder, its fetcher and clock (a restart)."""
        return DeviceAgent(
            self.config,
            store=StateStore(self.state_dir, durable=False, clock=self.clock.now),
            fetcher=self.fetcher,
            session_factory=lambda w: MemorySession(w, self.topics, "dev-001"),
            handler=make_handler(self.config.install),
            clock=self.clock.now,
        )

    @property
    def session(self) -> MemorySession:
        session = self.agent.session
        assert isinstance(session, MemorySession)
        return session

    async def start(self) -> None:
        self._task = asyncio.create_task(self.agent.run())
        await asyncio.sleep(0)  # run() makes its session before its first await
        await asyncio.wait_for(self.session.connected.wait(), WAIT_S)

    async def stop(self) -> None:
        self.agent.stop()
        if self._task is not None:
            await asyncio.wait_for(self._task, WAIT_S)
            self._task = None

    async def crash(self) -> None:
        """End the agent as a power cut would: whatever was written is all there is."""
        await cancel_and_wait(self._task)
        self._task = None

    async def restart(self) -> None:
        await self.stop()
        self.agent = self.new_agent()
        await self.start()

    async def settled(self) -> None:
        """Every message injected so far handled, and no job step running."""
        await asyncio.wait_for(self.agent.router.drained(), WAIT_S)
        await asyncio.wait_for(self.agent.runner.idle(), WAIT_S)

    async def trust(self, version: int = 1) -> None:
        await self.session.inject(self.topics.keyring(version), self.signer.keyring(version))
        await self.settled()

    async def notify(self, data: bytes) -> None:
        await self.session.inject(self.topics.device_notice("dev-001"), data)

    def slot(self) -> str | None:
        link = self.state_dir / "slots" / "current"
        return link.readlink().name if link.is_symlink() else None


@contextlib.asynccontextmanager
async def running(sim: AgentSim) -> AsyncIterator[AgentSim]:
    await sim.start()
    try:
        yield sim
    finally:
        await sim.stop()
