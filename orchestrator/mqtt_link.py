"""The orchestrator's one MQTT connection (gmqtt on its own event-loop thread).

gmqtt rather than paho because ingestion is the hot path: paho's own per-message work held
86% of its thread and capped ingestion near 10,000 reports/s (docs/performance.md).
The link runs gmqtt on a private asyncio loop in a thread of its own, so a flood of reports
does not starve the HTTP API and engine on the service's loop.

The session is persistent (MQTT 5, clean start off, long session expiry) so reports sent
while the orchestrator is down wait in the broker. Acknowledgements are manual: a report
is PUBACKed only when ``ack`` is called, after the batch holding it is committed; the acks
released together are written to the socket in one write. An ack is only sent on the
connection its message came on: after a reconnect the broker delivers unacknowledged
messages again (often with the same packet identifier, which it may later give to another
message), so a late ack for the old copy is dropped and the new copy is acked when its own
batch commits.

What this module uses of gmqtt beyond its public interface is kept in ``_Client``: its
PUBLISH handler (to hold the PUBACK and skip the per-message property parsing gmqtt does),
its reconnect hook (the link reconnects itself, with jittered backoff) and the connection
object for raw writes. A custom ``persistent_storage`` tells ``publish_many`` of PUBACKs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import threading
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import gmqtt  # type: ignore[import-untyped]
from gmqtt.mqtt.constants import MQTTv50  # type: ignore[import-untyped]
from gmqtt.storage import PersistentStorage  # type: ignore[import-untyped]

from fleetpush_protocol.backoff import Backoff
from orchestrator.config import MqttConfig

__all__ = ["Message", "MqttLink", "PublishTimeoutError"]

logger = logging.getLogger(__name__)

SESSION_EXPIRY_S = 30 * 86400  # seconds the broker keeps our session while we are away
RECEIVE_MAXIMUM = 65535  # unacknowledged QoS 1 messages the broker may send us
MAX_INFLIGHT = 1000  # our QoS 1 publishes awaiting PUBACK at once (less if the broker says)
BACKOFF_MIN_S = 0.2  # first reconnect delay; doubles per failed attempt, jittered (x0.5-1)
BACKOFF_MAX_S = 30.0
# CONNACK reasons that retrying cannot fix: start() fails at once instead of waiting.
_PERMANENT_REFUSALS = frozenset({4, 5, 129, 130, 132, 133, 134, 135, 138, 140})

_T = TypeVar("_T")


class PublishTimeoutError(TimeoutError):
    """The broker did not acknowledge every publish in time."""


@dataclass(slots=True)
class Message:
    """A message received from the broker.

    ``mid`` is the handle to pass to ``MqttLink.ack``: the packet identifier tagged with the
    connection the message came on (0 for QoS 0).
    """

    topic: str
    payload: bytes
    qos: int
    retain: bool
    mid: int


class _Batch:
    """The publishes of one ``publish_many`` call; ``future`` resolves at the last PUBACK."""

    __slots__ = ("future", "left", "total")

    def __init__(self, loop: asyncio.AbstractEventLoop, n: int) -> None:
        self.future: asyncio.Future[None] = loop.create_future()
        self.left = n
        self.total = n

    def acked(self) -> None:
        self.left -= 1
        if self.left == 0 and not self.future.done():
            self.future.set_result(None)


# topic, payload, retain, its batch, MQTT 5 message expiry in seconds (0: none)
_Entry = tuple[str, bytes, bool, _Batch, int]


class _Storage(PersistentStorage):  # type: ignore[misc]
    """gmqtt's store of unacknowledged outgoing publishes, reporting to the link.

    gmqtt calls ``push_message`` when it sends a QoS 1 PUBLISH, ``remove_message_by_mid``
    on its PUBACK and ``clear`` when the broker had no session for us (those publishes are
    gone and must be sent again).
    """

    def __init__(self, link: MqttLink) -> None:
        super().__init__()
        self.link = link

    def push_message(self, mid: int, raw_package: bytes) -> None:
        super().push_message(mid, raw_package)
        self.link._sent(mid)

    def remove_message_by_mid(self, mid: int) -> None:
        super().remove_message_by_mid(mid)
        self.link._puback(mid)

    def clear(self) -> None:
        mids = [mid for mid, _ in self.get_all()]
        super().clear()
        self.link._session_lost(mids)


class _Client(gmqtt.Client):  # type: ignore[misc]
    """gmqtt's client with the link's hooks (everything of gmqtt's internals used is here)."""

    def __init__(self, link: MqttLink, client_id: str, **kwargs: Any) -> None:
        super().__init__(client_id, **kwargs)
        self.link = link
        handler = self._package_handler
        self._gmqtt_publish_handler = handler._handle_publish_packet
        # gmqtt looks packet handlers up by name on the handler object.
        handler._handle_publish_packet = self._handle_publish_packet

    async def reconnect(self, delay: bool = False) -> None:
        """gmqtt calls this when the connection is lost; the link's supervisor reconnects."""
        self.link._lost()

    def _handle_publish_packet(self, cmd: int, raw: bytes) -> None:
        """Parse a PUBLISH (MQTT 5) and hand it to the link; no PUBACK here.

        QoS 2 never arrives (we subscribe at QoS 1 at most) and goes to gmqtt's handler.
        """
        qos = (cmd >> 1) & 3
        if qos == 2:
            self._gmqtt_publish_handler(cmd, raw)
            return
        n = (raw[0] << 8) | raw[1]
        pos = 2 + n
        if qos:
            mid = (raw[pos] << 8) | raw[pos + 1]
            pos += 2
        else:
            mid = 0
        # Property length (variable byte integer). Topic aliases cannot come: we allow none.
        plen, mult = 0, 1
        while True:
            b = raw[pos]
            pos += 1
            plen += (b & 0x7F) * mult
            if not b & 0x80:
                break
            mult <<= 7
        topic = raw[2 : 2 + n].decode("utf-8", "replace")
        self.link._received(topic, raw[pos + plen :], qos, bool(cmd & 1), mid)

    def write(self, data: bytes) -> bool:
        """Write raw bytes on the current connection; False when it is closed."""
        conn = self._connection
        if conn is None or conn.is_closing():
            return False
        conn.send_package(data)
        return True

    async def close_connection(self) -> None:
        """Close the current connection without DISCONNECT (after a loss or failed attempt)."""
        conn = self._connection
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()

    @property
    def server_receive_maximum(self) -> int:
        values = self._package_handler._connack_properties.get("receive_maximum")
        return int(values[0]) if values else 65535

    def subscribe_all(self, filters: Sequence[str]) -> None:
        """One SUBSCRIBE (QoS 1) for all filters, kept out of gmqtt's resubscription list."""
        self._connection.subscribe([gmqtt.Subscription(f, qos=1) for f in filters])

    def free_mids(self, mids: Sequence[int]) -> None:
        gen = self._package_handler.id_generator
        for mid in mids:
            gen.free_id(mid)


class MqttLink:
    """A gmqtt client with manual acks, waitable publishes and resubscription on connect.

    Args:
        config: broker address, credentials and topic prefix.
        subscriptions: topic filters subscribed (QoS 1) on every connect.
        on_message: called on the link's thread for every message; must call ``ack``.
    """

    def __init__(
        self,
        config: MqttConfig,
        subscriptions: Sequence[str] = (),
        on_message: Callable[[Message], None] | None = None,
    ) -> None:
        self.config = config
        self.subscriptions = tuple(subscriptions)
        self.on_message = on_message
        self.connected = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._client: _Client | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._stopping = False
        self._start_error: str | None = None
        self._start_failed = threading.Event()
        self._lost_event: asyncio.Event | None = None
        self._generation = 0  # connections so far; tags ack handles
        # acks queued by any thread, written by the loop in one go
        self._ack_lock = threading.Lock()
        self._acks: list[int] = []
        self._ack_scheduled = False
        # outgoing publishes (loop thread only)
        self._outbox: deque[_Entry] = deque()
        self._inflight: dict[int, _Entry] = {}
        self._sending: _Entry | None = None
        self._window = MAX_INFLIGHT
        self._batches: set[_Batch] = set()  # publish_many calls waiting

    # --- lifecycle -----------------------------------------------------------------------

    def start(self, timeout: float = 15.0) -> None:
        """Start the link's thread and connect; wait for the first CONNACK.

        Raises:
            ConnectionError: not connected within ``timeout`` seconds, or the broker
                refused the login.
        """
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._stopping = False
        self._start_error = None
        self._start_failed.clear()
        self._thread = threading.Thread(target=loop.run_forever, name="fleetpush-mqtt", daemon=True)
        self._thread.start()
        self._call(self._begin())
        waited = 0.0
        while not self.connected.is_set() and waited < timeout:
            if self._start_failed.wait(0.05):
                break
            waited += 0.05
        if not self.connected.is_set():
            reason = self._start_error or f"not connected within {timeout:.0f}s"
            self.stop()
            raise ConnectionError(
                f"cannot connect to MQTT broker {self.config.host}:{self.config.port} "
                f"as {self.config.username!r}: {reason}"
            )

    def stop(self) -> None:
        """Write queued acks, disconnect cleanly and end the link's thread."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        with contextlib.suppress(Exception):
            self._call(self._shutdown(), timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        if not thread.is_alive():
            loop.close()
        self._loop = self._thread = None
        self.connected.clear()

    def _call(self, coro: Coroutine[Any, Any, _T], timeout: float = 10.0) -> _T:
        assert self._loop is not None  # noqa: S101 - started
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    async def _begin(self) -> None:
        self._client = _Client(
            self,
            self.config.username,
            clean_session=False,
            # Only gmqtt's QoS 2 path reads this (QoS 0/1 go to _Client); QoS 2 cannot come
            # on our QoS 1 subscriptions, but if it did gmqtt would answer it itself.
            optimistic_acknowledgement=True,
            persistent_storage=_Storage(self),
            session_expiry_interval=SESSION_EXPIRY_S,
            receive_maximum=RECEIVE_MAXIMUM,
        )
        self._client.set_auth_credentials(self.config.username, self.config.password)
        self._client.on_connect = self._handle_connect
        self._client.on_disconnect = self._handle_disconnect
        self._client.on_message = self._handle_qos2
        self._supervisor = asyncio.get_running_loop().create_task(self._supervise())

    async def _shutdown(self) -> None:
        self._stopping = True
        self._flush_acks()
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        client = self._client
        if client is not None and self.connected.is_set():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.disconnect(), 5)
        elif client is not None:
            await client.close_connection()
        self.connected.clear()
        for batch in self._batches:
            if not batch.future.done():
                batch.future.set_exception(ConnectionError("MQTT link stopped"))
        await asyncio.sleep(0)  # let the waiting publish_many calls end with that error
        current = asyncio.current_task()
        rest = [t for t in asyncio.all_tasks() if t is not current]
        for t in rest:
            t.cancel()
        await asyncio.gather(*rest, return_exceptions=True)

    async def _supervise(self) -> None:
        """Connect, wait for the loss, back off (jittered, doubling), connect again."""
        client = self._client
        assert client is not None  # noqa: S101 - set by _begin
        backoff = Backoff(BACKOFF_MIN_S, BACKOFF_MAX_S)
        while not self._stopping:
            lost = self._lost_event = asyncio.Event()
            try:
                await asyncio.wait_for(
                    client.connect(
                        self.config.host,
                        self.config.port,
                        keepalive=self.config.keepalive_s,
                        version=MQTTv50,
                    ),
                    timeout=max(10.0, float(self.config.keepalive_s)),
                )
            except (OSError, TimeoutError, gmqtt.MQTTConnectError) as e:
                code = getattr(e, "_code", None)
                if not self.connected.is_set():
                    if code in _PERMANENT_REFUSALS:
                        self._start_error = f"refused: {e}"
                        self._start_failed.set()
                    logger.warning("cannot connect to MQTT broker: %s", e or type(e).__name__)
                    await client.close_connection()
                    await asyncio.sleep(backoff.next_delay())
                    continue
            if self.connected.is_set():
                backoff.reset()
            await lost.wait()
            self.connected.clear()
            await client.close_connection()
            if self._stopping:
                return
            await asyncio.sleep(backoff.next_delay())

    # --- gmqtt callbacks (the link's thread) ---------------------------------------------

    def _handle_connect(self, client: Any, flags: int, rc: int, properties: Any) -> None:
        if rc:
            return
        self._generation += 1
        self._window = max(1, min(MAX_INFLIGHT, client.server_receive_maximum - 8))
        logger.info("connected to MQTT broker (session present: %s)", bool(flags))
        if self.subscriptions:
            client.subscribe_all(self.subscriptions)
        self.connected.set()
        # After gmqtt's replay of unacknowledged publishes, scheduled before this callback.
        asyncio.get_running_loop().call_soon(self._pump)

    def _handle_disconnect(self, client: Any, packet: Any, exc: Any = None) -> None:
        was = self.connected.is_set()
        self.connected.clear()
        if was and not self._stopping:
            logger.warning("MQTT connection lost; reconnecting")
        self._lost()

    def _lost(self) -> None:
        self.connected.clear()
        if self._lost_event is not None:
            self._lost_event.set()

    def _received(self, topic: str, payload: bytes, qos: int, retain: bool, mid: int) -> None:
        handle = (self._generation << 16) | mid if qos else 0
        msg = Message(topic, payload, qos, retain, handle)
        handler = self.on_message
        if handler is None:
            self.ack(handle, qos)
            return
        try:
            handler(msg)
        except Exception:
            logger.exception("message handler failed for %s", topic)
            self.ack(handle, qos)

    def _handle_qos2(self, client: Any, topic: Any, payload: bytes, qos: int, props: Any) -> None:
        # Only gmqtt's QoS 2 path calls this, after its PUBREC: nothing left to acknowledge.
        if isinstance(topic, bytes):
            topic = topic.decode("utf-8", "replace")
        self._received(str(topic), payload, 0, bool(props.get("retain")), 0)

    # --- acks ----------------------------------------------------------------------------

    def ack(self, mid: int, qos: int) -> None:
        """Acknowledge a received QoS 1 message (thread-safe; written with others queued)."""
        if not qos:
            return
        with self._ack_lock:
            self._acks.append(mid)
            if self._ack_scheduled:
                return
            self._ack_scheduled = True
        loop = self._loop
        if loop is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop is closed: nothing acked
            loop.call_soon_threadsafe(self._flush_acks)

    def _flush_acks(self) -> None:
        with self._ack_lock:
            handles, self._acks = self._acks, []
            self._ack_scheduled = False
        if not handles or self._client is None or not self.connected.is_set():
            return  # not acknowledged: the broker delivers these again
        gen = self._generation
        # PUBACK, success, no properties: 0x40, remaining length 2, packet identifier.
        words = [0x40020000 | (h & 0xFFFF) for h in handles if h >> 16 == gen]
        if words:
            self._client.write(struct.pack(f">{len(words)}I", *words))

    # --- publishing ----------------------------------------------------------------------

    async def publish_many(
        self,
        items: Sequence[tuple[str, bytes, bool]],
        timeout: float = 30.0,  # noqa: ASYNC109
        *,
        expiry_s: int = 0,
    ) -> None:
        """Publish ``(topic, payload, retain)`` items at QoS 1; wait until all are PUBACKed.

        While disconnected the messages wait and are sent after reconnecting. With
        ``expiry_s``, the broker drops its copies (queued for offline clients, or retained)
        that many seconds after receiving them.

        Raises:
            PublishTimeoutError: some were not acknowledged within ``timeout`` seconds.
            ConnectionError: the link is not running, or was stopped meanwhile.
        """
        if not items:
            return
        loop = self._loop
        if loop is None or loop.is_closed() or self._stopping:
            raise ConnectionError("MQTT link is not running")
        fut = asyncio.run_coroutine_threadsafe(self._publish(items, timeout, expiry_s), loop)
        await asyncio.wrap_future(fut)

    async def _publish(
        self,
        items: Sequence[tuple[str, bytes, bool]],
        timeout: float,  # noqa: ASYNC109
        expiry_s: int,
    ) -> None:
        batch = _Batch(asyncio.get_running_loop(), len(items))
        self._outbox.extend((t, p, r, batch, expiry_s) for t, p, r in items)
        self._batches.add(batch)
        self._pump()
        try:
            await asyncio.wait_for(batch.future, timeout)
        except TimeoutError:
            raise PublishTimeoutError(
                f"{batch.left} of {batch.total} publishes not acknowledged in {timeout}s"
            ) from None
        finally:
            self._batches.discard(batch)
            if batch.left:  # not sent yet: drop (those sent are gmqtt's to replay)
                self._outbox = deque(e for e in self._outbox if e[3] is not batch)

    def _pump(self) -> None:
        """Send from the outbox while connected and the broker's window has room."""
        client = self._client
        if client is None:
            return
        outbox, inflight, window = self._outbox, self._inflight, self._window
        while outbox and len(inflight) < window and self.connected.is_set():
            entry = outbox.popleft()
            self._sending = entry
            try:
                if entry[4]:
                    client.publish(entry[0], entry[1], qos=1, retain=entry[2],
                                   message_expiry_interval=entry[4])  # fmt: skip
                else:
                    client.publish(entry[0], entry[1], qos=1, retain=entry[2])
            except Exception:
                logger.exception("publish to %s failed", entry[0])
                outbox.appendleft(entry)
                return
            finally:
                self._sending = None

    def _sent(self, mid: int) -> None:
        if self._sending is not None:
            self._inflight[mid] = self._sending

    def _puback(self, mid: int) -> None:
        entry = self._inflight.pop(mid, None)
        if entry is not None:
            entry[3].acked()
            if self._outbox:
                self._pump()

    def _session_lost(self, mids: list[int]) -> None:
        """The broker has no session: our unacknowledged publishes go out again, in order."""
        entries = [e for mid in mids if (e := self._inflight.pop(mid, None)) is not None]
        if self._client is not None:
            self._client.free_mids(mids)
        self._outbox.extendleft(reversed(entries))
