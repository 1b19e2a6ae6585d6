"""The orchestrator's one MQTT connection (paho, loop thread): publish and receive.

paho is used rather than aiomqtt because ingestion is the hot path (see docs/performance.md).
The session is persistent (MQTT 5, clean start off, long session expiry) so reports sent
while the orchestrator is down wait in the broker; acknowledgements are manual, so a
report is PUBACKed only after the batch holding it is committed.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from orchestrator.config import MqttConfig

__all__ = ["MqttLink", "PublishTimeoutError"]

logger = logging.getLogger(__name__)

SESSION_EXPIRY_S = 30 * 86400  # seconds the broker keeps our session while we are away
RECEIVE_MAXIMUM = 65535  # unacknowledged QoS 1 messages the broker may send us


class PublishTimeoutError(TimeoutError):
    """The broker did not acknowledge every publish in time."""


class _Waiter:
    def __init__(self, loop: asyncio.AbstractEventLoop, mids: set[int]) -> None:
        self.loop = loop
        self.left = set(mids)
        self.future: asyncio.Future[None] = loop.create_future()
        self.lock = threading.Lock()

    def done(self, mid: int) -> None:
        with self.lock:
            self.left.discard(mid)
            finished = not self.left
        if finished:
            self.loop.call_soon_threadsafe(self._finish)

    def _finish(self) -> None:
        if not self.future.done():
            self.future.set_result(None)


class MqttLink:
    """A paho client with manual acks, waitable publishes and resubscription on connect.

    Args:
        config: broker address, credentials and topic prefix.
        subscriptions: topic filters subscribed (QoS 1) on every connect.
        on_message: called on paho's thread for every message; must call ``ack``.
    """

    def __init__(
        self,
        config: MqttConfig,
        subscriptions: Sequence[str] = (),
        on_message: Callable[[mqtt.MQTTMessage], None] | None = None,
    ) -> None:
        self.config = config
        self.subscriptions = tuple(subscriptions)
        self.on_message = on_message
        self.connected = threading.Event()
        self._lock = threading.Lock()
        self._waiting: dict[int, _Waiter] = {}
        self._early: set[int] = set()
        c = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=config.username,
            protocol=MQTTProtocolVersion.MQTTv5,
            manual_ack=True,
        )
        c.username_pw_set(config.username, config.password)
        c.max_inflight_messages_set(1000)
        c.max_queued_messages_set(0)
        c.reconnect_delay_set(1, 30)
        c.on_connect = self._handle_connect
        c.on_disconnect = self._handle_disconnect
        c.on_publish = self._handle_publish
        c.on_message = self._handle_message
        self.client = c

    # --- lifecycle -----------------------------------------------------------------------

    def start(self, timeout: float = 15.0) -> None:
        """Connect and start paho's loop thread; wait for the first CONNACK.

        Raises:
            ConnectionError: not connected within ``timeout`` seconds.
        """
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = SESSION_EXPIRY_S
        props.ReceiveMaximum = RECEIVE_MAXIMUM
        self.client.connect_async(
            self.config.host,
            self.config.port,
            keepalive=self.config.keepalive_s,
            clean_start=False,
            properties=props,
        )
        self.client.loop_start()
        if not self.connected.wait(timeout):
            self.client.loop_stop()
            raise ConnectionError(
                f"cannot connect to MQTT broker {self.config.host}:{self.config.port} "
                f"as {self.config.username!r} within {timeout:.0f}s"
            )

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
        self.connected.clear()

    # --- paho callbacks (paho's thread) --------------------------------------------------

    def _handle_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason.is_failure:
            logger.warning("MQTT connection refused: %s", reason)
            return
        logger.info("connected to MQTT broker (session present: %s)", flags.session_present)
        if self.subscriptions:
            client.subscribe([(f, 1) for f in self.subscriptions])
        self.connected.set()

    def _handle_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self.connected.clear()
        if reason.is_failure:
            logger.warning("MQTT connection lost (%s); paho reconnects", reason)

    def _handle_publish(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason: ReasonCode,
        properties: Properties,
    ) -> None:
        with self._lock:
            waiter = self._waiting.pop(mid, None)
            if waiter is None:
                self._early.add(mid)
        if waiter is not None:
            waiter.done(mid)

    def _handle_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        handler = self.on_message
        if handler is None:
            self.ack(msg.mid, msg.qos)
            return
        try:
            handler(msg)
        except Exception:
            logger.exception("message handler failed for %s", msg.topic)
            self.ack(msg.mid, msg.qos)

    # --- use -----------------------------------------------------------------------------

    def ack(self, mid: int, qos: int) -> None:
        """Acknowledge a received QoS 1 message (thread-safe)."""
        if qos:
            self.client.ack(mid, qos)

    async def publish_many(
        self,
        items: Sequence[tuple[str, bytes, bool]],
        timeout: float = 30.0,  # noqa: ASYNC109
    ) -> None:
        """Publish ``(topic, payload, retain)`` items at QoS 1; wait until all are PUBACKed.

        While disconnected, paho keeps the messages and sends them after reconnecting.

        Raises:
            PublishTimeoutError: some were not acknowledged within ``timeout`` seconds.
            ConnectionError: paho refused to queue a message.
        """
        if not items:
            return
        infos = []
        for topic, payload, retain in items:
            info = self.client.publish(topic, payload, qos=1, retain=retain)
            if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
                raise ConnectionError(f"publish to {topic} failed: {mqtt.error_string(info.rc)}")
            infos.append(info)
        waiter = _Waiter(asyncio.get_running_loop(), {i.mid for i in infos})
        done = []
        with self._lock:
            for info in infos:
                if info.mid in self._early:
                    self._early.discard(info.mid)
                    done.append(info.mid)
                else:
                    self._waiting[info.mid] = waiter
        for mid in done:
            waiter.done(mid)
        try:
            await asyncio.wait_for(waiter.future, timeout)
        except TimeoutError:
            with self._lock:
                for info in infos:
                    self._waiting.pop(info.mid, None)
            raise PublishTimeoutError(
                f"{len(waiter.left)} of {len(infos)} publishes not acknowledged in {timeout}s"
            ) from None
