"""A refused subscription is asked for again on the same connection, on a real broker that
refuses (nats-server denies a subscription its permissions lack with SUBACK 0x80, as it
does for every new subscription while a cluster elects leaders after losing a node:
docs/broker.md, "Cluster"). Mosquitto grants such a subscription and filters deliveries,
so it cannot show this."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from pathlib import Path

import pytest
from device_helpers import wait_for

from device_client.config import BrokerConfig
from device_client.transport.base import Publication
from device_client.transport.outbox import Outbox
from device_client.transport.session import MqttSession
from fleetpush_protocol.topics import Topics
from fleetpush_sim.brokers import NatsBroker
from fleetpush_sim.brokers.mqtt_probe import MqttProbe

pytestmark = pytest.mark.integration


async def test_a_refused_subscription_is_asked_for_again_on_the_same_connection(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="device_client.transport.session")
    topics = Topics(prefix=f"t-{uuid.uuid4().hex[:8]}")
    broker = NatsBroker(tmp_path / "nats", topics=topics)
    password = broker.add_device("dev-1", ())  # not in group "canary" yet
    broker.start()
    got: list[tuple[str, bytes]] = []

    async def on_message(topic: str, payload: bytes) -> None:
        got.append((topic, payload))

    session = MqttSession(
        BrokerConfig(url=broker.url, username="dev-1", password=password, protocol="3.1.1",
                     topic_prefix=topics.prefix),
        client_id="dev-1", subscriptions=[topics.device_notice("dev-1"),
                                          topics.group_notice("canary")],
        will=Publication(topics.presence("dev-1"), b"offline"), on_connect=list,
        on_message=on_message, outbox=Outbox(),
    )  # fmt: skip
    task = asyncio.create_task(session.run())
    try:
        await wait_for(lambda: "refused the subscriptions" in caplog.text, 30, "a refusal")
        assert topics.group_notice("canary") in caplog.text
        broker.add_device("dev-1", ("canary",), password=password)
        broker.reload()
        await wait_for(lambda: "the broker granted" in caplog.text, 30, "the group granted")
        login = (broker.ORCHESTRATOR_USER, broker.orchestrator_password)
        with MqttProbe(broker.host, broker.port, *login, f"orch-{uuid.uuid4().hex[:6]}") as orch:
            orch.publish(topics.group_notice("canary"), b"hello, canary")
        await wait_for(lambda: bool(got), 30, "the group's message")
        assert got == [(topics.group_notice("canary"), b"hello, canary")]
        assert session.connections == 1  # all on the first connection
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        broker.stop()
