"""The device agent against a real Mosquitto and a real HTTP server, in one process."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from device_helpers import (
    PayloadServer,
    ReportCollector,
    Signer,
    make_tar,
    publish,
    wait_for,
    write_config,
)

from device_client.agent import DeviceAgent
from device_client.config import load_config
from fleetpush_protocol.keys import KeyPair
from fleetpush_protocol.topics import Topics
from orchestrator.broker import MosquittoBroker

pytestmark = pytest.mark.integration

RELEASE = make_tar({"bin/app": b"#!/bin/sh\necho v2\n", "VERSION": b"2.0.0\n"})


@pytest.fixture
async def server() -> AsyncIterator[PayloadServer]:
    s = PayloadServer()
    await s.start()
    try:
        yield s
    finally:
        await s.stop()


@pytest.fixture
def signer() -> Signer:
    return Signer()


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class Device:
    id: str
    agent: DeviceAgent
    config_path: Path
    task: asyncio.Task[None]

    @property
    def slots(self) -> Path:
        slots = self.agent.config.install.slots_dir
        assert slots is not None
        return slots

    def current(self) -> str | None:
        link = self.slots / "current"
        return link.readlink().name if link.is_symlink() else None


StartDevice = Callable[..., Any]


@pytest.fixture
async def start_device(
    tmp_path: Path, broker: MosquittoBroker, topics: Topics, signer: Signer
) -> AsyncIterator[StartDevice]:
    """Provision a device on the broker, write its config and run its agent in this loop."""
    devices: list[Device] = []

    async def start(
        device_id: str = "dev-001",
        *,
        groups: tuple[str, ...] = (),
        sections: dict[str, dict[str, Any]] | None = None,
        clock: Callable[[], float] | None = None,
    ) -> Device:
        password = broker.add_device(device_id, groups)
        broker.reload()
        path = write_config(
            tmp_path / f"{device_id}.toml", broker=broker, topics=topics, device_id=device_id,
            password=password, root_hex=signer.root_hex, groups=groups, sections=sections,
        )  # fmt: skip
        config = load_config(path)
        agent = DeviceAgent(config, clock=clock) if clock else DeviceAgent(config)
        task = asyncio.create_task(agent.run())
        device = Device(device_id, agent, path, task)
        devices.append(device)
        await wait_for(
            lambda: agent.session is not None and agent.session.connected.is_set(),
            15, "agent connected",
        )  # fmt: skip
        return device

    yield start
    for d in devices:
        d.agent.stop()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(d.task, 15)


async def publish_keyring(broker: MosquittoBroker, topics: Topics, signer: Signer) -> None:
    await publish(broker, topics.keyring(1), signer.keyring(1))


async def test_happy_path_directory_install(
    broker: MosquittoBroker, topics: Topics, signer: Signer, server: PayloadServer,
    start_device: StartDevice,
) -> None:  # fmt: skip
    async with ReportCollector(broker, topics) as reports:
        await publish_keyring(broker, topics, signer)
        device = await start_device()
        url = server.add("app-2.tar", RELEASE)
        notice, data = signer.notice("dev-001", RELEASE, [url], topics=topics)
        await publish(broker, topics.device_notice("dev-001"), data)
        done = await reports.wait_state("succeeded", notice.notice_id)
        assert done.current_version == "2.0.0"
        assert reports.states(notice.notice_id) == [
            "notified", "downloading", "downloaded", "installing", "installed", "succeeded",
        ]  # fmt: skip
        counters = [r.counter for r in sorted(reports.reports, key=lambda r: r.counter)]
        assert counters == sorted(set(counters))
        assert device.current() == f"slot-{notice.notice_id}"
        assert (device.slots / "current" / "bin" / "app").read_bytes().startswith(b"#!/bin/sh")
        await wait_for(lambda: ("dev-001", True) in reports.presence, 10, "online presence")
        await wait_for(
            lambda: any(getattr(i, "installed", ()) for i in reports.inventory), 10, "inventory"
        )
        # A retained copy redelivered after a reconnect is a duplicate: nothing happens.
        before = len(reports.reports)
        await publish(broker, topics.device_notice("dev-001"), data)
        await asyncio.sleep(0.3)
        assert len(reports.reports) == before


async def test_tampered_payload_fails_with_hash_mismatch(
    broker: MosquittoBroker, topics: Topics, signer: Signer, server: PayloadServer,
    start_device: StartDevice,
) -> None:  # fmt: skip
    async with ReportCollector(broker, topics) as reports:
        await publish_keyring(broker, topics, signer)
        device = await start_device()
        tampered = bytearray(RELEASE)
        tampered[100] ^= 0xFF
        url = server.add("app.tar", bytes(tampered))
        notice, data = signer.notice("dev-001", RELEASE, [url], topics=topics)
        await publish(broker, topics.device_notice("dev-001"), data)
        failed = await reports.wait_state("failed", notice.notice_id)
        assert failed.error is not None
        assert failed.error.code == "hash_mismatch"
        assert device.current() is None
        assert "installing" not in reports.states(notice.notice_id)
        assert not any(device.agent.downloads.iterdir())


async def test_notice_signed_by_unknown_key_is_rejected(
    broker: MosquittoBroker, topics: Topics, signer: Signer, server: PayloadServer,
    start_device: StartDevice,
) -> None:  # fmt: skip
    async with ReportCollector(broker, topics) as reports:
        await publish_keyring(broker, topics, signer)
        device = await start_device()
        url = server.add("app.tar", RELEASE)
        _, data = signer.notice("dev-001", RELEASE, [url], key=KeyPair.generate(), topics=topics)
        await publish(broker, topics.device_notice("dev-001"), data)
        rejected = await reports.wait_state("rejected")
        assert rejected.error is not None
        assert rejected.error.code == "unknown_key"
        assert server.ranges == []
        assert device.current() is None


async def test_replayed_old_notice_is_rejected(
    broker: MosquittoBroker, topics: Topics, signer: Signer, server: PayloadServer,
    start_device: StartDevice,
) -> None:  # fmt: skip
    async with ReportCollector(broker, topics) as reports:
        await publish_keyring(broker, topics, signer)
        device = await start_device()
        url = server.add("app.tar", RELEASE)
        old, old_data = signer.notice("dev-001", RELEASE, [url], version="1.0.0", topics=topics)
        new, new_data = signer.notice("dev-001", RELEASE, [url], version="2.0.0", topics=topics)
        await publish(broker, topics.device_notice("dev-001"), new_data)
        await reports.wait_state("succeeded", new.notice_id)
        await publish(broker, topics.device_notice("dev-001"), old_data)
        rejected = await reports.wait_state("rejected", old.notice_id)
        assert rejected.error is not None
        assert rejected.error.code == "rollback"
        assert device.current() == f"slot-{new.notice_id}"
        assert device.agent.state.current_version == "2.0.0"


async def test_notice_for_another_device_is_rejected(
    broker: MosquittoBroker, topics: Topics, signer: Signer, server: PayloadServer,
    start_device: StartDevice,
) -> None:  # fmt: skip
    async with ReportCollector(broker, topics) as reports:
        await publish_keyring(broker, topics, signer)
        device = await start_device()
        url = server.add("app.tar", RELEASE)
        notice, data = signer.notice("dev-001", RELEASE, [url], targets=("dev-999",), topics=topics)
        await publish(broker, topics.device_notice("dev-001"), data)
        rejected = await reports.wait_state("rejected", notice.notice_id)
        assert rejected.error is not None
        assert rejected.error.code == "not_addressed"
        assert server.ranges == []
        assert device.current() is None


async def test_group_notice_and_keyring_after_notice(
    broker: MosquittoBroker, topics: Topics, signer: Signer, server: PayloadServer,
    start_device: StartDevice,
) -> None:  # fmt: skip
    """A group notice that arrives before its keyring is parked, then applied."""
    async with ReportCollector(broker, topics) as reports:
        device = await start_device(groups=("canary",))
        url = server.add("app.tar", RELEASE)
        notice, data = _group_notice(signer, url, topics)
        await publish(broker, topics.group_notice("canary"), data)
        await reports.wait_state("rejected")  # unknown key: parked, reported
        await publish_keyring(broker, topics, signer)
        await reports.wait_state("succeeded", notice.notice_id)
        assert device.current() == f"slot-{notice.notice_id}"


def _group_notice(signer: Signer, url: str, topics: Topics) -> tuple[Any, bytes]:
    import time

    from fleetpush_protocol.envelope import sign_message
    from fleetpush_protocol.messages import Payload, Release, Target, UpdateNotice

    now = int(time.time())
    notice = UpdateNotice(
        notice_id="n-canary-1",
        rollout_id="r-canary",
        release=Release(name="app", version="3.0.0"),
        payload=Payload(urls=(url,), size=len(RELEASE), sha256=hashlib.sha256(RELEASE).digest()),
        handler="directory",
        handler_args={},
        target=Target(groups=("canary",)),
        issued_at=now,
        expires_at=now + 3600,
        scope="group/canary",
        seq=signer.next_seq("group/canary"),
        reply_topic=f"{topics.prefix}/device/{{device_id}}/report",
    )
    return notice, sign_message(notice, [signer.signing])
