"""The orchestrator's one MQTT connection, on its own event-loop thread.

The link speaks MQTT 5, or 3.1.1 (``[mqtt] protocol``; ``orchestrator.mqtt.versions``),
through the sans-IO codec (``orchestrator.mqtt.codec``) behind a
bare ``asyncio.Protocol``: ingestion is the hot path, and owning the layer is what lets an
acknowledgement wait for the database without reaching into a library (docs/performance.md).
The link runs on a private asyncio loop in a thread of its own, so a flood of reports does
not starve the HTTP API and engine on the service's loop.

The session is persistent (clean start off, long session expiry) so reports sent while the
orchestrator is down wait in the broker. Acknowledgements are manual: a report is PUBACKed
only when ``ack`` is called, after the batch holding it is committed; the acks released
together are written to the socket in one write. An ack is only sent on the connection its
message came on: after a reconnect the broker delivers unacknowledged messages again (often
with the same packet identifier, which it may later give to another message), so a late ack
for the old copy is dropped and the new copy is acked when its own batch commits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar

from fleetpush_common.backoff import Backoff
from fleetpush_common.tasks import cancel_and_wait
from orchestrator.mqtt import codec
from orchestrator.mqtt.message import Batch, Entry, Message, PublishTimeoutError
from orchestrator.mqtt.protocol import Handlers, MqttProtocol
from orchestrator.mqtt.settings import MqttConfig
from orchestrator.mqtt.versions import RefusedError, hello, subscription_fallback

__all__ = ["MqttLink"]

logger = logging.getLogger(__name__)

SESSION_EXPIRY_S = 30 * 86400  # seconds the broker keeps our session while we are away
RECEIVE_MAXIMUM = 65535  # unacknowledged QoS 1 messages the broker may send us
MAX_INFLIGHT = 1000  # our QoS 1 publishes awaiting PUBACK at once (less if the broker says)
BACKOFF_MIN_S = 0.2  # first reconnect delay; doubles per failed attempt, jittered (x0.5-1)
BACKOFF_MAX_S = 30.0
# A refused subscription is asked for again after this long, doubling up to the cap: a
# clustered broker refuses (3.1.1: a bare 0x80) while it elects new leaders after losing a
# node (nats-server: docs/broker.md, "Cluster"), and a link without its report
# subscription would hear no device until its next reconnect.
RESUBSCRIBE_MIN_S = 1.0
RESUBSCRIBE_MAX_S = 60.0

_T = TypeVar("_T")


class MqttLink:
    """An MQTT client with manual acks, waitable publishes and resubscription on connect.

    Args:
        config: broker address, credentials and topic prefix.
        subscriptions: topic filters subscribed (QoS 1) on every connect.
        on_message: called on the link's thread for every message; must call ``ack``.
        session_expiry_s: how long the broker keeps the session while we are away. Long
            for a lone orchestrator (reports wait for it); short for a replica on a shared
            subscription, which the broker goes on feeding while its session lives.
        on_connect: called on the link's thread after each CONNACK (``on_connect`` attribute).
    """

    def __init__(
        self,
        config: MqttConfig,
        subscriptions: Sequence[str] = (),
        on_message: Callable[[Message], None] | None = None,
        *,
        session_expiry_s: int = SESSION_EXPIRY_S,
    ) -> None:
        self.config = config
        self._level = config.protocol_level  # 5, or 4 for MQTT 3.1.1
        self.session_expiry_s = session_expiry_s
        self.subscriptions = tuple(subscriptions)
        self.on_message = on_message
        self.on_connect: Callable[[], object] | None = None
        self.connected = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._proto: MqttProtocol | None = None
        self._tasks: set[asyncio.Task[None]] = set()  # this link's own tasks, ended at stop
        self._stopping = False
        self._start_error: str | None = None
        self._start_failed = threading.Event()
        self._generation = 0  # connections so far; tags ack handles
        # acks queued by any thread, written by the loop in one go
        self._ack_lock = threading.Lock()
        self._acks: list[int] = []
        self._ack_scheduled = False
        # outgoing publishes (loop thread only)
        self._outbox: deque[Entry] = deque()
        self._inflight: dict[int, tuple[Entry, bytes]] = {}  # packet id -> entry, packet
        self._next_id = 0
        self._window = MAX_INFLIGHT
        self._batches: set[Batch] = set()  # publish_many calls waiting
        self._qos2: set[int] = set()  # incoming QoS 2 packet ids awaiting PUBREL
        self._sub_ids: dict[int, tuple[str, ...]] = {}  # SUBSCRIBE packet id -> its filters
        self._resubscribe = Backoff(RESUBSCRIBE_MIN_S, RESUBSCRIBE_MAX_S)
        self._handlers = Handlers(self._on_connack, self._on_publish, self._on_ack,
                                  self._on_suback, self.connected.clear)  # fmt: skip

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
        deadline = time.monotonic() + timeout
        while not self.connected.is_set() and time.monotonic() < deadline:
            if self._start_failed.wait(0.05):
                break
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

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _begin(self) -> None:
        self._spawn(self._supervise())

    async def _shutdown(self) -> None:
        self._stopping = True
        self._flush_acks()
        await cancel_and_wait(*self._tasks)
        proto = self._proto
        if proto is not None:
            if self.connected.is_set():
                proto.write(codec.disconnect())
            await proto.close()
        self.connected.clear()
        for batch in self._batches:
            if not batch.future.done():
                batch.future.set_exception(ConnectionError("MQTT link stopped"))
        await asyncio.sleep(0)  # let the waiting publish_many calls end with that error

    async def _supervise(self) -> None:
        """Connect, wait for the loss, back off (jittered, doubling), connect again."""
        backoff = Backoff(BACKOFF_MIN_S, BACKOFF_MAX_S)
        while not self._stopping:
            proto = MqttProtocol(self._handlers, self._level)
            try:
                await asyncio.wait_for(
                    self._connect(proto), timeout=max(10.0, float(self.config.keepalive_s))
                )
            except (OSError, TimeoutError, codec.MalformedPacketError) as e:
                if isinstance(e, RefusedError) and e.permanent:
                    self._start_error = f"refused: {e}"
                    self._start_failed.set()
                elif isinstance(e, ssl.SSLCertVerificationError):  # retrying will not help
                    self._start_error = (f"the broker's TLS certificate: {e.verify_message} "
                                         "(is [mqtt] ca_file the CA that signed it?)")  # fmt: skip
                    self._start_failed.set()
                logger.warning("cannot connect to MQTT broker: %s", e or type(e).__name__)
                await proto.close()
                await asyncio.sleep(backoff.next_delay())
                continue
            backoff.reset()
            pinger = asyncio.get_running_loop().create_task(self._keepalive(proto))
            try:
                await proto.lost.wait()
            finally:
                # Awaited: a pinger merely cancelled could still be pending when the link's
                # loop closes ("Task was destroyed but it is pending").
                await cancel_and_wait(pinger)
            self.connected.clear()
            if self._stopping:
                return
            logger.warning("MQTT connection lost; reconnecting")
            await asyncio.sleep(backoff.next_delay())

    async def _connect(self, proto: MqttProtocol) -> None:
        cfg = self.config
        await asyncio.get_running_loop().create_connection(
            lambda: proto, cfg.host, cfg.port, ssl=cfg.tls_context()
        )
        self._proto = proto
        proto.write(hello(cfg, session_expiry_s=self.session_expiry_s,
                          receive_maximum=RECEIVE_MAXIMUM))  # fmt: skip
        ack = await proto.connack
        if ack.reason:
            raise RefusedError(ack.reason, self._level)

    def _on_connack(self, ack: codec.ConnAck) -> None:
        """The broker accepted us: resubscribe, resend or requeue our publishes, go on."""
        proto = self._proto
        assert proto is not None  # noqa: S101 - its CONNACK came
        self._generation += 1
        self._window = max(1, min(MAX_INFLIGHT, ack.receive_maximum - 8))
        logger.info("connected to MQTT broker (session present: %s)", ack.session_present)
        self._qos2.clear()
        self._sub_ids.clear()
        self._resubscribe.reset()
        if self.subscriptions:
            self._subscribe(proto, self.subscriptions)
        if ack.session_present:
            # The broker keeps our unacknowledged publishes' state: send them again as is.
            proto.write(b"".join(codec.set_dup(packet) for _, packet in self._inflight.values()))
        else:
            # No session: those publishes are unknown to the broker; first in the queue again.
            entries = [entry for entry, _ in self._inflight.values()]
            self._inflight.clear()
            self._outbox.extendleft(reversed(entries))
        self.connected.set()
        self._pump()
        if self.on_connect is not None:
            self.on_connect()

    async def _keepalive(self, proto: MqttProtocol) -> None:
        """PINGREQ at half the keepalive; close the connection if the broker falls silent."""
        interval = max(1.0, self.config.keepalive_s / 2)
        while True:
            await asyncio.sleep(interval)
            if time.monotonic() - proto.last_received > 3 * interval:
                logger.warning("MQTT broker silent for %.0fs; reconnecting", 3 * interval)
                proto.abort()
                return
            proto.write(codec.pingreq())

    def _packet_id(self) -> int:
        """A packet identifier not in use by one of our publishes awaiting its PUBACK."""
        inflight = self._inflight
        while True:
            self._next_id = self._next_id % 0xFFFF + 1
            if self._next_id not in inflight:
                return self._next_id

    # --- packets in (the link's thread, called by MqttProtocol) --------------------------

    def _on_publish(self, p: codec.Publish) -> None:
        qos = p.qos
        if qos == 2:  # QoS 2 cannot come on our QoS 1 subscriptions; answered at once
            assert self._proto is not None  # noqa: S101 - a packet came on it
            self._proto.write(codec.pubrec(p.packet_id))
            if p.packet_id in self._qos2:
                return  # a resend before our PUBREC arrived: delivered already
            self._qos2.add(p.packet_id)
            qos = 0
        handle = (self._generation << 16) | p.packet_id if qos else 0
        msg = Message(p.topic, p.payload, qos, p.retain, handle)
        handler = self.on_message
        if handler is None:
            self.ack(handle, qos)
            return
        try:
            handler(msg)
        except Exception:
            logger.exception("message handler failed for %s", p.topic)
            self.ack(handle, qos)

    def _on_ack(self, a: codec.PacketAck) -> None:
        if a.kind == codec.PUBACK:
            got = self._inflight.pop(a.packet_id, None)
            if got is None:
                return
            if a.reason >= 0x80:
                logger.warning("broker refused a publish to %s: reason 0x%02x", got[0][0], a.reason)
            got[0][3].acked()
            if self._outbox:
                self._pump()
        elif a.kind == codec.PUBREL and self._proto is not None:
            self._qos2.discard(a.packet_id)
            self._proto.write(codec.pubcomp(a.packet_id))

    def _subscribe(self, proto: MqttProtocol, filters: Sequence[str]) -> None:
        packet_id = self._packet_id()
        self._sub_ids[packet_id] = tuple(filters)
        proto.write(codec.subscribe(packet_id, filters, version=self._level))

    def _on_suback(self, s: codec.SubAck) -> None:
        filters = self._sub_ids.pop(s.packet_id, self.subscriptions)
        plain = subscription_fallback(filters, s.reasons, self._level)
        proto = self._proto
        if proto is None:
            return
        if plain is not None:
            self.subscriptions = plain  # kept for later connects: asked once per refusal
            self._subscribe(proto, plain)
            return
        refused = tuple(f for f, r in zip(filters, s.reasons, strict=False) if r >= 0x80)
        if refused:
            delay = self._resubscribe.next_delay()
            logger.warning("asking the broker again for %s in %.0fs", ", ".join(refused), delay)
            self._spawn(self._subscribe_later(proto, refused, delay))

    async def _subscribe_later(
        self, proto: MqttProtocol, filters: tuple[str, ...], delay: float
    ) -> None:
        await asyncio.sleep(delay)
        if proto is self._proto and self.connected.is_set():  # else the next CONNACK asks
            self._subscribe(proto, filters)

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
        if not handles or self._proto is None or not self.connected.is_set():
            return  # not acknowledged: the broker delivers these again
        gen = self._generation
        ids = [h & 0xFFFF for h in handles if h >> 16 == gen]
        if ids:
            self._proto.write(codec.pubacks(ids))

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
        batch = Batch(asyncio.get_running_loop(), len(items))
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
            if batch.left:  # not sent yet: drop (those in flight are resent on reconnect)
                self._outbox = deque(e for e in self._outbox if e[3] is not batch)

    def _pump(self) -> None:
        """Send from the outbox while connected and the broker's window has room."""
        proto = self._proto
        if proto is None or not self.connected.is_set():
            return
        outbox, inflight = self._outbox, self._inflight
        room = self._window - len(inflight)
        if room <= 0 or not outbox:
            return
        out = []
        for _ in range(min(room, len(outbox))):
            entry = outbox.popleft()
            mid = self._packet_id()
            packet = codec.publish(entry[0], entry[1], 1, mid, retain=entry[2], expiry_s=entry[4],
                                   version=self._level)  # fmt: skip
            inflight[mid] = (entry, packet)
            out.append(packet)
        proto.write(b"".join(out))
