"""Report, presence and inventory ingestion: validate on the MQTT thread, write in batches.

The MQTT link's thread decodes each message and checks that the device speaks only about itself
(the device id in the topic, which the broker's ACL ties to the login, must equal the one
in the message). Accepted messages queue up; one writer thread takes a batch (up to
``batch_rows``, or whatever arrived within ``batch_interval``), commits it in one SQLite
transaction on the database thread, and only then acknowledges its messages. A kill
before the commit leaves them unacknowledged, so the broker delivers them again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from fleetpush_protocol.envelope import decode_message
from fleetpush_protocol.errors import ContentError
from fleetpush_protocol.messages import Inventory, Presence, Report
from fleetpush_protocol.topics import Topics
from orchestrator.clock import Clock
from orchestrator.config import IngestConfig
from orchestrator.mqtt_link import Message
from orchestrator.store import Database, IngestResult, Store

__all__ = ["IngestStats", "Ingestor"]

logger = logging.getLogger(__name__)

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
    committed: int = 0
    batches: int = 0


class Ingestor:
    """Validates device messages and writes them in batches from one writer thread.

    Args:
        db: the database (its thread does the writes).
        topics: the topic layout.
        clock: stamps ``received_at``.
        config: batch size and interval.
        ack: acknowledges ``(mid, qos)`` once committed (``MqttLink.ack``).
        on_batch: called after each commit with its result (e.g. to wake the engine).
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

    def _validate(self, topic: str, payload: bytes) -> Report | Presence | Inventory | None:
        parsed = self.topics.device_from_topic(topic)
        if parsed is None or parsed[1] not in _KINDS:
            return None
        device_id, kind = parsed
        if not payload:  # a cleared retained message
            return None
        try:
            msg = decode_message(payload)
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
        return msg

    # --- the writer thread ---------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="fleetpush-ingest", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Write what is queued, then stop."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def pending(self) -> int:
        with self._cond:
            return len(self._pending)

    def _take(self) -> list[tuple[Report | Presence | Inventory, int, int]] | None:
        rows = self.config.batch_rows
        with self._cond:
            while not self._pending:
                if self._stopping:
                    return None
                self._cond.wait(1.0)
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

        def write(store: Store) -> IngestResult:
            return store.ingest(messages, now)

        return self.db.call(write)

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
            self.stats.committed += len(batch)
            self.stats.batches += 1
            if self.on_batch is not None:
                try:
                    self.on_batch(result)
                except Exception:
                    logger.exception("on_batch callback failed")
