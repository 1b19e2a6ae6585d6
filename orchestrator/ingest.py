"""Report, presence and inventory ingestion: validate on the MQTT thread, write in batches.

The MQTT link's thread decodes each message and checks that the device speaks only about itself
(the device id in the topic, which the broker's ACL ties to the login, must equal the one
in the message). Accepted messages queue up; one writer thread takes a batch (up to
``batch_rows``, or whatever arrived within ``batch_interval``), commits it in one SQLite
transaction on the database thread, and only then acknowledges its messages. A kill
before the commit leaves them unacknowledged, so the broker delivers them again.

End to end, the broker's PUBACK to a device is not enough (its queue for us can overflow,
it can crash before saving): after each commit the counters of every device's reports now
stored are gathered, and every ``ack_interval`` one ``Ack`` per device goes out on its ack
topic, all in one ``publish_many`` call, from a thread of their own so a slow broker never
holds the writer. Devices keep each report until an ack names it.

One device's cost is bounded before anything is decoded: a token bucket per device (the
topic's device id, which the ACL ties to the login) and a report size cap; then unknown
fields are capped while decoding. What is dropped is PUBACKed (the broker forgets it),
counted, and the device is flagged in the registry (``limited``).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from fleetpush_common.clock import Clock
from fleetpush_protocol.envelope import decode_message
from fleetpush_protocol.errors import ContentError, OversizedError
from fleetpush_protocol.messages import Inventory, Presence, Report
from fleetpush_protocol.topics import Topics
from orchestrator.config import IngestConfig
from orchestrator.evidence import accept_output
from orchestrator.ingest_guard import RateLimiter, ack_items
from orchestrator.mqtt.message import Message
from orchestrator.store import Database, IngestResult, Store

__all__ = ["IngestStats", "Ingestor"]

logger = logging.getLogger(__name__)

Publish = Callable[[Sequence[tuple[str, bytes, bool]]], Awaitable[None]]
MAX_ACK_ROUNDS = 8  # ack publishes awaiting the broker at once; beyond, devices resend
DROPS_FLUSH_S = 1.0  # seconds: drops with no batch to ride along are written this late

_KINDS: dict[str, type[Report | Presence | Inventory]] = {
    "report": Report,
    "presence": Presence,
    "inventory": Inventory,
}


@dataclass(slots=True)
class IngestStats:
    received: int = 0
    malformed: int = 0  # not a decodable message of the topic's kind
    impersonation: int = 0  # device id in the message is not the topic's
    rate_limited: int = 0  # over the device's token bucket
    oversized: int = 0  # report over max_report_bytes, or too many unknown-field bytes
    committed: int = 0
    batches: int = 0
    acks_sent: int = 0  # Ack messages the broker took


class Ingestor:
    """Validates device messages and writes them in batches from one writer thread.

    Args:
        db: the database (its thread does the writes).
        topics: the topic layout.
        clock: stamps ``received_at``.
        config: batch size and interval.
        ack: acknowledges ``(mid, qos)`` once committed (``MqttLink.ack``).
        on_batch: called after each commit with its result (e.g. to wake the engine).
        publish: ``MqttLink.publish_many``, for the acks to devices; None sends none.
    """

    def __init__(
        self,
        db: Database,
        *,
        topics: Topics,
        clock: Clock,
        config: IngestConfig,
        ack: Callable[[int, int], None],
        on_batch: Callable[[IngestResult], None] | None = None,
        publish: Publish | None = None,
    ) -> None:
        self.db = db
        self.topics = topics
        self.clock = clock
        self.config = config
        self.ack = ack
        self.on_batch = on_batch
        self.stats = IngestStats()
        self._cond = threading.Condition()
        self._pending: list[tuple[Report | Presence | Inventory, int, int]] = []
        self._first_at = 0.0
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._limiter = RateLimiter(config.rate_per_device, config.burst_per_device)
        self._dropped: dict[tuple[str, str], int] = {}  # (device, reason) -> messages
        self._drops_due = 0.0  # monotonic time by which drops alone are written
        self.publish = publish
        self._confirm_lock = threading.Lock()
        self._to_confirm: dict[str, set[int]] = {}
        self._ack_thread: threading.Thread | None = None
        self._acks_stopping = threading.Event()

    # --- the MQTT link's thread ----------------------------------------------------------

    def on_message(self, msg: Message) -> None:
        """Validate one message and queue it (or acknowledge and drop it)."""
        self.stats.received += 1
        item = self._validate(msg.topic, msg.payload)
        if item is None:
            self.ack(msg.mid, msg.qos)
            return
        with self._cond:
            self._pending.append((item, msg.mid, msg.qos))
            n = len(self._pending)
            if n == 1:
                self._first_at = time.monotonic()
                self._cond.notify()
            elif n == self.config.batch_rows:
                self._cond.notify()

    def _drop(self, device_id: str, reason: str) -> None:
        with self._cond:
            # No wake-up: the writer records drops with its next batch, or a second after the
            # first when nothing else comes, so a flood costs at most one transaction per
            # second of its own, not one per message.
            if not self._dropped:
                self._drops_due = time.monotonic() + DROPS_FLUSH_S
            key = (device_id, reason)
            self._dropped[key] = self._dropped.get(key, 0) + 1

    def _validate(self, topic: str, payload: bytes) -> Report | Presence | Inventory | None:
        parsed = self.topics.device_from_topic(topic)
        if parsed is None or parsed[1] not in _KINDS:
            return None
        device_id, kind = parsed
        if not payload:  # a cleared retained message
            return None
        cfg = self.config
        if not self._limiter.allow(device_id, self.clock.now()):
            self.stats.rate_limited += 1
            self._drop(device_id, "rate_limited")
            return None
        if kind == "report" and len(payload) > cfg.max_report_bytes:
            self.stats.oversized += 1
            self._drop(device_id, "oversized")
            return None
        try:
            msg = decode_message(payload, max_unknown_bytes=cfg.max_unknown_bytes)
        except OversizedError as e:
            self.stats.oversized += 1
            self._drop(device_id, "oversized")
            logger.debug("dropped oversized %s from %s: %s", kind, device_id, e)
            return None
        except ContentError as e:
            self.stats.malformed += 1
            logger.warning("dropped malformed %s from %s: %s", kind, device_id, e)
            return None
        if not isinstance(msg, _KINDS[kind]):
            self.stats.malformed += 1
            logger.warning("dropped %s message on %s topic of %s", msg.TYPE, kind, device_id)
            return None
        assert isinstance(msg, Report | Presence | Inventory)  # noqa: S101 - narrowed above
        if msg.device_id != device_id:
            self.stats.impersonation += 1
            logger.warning(
                "rejected %s: device %s spoke for device %s", kind, device_id, msg.device_id
            )
            return None
        if isinstance(msg, Report):  # a failure's output: cleaned and cut again (issue 18)
            return accept_output(msg, cfg.max_output_bytes)
        return msg

    # --- the writer thread ---------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="fleetpush-ingest", daemon=True)
        self._thread.start()
        if self.publish is not None:
            self._acks_stopping.clear()
            self._ack_thread = threading.Thread(
                target=asyncio.run, args=(self._ack_loop(),), name="fleetpush-acks", daemon=True
            )
            self._ack_thread.start()

    def stop(self) -> None:
        """Write what is queued, confirm it to the devices, then stop."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self._acks_stopping.set()
        if self._ack_thread is not None:
            self._ack_thread.join(timeout=15)

    # --- the ack thread ------------------------------------------------------------------

    async def _ack_loop(self) -> None:
        rounds: set[asyncio.Task[None]] = set()
        while True:
            stopping = await asyncio.to_thread(self._acks_stopping.wait, self.config.ack_interval_s)
            with self._confirm_lock:
                stored, self._to_confirm = self._to_confirm, {}
            if stored and len(rounds) < MAX_ACK_ROUNDS:
                task = asyncio.create_task(self._send_acks(ack_items(self.topics, stored)))
                rounds.add(task)
                task.add_done_callback(rounds.discard)
            elif stored:
                logger.info("broker slow: %d devices' acks skipped (they resend)", len(stored))
            if stopping:
                if rounds:
                    await asyncio.wait(rounds, timeout=10)
                return

    async def _send_acks(self, items: list[tuple[str, bytes, bool]]) -> None:
        assert self.publish is not None  # noqa: S101 - the loop runs only with one
        try:
            await self.publish(items)
        except Exception as e:  # devices resend what stays unconfirmed
            logger.info("%d acks not published: %s", len(items), e)
            return
        self.stats.acks_sent += len(items)

    def pending(self) -> int:
        with self._cond:
            return len(self._pending)

    def _take(self) -> list[tuple[Report | Presence | Inventory, int, int]] | None:
        rows = self.config.batch_rows
        with self._cond:
            while not self._pending:
                if self._dropped and (self._stopping or time.monotonic() >= self._drops_due):
                    return []  # record the drops alone
                if self._stopping:
                    return None
                self._cond.wait(DROPS_FLUSH_S)
            deadline = self._first_at + self.config.batch_interval_s
            while len(self._pending) < rows and not self._stopping:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            batch = self._pending[:rows]
            del self._pending[:rows]
            if self._pending:
                self._first_at = time.monotonic()
        return batch

    def _write(self, messages: list[Report | Presence | Inventory]) -> IngestResult:
        now = self.clock.now()
        with self._cond:
            dropped, self._dropped = self._dropped, {}

        def write(store: Store) -> IngestResult:
            if dropped:
                store.flag_devices(dropped, now)
            return store.ingest(messages, now) if messages else IngestResult()

        try:
            return self.db.call(write)
        except BaseException:
            with self._cond:  # keep the tallies for the retry
                for key, n in dropped.items():
                    self._dropped[key] = self._dropped.get(key, 0) + n
            raise

    def _run(self) -> None:
        while (batch := self._take()) is not None:
            messages = [m for m, _, _ in batch]
            delay = 0.5
            while True:
                try:
                    result = self._write(messages)
                    break
                except Exception:
                    logger.exception("writing %d device messages failed; retrying", len(batch))
                    time.sleep(delay)
                    delay = min(delay * 2, 10.0)
            for _, mid, qos in batch:
                self.ack(mid, qos)
            if result.stored and self.publish is not None:
                with self._confirm_lock:
                    for device_id, counters in result.stored.items():
                        self._to_confirm.setdefault(device_id, set()).update(counters)
            if not batch:
                continue  # only drops were recorded
            self.stats.committed += len(batch)
            self.stats.batches += 1
            if self.on_batch is not None:
                try:
                    self.on_batch(result)
                except Exception:
                    logger.exception("on_batch callback failed")
