"""The seams the agent talks to the outside through: a broker session and a payload fetcher.

The real ones are ``transport.session.MqttSession`` and ``transport.fetcher.Fetcher``; the
fast tests use in-memory ones (tests/agent_sim.py), as python-tuf's RepositorySimulator
stands in for a repository behind its ``FetcherInterface``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from device_client.transport.outbox import Outbox
from fleetpush_protocol.messages import Payload

__all__ = [
    "AgentSession",
    "MessageHandler",
    "PayloadFetcher",
    "ProgressCallback",
    "Publication",
    "SessionFactory",
    "SessionWiring",
]

MessageHandler = Callable[[str, bytes], Awaitable[None]]
ProgressCallback = Callable[[int, int], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Publication:
    topic: str
    payload: bytes
    retain: bool = False


class AgentSession(Protocol):
    """A connection to the broker, kept up while ``run`` runs."""

    @property
    def connected(self) -> asyncio.Event:
        """Set while connected."""
        ...

    async def run(self) -> None:
        """Connect and serve until cancelled; reconnect on any loss."""

    async def publish(self, pub: Publication) -> bool:
        """Publish now (QoS 1) if connected; False when offline. Not for reports."""
        ...


@dataclass(frozen=True, slots=True)
class SessionWiring:
    """What the agent gives the session it asks its factory for.

    Attributes:
        subscriptions: topic filters to subscribe to with QoS 1 on every connect.
        will: the retained message the broker publishes if the device vanishes.
        on_connect: returns what to publish (presence, inventory) on each connect.
        on_message: called for each received message, in order; returns quickly.
        outbox: the reports to publish, in order, until confirmed.
    """

    subscriptions: list[str]
    will: Publication
    on_connect: Callable[[], list[Publication]]
    on_message: MessageHandler
    outbox: Outbox


SessionFactory = Callable[[SessionWiring], AgentSession]


class PayloadFetcher(Protocol):
    """Makes ``dest`` hold a payload's verified bytes, resuming from ``part``.

    Raises ``ContentError`` for wrong bytes, ``TransportError`` when no URL could be read,
    ``UpdateError`` (``disk_full``) when the bytes could not be stored.
    """

    async def fetch(
        self, payload: Payload, part: Path, dest: Path, progress: ProgressCallback
    ) -> None: ...
