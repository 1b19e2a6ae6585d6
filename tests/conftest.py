"""Shared fixtures: real Mosquitto brokers on free ports, unique topics, temp dirs."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from device_helpers import PayloadServer

from fleetpush_protocol.testing import Signer
from fleetpush_protocol.topics import Topics
from orchestrator.broker import MosquittoBroker


@pytest.fixture
def topics(request: pytest.FixtureRequest) -> Topics:
    """A topic prefix no other test uses, so tests can share nothing and run in any order."""
    name = "".join(c if c.isalnum() else "-" for c in request.node.name)[:40]
    return Topics(prefix=f"t-{name}-{uuid.uuid4().hex[:8]}")


@pytest.fixture
def broker(tmp_path: Path, topics: Topics) -> Iterator[MosquittoBroker]:
    """A Mosquitto started from broker_config/ for this test only."""
    b = MosquittoBroker(tmp_path / "broker", topics=topics)
    b.start()
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture
def tls_broker(tmp_path: Path, topics: Topics) -> Iterator[MosquittoBroker]:
    """A Mosquitto with the client-certificate TLS listener too, for this test only."""
    b = MosquittoBroker(tmp_path / "broker", topics=topics, tls=True)
    b.start()
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture
async def server() -> AsyncIterator[PayloadServer]:
    """A payload server on a free port, for this test only."""
    s = PayloadServer()
    await s.start()
    try:
        yield s
    finally:
        await s.stop()


@pytest.fixture
def signer() -> Signer:
    """A fresh operator: root and signing keys, keyring v1."""
    return Signer()
