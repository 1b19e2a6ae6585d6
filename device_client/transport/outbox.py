"""The report outbox: every report, numbered, kept until the orchestrator confirms it stored it.

Reports are appended in memory with the next per-device counter and become publishable
only once the state file holding them is on disk (``mark_persisted``), so a report is never
sent that a crash could make the device forget. The publisher sends them in counter order
with QoS 1; a PUBACK only moves the send position on (``sent``). A PUBACK means the
*broker* has the report, and a broker can still lose it: its queue for the orchestrator
overflowing, or a crash before it saved its state. So an entry leaves the outbox only when
an ``Ack`` from the orchestrator (on the device's ack topic) names its counter as stored
(``confirm``); the removal is persisted with the next state write. What is sent but not
confirmed is sent again, byte for byte and with the same counter, after every reconnect
and after the ack timeout (``rewind``); the orchestrator deduplicates on the counter.

Bounded: at most ``max_entries``. When full, room is made by dropping, oldest first, a
progress report, then an intermediate state report (or a ``rejected`` one, which is about a
notice that changed nothing and which an attacker on the broker could produce without
bound); the outcome of a job (``succeeded``, ``failed``, ``rolled_back``, ``canceled``) is
never dropped. Progress reports are coalesced: a new one replaces the previous one while
that is still unsent, and none is added while the backlog is long.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from fleetpush_protocol.messages import Ack

__all__ = ["Entry", "Kind", "Outbox"]

logger = logging.getLogger(__name__)

MAX_ENTRIES = 10_000  # reports kept while the orchestrator is unreachable
MAX_PROGRESS_BACKLOG = 50  # progress reports are skipped beyond this many pending entries


class Kind(StrEnum):
    PROGRESS = "p"  # advisory: coalesced, dropped first
    STATE = "s"  # an intermediate state, or a rejected notice
    OUTCOME = "o"  # how a job ended: never dropped


@dataclass(frozen=True, slots=True)
class Entry:
    counter: int
    topic: str
    payload: bytes
    kind: Kind = Kind.STATE


class Outbox:
    """Ordered, persisted reports waiting for the orchestrator's confirmation."""

    def __init__(
        self,
        entries: list[Entry] | None = None,
        counter: int = 0,
        *,
        max_entries: int = MAX_ENTRIES,
    ) -> None:
        self._entries: list[Entry] = sorted(entries or [], key=lambda e: e.counter)
        self.counter = max([counter, *(e.counter for e in self._entries)])
        self.max_entries = max_entries
        self._persisted = self.counter  # everything loaded from disk is persisted
        self._sent_upto = 0  # entries up to this counter were PUBACKed on this connection
        self._ready: asyncio.Event | None = None
        self.confirmations = 0  # acks that confirmed something, for the resend timer
        self.dropped = 0  # entries dropped because the outbox was full

    def __len__(self) -> int:
        return len(self._entries)

    def append(self, topic: str, build: Callable[[int], bytes], *, kind: Kind = Kind.STATE) -> int:
        """Add a report built for its counter; return the counter, or 0 if skipped.

        Only progress reports are ever skipped (when the backlog is long): they are advisory,
        and the state reports around them still arrive in order.
        """
        entries = self._entries
        if kind is Kind.PROGRESS:
            last = entries[-1] if entries else None
            if last is not None and last.kind is Kind.PROGRESS and last.counter > self._sent_upto:
                entries[-1] = Entry(last.counter, topic, build(last.counter), kind)
                return last.counter
            if len(entries) >= MAX_PROGRESS_BACKLOG:
                return 0
        if len(entries) >= self.max_entries:
            self._make_room()
        self.counter += 1
        entries.append(Entry(self.counter, topic, build(self.counter), kind))
        return self.counter

    def _make_room(self) -> None:
        for kind in (Kind.PROGRESS, Kind.STATE):
            victim = next((e for e in self._entries if e.kind is kind), None)
            if victim is not None:
                self._entries.remove(victim)
                self.dropped += 1
                logger.warning("report outbox full: dropped report %d", victim.counter)
                return
        # Only job outcomes are waiting: keep them all (one per notice the device ran).

    def mark_persisted(self) -> None:
        """Everything appended so far is on disk: let the publisher send it."""
        self._persisted = self.counter
        self._wake()

    def _wake(self) -> None:
        if self._ready is not None and self.next_ready() is not None:
            self._ready.set()

    def next_ready(self) -> Entry | None:
        """The oldest persisted entry not yet sent on this connection, or None."""
        i = bisect.bisect_right(self._entries, self._sent_upto, key=lambda e: e.counter)
        if i < len(self._entries) and self._entries[i].counter <= self._persisted:
            return self._entries[i]
        return None

    def sent(self, counter: int) -> None:
        """The broker acknowledged (PUBACK) the entry ``counter``; it stays until confirmed.

        Ignored unless it is the entry the publisher was given: a ``rewind`` meanwhile must
        not be undone by the PUBACK of a later entry.
        """
        nxt = self.next_ready()
        if nxt is not None and nxt.counter == counter:
            self._sent_upto = counter

    def awaiting(self) -> int | None:
        """The oldest entry sent and not confirmed yet (its counter), or None."""
        if self._entries and self._entries[0].counter <= self._sent_upto:
            return self._entries[0].counter
        return None

    def rewind(self) -> None:
        """Send every unconfirmed entry again (after a reconnect or the ack timeout)."""
        self._sent_upto = 0
        self._wake()

    def confirm(self, ack: Ack) -> int:
        """Drop the entries ``ack`` says are stored; return how many (the caller persists)."""
        before = len(self._entries)
        self._entries = [e for e in self._entries if not ack.covers(e.counter)]
        removed = before - len(self._entries)
        if removed:
            self.confirmations += 1
        return removed

    async def wait_ready(self) -> Entry:
        """Wait until an entry can be published."""
        if self._ready is None:
            self._ready = asyncio.Event()
        while (entry := self.next_ready()) is None:
            self._ready.clear()
            await self._ready.wait()
        return entry

    def to_entries(self) -> tuple[Entry, ...]:
        return tuple(self._entries)

    def to_list(self) -> list[dict[str, Any]]:
        return [_to_item(e) for e in self._entries]

    @classmethod
    def from_list(
        cls, items: list[dict[str, Any]], counter: int, last: dict[str, Any] | None = None
    ) -> Outbox:
        """Load persisted entries; ``last`` is the broker-acknowledged report an older agent
        kept aside: it may never have reached the orchestrator, so it is unconfirmed too."""
        entries = [_from_item(i) for i in items]
        if last is not None:
            old = _from_item(last)
            if all(e.counter != old.counter for e in entries):
                entries.append(old)
        return cls(entries, counter)


def _to_item(e: Entry) -> dict[str, Any]:
    return {"c": e.counter, "t": e.topic, "p": e.payload, "k": e.kind.value}


def _from_item(i: dict[str, Any]) -> Entry:
    return Entry(int(i["c"]), str(i["t"]), bytes(i["p"]), Kind(i.get("k", Kind.STATE.value)))
