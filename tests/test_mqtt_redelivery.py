"""A report never acknowledged is delivered again after a reconnect (real Mosquitto).

The ack-after-commit guarantee rests on this: the link PUBACKs a report only after its
batch is committed, so a report whose commit never happened must come back.
"""

from __future__ import annotations

import asyncio
import queue

import aiomqtt
import pytest

from fleetpush_protocol.topics import Topics
from orchestrator.broker import MosquittoBroker
from orchestrator.config import MqttConfig
from orchestrator.mqtt import codec
from orchestrator.mqtt.link import MqttLink
from orchestrator.mqtt.message import Message

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


async def _device_publish(
    broker: MosquittoBroker, topics: Topics, device: str, body: bytes
) -> None:
    client = aiomqtt.Client(broker.host, broker.port, username=device, identifier=device,
                            password=broker.password(device),
                            protocol=aiomqtt.ProtocolVersion.V5)  # fmt: skip
    async with client as c:
        await c.publish(topics.report(device), body, qos=1)


class _Raw:
    """One MQTT 5 connection driven with the codec alone, for the wire-level view."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.decoder = codec.Decoder()
        self.pending: list[codec.Packet] = []

    @classmethod
    async def connect(cls, broker: MosquittoBroker, user: str) -> tuple[_Raw, codec.ConnAck]:
        raw = cls(*await asyncio.open_connection(broker.host, broker.port))
        raw.writer.write(codec.connect(user, user, broker.password(user), clean_start=False,
                                       session_expiry_s=300))  # fmt: skip
        ack = await raw.next()
        assert isinstance(ack, codec.ConnAck)
        assert ack.reason == 0
        return raw, ack

    async def next(self) -> codec.Packet:
        async with asyncio.timeout(15):
            while not self.pending:
                data = await self.reader.read(65536)
                if not data:
                    raise ConnectionError("closed by the broker")
                self.pending += self.decoder.feed(data)
        return self.pending.pop(0)


async def test_an_unacknowledged_publish_comes_again_with_dup_after_a_reconnect(
    broker: MosquittoBroker, topics: Topics
) -> None:
    broker.add_orchestrator("raw-orch")
    broker.add_device("rd-raw")
    broker.reload()
    first, ack = await _Raw.connect(broker, "raw-orch")
    first.writer.write(codec.subscribe(1, [topics.reports_filter]))
    suback = await first.next()
    assert isinstance(suback, codec.SubAck)
    assert suback.reasons == (1,)
    await _device_publish(broker, topics, "rd-raw", b"report-1")
    got = await first.next()
    assert isinstance(got, codec.Publish)
    assert (got.payload, got.qos, got.dup) == (b"report-1", 1, False)
    first.writer.transport.abort()  # gone without PUBACK and without DISCONNECT

    second, ack = await _Raw.connect(broker, "raw-orch")
    assert ack.session_present
    again = await second.next()
    assert isinstance(again, codec.Publish)
    assert (again.payload, again.packet_id, again.dup) == (b"report-1", got.packet_id, True)
    second.writer.write(codec.puback(again.packet_id) + codec.disconnect())
    await second.writer.drain()
    second.writer.close()


async def test_the_link_gets_a_report_again_after_a_reconnect_until_it_acks(
    broker: MosquittoBroker, topics: Topics
) -> None:
    broker.add_orchestrator("rd-orch")
    broker.add_device("rd-1")
    broker.reload()
    cfg = MqttConfig(url=broker.url, username="rd-orch",
                     password=broker.password("rd-orch"), topic_prefix=topics.prefix)  # fmt: skip
    received: queue.Queue[Message] = queue.Queue()
    link = MqttLink(cfg, [topics.reports_filter], on_message=received.put)  # never acks
    await asyncio.to_thread(link.start)
    try:
        await _device_publish(broker, topics, "rd-1", b"report-1")
        first = await asyncio.to_thread(received.get, timeout=15)
        assert (first.payload, first.qos) == (b"report-1", 1)

        await asyncio.to_thread(broker.restart)  # the link's connection drops; it reconnects
        again = await asyncio.to_thread(received.get, timeout=30)
        assert (again.payload, again.qos) == (b"report-1", 1)
        assert again.mid != first.mid  # a handle of the new connection
        link.ack(first.mid, 1)  # late ack for the old copy: not sent on the new connection
        link.ack(again.mid, 1)
    finally:
        await asyncio.to_thread(link.stop)

    # Acked now: a fresh link on the same session gets only what comes next.
    link = MqttLink(cfg, [topics.reports_filter], on_message=received.put)
    await asyncio.to_thread(link.start)
    try:
        await _device_publish(broker, topics, "rd-1", b"report-2")
        nxt = await asyncio.to_thread(received.get, timeout=15)
        assert nxt.payload == b"report-2"  # the broker resends old ones first: none came
        link.ack(nxt.mid, 1)
    finally:
        await asyncio.to_thread(link.stop)
