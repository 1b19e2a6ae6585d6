"""The MQTT session (MQTT 5, or 3.1.1 with ``[broker] protocol``): connect, subscribe,
publish presence and the outbox, reconnect.

Reports leave the outbox only when the orchestrator confirms them (``Ack`` on the device's
ack topic, handled by the agent); everything unconfirmed is sent again after each connect
and whenever no confirmation came for the ack timeout (jittered, growing backoff).

The session is persistent (clean start off, a session expiry), so QoS 1 notices published
while the device is away are queued by the broker; every subscription is QoS 1 and is
renewed on every connect, which also makes the broker resend retained notices and keyrings
(the trust driver ignores the duplicates). The last will is a retained offline presence.
Reconnection never gives up: jittered exponential backoff, capped. In 3.1.1 the session is
a persistent one (clean session off) that the broker keeps for as long as it is configured
to (Mosquitto's ``persistent_client_expiration``): 3.1.1 cannot ask for a session expiry.
Nothing the device checks depends on the version: notices carry their own signed expiry.

aiomqtt is used only in this module, through its public API (paho's ``Properties`` is the type
it takes for CONNECT properties such as the session expiry).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from typing import Any

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from device_client.config import BrokerConfig
from device_client.transport.base import MessageHandler, Publication
from device_client.transport.endpoints import Endpoints
from device_client.transport.outbox import Outbox
from fleetpush_common.backoff import Backoff
from fleetpush_common.broker_settings import client_tls_context
from fleetpush_common.tasks import cancel_and_wait

__all__ = ["MqttSession", "Publication"]

logger = logging.getLogger(__name__)

# MQTT 5 CONNACK reason codes that no retry can fix: client id not valid, bad user name or
# password, not authorized, banned, bad authentication method.
_REFUSED = frozenset({0x85, 0x86, 0x87, 0x8A, 0x8C})

# A refused subscription is asked for again after this long, doubling up to the cap.
RESUBSCRIBE_MIN_S = 1.0
RESUBSCRIBE_MAX_S = 300.0
ACK_TIMEOUT_CAP_S = 600.0  # seconds: the longest wait before resending unconfirmed reports
UNCONFIRMED_WARN = 3  # resends of one report without a confirmation before a warning


class MqttSession:
    """One device's connection to the broker, kept up for as long as ``run`` runs.

    Args:
        broker: connection settings.
        client_id: the MQTT client id (the device id).
        subscriptions: topic filters to subscribe to with QoS 1 on every connect.
        will: the retained message the broker publishes if the device vanishes.
        on_connect: returns what to publish (retained presence, inventory) on each connect.
        on_message: called for each received message, one at a time, in order; the receive
            loop waits for it, so it hands the message on and returns (``MessageRouter``).
        outbox: the reports to publish, in order.
        ack_timeout_s: resend unconfirmed reports after this long without a confirmation
            (the first wait; it doubles, jittered, up to ``ACK_TIMEOUT_CAP_S``).
    """

    def __init__(
        self,
        broker: BrokerConfig,
        *,
        client_id: str,
        subscriptions: list[str],
        will: Publication,
        on_connect: Callable[[], list[Publication]],
        on_message: MessageHandler,
        outbox: Outbox,
        ack_timeout_s: float = 30.0,
    ) -> None:
        self._endpoints = Endpoints(broker, client_id)
        self._client_id = client_id
        self._subscriptions = subscriptions
        self._will = will
        self._on_connect = on_connect
        self._on_message = on_message
        self._outbox = outbox
        self.resend_backoff = Backoff(
            base_s=ack_timeout_s, cap_s=max(ack_timeout_s, ACK_TIMEOUT_CAP_S), floor=0.5
        )
        self.resends = 0  # times unconfirmed reports were sent again after a timeout
        self._unconfirmed = 0  # resends since the last confirmation
        self._client: aiomqtt.Client | None = None
        self.connected = asyncio.Event()
        self._refused_subs: list[str] = []  # logged once, until the answer changes
        self.connections = 0  # successful connects so far, for tests and metrics
        self.backoff = Backoff(base_s=0.5, cap_s=60.0, floor=0.25)

    @property
    def broker_url(self) -> str:
        """The broker this session connects to now (or tries next)."""
        return self._endpoints.current.url

    @property
    def _broker(self) -> BrokerConfig:
        """The broker in use, one of ``[broker] urls`` (``device_client.transport.endpoints``)."""
        return self._endpoints.current

    def _make_client(self) -> aiomqtt.Client:
        b = self._broker
        tls_context = self._tls_context() if b.tls else None
        version: dict[str, Any] = {"protocol": aiomqtt.ProtocolVersion.V311, "clean_session": False}
        if b.protocol == "5":
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = b.session_expiry_s
            version = {
                "protocol": aiomqtt.ProtocolVersion.V5,
                "clean_start": False,
                "properties": props,
            }
        return aiomqtt.Client(
            b.host,
            b.port,
            username=b.username,
            password=b.password,
            identifier=self._client_id,
            keepalive=b.keepalive_s,
            **version,
            will=aiomqtt.Will(
                self._will.topic, self._will.payload, qos=1, retain=self._will.retain
            ),
            tls_context=tls_context,
            timeout=max(10.0, b.keepalive_s / 2),
        )

    def _check_granted(
        self, granted: tuple[int, ...] | list[ReasonCode], asked: list[str] | None = None
    ) -> None:
        """Say which subscriptions the broker refused (a 3.1.1 SUBACK says only 0x80).

        The device works on with what it has (a refused group notice topic only loses
        that group's notices) and asks again for the rest (``_resubscribe``).
        """
        asked = self._subscriptions if asked is None else asked
        codes = [g if isinstance(g, int) else g.value for g in granted]
        refused = [t for t, c in zip(asked, codes, strict=False) if c >= 0x80]
        if refused and refused != self._refused_subs:
            logger.error(
                "%s: the broker refused the subscriptions %s: check the broker's ACL for "
                "this device's username (fleetpush broker identities); asking again",
                self._client_id, ", ".join(refused),
            )  # fmt: skip
        elif self._refused_subs and not refused:
            logger.info("%s: the broker granted %s", self._client_id, ", ".join(asked))
        self._refused_subs = refused

    async def _resubscribe(self, client: aiomqtt.Client) -> None:
        """Ask again for refused subscriptions on this connection, with backoff: a broker
        cluster refuses them for seconds while it elects new leaders after losing a node
        (docs/broker.md, "Cluster"), and a device without its notice topic would hear
        nothing until its next reconnect. An ACL's refusal costs one SUBSCRIBE per
        RESUBSCRIBE_MAX_S."""
        backoff = Backoff(RESUBSCRIBE_MIN_S, RESUBSCRIBE_MAX_S)
        while self._refused_subs:
            await asyncio.sleep(backoff.next_delay())
            asked = list(self._refused_subs)
            self._check_granted(await client.subscribe([(t, 1) for t in asked]), asked)

    def _tls_context(self) -> ssl.SSLContext:
        b = self._broker
        return client_tls_context(b.ca_file, b.cert_file, b.key_file)

    async def run(self) -> None:
        """Connect and serve forever; returns only when cancelled."""
        refused = ""  # the last refusal logged as an error: repeats stay at info level
        while True:
            before = self.connections
            try:
                await self._connect_once()
            except aiomqtt.MqttError as e:
                never_connected = self._client is None
                why = self._refusal(e, await self._tls_alert() if never_connected else "")
                if why and why != refused:
                    logger.error("%s", why)  # noqa: TRY400 - a finding, no traceback
                else:
                    logger.info("%s: broker connection lost or refused: %s", self._client_id, e)
                refused = why or refused
            except (OSError, ssl.SSLError) as e:
                logger.info("%s: broker unreachable: %s", self._client_id, e)
            finally:
                self.connected.clear()
                self._client = None
            if self.connections == before:  # never got in: the next broker in the list
                self._endpoints.failed()
            await asyncio.sleep(self.backoff.next_delay())

    async def _connect_once(self) -> None:
        client = self._make_client()
        async with client:
            self._client = client
            self.connections += 1
            self.backoff.reset()
            logger.debug("%s: connected to %s:%d", self._client_id, *self._addr())
            granted = await client.subscribe([(t, 1) for t in self._subscriptions])
            self._check_granted(granted)
            for pub in self._on_connect():
                await client.publish(pub.topic, pub.payload, qos=1, retain=pub.retain)
            self._outbox.rewind()  # whatever was sent before may never have arrived
            self.connected.set()
            await self._serve(client)

    async def _serve(self, client: aiomqtt.Client) -> None:
        """Hand messages over one at a time until the connection fails, or a report is not
        acknowledged: then raise, and leaving ``async with`` closes the connection."""
        unacked = asyncio.Event()
        sender = asyncio.create_task(self._send_outbox(client, unacked))
        timer = asyncio.create_task(self._resend_timer())
        gave_up = asyncio.create_task(unacked.wait())
        again = asyncio.create_task(self._resubscribe(client))
        messages = aiter(client.messages)
        nxt: asyncio.Future[aiomqtt.Message] | None = None
        try:
            while True:
                # Racing the next message, never the handler: a message in hand is finished.
                nxt = asyncio.ensure_future(anext(messages))
                await asyncio.wait({nxt, gave_up}, return_when=asyncio.FIRST_COMPLETED)
                if not nxt.done():
                    raise aiomqtt.MqttError("a report was not acknowledged; reconnecting")
                message = nxt.result()
                payload = message.payload
                if isinstance(payload, bytes | bytearray):
                    await self._on_message(message.topic.value, bytes(payload))
        finally:
            await cancel_and_wait(sender, timer, gave_up, again, nxt)

    async def _tls_alert(self) -> str:
        """The TLS alert the broker sends this device's certificate, if any ("" if none).

        Under TLS 1.3 the broker checks a client certificate after the handshake, and its
        refusal (revoked, unknown CA) arrives with the first read, which the MQTT client
        only logs before timing out. One raw connection after a failed connect asks again.
        """
        b = self._broker
        if not (b.tls and b.cert_file):
            return ""
        writer = None
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(b.host, b.port, ssl=self._tls_context()), 5
            )
            await asyncio.wait_for(reader.read(1), 2)  # a healthy broker waits for CONNECT
        except ssl.SSLError as e:
            return str(e)
        except (OSError, TimeoutError):
            return ""
        finally:
            if writer is not None:
                writer.close()
        return ""

    def _refusal(self, e: aiomqtt.MqttError, tls_alert: str = "") -> str:
        """What to check when the broker refused this device; "" for a transient error.

        Retrying cannot fix a refused login or certificate, and a device that only says so
        at debug level looks merely offline, so these are errors at the default level.
        """
        where = "%s:%d" % self._addr()  # noqa: UP031 - host and port, once
        b = self._broker
        rc = e.rc if isinstance(e, aiomqtt.MqttCodeError) else None
        if isinstance(rc, ReasonCode) and rc.value in _REFUSED:
            login = "client certificate" if b.cert_file else f"username {b.username!r} and password"
            return (
                f"{self._client_id}: the broker at {where} refused the login ({e}): check the "
                f"{login} in the [broker] table of the device configuration, and that the "
                "device is provisioned and not revoked (fleetpush broker identities)"
            )
        text = tls_alert or str(e)
        if "SSL" in text or "certificate" in text:
            return (
                f"{self._client_id}: TLS with the broker at {where} failed ({text}): check "
                "[broker] ca_file (the CA of the broker's certificate), cert_file and key_file, "
                "and that the device's certificate is not revoked"
            )
        return ""

    def _addr(self) -> tuple[str, int]:
        return self._broker.host, self._broker.port

    async def _resend_timer(self) -> None:
        """Send unconfirmed reports again when no confirmation came for a while.

        Only a report already waiting at the previous tick is late: one sent just before
        this tick gets a whole delay for its ack.
        """
        seen = self._outbox.confirmations
        waiting: int | None = None
        while True:
            await asyncio.sleep(self.resend_backoff.next_delay())
            oldest = self._outbox.awaiting()
            if self._outbox.confirmations != seen or oldest is None or oldest != waiting:
                seen, waiting = self._outbox.confirmations, oldest
                self.resend_backoff.reset()
                self._unconfirmed = 0
                continue
            self.resends += 1
            self._unconfirmed += 1
            logger.info("%s: reports not confirmed in time; sending them again", self._client_id)
            if self._unconfirmed == UNCONFIRMED_WARN:
                # An MQTT 3.1.1 broker acknowledges a publish its ACL drops: without this the
                # device would only look slow. Said once per stretch, at a growing interval.
                logger.warning(
                    "%s: report %d sent %d times and never confirmed: the orchestrator is "
                    "down or behind, or the broker drops this device's reports (MQTT 3.1.1 "
                    "cannot say it refused a publish: check the broker's ACL for this "
                    "username); still resending, ever less often",
                    self._client_id, oldest, self._unconfirmed + 1,
                )  # fmt: skip
            self._outbox.rewind()

    async def _send_outbox(self, client: aiomqtt.Client, unacked: asyncio.Event) -> None:
        # One report at a time, each waiting for its PUBACK: strict order. The entry stays
        # in the outbox until the orchestrator confirms it.
        while True:
            entry = await self._outbox.wait_ready()
            try:
                await client.publish(entry.topic, entry.payload, qos=1)
            except aiomqtt.MqttError as e:
                logger.info("%s: report %d not acknowledged: %s", self._client_id, entry.counter, e)
                unacked.set()  # the receive loop ends the connection, and run() reconnects
                return
            self._outbox.sent(entry.counter)

    async def publish(self, pub: Publication) -> bool:
        """Publish now if connected (QoS 1); False when offline. Not for reports."""
        client = self._client
        if client is None or not self.connected.is_set():
            return False
        try:
            await client.publish(pub.topic, pub.payload, qos=1, retain=pub.retain)
        except aiomqtt.MqttError:
            return False
        return True
