"""The report outbox: every report, numbered, kept until the broker acknowledged it.

Reports are appended in memory with the next per-device counter and become publishable
only once the state file holding them is on disk (``mark_persisted``), so a report is never
sent that a crash could make the device forget. The publisher sends them strictly in
counter order with QoS 1 and drops each only after its PUBACK; a report sent but not yet
acknowledged when the connection drops is sent again, byte for byte, after reconnecting.

The last acknowledged report is kept too (``last``) and sent again on every connect when
nothing newer is waiting: a PUBACK only means the *broker* has the report, and a broker
killed before it saved its state loses what it had not yet delivered. The repeat carries
the same counter, so an orchestrator that already has it ignores it, and one that lost it
learns the device's latest state.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["Entry", "Outbox"]

logger = logging.getLogger(__name__)

MAX_ENTRIES = 10_000  # reports kept while offline; state reports are never dropped
MAX_PROGRESS_BACKLOG = 50  # progress reports are skipped beyond this many pending entries


@dataclass(frozen=True, slots=True)
class Entry:
    counter: int
    topic: str
    payload: bytes


class Outbox:
    """Ordered, persisted reports waiting for their PUBACK."""

    def __init__(
        self, entries: list[Entry] | None = None, counter: int = 0, last: Entry | None = None
    ) -> None:
        self._entries: list[Entry] = sorted(entries or [], key=lambda e: e.counter)
        self.last = last  # the newest acknowledged report
        self.counter = max([counter, *(e.counter for e in self._entries)])
        self._persisted = self.counter  # everything loaded from disk is persisted
        self._ready: asyncio.Event | None = None

    def __len__(self) -> int:
        return len(self._entries)

    def append(self, topic: str, build: Callable[[int], bytes], *, progress: bool = False) -> int:
        """Add a report built for the next counter; return the counter, or 0 if skipped.

        Only progress reports are ever skipped (when the backlog is long): they are advisory,
        and the state reports around them still arrive in order.
        """
        if progress and len(self._entries) >= MAX_PROGRESS_BACKLOG:
            return 0
        if len(self._entries) >= MAX_ENTRIES:
            raise RuntimeError("report outbox full")  # the agent reports nothing that often
        self.counter += 1
        self._entries.append(Entry(self.counter, topic, build(self.counter)))
        return self.counter

    def mark_persisted(self) -> None:
        """Everything appended so far is on disk: let the publisher send it."""
        self._persisted = self.counter
        if self._ready is not None and self._entries:
            self._ready.set()

    def next_ready(self) -> Entry | None:
        """The oldest persisted entry, or None."""
        if self._entries and self._entries[0].counter <= self._persisted:
            return self._entries[0]
        return None

    def acknowledge(self, counter: int) -> None:
        """Drop the entry the broker acknowledged (the caller persists the removal)."""
        acked = next((e for e in self._entries if e.counter == counter), None)
        if acked is None:
            return
        self._entries.remove(acked)
        if self.last is None or acked.counter > self.last.counter:
            self.last = acked

    def repeat_on_connect(self) -> Entry | None:
        """The report to send again after connecting: the last acknowledged one, unless a
        newer report is waiting anyway (it carries the newer state)."""
        return None if self._entries else self.last

    async def wait_ready(self) -> Entry:
        """Wait until an entry can be published."""
        if self._ready is None:
            self._ready = asyncio.Event()
        while (entry := self.next_ready()) is None:
            self._ready.clear()
            await self._ready.wait()
        return entry

    def to_list(self) -> list[dict[str, Any]]:
        return [_to_item(e) for e in self._entries]

    def last_item(self) -> dict[str, Any] | None:
        return None if self.last is None else _to_item(self.last)

    @classmethod
    def from_list(
        cls, items: list[dict[str, Any]], counter: int, last: dict[str, Any] | None = None
    ) -> Outbox:
        entries = [_from_item(i) for i in items]
        return cls(entries, counter, None if last is None else _from_item(last))


def _to_item(e: Entry) -> dict[str, Any]:
    return {"c": e.counter, "t": e.topic, "p": e.payload}


def _from_item(i: dict[str, Any]) -> Entry:
    return Entry(int(i["c"]), str(i["t"]), bytes(i["p"]))
