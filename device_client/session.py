"""The MQTT 5 session: connect, subscribe, publish presence and the outbox, reconnect.

The session is persistent (clean start off, a session expiry), so QoS 1 notices published
while the device is away are queued by the broker; every subscription is QoS 1 and is
renewed on every connect, which also makes the broker resend retained notices and keyrings
(the trust driver ignores the duplicates). The last will is a retained offline presence.
Reconnection never gives up: jittered exponential backoff, capped.

aiomqtt is used only in this module, through its public API (paho's ``Properties`` is the type
it takes for CONNECT properties such as the session expiry).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from device_client.config import BrokerConfig
from device_client.outbox import Outbox
from fleetpush_protocol.backoff import Backoff

__all__ = ["MqttSession", "Publication"]

logger = logging.getLogger(__name__)

MessageHandler = Callable[[str, bytes], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Publication:
    topic: str
    payload: bytes
    retain: bool = False


class MqttSession:
    """One device's connection to the broker, kept up for as long as ``run`` runs.

    Args:
        broker: connection settings.
        client_id: the MQTT client id (the device id).
        subscriptions: topic filters to subscribe to with QoS 1 on every connect.
        will: the retained message the broker publishes if the device vanishes.
        on_connect: returns what to publish (retained presence, inventory) on each connect.
        on_message: called for each received message, one at a time, in order.
        on_acked: called after the broker acknowledged an outbox entry (to persist that).
        outbox: the reports to publish, in order.
    """

    def __init__(
        self,
        broker: BrokerConfig,
        *,
        client_id: str,
        subscriptions: list[str],
        will: Publication,
        on_connect: Callable[[], list[Publication]],
        on_message: MessageHandler,
        on_acked: Callable[[int], None],
        outbox: Outbox,
    ) -> None:
        self._broker = broker
        self._client_id = client_id
        self._subscriptions = subscriptions
        self._will = will
        self._on_connect = on_connect
        self._on_message = on_message
        self._on_acked = on_acked
        self._outbox = outbox
        self._client: aiomqtt.Client | None = None
        self.connected = asyncio.Event()
        self.connections = 0  # successful connects so far, for tests and metrics
        self.backoff = Backoff(base_s=0.5, cap_s=60.0, floor=0.25)

    def _make_client(self) -> aiomqtt.Client:
        b = self._broker
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = b.session_expiry_s
        tls_context = None
        if b.tls:
            tls_context = ssl.create_default_context(cafile=str(b.ca_file) if b.ca_file else None)
            if b.cert_file and b.key_file:
                tls_context.load_cert_chain(str(b.cert_file), str(b.key_file))
        return aiomqtt.Client(
            b.host,
            b.port,
            username=b.username,
            password=b.password,
            identifier=self._client_id,
            protocol=aiomqtt.ProtocolVersion.V5,
            clean_start=False,
            keepalive=b.keepalive_s,
            properties=props,
            will=aiomqtt.Will(
                self._will.topic, self._will.payload, qos=1, retain=self._will.retain
            ),
            tls_context=tls_context,
            timeout=max(10.0, b.keepalive_s / 2),
        )

    async def run(self) -> None:
        """Connect and serve forever; returns only when cancelled."""
        while True:
            try:
                await self._connect_once()
            except aiomqtt.MqttError as e:
                logger.info("%s: broker connection lost or refused: %s", self._client_id, e)
            except (OSError, ssl.SSLError) as e:
                logger.info("%s: broker unreachable: %s", self._client_id, e)
            finally:
                self.connected.clear()
                self._client = None
            await asyncio.sleep(self.backoff.next_delay())

    async def _connect_once(self) -> None:
        client = self._make_client()
        async with client:
            self._client = client
            self.connections += 1
            self.backoff.reset()
            logger.debug("%s: connected to %s:%d", self._client_id, *self._addr())
            await client.subscribe([(t, 1) for t in self._subscriptions])
            for pub in self._on_connect():
                await client.publish(pub.topic, pub.payload, qos=1, retain=pub.retain)
            if (repeat := self._outbox.repeat_on_connect()) is not None:
                await client.publish(repeat.topic, repeat.payload, qos=1)
            self.connected.set()
            await self._serve(client)

    async def _serve(self, client: aiomqtt.Client) -> None:
        """Hand messages over one at a time until the connection fails, or a report is not
        acknowledged: then raise, and leaving ``async with`` closes the connection."""
        unacked = asyncio.Event()
        sender = asyncio.create_task(self._send_outbox(client, unacked))
        gave_up = asyncio.create_task(unacked.wait())
        messages = aiter(client.messages)
        nxt: asyncio.Future[aiomqtt.Message] | None = None
        try:
            while True:
                # Racing the next message, never the handler: a message in hand is finished.
                nxt = asyncio.ensure_future(anext(messages))
                await asyncio.wait({nxt, gave_up}, return_when=asyncio.FIRST_COMPLETED)
                if not nxt.done():
                    raise aiomqtt.MqttError("a report was not acknowledged; reconnecting")
                message = nxt.result()
                payload = message.payload
                if isinstance(payload, bytes | bytearray):
                    await self._on_message(message.topic.value, bytes(payload))
        finally:
            tasks = [t for t in (sender, gave_up, nxt) if t is not None]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def _addr(self) -> tuple[str, int]:
        return self._broker.host, self._broker.port

    async def _send_outbox(self, client: aiomqtt.Client, unacked: asyncio.Event) -> None:
        # One report at a time, each waiting for its PUBACK: strict order, nothing lost.
        while True:
            entry = await self._outbox.wait_ready()
            try:
                await client.publish(entry.topic, entry.payload, qos=1)
            except aiomqtt.MqttError as e:
                logger.info("%s: report %d not acknowledged: %s", self._client_id, entry.counter, e)
                unacked.set()  # the receive loop ends the connection, and run() reconnects
                return
            self._outbox.acknowledge(entry.counter)
            self._on_acked(entry.counter)

    async def publish(self, pub: Publication) -> bool:
        """Publish now if connected (QoS 1); False when offline. Not for reports."""
        client = self._client
        if client is None or not self.connected.is_set():
            return False
        try:
            await client.publish(pub.topic, pub.payload, qos=1, retain=pub.retain)
        except aiomqtt.MqttError:
            return False
        return True
