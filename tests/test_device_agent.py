"""The device agent against a real Mosquitto and a real HTTP server, in one process."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
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
from device_client.wiring import build_agent
from fleetpush_protocol.envelope import sign_message
from fleetpush_protocol.keys import KeyPair
from fleetpush_protocol.messages import Payload, Release, Target, UpdateNotice
from fleetpush_protocol.topics import Topics
from orchestrator.broker import MosquittoBroker

pytestmark = pytest.mark.integration

RELEASE = make_tar({"bin/app": b"#!/bin/sh\necho v2\n", "VERSION": b"2.0.0\n"})


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
        agent = build_agent(config, clock=clock) if clock else build_agent(config)
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


@dataclass
class Rig:
    """One test's broker, operator, payload server, report collector and device starter."""

    broker: MosquittoBroker
    topics: Topics
    signer: Signer
    server: PayloadServer
    reports: ReportCollector
    start_device: StartDevice

    async def trust(self) -> None:
        """Publish the operator's keyring v1 (retained)."""
        await publish(self.broker, self.topics.keyring(1), self.signer.keyring(1))

    async def publish(self, data: bytes, device_id: str = "dev-001") -> None:
        await publish(self.broker, self.topics.device_notice(device_id), data)

    async def send(self, payload: bytes, urls: list[str], **kw: Any) -> UpdateNotice:
        """Sign a notice of ``payload`` for dev-001 and publish it."""
        notice, data = self.signer.notice("dev-001", payload, urls, topics=self.topics, **kw)
        await self.publish(data)
        return notice


@pytest.fixture
async def untrusted_rig(
    broker: MosquittoBroker, topics: Topics, signer: Signer, server: PayloadServer,
    start_device: StartDevice,
) -> AsyncIterator[Rig]:  # fmt: skip
    """A rig whose report collector is subscribed; no keyring published yet."""
    async with ReportCollector(broker, topics) as reports:
        yield Rig(broker, topics, signer, server, reports, start_device)


@pytest.fixture
async def rig(untrusted_rig: Rig) -> Rig:
    """A rig whose keyring v1 is published: devices started on it trust the signer."""
    await untrusted_rig.trust()
    return untrusted_rig


async def test_happy_path_directory_install(rig: Rig) -> None:
    device = await rig.start_device()
    url = rig.server.add("app-2.tar", RELEASE)
    notice, data = rig.signer.notice("dev-001", RELEASE, [url], topics=rig.topics)
    await rig.publish(data)
    done = await rig.reports.wait_state("succeeded", notice.notice_id)
    assert done.current_version == "2.0.0"
    assert rig.reports.states(notice.notice_id) == [
        "notified", "downloading", "downloaded", "installing", "installed", "succeeded",
    ]  # fmt: skip
    counters = [r.counter for r in sorted(rig.reports.reports, key=lambda r: r.counter)]
    assert counters == sorted(set(counters))
    assert device.current() == f"slot-{notice.notice_id}"
    assert (device.slots / "current" / "bin" / "app").read_bytes().startswith(b"#!/bin/sh")
    await wait_for(lambda: ("dev-001", True) in rig.reports.presence, 10, "online presence")
    await wait_for(
        lambda: any(getattr(i, "installed", ()) for i in rig.reports.inventory), 10, "inventory"
    )
    # A retained copy redelivered after a reconnect is a duplicate: nothing happens. The
    # device handles its notice topic in order, so the rejection of a notice published right
    # after the duplicate proves the duplicate was handled, without waiting on a timer.
    before = len(rig.reports.reports)
    await rig.publish(data)
    barrier, barrier_data = rig.signer.notice("dev-002", RELEASE, [url], topics=rig.topics)
    await rig.publish(barrier_data)
    await rig.reports.wait_state("rejected", barrier.notice_id)
    assert [r.notice_id for r in rig.reports.reports[before:]] == [barrier.notice_id]


async def test_tampered_payload_fails_with_hash_mismatch(rig: Rig) -> None:
    device = await rig.start_device()
    tampered = bytearray(RELEASE)
    tampered[100] ^= 0xFF
    url = rig.server.add("app.tar", bytes(tampered))
    notice = await rig.send(RELEASE, [url])
    failed = await rig.reports.wait_state("failed", notice.notice_id)
    assert failed.error is not None
    assert failed.error.code == "hash_mismatch"
    assert device.current() is None
    assert "installing" not in rig.reports.states(notice.notice_id)
    assert not any(device.agent.downloads.iterdir())


async def test_notice_signed_by_unknown_key_is_rejected(rig: Rig) -> None:
    device = await rig.start_device()
    url = rig.server.add("app.tar", RELEASE)
    await rig.send(RELEASE, [url], key=KeyPair.generate())
    rejected = await rig.reports.wait_state("rejected")
    assert rejected.error is not None
    assert rejected.error.code == "unknown_key"
    assert rig.server.ranges == []
    assert device.current() is None


async def test_replayed_old_notice_is_rejected(rig: Rig) -> None:
    device = await rig.start_device()
    url = rig.server.add("app.tar", RELEASE)
    old, old_data = rig.signer.notice("dev-001", RELEASE, [url], version="1.0.0", topics=rig.topics)
    new, new_data = rig.signer.notice("dev-001", RELEASE, [url], version="2.0.0", topics=rig.topics)
    await rig.publish(new_data)
    await rig.reports.wait_state("succeeded", new.notice_id)
    await rig.publish(old_data)
    rejected = await rig.reports.wait_state("rejected", old.notice_id)
    assert rejected.error is not None
    assert rejected.error.code == "rollback"
    assert device.current() == f"slot-{new.notice_id}"
    assert device.agent.state.current_version == "2.0.0"


async def test_notice_for_another_device_is_rejected(rig: Rig) -> None:
    device = await rig.start_device()
    url = rig.server.add("app.tar", RELEASE)
    notice = await rig.send(RELEASE, [url], targets=("dev-999",))
    rejected = await rig.reports.wait_state("rejected", notice.notice_id)
    assert rejected.error is not None
    assert rejected.error.code == "not_addressed"
    assert rig.server.ranges == []
    assert device.current() is None


async def test_group_notice_and_keyring_after_notice(untrusted_rig: Rig) -> None:
    """A group notice that arrives before its keyring is parked, then applied."""
    rig = untrusted_rig
    device = await rig.start_device(groups=("canary",))
    url = rig.server.add("app.tar", RELEASE)
    notice, data = _group_notice(rig.signer, url, rig.topics)
    await publish(rig.broker, rig.topics.group_notice("canary"), data)
    await rig.reports.wait_state("rejected")  # unknown key: parked, reported
    await rig.trust()
    await rig.reports.wait_state("succeeded", notice.notice_id)
    assert device.current() == f"slot-{notice.notice_id}"


def _group_notice(signer: Signer, url: str, topics: Topics) -> tuple[UpdateNotice, bytes]:
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


# --- downloads -----------------------------------------------------------------------------


def assert_counters_contiguous(reports: ReportCollector) -> None:
    counters = sorted(r.counter for r in reports.reports)
    assert counters == list(range(1, len(counters) + 1)), counters


async def test_broker_restart_during_download(rig: Rig) -> None:
    payload = make_tar({"big.bin": bytes(range(256)) * 4096})  # ~1 MiB
    device = await rig.start_device()
    url = rig.server.add("big.tar", payload, rate=len(payload) // 2)  # about 2 s
    notice = await rig.send(payload, [url])
    await rig.reports.wait_state("downloading", notice.notice_id)
    connections = device.agent.session.connections
    await asyncio.to_thread(rig.broker.restart)
    await rig.reports.wait_state("succeeded", notice.notice_id, within=60)
    assert device.agent.session.connections > connections
    assert rig.reports.states(notice.notice_id) == [
        "notified", "downloading", "downloaded", "installing", "installed", "succeeded",
    ]  # fmt: skip
    # Every report made while the broker was away arrived, in order, none twice.
    await wait_for(lambda: len(device.agent.state.outbox) == 0, 10, "outbox drained")
    assert_counters_contiguous(rig.reports)
    progress = [r for r in rig.reports.reports if r.progress is not None]
    assert progress, "a 2 s download sends progress reports"
    assert all(p.progress.total == len(payload) for p in progress if p.progress)


async def test_http_cut_halfway_resumes_with_range(rig: Rig) -> None:
    payload = make_tar({"big.bin": bytes(range(256)) * 2048})  # ~512 KiB
    device = await rig.start_device()
    # A link slower than loopback (as every real one is), so the client is not
    # buffering megabytes ahead when the server cuts the connection.
    url = rig.server.add("cut.tar", payload, cut_after=len(payload) // 2, rate=4 << 20)
    notice = await rig.send(payload, [url])
    await rig.reports.wait_state("succeeded", notice.notice_id)
    chunk = device.agent.config.download.chunk_bytes
    assert rig.server.bytes_sent["cut.tar"] <= len(payload) + chunk
    ranges = [r for _, r in rig.server.ranges]
    assert ranges[0] is None
    resumed = ranges[1]
    assert resumed is not None
    assert int(resumed.removeprefix("bytes=").rstrip("-")) > 0
    assert device.agent.fetcher.bytes_received <= len(payload) + chunk


async def test_endless_data_stops_at_signed_size(rig: Rig) -> None:
    device = await rig.start_device()
    url = rig.server.add("endless.tar", RELEASE, endless=True)
    notice = await rig.send(RELEASE, [url])
    await rig.reports.wait_state("succeeded", notice.notice_id)
    assert device.agent.fetcher.bytes_received == len(RELEASE)


async def test_next_url_after_a_dead_one(rig: Rig) -> None:
    await rig.start_device()
    good = rig.server.add("good.tar", RELEASE)
    notice = await rig.send(RELEASE, [rig.server.url("missing.tar"), good])
    await rig.reports.wait_state("succeeded", notice.notice_id)
    assert [n for n, _ in rig.server.ranges] == ["missing.tar", "good.tar"]


async def test_disk_full_fails_and_keeps_the_old_release(rig: Rig) -> None:
    device = await rig.start_device()
    url = rig.server.add("v2.tar", RELEASE)
    first = await rig.send(RELEASE, [url])
    await rig.reports.wait_state("succeeded", first.notice_id)
    # The next download lands on a "disk" that is full: /dev/full fails every write.
    second_id = "n-dev-001-2"
    (device.agent.downloads / f"{second_id}.part").symlink_to("/dev/full")
    second, data = rig.signer.notice("dev-001", RELEASE, [url], version="3.0.0", topics=rig.topics)
    assert second.notice_id == second_id
    await rig.publish(data)
    failed = await rig.reports.wait_state("failed", second_id)
    assert failed.error is not None
    assert failed.error.code == "disk_full"
    assert failed.current_version == "2.0.0"
    assert device.current() == f"slot-{first.notice_id}"
    assert not (device.agent.downloads / f"{second_id}.part").exists()


# --- health, cancel, policy, command handler -----------------------------------------------


async def test_failing_health_check_rolls_back(rig: Rig) -> None:
    health = {"command": ["/bin/sh", "-c", 'test "$FLEETPUSH_VERSION" != 3.0.0'], "timeout": "10s"}
    device = await rig.start_device(sections={"health": health})
    url = rig.server.add("v2.tar", RELEASE)
    good = await rig.send(RELEASE, [url])
    await rig.reports.wait_state("succeeded", good.notice_id)
    v3 = make_tar({"VERSION": b"3.0.0\n"})
    bad = await rig.send(v3, [rig.server.add("v3.tar", v3)], version="3.0.0")
    rolled = await rig.reports.wait_state("rolled_back", bad.notice_id)
    assert rolled.error is not None
    assert rolled.error.code == "health_check_failed"
    assert rolled.current_version == "2.0.0"
    assert device.current() == f"slot-{good.notice_id}"
    assert not (device.slots / f"slot-{bad.notice_id}").exists()
    assert rig.reports.states(bad.notice_id)[-2:] == ["installed", "rolled_back"]


async def test_health_check_timeout_rolls_back(rig: Rig) -> None:
    health = {"command": ["/bin/sleep", "30"], "timeout": "500ms"}
    device = await rig.start_device(sections={"health": health})
    notice = await rig.send(RELEASE, [rig.server.add("v2.tar", RELEASE)])
    rolled = await rig.reports.wait_state("rolled_back", notice.notice_id)
    assert rolled.error is not None
    assert rolled.error.code == "health_check_timeout"
    assert device.current() is None  # there was nothing before: nothing now


async def test_cancel_stops_a_download(rig: Rig) -> None:
    payload = make_tar({"big.bin": bytes(range(256)) * 8192})  # ~2 MiB
    device = await rig.start_device()
    url = rig.server.add("slow.tar", payload, rate=len(payload) // 20)  # about 20 s
    notice = await rig.send(payload, [url])
    await rig.reports.wait_state("downloading", notice.notice_id)
    await rig.publish(rig.signer.cancel("dev-001"))
    await rig.reports.wait_state("canceled", notice.notice_id)
    assert rig.reports.states(notice.notice_id)[-1] == "canceled"
    assert device.current() is None
    await wait_for(lambda: not any(device.agent.downloads.iterdir()), 5, "partial removed")


async def test_hold_defers_install_until_released(rig: Rig) -> None:
    clock = FakeClock(time.time())
    hold = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(clock.now + 3600))
    device = await rig.start_device(
        sections={"policy": {"hold_until": hold, "download_ahead": True}}, clock=clock
    )
    notice = await rig.send(RELEASE, [rig.server.add("a.tar", RELEASE)])
    await rig.reports.wait_state("deferred", notice.notice_id)
    # Downloaded ahead of time, not installed.
    assert rig.reports.states(notice.notice_id) == [
        "notified",
        "downloading",
        "downloaded",
        "deferred",
    ]
    assert device.current() is None
    clock.now += 3601
    device.agent.wake()
    await rig.reports.wait_state("succeeded", notice.notice_id)
    assert device.current() == f"slot-{notice.notice_id}"


async def test_an_accepted_notice_is_one_state_write(rig: Rig) -> None:
    # The notified report and the first decision (here: deferred) are persisted together,
    # so a device writes its flash once per notice, and never leaves a bare "notified".
    device = await rig.start_device(
        sections={"policy": {"hold_until": "2999-01-01T00:00:00Z", "download_ahead": False}}
    )
    store, written = device.agent.store, []
    real_save = store.save

    def save(state: Any) -> None:
        written.append((state.job.state.value if state.job else None, len(state.outbox)))
        real_save(state)

    store.save = save  # type: ignore[method-assign]
    notice = await rig.send(RELEASE, [rig.server.add("a.tar", RELEASE)])
    await rig.reports.wait_state("deferred", notice.notice_id)
    # Writes without a job (a keyring or ack handled late on a busy machine) are not the
    # notice's: its first write is the one that holds the job.
    jobs = [w for w in written if w[0] is not None]
    assert jobs, "the notice was persisted"
    assert jobs[0] == ("deferred", 2)  # the notified and deferred reports, one write
    assert all(job_state != "notified" for job_state, _ in written)
    persisted = store.load().job
    assert persisted is not None
    assert persisted.state.value == "deferred"
    assert rig.reports.states(notice.notice_id) == ["notified", "deferred"]


async def test_maintenance_window_defers_download_and_install(rig: Rig) -> None:
    from datetime import datetime, timedelta

    clock = FakeClock(time.time())
    local = datetime.fromtimestamp(clock.now)
    start = local + timedelta(hours=2)
    end = start + timedelta(hours=1)
    window = f"{start:%H:%M}-{end:%H:%M}"
    device = await rig.start_device(
        sections={"policy": {"maintenance_windows": [window], "download_ahead": False}},
        clock=clock,
    )
    notice = await rig.send(RELEASE, [rig.server.add("a.tar", RELEASE)])
    await rig.reports.wait_state("deferred", notice.notice_id)
    assert rig.server.ranges == []  # no download-ahead: nothing fetched yet
    clock.now += 2 * 3600 + 60  # into the window
    device.agent.wake()
    await rig.reports.wait_state("succeeded", notice.notice_id)
    assert rig.reports.states(notice.notice_id) == [
        "notified", "deferred", "downloading", "downloaded", "installing", "installed",
        "succeeded",
    ]  # fmt: skip


async def test_command_handler_reboot_then_health_confirms(rig: Rig) -> None:
    applied = rig.broker.workdir.parent / "applied"
    install = {
        "handler": "command",
        "pre_install": ["/bin/true"],
        # exit 3: "installed, reboot to take effect"
        "install": ["/bin/sh", "-c", f'cp "$0" {applied} && exit 3', "{payload}"],
        "post_install": [],
    }
    device = await rig.start_device(sections={"install": install})
    payload = b"firmware image\n" * 100
    notice = await rig.send(payload, [rig.server.add("fw.bin", payload)], handler="command")
    await rig.reports.wait_state("installed", notice.notice_id)
    assert applied.read_bytes() == payload
    await wait_for(lambda: device.agent.state.job is not None
                   and device.agent.state.job.reboot_pending, 5, "reboot recorded")  # fmt: skip
    assert "succeeded" not in rig.reports.states(notice.notice_id)
    # "Reboot": stop the agent and start it again on the same state.
    device.agent.stop()
    await asyncio.wait_for(device.task, 15)
    again = build_agent(load_config(device.config_path))
    task = asyncio.create_task(again.run())
    try:
        done = await rig.reports.wait_state("succeeded", notice.notice_id)
        assert done.current_version == "2.0.0"
    finally:
        again.stop()
        await asyncio.wait_for(task, 15)
