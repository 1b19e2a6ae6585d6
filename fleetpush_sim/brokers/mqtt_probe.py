"""A blocking MQTT 3.1.1 connection for checking a broker from synchronous code.

Brokers start from plain functions (``start()`` in a fixture, the demo's set-up), where no
event loop may run, so readiness checks cannot use ``aiomqtt``. This speaks the
orchestrator's own codec over a socket: CONNECT, PUBLISH at QoS 1 (waiting for PUBACK),
SUBSCRIBE, and receiving PUBLISHes (acknowledged as they come).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import TypeVar

from orchestrator.mqtt import codec

__all__ = ["MqttProbe", "ProbeError"]

_V311 = 4  # the protocol level of MQTT 3.1.1: every broker of the matrix speaks it
P = TypeVar("P", codec.ConnAck, codec.Publish, codec.PacketAck, codec.SubAck)


class ProbeError(RuntimeError):
    """The broker refused, closed the connection, or did not answer in time."""


class MqttProbe:
    """One connection (client id ``client_id``); use as a context manager.

    Every wait is bounded by ``timeout`` seconds from the call.
    """

    def __init__(
        self, host: str, port: int, username: str, password: str, client_id: str, *,
        clean: bool = True, timeout: float = 10.0,
    ) -> None:  # fmt: skip
        self.host, self.port = host, port
        self._login = (client_id, username, password)
        self.clean = clean
        self.timeout = timeout
        self.session_present = False
        self._sock: socket.socket | None = None
        self._decoder = codec.Decoder(version=_V311)
        self._pending: list[codec.Packet] = []
        self._next_id = 0

    def __enter__(self) -> MqttProbe:
        self._sock = socket.create_connection((self.host, self.port), self.timeout)
        try:
            client_id, username, password = self._login
            self._send(codec.connect(client_id, username, password, keepalive_s=30,
                                     clean_start=self.clean, version=_V311))  # fmt: skip
            ack = self._wait(codec.ConnAck)
        except BaseException:
            self._close()
            raise
        if ack.reason:
            self._close()
            raise ProbeError(f"CONNACK return code {ack.reason}")
        self.session_present = ack.session_present
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if exc is None:
                self._send(codec.disconnect())
        except OSError:
            pass  # closing anyway
        finally:
            self._close()

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        """QoS 1; returns once the broker acknowledged it."""
        packet_id = self._packet_id()
        self._send(codec.publish(topic, payload, 1, packet_id, retain=retain, version=_V311))
        self._wait(codec.PacketAck, lambda p: p.kind == codec.PUBACK and p.packet_id == packet_id)

    def subscribe(self, filters: Sequence[str]) -> tuple[int, ...]:
        """QoS 1 subscriptions; the SUBACK's return codes (0x80: refused)."""
        packet_id = self._packet_id()
        self._send(codec.subscribe(packet_id, filters, 1, version=_V311))
        return self._wait(codec.SubAck, lambda p: p.packet_id == packet_id).reasons

    def receive(self, topic: str) -> codec.Publish:
        """The next message on ``topic`` (acknowledged on arrival, as every message)."""
        return self._wait(codec.Publish, lambda p: p.topic == topic)

    # --- the socket ------------------------------------------------------------------------

    def _packet_id(self) -> int:
        self._next_id = self._next_id % 0xFFFF + 1
        return self._next_id

    def _send(self, data: bytes) -> None:
        if self._sock is None:
            raise ProbeError("not connected")
        self._sock.sendall(data)

    def _close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    def _wait(self, kind: type[P], match: Callable[[P], bool] = lambda _: True) -> P:
        """The first packet of ``kind`` that ``match``es; the others wait for their turn."""
        deadline = time.monotonic() + self.timeout
        while True:
            for i, packet in enumerate(self._pending):
                if isinstance(packet, kind) and match(packet):
                    del self._pending[i]
                    return packet
            if self._sock is None:
                raise ProbeError("not connected")
            left = deadline - time.monotonic()
            if left <= 0:
                raise ProbeError(f"no {kind.__name__} from {self.host}:{self.port} in time")
            self._sock.settimeout(left)
            try:
                data = self._sock.recv(65536)
            except TimeoutError:
                continue
            if not data:
                raise ProbeError(f"{self.host}:{self.port} closed the connection")
            for packet in self._decoder.feed(data):
                if isinstance(packet, codec.Publish) and packet.qos:
                    self._send(codec.puback(packet.packet_id))  # taken, whoever wants it
                self._pending.append(packet)
