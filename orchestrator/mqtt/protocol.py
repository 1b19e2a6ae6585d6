"""The link's ``asyncio.Protocol``: bytes in through the codec, packets out to the link."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from orchestrator.mqtt import codec

__all__ = ["Handlers", "MqttProtocol"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Handlers:
    """What the link does with each packet, called on the loop as the packet is decoded.

    ``on_connack`` runs before any PUBLISH that came after the CONNACK in the same read,
    so the link has taken the new connection in hand when its first message arrives.
    """

    on_connack: Callable[[codec.ConnAck], None]
    on_publish: Callable[[codec.Publish], None]
    on_ack: Callable[[codec.PacketAck], None]
    on_suback: Callable[[codec.SubAck], None]
    on_lost: Callable[[], None]


class MqttProtocol(asyncio.Protocol):
    """One TCP connection of an ``MqttLink``; a new one for every connect.

    ``connack`` resolves with the broker's CONNACK; ``lost`` is set when the connection
    ends, whichever side ended it.
    """

    def __init__(self, handlers: Handlers, version: int = 5) -> None:
        self.handlers = handlers
        self.decoder = codec.Decoder(version)  # 5, or 4 for MQTT 3.1.1
        loop = asyncio.get_running_loop()
        self.connack: asyncio.Future[codec.ConnAck] = loop.create_future()
        self.lost = asyncio.Event()
        self.last_received = time.monotonic()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)  # noqa: S101 - TCP
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.handlers.on_lost()
        if not self.connack.done():
            self.connack.set_exception(ConnectionError(f"connection closed: {exc or 'by peer'}"))
        self.lost.set()

    def write(self, data: bytes) -> None:
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    async def close(self) -> None:
        """Close after writing what is queued, and wait until the connection is gone."""
        if self.transport is not None:
            self.transport.close()
            await self.lost.wait()

    def data_received(self, data: bytes) -> None:
        self.last_received = time.monotonic()
        try:
            packets = self.decoder.feed(data)
        except codec.MalformedPacketError:
            logger.warning("malformed packet from the MQTT broker; reconnecting", exc_info=True)
            self.abort()
            return
        h = self.handlers
        for p in packets:
            if isinstance(p, codec.Publish):
                h.on_publish(p)
            elif isinstance(p, codec.PacketAck):
                h.on_ack(p)
            elif isinstance(p, codec.ConnAck):
                if not self.connack.done():
                    if not p.reason:
                        h.on_connack(p)
                    self.connack.set_result(p)
            elif isinstance(p, codec.SubAck):
                h.on_suback(p)
            elif isinstance(p, codec.Disconnect):
                if p.reason == 0x8E:  # Session taken over
                    logger.error(
                        "MQTT broker disconnected us: another client logged in with our "
                        "client id (another fleetpush serve with this [mqtt] username? each "
                        "replica needs its own identity, docs/scaling.md)"
                    )
                else:
                    logger.warning("MQTT broker disconnected us: reason 0x%02x", p.reason)
                self.abort()
