"""A small synchronous MQTT client for tests and checks against a real broker.

Every wait is bounded. ``barrier()`` makes "nothing was delivered" checks deterministic
instead of timing-based: Mosquitto handles one client's packets in order and queues a
message for every matching subscriber before it acknowledges the publish (and queues
retained messages right after a SUBACK), so once a later SUBACK round trip completes, any
message that was going to be delivered earlier has been received.
"""

from __future__ import annotations

import queue
import ssl
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

__all__ = ["Message", "Probe", "tls_context"]


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
    """One MQTT 5 connection; messages land in ``self.messages``.

    Paho's automatic reconnect is not used: a dropped probe stays dropped, which is what
    revocation tests look at.
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
    ) -> None:
        self.host, self.port = host, port
        self.client_id = client_id or username or f"probe-{uuid.uuid4().hex[:8]}"
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=mqtt.MQTTv5
        )
        if username is not None:
            self.client.username_pw_set(username, password)
        if tls is not None:
            self.client.tls_set_context(tls)
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
        self._lock = threading.Lock()
        c = self.client
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        c.on_subscribe = self._on_subscribe
        c.on_publish = self._on_publish

    # paho callbacks (network thread)
    def _on_connect(self, c: mqtt.Client, u: object, flags: Any, rc: Any, p: object) -> None:
        self.connack = str(rc)
        self.session_present = bool(getattr(flags, "session_present", False))
        if not rc.is_failure:
            self.connected.set()
        else:
            self.disconnected.set()
        self._answered.set()

    def _on_disconnect(self, c: mqtt.Client, u: object, f: object, rc: Any, p: object) -> None:
        self.disconnect_reason = str(rc)
        self.connected.clear()
        self.disconnected.set()
        self._answered.set()

    def _on_message(self, c: mqtt.Client, u: object, m: mqtt.MQTTMessage) -> None:
        self.messages.put(Message(m.topic, bytes(m.payload), bool(m.retain), m.qos))

    def _ack_queue(self, mid: int) -> queue.Queue[list[str]]:
        with self._lock:
            return self._acks.setdefault(mid, queue.Queue())

    def _on_subscribe(self, c: mqtt.Client, u: object, mid: int, rcs: Any, p: object) -> None:
        self._ack_queue(mid).put([str(r) for r in rcs])

    def _on_publish(self, c: mqtt.Client, u: object, mid: int, rc: Any, p: object) -> None:
        # MQTT 5 success codes include "No matching subscribers" (0x10): report as success.
        self._ack_queue(mid).put([str(rc) if rc.is_failure else "Success"])

    # API
    def connect(self, timeout: float = 5.0) -> str:
        """Connect; return the CONNACK reason ("Success", "Not authorized", ...)."""
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = self.session_expiry
        try:
            self.client.connect(
                self.host, self.port, keepalive=30, clean_start=self.clean_start, properties=props
            )
        except (OSError, ssl.SSLError) as e:
            self.connack = f"connect failed: {e}"
            return self.connack
        self.client.loop_start()
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
        _, mid = self.client.subscribe(topic, qos)
        if mid is None:
            raise ConnectionError(f"subscribe {topic!r} was not sent")
        return self._wait_ack(mid, timeout)

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
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        if qos == 0:
            return "Success"
        return self._wait_ack(info.mid, timeout)[0]

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
        self.client.disconnect()
        self.client.loop_stop()

    def close(self) -> None:
        """Disconnect if connected and stop the network thread."""
        if self.connected.is_set():
            self.client.disconnect()
        self.client.loop_stop()
