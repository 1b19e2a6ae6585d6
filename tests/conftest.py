"""Shared fixtures: real Mosquitto brokers on free ports, unique topics, temp dirs, and a
private PostgreSQL server for the store's contract suite."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from device_helpers import PayloadServer
from store_helpers import sql_rows

from fleetpush_protocol.topics import Topics
from fleetpush_sim.signing import Signer
from orchestrator.broker import MosquittoBroker
from orchestrator.config import DatabaseConfig
from orchestrator.store import Store, open_store
from orchestrator.store.postgres.local import LocalPostgres, PostgresNotFoundError


@pytest.fixture
def topics(request: pytest.FixtureRequest) -> Topics:
    """A topic prefix no other test uses, so tests can share nothing and run in any order."""
    name = "".join(c if c.isalnum() else "-" for c in request.node.name)[:40]
    return Topics(prefix=f"t-{name}-{uuid.uuid4().hex[:8]}")


@pytest.fixture
def mqtt_protocol() -> str:
    """The MQTT version the orchestrator and devices of ``setup`` speak; a test runs in
    3.1.1 too with ``@pytest.mark.parametrize("mqtt_protocol", ["5", "3.1.1"])``."""
    return "5"


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


@pytest.fixture(scope="session")
def postgres() -> Iterator[LocalPostgres]:
    """One private PostgreSQL server for the session (initdb + pg_ctl in a temporary folder,
    on a free port; never the machine's own server). Each test makes its own database."""
    try:
        pg = LocalPostgres()
    except PostgresNotFoundError as e:
        if os.environ.get("CI"):  # CI installs it (scripts/install): missing is a failure
            pytest.fail(str(e))
        pytest.skip(str(e))
    pg.start()
    try:
        yield pg
    finally:
        pg.stop()


@pytest.fixture
def postgres_database(postgres: LocalPostgres) -> Iterator[DatabaseConfig]:
    """A new, empty database on the session's PostgreSQL, for this test only."""
    name = f"t_{uuid.uuid4().hex[:16]}"
    yield DatabaseConfig(url=postgres.create_database(name), pool_min=0, pool_max=4)
    postgres.drop_database(name)


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> DatabaseConfig:
    """A fresh, empty database on each backend in turn: the contract suite's parameter."""
    if request.param == "sqlite":
        return DatabaseConfig(url=f"sqlite:///{tmp_path / 'db.sqlite'}")
    config: DatabaseConfig = request.getfixturevalue("postgres_database")
    return config


@pytest.fixture
def store(database: DatabaseConfig) -> Iterator[Store]:
    """A migrated store on each backend in turn. After each test, every rollout's phase
    sizes must equal its targets, whatever the test did: a path that writes targets
    without them fails here, in whichever test takes it."""
    s = open_store(database)
    try:
        yield s
    finally:
        s.close()
    assert sql_rows(database, _TARGETS_BY_PHASE) == sql_rows(database, _PHASE_SIZES)


_TARGETS_BY_PHASE = (
    "SELECT rollout_id, phase, COUNT(*) FROM rollout_targets GROUP BY rollout_id, phase "
    "ORDER BY rollout_id, phase"
)
_PHASE_SIZES = (
    "SELECT rollout_id, phase, size FROM rollout_phase_sizes WHERE size > 0 "
    "ORDER BY rollout_id, phase"
)
