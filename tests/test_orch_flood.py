"""One device's flood, or a broker crash, must not lose another device's reports (issue 12.4).

Real Mosquitto (its queue for the orchestrator made small so it overflows quickly), a real
``DeviceAgent``, the real orchestrator and SQLite. The honest agent's reports are
``rejected`` reports about garbage notices published to it: real reports from the real
agent, needing no rollout while the orchestrator is stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiomqtt
import msgspec
import paho.mqtt.client as mqtt
import pytest
from device_helpers import wait_for, write_config
from orch_helpers import root_hex, wait_until, write_orchestrator
from paho.mqtt.enums import CallbackAPIVersion

from device_client.agent import DeviceAgent
from device_client.config import load_config as load_device_config
from device_client.wiring import build_agent
from fleetpush_common.clock import ManualClock
from fleetpush_protocol.messages import Report, ReportState
from fleetpush_protocol.topics import Topics
from orchestrator.app import Orchestrator
from orchestrator.broker import MosquittoBroker
from orchestrator.config import OrchestratorConfig, load_config, parse_config
from orchestrator.store import Database, SQLiteStore

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

QUEUE = 100  # the broker's max_queued_messages in these tests
FLOOD = 3 * QUEUE
PAD = 60_000  # bytes of unknown field in each hostile report, as in the attack review
HONEST = 3  # reports of the honest device


class SmallQueueBroker(MosquittoBroker):
    """The project's broker configuration with a small queue, so a flood overflows it."""

    def render_config(self) -> Path:
        path = super().render_config()
        text = path.read_text()
        assert "max_queued_messages 1000000\n" in text
        path.write_text(
            text.replace("max_queued_messages 1000000\n", f"max_queued_messages {QUEUE}\n")
        )
        return path


@pytest.fixture
def small_broker(tmp_path: Path, topics: Topics) -> Iterator[MosquittoBroker]:
    b = SmallQueueBroker(tmp_path / "broker", topics=topics)
    b.start()
    try:
        yield b
    finally:
        b.stop()


def _config(tmp_path: Path, broker: MosquittoBroker, topics: Topics) -> OrchestratorConfig:
    path, _ = write_orchestrator(tmp_path, broker, topics)
    text = path.read_text()
    limits = '[ingest]\nrate_per_device = 1.0\nburst_per_device = 50\nack_interval = "200ms"\n'
    path.write_text(text.replace("[ingest]\n", limits))
    return load_config(path)


@contextlib.asynccontextmanager
async def _agent(
    tmp_path: Path, broker: MosquittoBroker, topics: Topics, device_id: str
) -> AsyncIterator[DeviceAgent]:
    password = broker.add_device(device_id)
    broker.reload()
    cfg_path = write_config(
        tmp_path / f"{device_id}.toml", broker=broker, topics=topics, device_id=device_id,
        password=password, root_hex=root_hex(tmp_path),
        sections={"broker": {"ack_timeout": "500ms"}},
    )  # fmt: skip
    agent = build_agent(load_device_config(cfg_path))
    task = asyncio.create_task(agent.run())
    try:
        await wait_for(
            lambda: agent.session is not None and agent.session.connected.is_set(),
            what="agent connected",
        )
        yield agent
    finally:
        agent.stop()
        await task


async def _honest_reports(broker: MosquittoBroker, agent: DeviceAgent, topics: Topics) -> None:
    """Make the agent send HONEST reports and wait until the broker acknowledged each.

    Published as an identity of its own: one logging in as the orchestrator (clean start)
    would wipe the orchestrator's queued session, and with it the attack.
    """
    password = broker.add_orchestrator("test-publisher")
    broker.reload()
    async with aiomqtt.Client(
        broker.host, broker.port, username="test-publisher", password=password
    ) as client:
        for i in range(HONEST):
            await client.publish(topics.device_notice(agent.device_id), b"garbage %d" % i, qos=1)
    box = agent.state.outbox
    await wait_for(
        lambda: box.counter == HONEST and box.next_ready() is None,
        what=f"{HONEST} reports PUBACKed by the broker",
    )


def _padded_report(device_id: str, counter: int) -> bytes:
    """A valid report with a large unknown field, canonical as the protocol wants."""
    report = Report(
        device_id=device_id, notice_id="n-x", rollout_id="1", state=ReportState.DOWNLOADING,
        current_version="1.0", counter=counter, reported_at=int(time.time()),
    )  # fmt: skip
    enc = msgspec.msgpack.Encoder(order="deterministic")
    body = enc.encode({**report.to_body(), "pad": b"\0" * PAD})
    return enc.encode({"body": body, "signatures": []})


def _flood(broker: MosquittoBroker, topics: Topics, device_id: str, password: str) -> None:
    """The hostile device: a raw MQTT client with its own credentials."""
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=device_id)
    c.username_pw_set(device_id, password)
    c.max_inflight_messages_set(100)
    c.connect(broker.host, broker.port)
    c.loop_start()
    try:
        infos = [
            c.publish(topics.report(device_id), _padded_report(device_id, n), qos=1)
            for n in range(1, FLOOD + 1)
        ]
        for info in infos:
            info.wait_for_publish(60)
    finally:
        c.disconnect()
        c.loop_stop()


def _stored(db: Path, device_id: str) -> list[int]:
    store = SQLiteStore(db)
    try:
        rows = store.db.execute(
            "SELECT counter FROM reports WHERE device_id = ? ORDER BY counter", (device_id,)
        )
        return [r[0] for r in rows]
    finally:
        store.close()


async def _stored_eventually(orch: Orchestrator, device_id: str) -> None:
    db = orch.db
    assert db is not None

    async def all_stored() -> bool:
        def count(s: object) -> int:
            assert isinstance(s, SQLiteStore)
            q = "SELECT COUNT(*) FROM reports WHERE device_id = ?"
            return int(s.db.execute(q, (device_id,)).fetchone()[0])

        return await db.run(count) >= HONEST

    await wait_until(all_stored, within=60, what=f"{HONEST} reports of {device_id} stored")


async def test_one_devices_flood_loses_no_report_of_another_device(
    tmp_path: Path, small_broker: MosquittoBroker, topics: Topics
) -> None:
    broker = small_broker
    config = _config(tmp_path, broker, topics)
    orch = Orchestrator(config)
    await orch.start()  # creates its persistent session, then goes away
    await orch.stop()
    hostile_pw = broker.add_device("dev-hostile")
    broker.reload()

    async with _agent(tmp_path, broker, topics, "dev-honest") as agent:
        await asyncio.to_thread(_flood, broker, topics, "dev-hostile", hostile_pw)
        await _honest_reports(broker, agent, topics)
        log = broker.log_path.read_text()
        assert "Outgoing messages are being dropped" in log  # the attack happened

        orch = Orchestrator(config)
        await orch.start()
        try:
            await _stored_eventually(orch, "dev-honest")
            await wait_for(lambda: len(agent.state.outbox) == 0, what="reports confirmed")
            ingestor = orch.ingestor
            assert ingestor is not None
            stats = ingestor.stats
        finally:
            await orch.stop()

    assert _stored(config.db_path, "dev-honest") == [1, 2, 3]  # each exactly once
    # The flood is bounded: what reached the orchestrator was refused before decoding.
    assert _stored(config.db_path, "dev-hostile") == []
    assert stats.oversized + stats.rate_limited >= QUEUE - 10
    assert stats.rate_limited > 0
    assert stats.oversized > 0
    store = SQLiteStore(config.db_path)
    try:
        counters = store.counters()
        hostile = store.get_device("dev-hostile")
        honest = store.get_device("dev-honest")
    finally:
        store.close()
    assert counters["messages_rate_limited"] == stats.rate_limited
    assert counters["messages_oversized"] == stats.oversized
    assert hostile.limited == stats.rate_limited + stats.oversized
    assert hostile.to_json()["flagged"] is True
    assert honest.limited == 0


async def test_broker_sigkill_after_puback_loses_no_report(
    tmp_path: Path, broker: MosquittoBroker, topics: Topics
) -> None:
    """The broker PUBACKs, then dies before it saved or delivered: the device resends."""
    config = _config(tmp_path, broker, topics)
    orch = Orchestrator(config)
    await orch.start()
    await orch.stop()
    broker.restart()  # a long-running broker has saved the orchestrator's session

    async with _agent(tmp_path, broker, topics, "dev-honest") as agent:
        await _honest_reports(broker, agent, topics)
        broker.kill()  # nothing since the last autosave survives
        broker.start()
        orch = Orchestrator(config)
        await orch.start()
        try:
            await _stored_eventually(orch, "dev-honest")
            await wait_for(lambda: len(agent.state.outbox) == 0, what="reports confirmed")
        finally:
            await orch.stop()
    assert _stored(config.db_path, "dev-honest") == [1, 2, 3]


async def test_retention_keeps_the_newest_reports_per_device_and_prunes_in_batches(
    tmp_path: Path,
) -> None:
    """50,000 maximal reports of one device grew the database to 239 MB: no longer."""
    clock = ManualClock(1_800_000_000.0)
    config = parse_config(
        {
            "data_dir": str(tmp_path / "data"),
            "retention": {"reports_per_device": 10, "max_report_age": "30d", "prune_batch": 100},
        },
        tmp_path,
    )

    def report(device_id: str, counter: int) -> Report:
        return Report(
            device_id=device_id, notice_id="n-1", rollout_id="1", state=ReportState.DOWNLOADING,
            current_version="1.0", counter=counter, reported_at=1,
        )  # fmt: skip

    def fill() -> SQLiteStore:
        store = SQLiteStore(config.db_path)
        store.migrate()
        now = clock.now()
        store.ingest([report("dev-flood", c) for c in range(1, 351)], now)
        store.ingest([report("dev-old", c) for c in (1, 2, 3)], now - 40 * 86400)
        store.ingest([report("dev-old", c) for c in (4, 5)], now)
        return store

    orch = Orchestrator(config, clock=clock)
    orch.db = Database(fill)
    try:
        assert await orch.prune_reports() == 340 + 3
        assert await orch.prune_reports() == 0
        counters = await orch.db.run(lambda s: s.counters())
    finally:
        orch.db.close()
    assert _stored(config.db_path, "dev-flood") == list(range(341, 351))
    assert _stored(config.db_path, "dev-old") == [4, 5]
    assert counters["reports_pruned"] == 343
