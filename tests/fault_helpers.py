"""Support for the fault, attack, bad-input and load suites (issue 7).

Builds on ``device_helpers`` (Signer, PayloadServer, ReportCollector, AgentProcess) and
``orch_helpers`` (the orchestrator set-up, Api, Fleet): nothing here duplicates them.

* ``DeviceRig``: one real ``DeviceAgent`` in this event loop, plus a *compromised broker*
  identity (broker access, no signing key) that attacks publish through.
* ``FlakyProxy``: an HTTP proxy that drops connections and serves slowly, in front of the
  orchestrator's payload URLs.
* ``Tmpfs``: a small tmpfs mounted over a device folder, for a real ENOSPC.
* ``check_fleet``: the invariants every fault test ends with (truthful terminal states,
  orchestrator counts = device states, no report lost or counted twice, no half-installed
  release).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import os
import random
import sqlite3
import subprocess
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt
from aiohttp import web
from device_helpers import Signer, make_tar, wait_for, write_config

from device_client.agent import DeviceAgent
from device_client.config import load_config as load_device_config
from device_client.store import StateStore
from device_client.wiring import build_agent
from fleetpush_protocol.topics import Topics
from orchestrator.broker import MosquittoBroker

TERMINAL = {"succeeded", "failed", "rolled_back", "rejected", "canceled"}


# --- one device, attacked --------------------------------------------------------------------


@dataclass
class DeviceRig:
    """A real device agent, its signer (the operator) and a compromised-broker identity."""

    root: Path
    broker: MosquittoBroker
    topics: Topics
    signer: Signer
    device_id: str = "dev-001"
    groups: tuple[str, ...] = ()
    sections: dict[str, dict[str, Any]] = field(default_factory=dict)
    agent: DeviceAgent | None = None
    task: asyncio.Task[None] | None = None
    config_path: Path | None = None
    mallory: str = "mallory-cloud"
    _mallory_password: str = ""

    def provision(self) -> None:
        password = self.broker.add_device(self.device_id, self.groups)
        # A client with the broker's trust (it may write notice topics), but no signing key:
        # a stolen orchestrator MQTT password, or a compromised broker operator.
        self._mallory_password = self.broker.add_orchestrator(self.mallory)
        self.broker.reload()
        self.config_path = write_config(
            self.root / f"{self.device_id}.toml", broker=self.broker, topics=self.topics,
            device_id=self.device_id, password=password, root_hex=self.signer.root_hex,
            groups=self.groups, sections=self.sections,
        )  # fmt: skip

    async def start(self) -> DeviceAgent:
        assert self.config_path is not None
        agent = build_agent(load_device_config(self.config_path))
        self.agent = agent
        self.task = asyncio.create_task(agent.run())
        await wait_for(
            lambda: agent.session is not None and agent.session.connected.is_set(),
            15, "agent connected",
        )  # fmt: skip
        return agent

    async def stop(self) -> None:
        if self.agent is not None and self.task is not None:
            self.agent.stop()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(self.task, 15)
        self.agent = self.task = None

    @property
    def slots(self) -> Path:
        return self.root / f"state-{self.device_id}" / "slots"

    def current(self) -> str | None:
        link = self.slots / "current"
        return link.readlink().name if link.is_symlink() else None

    async def attack(self, topic: str, payload: bytes, *, retain: bool = True) -> None:
        """Publish as the compromised broker identity (QoS 1)."""
        async with aiomqtt.Client(
            self.broker.host, self.broker.port, username=self.mallory,
            password=self._mallory_password, identifier=self.mallory,
            protocol=aiomqtt.ProtocolVersion.V5,
        ) as client:  # fmt: skip
            await client.publish(topic, payload, qos=1, retain=retain)


# --- HTTP faults -----------------------------------------------------------------------------


class FlakyProxy:
    """Forwards GETs to ``upstream``; drops some connections mid-body and serves slowly.

    Seeded: ``drop_rate`` of responses are cut after a random part of the body (the
    connection is aborted, so the client sees a reset), and every response is sent at
    ``rate`` bytes per second. Range headers are passed through, so clients resume.
    """

    def __init__(self, upstream: str, *, seed: int, drop_rate: float = 0.3, rate: int = 0):
        self.upstream = upstream.rstrip("/")
        self.rng = random.Random(seed)
        self.drop_rate = drop_rate
        self.rate = rate
        self.port = 0
        self.requests = 0
        self.dropped = 0
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, port: int = 0) -> None:
        self._session = aiohttp.ClientSession(auto_decompress=False)
        app = web.Application()
        app.router.add_get("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        assert self._session is not None
        self.requests += 1
        headers = {k: v for k, v in request.headers.items() if k.lower() == "range"}
        drop = self.rng.random() < self.drop_rate
        cut_at = self.rng.random()
        async with self._session.get(self.upstream + request.path_qs, headers=headers) as up:
            resp = web.StreamResponse(status=up.status)
            for name in ("Content-Type", "Content-Range", "Accept-Ranges"):
                if name in up.headers:
                    resp.headers[name] = up.headers[name]
            if up.content_length is not None:
                resp.content_length = up.content_length
            await resp.prepare(request)
            limit = int((up.content_length or 0) * cut_at) if drop else None
            sent = 0
            began = time.monotonic()
            async for block in up.content.iter_chunked(8192):
                if limit is not None and sent + len(block) > limit:
                    await resp.write(block[: max(0, limit - sent)])
                    self.dropped += 1
                    assert request.transport is not None
                    request.transport.abort()
                    return resp
                with contextlib.suppress(ConnectionResetError):
                    await resp.write(block)
                sent += len(block)
                if self.rate:
                    ahead = sent / self.rate - (time.monotonic() - began)
                    if ahead > 0:
                        await asyncio.sleep(ahead)
            with contextlib.suppress(ConnectionResetError):
                await resp.write_eof()
            return resp


# --- a full disk -----------------------------------------------------------------------------


def can_mount_tmpfs() -> bool:
    """Whether this process may mount a tmpfs (root in CI); tested once, cheaply."""
    if os.geteuid() != 0:
        return False
    probe = Path(f"/tmp/fleetpush-tmpfs-probe-{os.getpid()}")
    probe.mkdir(exist_ok=True)
    try:
        ok = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(probe)],
            capture_output=True, check=False,
        ).returncode == 0  # fmt: skip
        if ok:
            subprocess.run(["umount", str(probe)], check=False)
        return ok
    finally:
        with contextlib.suppress(OSError):
            probe.rmdir()


@contextlib.contextmanager
def tmpfs(path: Path, size: int) -> Iterator[Path]:
    """Mount a tmpfs of ``size`` bytes on ``path`` (created) for the duration."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


# --- payloads --------------------------------------------------------------------------------


def release_tar(version: str, filler: int = 0, *, seed: int = 0) -> bytes:
    """A release archive: VERSION plus ``filler`` incompressible bytes in data.bin."""
    files = {"VERSION": f"{version}\n".encode(), "bin/app": f"#!/bin/sh\necho {version}\n".encode()}
    if filler:
        files["data.bin"] = random.Random(f"{version}-{seed}").randbytes(filler)
    return make_tar(files)


def tar_files(payload: bytes) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(payload)) as tar:
        for m in tar.getmembers():
            if m.isreg():
                f = tar.extractfile(m)
                assert f is not None
                out[m.name] = f.read()
    return out


def slot_matches(slot: Path, payload: bytes) -> bool:
    """Every file of the release is in ``slot`` with the same bytes, and nothing else."""
    want = tar_files(payload)
    have = {
        str(p.relative_to(slot)): p.read_bytes()
        for p in slot.rglob("*")
        if p.is_file() and not p.is_symlink()
    }
    return have == want


# --- the invariants --------------------------------------------------------------------------


@dataclass
class DeviceTruth:
    """What a device itself says, read from its persisted state and its slots folder."""

    device_id: str
    job_state: str | None  # a job still in progress (None: nothing running)
    last_state: str | None  # the last finished job's state
    last_notice: str | None
    current_version: str
    counter: int  # reports made (the next counter minus one)
    outbox: int  # reports not yet confirmed by the orchestrator's ack
    current_slot: str | None


def device_truth(state_dir: Path, device_id: str) -> DeviceTruth:
    state = StateStore(state_dir, durable=False).load()
    link = state_dir / "slots" / "current"
    return DeviceTruth(
        device_id=device_id,
        job_state=state.job.state.value if state.job else None,
        last_state=state.last_job.state.value if state.last_job else None,
        last_notice=state.last_job.notice_id if state.last_job else None,
        current_version=state.current_version,
        counter=state.outbox.counter,
        outbox=len(state.outbox),
        current_slot=os.readlink(link) if link.is_symlink() else None,
    )


def db_reports(db: Path) -> dict[str, list[int]]:
    """Counters the orchestrator stored, per device (read-only, while it runs)."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        out: dict[str, list[int]] = {}
        for device_id, counter in con.execute(
            "SELECT device_id, counter FROM reports ORDER BY device_id, counter"
        ):
            out.setdefault(device_id, []).append(counter)
        return out
    finally:
        con.close()


def db_targets(db: Path, rollout_id: int) -> dict[str, tuple[str, str | None]]:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return {
            d: (s, n)
            for d, s, n in con.execute(
                "SELECT device_id, state, notice_id FROM rollout_targets WHERE rollout_id = ?",
                (rollout_id,),
            )
        }
    finally:
        con.close()


def check_fleet(
    *,
    db: Path,
    rollout_id: int,
    devices: dict[str, Path],
    payload: bytes,
    version: str,
) -> dict[str, int]:
    """Assert the issue-7 invariants for a finished rollout; return the count per state.

    ``devices`` maps device id -> its state folder (the agents must be stopped or idle).
    """
    targets = db_targets(db, rollout_id)
    stored = db_reports(db)
    counts: dict[str, int] = {}
    problems: list[str] = []
    for device_id, state_dir in sorted(devices.items()):
        truth = device_truth(state_dir, device_id)
        orch_state, notice_id = targets[device_id]
        counts[truth.last_state or "none"] = counts.get(truth.last_state or "none", 0) + 1
        # 1. a truthful terminal state, the same on both sides
        if truth.job_state is not None:
            problems.append(f"{device_id}: still {truth.job_state}")
        if truth.last_notice != notice_id:
            problems.append(f"{device_id}: last job {truth.last_notice}, orchestrator {notice_id}")
        if truth.last_state not in TERMINAL or orch_state != truth.last_state:
            problems.append(f"{device_id}: device {truth.last_state}, orchestrator {orch_state}")
        # 2. no report lost, none counted twice (the primary key forbids twins)
        got = stored.get(device_id, [])
        # (reports still in the outbox may be stored and not yet confirmed: the counters
        # the device used are what must all be stored)
        if got != list(range(1, truth.counter + 1)):
            problems.append(
                f"{device_id}: made {truth.counter} reports ({truth.outbox} unsent), "
                f"orchestrator holds {len(got)}: {got[:5]}..{got[-5:]}"
            )
        # 3. no half-installed release: current is a complete slot matching its release
        slots = state_dir / "slots"
        leftovers = [p.name for p in slots.glob(".tmp-*")] if slots.exists() else []
        if leftovers:
            problems.append(f"{device_id}: unfinished slots {leftovers}")
        if truth.last_state == "succeeded":
            if truth.current_version != version or truth.current_slot != f"slot-{notice_id}":
                problems.append(f"{device_id}: succeeded but runs {truth.current_slot}")
            elif not slot_matches(slots / truth.current_slot, payload):
                problems.append(f"{device_id}: slot content differs from the release")
        elif truth.current_slot is not None:
            problems.append(f"{device_id}: {truth.last_state} but current -> {truth.current_slot}")
    assert not problems, "\n".join(problems[:40])
    return counts


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


__all__ = [
    "TERMINAL",
    "DeviceRig",
    "DeviceTruth",
    "FlakyProxy",
    "can_mount_tmpfs",
    "check_fleet",
    "db_reports",
    "db_targets",
    "device_truth",
    "release_tar",
    "slot_matches",
    "tmpfs",
]


# --- a rollout under faults: `fleetpush serve` as a process, real agents ---------------------


async def healthy(session: aiohttp.ClientSession, base: str) -> bool:
    try:
        async with session.get(base + "/healthz") as resp:
            return resp.status == 200
    except aiohttp.ClientError:
        return False
