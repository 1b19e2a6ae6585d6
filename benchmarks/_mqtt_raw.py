"""Minimal raw-socket MQTT 3.1.1 clients for the benchmarks, with no library in between.

``RawPublisher`` blasts pre-built QoS 1 PUBLISH packets: the ingestion load generator.
``RawSubscriber`` speaks only CONNECT, SUBSCRIBE, PUBLISH (QoS 0/1 in), PUBACK and
DISCONNECT: the fastest a Python process on this machine can learn of a message, the
ceiling the fan-out benchmark compares the real device client to.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _str(s: str) -> bytes:
    raw = s.encode()
    return struct.pack("!H", len(raw)) + raw


def connect_packet(client_id: str, username: str, password: str, keepalive: int = 0) -> bytes:
    flags = 0x02 | 0x80 | 0x40  # clean session, username, password
    body = _str("MQTT") + bytes([4, flags]) + struct.pack("!H", keepalive)
    body += _str(client_id) + _str(username) + _str(password)
    return b"\x10" + _varint(len(body)) + body


def subscribe_packet(topics: list[str], qos: int = 1, packet_id: int = 1) -> bytes:
    body = struct.pack("!H", packet_id) + b"".join(_str(t) + bytes([qos]) for t in topics)
    return b"\x82" + _varint(len(body)) + body


def publish_packets(items: Sequence[tuple[str, bytes]]) -> bytes:
    """QoS 1 PUBLISH packets for ``(topic, payload)`` items, packet ids cycling."""
    out = bytearray()
    for i, (topic, payload) in enumerate(items):
        body = _str(topic) + ((i % 65535) + 1).to_bytes(2, "big") + payload
        out += b"\x32" + _varint(len(body)) + body
    return bytes(out)


class RawPublisher:
    """Connects with a username/password and blasts pre-built packets; drains PUBACKs."""

    def __init__(self, host: str, port: int, user: str, password: str) -> None:
        self.sock = socket.create_connection((host, port))
        self.sock.sendall(connect_packet(user, user, password, keepalive=120))
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
            self.sock.sendall(b"\xe0\x00")
        finally:
            self.sock.close()


@dataclass(eq=False)
class RawSubscriber(asyncio.Protocol):
    """One subscriber as a bare ``asyncio.Protocol``: packets are cut out of the receive
    buffer with no per-packet awaits, so the client costs as little as Python allows."""

    client_id: str
    username: str
    password: str
    topics: list[str]
    received: list[float] = field(default_factory=list)
    # Called with (topic, payload) for each PUBLISH; ``received`` then records the time the
    # callback returned True (e.g. after the device verified the notice).
    on_publish: Callable[[str, bytes], bool] | None = None
    _transport: asyncio.Transport | None = None
    _buf: bytearray = field(default_factory=bytearray)
    _waiter: asyncio.Future[tuple[int, bytes]] | None = None

    async def connect(self, host: str, port: int) -> None:
        await asyncio.get_running_loop().create_connection(lambda: self, host, port)
        header, body = await self._ask(connect_packet(self.client_id, self.username, self.password))
        if header >> 4 != 2 or body[1] != 0:
            raise ConnectionError(f"{self.client_id}: CONNACK refused ({body!r})")
        header, body = await self._ask(subscribe_packet(self.topics))
        if header >> 4 != 9 or any(code >= 0x80 for code in body[2:]):
            raise ConnectionError(f"{self.client_id}: SUBACK refused")

    def _ask(self, packet: bytes) -> asyncio.Future[tuple[int, bytes]]:
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
        buf = self._buf
        buf += data
        pos, end = 0, len(buf)
        while pos + 2 <= end:
            i, length, shift = pos + 1, 0, 0
            while i < end:
                byte = buf[i]
                i += 1
                length |= (byte & 0x7F) << shift
                shift += 7
                if not byte & 0x80:
                    break
            else:
                break  # the length itself is incomplete
            if i + length > end:
                break
            self._packet(buf[pos], bytes(buf[i : i + length]))
            pos = i + length
        del buf[:pos]

    def _packet(self, header: int, body: bytes) -> None:
        if self._waiter is not None:
            waiter, self._waiter = self._waiter, None
            waiter.set_result((header, body))
            return
        if header >> 4 != 3:
            return
        qos = (header >> 1) & 3
        topic_len = struct.unpack_from("!H", body)[0]
        start = 2 + topic_len + (2 if qos else 0)
        if self.on_publish is None or self.on_publish(
            body[2 : 2 + topic_len].decode(), body[start:]
        ):
            self.received.append(time.perf_counter())
        if qos and self._transport is not None:
            self._transport.write(b"\x40\x02" + body[2 + topic_len : 4 + topic_len])

    async def close(self) -> None:
        if self._transport is not None:
            self._transport.write(b"\xe0\x00")
            self._transport.close()


async def connect_all(subs: list[RawSubscriber], host: str, port: int, batch: int = 200) -> None:
    """Connect in batches, so the broker's accept queue is never flooded."""
    for i in range(0, len(subs), batch):
        await asyncio.gather(*(s.connect(host, port) for s in subs[i : i + batch]))
