"""A minimal raw-socket MQTT 3.1.1 publisher: the load generator, kept out of the way."""

from __future__ import annotations

import socket
import threading
from collections.abc import Sequence


def _s(text: str) -> bytes:
    data = text.encode()
    return len(data).to_bytes(2, "big") + data


def _varlen(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def publish_packets(items: Sequence[tuple[str, bytes]]) -> bytes:
    """QoS 1 PUBLISH packets for ``(topic, payload)`` items, packet ids cycling."""
    out = bytearray()
    for i, (topic, payload) in enumerate(items):
        body = _s(topic) + ((i % 65535) + 1).to_bytes(2, "big") + payload
        out += b"\x32" + _varlen(len(body)) + body
    return bytes(out)


class RawPublisher:
    """Connects with a username/password and blasts pre-built packets; drains PUBACKs."""

    def __init__(self, host: str, port: int, user: str, password: str) -> None:
        self.sock = socket.create_connection((host, port))
        vh = b"\x00\x04MQTT\x04\xc2" + (120).to_bytes(2, "big")
        payload = _s(user) + _s(user) + _s(password)
        self.sock.sendall(b"\x10" + _varlen(len(vh) + len(payload)) + vh + payload)
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
