"""Bare MQTT clients for the benchmarks, on the orchestrator's own codec and nothing else.

``RawPublisher`` blasts pre-built QoS 1 PUBLISH packets: the ingestion load generator.
``RawSubscriber`` speaks only CONNECT, SUBSCRIBE, PUBLISH (QoS 0/1 in), PUBACK and
DISCONNECT: the fastest a Python process on this machine can learn of a message, the
ceiling the fan-out and ingestion benchmarks compare the real clients to. Both use
``orchestrator.mqtt.codec`` (the link's codec), MQTT 3.1.1 unless told otherwise.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from orchestrator.mqtt import codec


def publish_packets(items: Sequence[tuple[str, bytes]]) -> bytes:
    """QoS 1 PUBLISH packets (MQTT 3.1.1) for ``(topic, payload)`` items, packet ids cycling."""
    return b"".join(
        codec.publish(topic, payload, 1, (i % 65535) + 1, version=4)
        for i, (topic, payload) in enumerate(items)
    )


class RawPublisher:
    """Connects with a username/password and blasts pre-built packets; drains PUBACKs."""

    def __init__(self, host: str, port: int, user: str, password: str) -> None:
        self.sock = socket.create_connection((host, port))
        self.sock.sendall(codec.connect(user, user, password, keepalive_s=120, version=4))
        connack = self.sock.recv(4)
        if len(connack) < 4 or connack[3] != 0:
            raise ConnectionError(f"CONNACK refused: {connack!r}")
        self.acked = 0
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        while True:
            try:
                data = self.sock.recv(1 << 16)
            except OSError:
                return
            if not data:
                return
            self.acked += len(data) // 4

    def send(self, packets: bytes) -> None:
        self.sock.sendall(packets)

    def close(self) -> None:
        try:
            self.sock.sendall(codec.disconnect())
        finally:
            self.sock.close()


@dataclass(eq=False)
class RawSubscriber(asyncio.Protocol):
    """One subscriber as a bare ``asyncio.Protocol``: packets are cut out of the receive
    buffer with no per-packet awaits, and the PUBACKs of one read go out in one write, so
    the client costs as little as Python allows."""

    client_id: str
    username: str
    password: str
    topics: list[str]
    received: list[float] = field(default_factory=list)
    # Called with (topic, payload) for each PUBLISH; ``received`` then records the time the
    # callback returned True (e.g. after the device verified the notice).
    on_publish: Callable[[str, bytes], bool] | None = None
    version: int = 4  # 4: MQTT 3.1.1; 5: MQTT 5 with the largest receive maximum
    acked: int = 0  # acknowledgements of our own QoS 1 publishes (PUBACK)
    _transport: asyncio.Transport | None = None
    _decoder: codec.Decoder | None = None
    _waiter: asyncio.Future[codec.Packet] | None = None

    async def connect(self, host: str, port: int) -> None:
        self._decoder = codec.Decoder(self.version)
        await asyncio.get_running_loop().create_connection(lambda: self, host, port)
        hello = codec.connect(self.client_id, self.username, self.password, keepalive_s=0,
                              version=self.version)  # fmt: skip
        ack = await self._ask(hello)
        if not isinstance(ack, codec.ConnAck) or ack.reason:
            raise ConnectionError(f"{self.client_id}: CONNACK refused ({ack!r})")
        sub = await self._ask(codec.subscribe(1, self.topics, version=self.version))
        if not isinstance(sub, codec.SubAck) or any(r >= 0x80 for r in sub.reasons):
            raise ConnectionError(f"{self.client_id}: SUBACK refused")

    def _ask(self, packet: bytes) -> asyncio.Future[codec.Packet]:
        self._waiter = asyncio.get_running_loop().create_future()
        self.send(packet)
        return self._waiter

    def send(self, packet: bytes) -> None:
        if self._transport is None:
            raise ConnectionError(f"{self.client_id}: not connected")
        self._transport.write(packet)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(ConnectionError(f"{self.client_id}: connection lost"))

    def data_received(self, data: bytes) -> None:
        assert self._decoder is not None
        acks = []
        for p in self._decoder.feed(data):
            if self._waiter is not None:
                waiter, self._waiter = self._waiter, None
                waiter.set_result(p)
            elif isinstance(p, codec.Publish):
                if self.on_publish is None or self.on_publish(p.topic, p.payload):
                    self.received.append(time.perf_counter())
                if p.qos:
                    acks.append(p.packet_id)
            elif isinstance(p, codec.PacketAck):
                self.acked += 1
        if acks and self._transport is not None:
            self._transport.write(codec.pubacks(acks))

    async def close(self) -> None:
        if self._transport is not None:
            self._transport.write(codec.disconnect())
            self._transport.close()


async def connect_all(subs: list[RawSubscriber], host: str, port: int, batch: int = 200) -> None:
    """Connect in batches, so the broker's accept queue is never flooded."""
    for i in range(0, len(subs), batch):
        await asyncio.gather(*(s.connect(host, port) for s in subs[i : i + batch]))
