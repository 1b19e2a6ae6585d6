"""Devices offline for longer than a notice stays usable: the engine renews their notice,
and the broker drops the stale copies. Real Mosquitto, SQLite, HTTP and device agents."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from device_helpers import orchestrator_client
from orch_helpers import Setup, running, wait_until

from fleetpush_common.clock import ManualClock
from fleetpush_protocol.topics import Topics
from orchestrator.broker import MosquittoBroker
from orchestrator.config import MqttConfig
from orchestrator.mqtt.link import MqttLink

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


async def _retained(broker: MosquittoBroker, topic: str, barrier: str) -> bytes | None:
    """The retained message on ``topic``, if the broker still holds one.

    ``barrier`` is a topic known to hold a retained message: subscribed to after ``topic``,
    its message arrives after ``topic``'s (the broker queues retained messages in the order
    of the subscriptions), so its arrival proves that ``topic`` has none, without a timeout.
    """
    found: bytes | None = None
    async with orchestrator_client(broker) as client:
        await client.subscribe(topic, qos=1)
        await client.subscribe(barrier, qos=1)
        async with asyncio.timeout(30):
            async for message in client.messages:
                assert isinstance(message.payload, bytes)
                if message.topic.value == barrier:
                    return found
                found = message.payload
    raise AssertionError("unreachable: the message stream ended")


async def test_the_broker_drops_a_notice_once_its_expiry_passes(
    broker: MosquittoBroker, topics: Topics
) -> None:
    link = MqttLink(
        MqttConfig(url=broker.url, username=broker.ORCHESTRATOR_USER,
                   password=broker.orchestrator_password, topic_prefix=topics.prefix), [],
    )  # fmt: skip
    await asyncio.to_thread(link.start)
    short, kept = f"{topics.prefix}/t/short", f"{topics.prefix}/t/kept"
    try:
        await link.publish_many([(short, b"stale soon", True)], expiry_s=1)
        await link.publish_many([(kept, b"no expiry", True)])
    finally:
        # Stopped before reading: the broker ties the client id to the login, so a second
        # orchestrator client would take the link's session over.
        await asyncio.to_thread(link.stop)
    assert await _retained(broker, short, kept) == b"stale soon"

    async def expired() -> bool:  # the broker's own clock: polled, not slept on
        return await _retained(broker, short, kept) is None

    # Each poll also saw the notice without expiry, still retained: it is the barrier.
    await wait_until(expired, within=30, what="the broker to drop the expired notice")


async def _target(s: Setup, rollout_id: int) -> dict:
    targets = (await s.api.call("GET", f"/v1/rollouts/{rollout_id}/targets"))["targets"]
    assert len(targets) == 1
    result: dict = targets[0]
    return result


@pytest.mark.parametrize("mqtt_protocol", ["5", "3.1.1"])
async def test_an_offline_device_gets_a_fresh_notice_before_its_url_expires(
    tmp_path: Path, broker: MosquittoBroker, topics: Topics, mqtt_protocol: str
) -> None:
    """In 3.1.1 too: there the broker cannot expire the first copy, and the renewed notice
    replaces it (one retained message per topic)."""
    clock = ManualClock(time.time())
    async with running(tmp_path, broker, topics, clock=clock, protocol=mqtt_protocol) as s:
        # The test config: payload URLs live 1 h, notices 1 d, so a notice is usable 1 h
        # and renewed for a device still offline after 45 min.
        s.fleet.provision("away-1")
        s.broker.reload()
        s.fleet.start("away-1")

        async def registered(online: bool) -> bool:
            d = await s.api.call("GET", "/v1/devices/away-1", expect=None)
            return d.get("online") is online

        await wait_until(lambda: registered(True), what="away-1 online")
        await s.fleet.stop("away-1")
        await wait_until(lambda: registered(False), what="away-1 offline")

        rel = await s.api.upload("app", "8.0")
        r = await s.api.rollout(rel["id"], target={"devices": ["away-1"]}, phases=[100])

        async def sent() -> dict | None:
            t = await _target(s, r["id"])
            return t if t["state"] == "sent" else None

        first = await wait_until(sent, what="the first notice")

        clock.advance(50 * 60)  # past 3/4 of the first notice's usable hour
        s.orch.engine.wake()

        async def renewed() -> dict | None:
            t = await _target(s, r["id"])
            return t if t["notice_id"] != first["notice_id"] else None

        second = await wait_until(renewed, what="a renewed notice")
        assert second["state"] == "sent"

        # Back after the first notice's URL expired: the device is updated from the new one.
        clock.advance(20 * 60)
        s.fleet.start("away-1")

        async def succeeded() -> dict | None:
            st = await s.api.status(r["id"])
            return st if st["states"].get("succeeded") == 1 else None

        done = await wait_until(succeeded, within=60, what="the device updated")
        assert done["states"] == {"succeeded": 1}
        final = await _target(s, r["id"])
        assert final["notice_id"] == second["notice_id"]
        device = await s.api.call("GET", "/v1/devices/away-1")
        assert device["current_version"] == "8.0"
        # The broker still held the first copy (its expiry is the URL's hour, in real
        # time): the device began on it and dropped it for the newer one; those reports are
        # kept and change nothing.
        old = [e["state"] for e in device["reports"] if e["notice_id"] == first["notice_id"]]
        assert old[0] in ("canceled", "failed")  # newest first
