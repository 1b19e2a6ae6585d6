"""A small synchronous MQTT 5 client for tests and checks against a real broker.

It speaks through the orchestrator's own codec (``orchestrator.mqtt.codec``) on a socket
read by one thread; reason codes are reported by their names in the spec.

Every wait is bounded. ``barrier()`` makes "nothing was delivered" checks deterministic
instead of timing-based: Mosquitto handles one client's packets in order and queues a
message for every matching subscriber before it acknowledges the publish (and queues
retained messages right after a SUBACK), so once a later SUBACK round trip completes, any
message that was going to be delivered earlier has been received.
"""

from __future__ import annotations

import contextlib
import queue
import select
import socket
import ssl
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from orchestrator.mqtt import codec
from orchestrator.mqtt.reasons import reason_name
from orchestrator.mqtt.versions import connack_name

__all__ = ["Message", "Probe", "tls_context"]

KEEPALIVE_S = 30  # the probe pings when it has sent nothing for half of this


@dataclass(frozen=True)
class Message:
    topic: str
    payload: bytes
    retain: bool
    qos: int


def tls_context(
    ca_file: Path, cert_file: Path | None = None, key_file: Path | None = None
) -> ssl.SSLContext:
    """A client TLS context that verifies the broker, optionally with a client certificate."""
    ctx = ssl.create_default_context(cafile=str(ca_file))
    if cert_file is not None:
        ctx.load_cert_chain(str(cert_file), str(key_file) if key_file else None)
    return ctx


class Probe:
    """One MQTT 5 (or, with ``version=4``, 3.1.1) connection; messages land in
    ``self.messages`` (QoS 1 acked at once).

    It never reconnects: a dropped probe stays dropped, which is what revocation tests
    look at.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        username: str | None = None,
        password: str | None = None,
        client_id: str | None = None,
        tls: ssl.SSLContext | None = None,
        clean_start: bool = True,
        session_expiry: int = 0,
        version: int = 5,
    ) -> None:
        self.host, self.port = host, port
        self.version = version  # 5, or 4 for MQTT 3.1.1
        self.client_id = client_id or username or f"probe-{uuid.uuid4().hex[:8]}"
        self.username, self.password, self.tls = username, password, tls
        self.clean_start = clean_start
        self.session_expiry = session_expiry
        self.messages: queue.Queue[Message] = queue.Queue()
        self.connack: str | None = None
        self.session_present = False
        self.connected = threading.Event()
        self.disconnected = threading.Event()
        self.disconnect_reason: str | None = None
        self._answered = threading.Event()  # CONNACK or connection closed
        self._acks: dict[int, queue.Queue[list[str]]] = {}
        self._lock = threading.Lock()  # _acks and _next_id
        self._io = threading.Lock()  # the socket: one thread reads or writes at a time
        self._last_sent = 0.0
        self._next_id = 0
        self._sock: socket.socket | None = None
        self._reader: threading.Thread | None = None

    # the reader thread
    def _read(self, sock: socket.socket) -> None:
        # One TLS connection must not be read and written at once from two threads, so the
        # reader waits in select() without the socket lock and takes it only to read.
        decoder = codec.Decoder(self.version)
        reason = "connection closed"
        try:
            while True:
                if not (isinstance(sock, ssl.SSLSocket) and sock.pending()):
                    readable, _, _ = select.select([sock], [], [], 0.2)
                    if not readable:
                        if time.monotonic() - self._last_sent > KEEPALIVE_S / 2:
                            self._send(codec.pingreq())
                        continue
                with self._io:
                    try:
                        data = sock.recv(65536)
                    except (TimeoutError, ssl.SSLWantReadError):
                        continue  # half a TLS record so far
                if not data:
                    break
                for packet in decoder.feed(data):
                    self._packet(packet)
        except (OSError, ValueError, codec.MalformedPacketError) as e:  # ValueError: closed
            reason = str(e) or type(e).__name__
        finally:
            if self.disconnect_reason is None:
                self.disconnect_reason = reason
            self.connected.clear()
            self.disconnected.set()
            self._answered.set()

    def _packet(self, p: codec.Packet) -> None:
        if isinstance(p, codec.Publish):
            self.messages.put(Message(p.topic, p.payload, p.retain, p.qos))
            if p.qos == 1:
                self._send(codec.puback(p.packet_id))
            elif p.qos == 2:
                self._send(codec.pubrec(p.packet_id))
        elif isinstance(p, codec.PacketAck):
            if p.kind == codec.PUBACK:
                # MQTT 5 success codes include "No matching subscribers" (0x10): success.
                self._ack_queue(p.packet_id).put([reason_name(p.reason if p.reason >= 0x80 else 0)])
            elif p.kind == codec.PUBREL:
                self._send(codec.pubcomp(p.packet_id))
        elif isinstance(p, codec.SubAck):
            self._ack_queue(p.packet_id).put([reason_name(r, suback=True) for r in p.reasons])
        elif isinstance(p, codec.ConnAck):
            self.connack = connack_name(p.reason, self.version)
            self.session_present = p.session_present
            (self.disconnected if p.reason else self.connected).set()
            self._answered.set()
        elif isinstance(p, codec.Disconnect):
            self.disconnect_reason = reason_name(p.reason)

    def _ack_queue(self, mid: int) -> queue.Queue[list[str]]:
        with self._lock:
            return self._acks.setdefault(mid, queue.Queue())

    def _send(self, data: bytes) -> None:
        with self._io:
            if self._sock is None:
                raise ConnectionError("probe not connected")
            self._sock.sendall(data)
            self._last_sent = time.monotonic()

    def _packet_id(self) -> int:
        with self._lock:
            self._next_id = self._next_id % 0xFFFF + 1
            return self._next_id

    # API
    def connect(self, timeout: float = 5.0) -> str:
        """Connect; return the CONNACK reason ("Success", "Not authorized", ...)."""
        try:
            sock = socket.create_connection((self.host, self.port), timeout)
            if self.tls is not None:
                sock = self.tls.wrap_socket(sock, server_hostname=self.host)
        except (OSError, ssl.SSLError) as e:
            self.connack = f"connect failed: {e}"
            return self.connack
        sock.settimeout(1.0)  # bounds a read that holds the socket lock
        self._sock = sock
        self._reader = threading.Thread(target=self._read, args=(sock,), daemon=True)
        self._reader.start()
        hello = codec.connect(self.client_id, self.username, self.password,
                              keepalive_s=KEEPALIVE_S, clean_start=self.clean_start,
                              session_expiry_s=self.session_expiry,
                              version=self.version)  # fmt: skip
        try:
            self._send(hello)
        except OSError as e:
            self.connack = f"connect failed: {e}"
            return self.connack
        self._answered.wait(timeout)
        if self.connack is None:
            self.connack = "no CONNACK: " + (self.disconnect_reason or "timeout")
        return self.connack

    def _wait_ack(self, mid: int, timeout: float) -> list[str]:
        try:
            return self._ack_queue(mid).get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"no acknowledgement for packet {mid}") from None

    def subscribe(self, topic: str, qos: int = 1, timeout: float = 5.0) -> list[str]:
        """Subscribe and return the SUBACK reason codes."""
        mid = self._packet_id()
        try:
            self._send(codec.subscribe(mid, [topic], qos, version=self.version))
        except OSError as e:
            raise ConnectionError(f"subscribe {topic!r} was not sent") from e
        return self._wait_ack(mid, timeout)

    def publish_nowait(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False
    ) -> int:
        """Send a PUBLISH and return its packet identifier, without waiting for the PUBACK."""
        mid = self._packet_id() if qos else 0
        self._send(codec.publish(topic, payload, qos, mid, retain=retain, version=self.version))
        return mid

    def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        timeout: float = 5.0,
    ) -> str:
        """Publish; for QoS 1 return the PUBACK reason ("Success", "Not authorized")."""
        mid = self.publish_nowait(topic, payload, qos=qos, retain=retain)
        if qos == 0:
            return "Success"
        return self._wait_ack(mid, timeout)[0]

    def barrier(self, timeout: float = 5.0) -> None:
        """A SUBACK round trip: everything the broker queued for us before is now received."""
        self.subscribe(f"fleetpush-barrier/{uuid.uuid4().hex}", 0, timeout)

    def drain(self) -> list[Message]:
        """Call ``barrier()`` then return (and forget) every message received so far."""
        self.barrier()
        out = []
        while True:
            try:
                out.append(self.messages.get_nowait())
            except queue.Empty:
                return out

    def wait_for(self, topic: str, timeout: float = 5.0) -> Message:
        """The next message on ``topic`` (others received meanwhile are dropped)."""
        while True:
            try:
                m = self.messages.get(timeout=timeout)
            except queue.Empty:
                raise TimeoutError(f"nothing on {topic} within {timeout}s") from None
            if m.topic == topic:
                return m

    def disconnect(self) -> None:
        """Send DISCONNECT (the will is not published) and close the connection."""
        if self.connected.is_set():
            with contextlib.suppress(OSError, ConnectionError):
                self._send(codec.disconnect())
        self._close()

    def close(self) -> None:
        """Disconnect if connected and stop the reader thread."""
        self.disconnect()

    def _close(self) -> None:
        with self._io:
            sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        if self._reader is not None and self._reader is not threading.current_thread():
            self._reader.join(5)
