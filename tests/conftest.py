"""Shared fixtures: real Mosquitto brokers on free ports, unique topics, temp dirs."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

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
