"""Report ingestion across an orchestrator restart: the broker keeps the backlog.

Reports published while the orchestrator is stopped wait in its persistent session; after it
starts again every one of them is written, each exactly once, even when a device sends some
twice. Mosquitto used to drop everything past ``max_queued_messages 100`` here.
"""

from __future__ import annotations

import time
from pathlib import Path

import aiomqtt
import pytest
from orch_helpers import wait_until, write_orchestrator

from fleetpush_protocol.envelope import encode_message
from fleetpush_protocol.messages import Report, ReportState
from fleetpush_protocol.topics import Topics
from orchestrator.app import Orchestrator
from orchestrator.broker import MosquittoBroker
from orchestrator.config import load_config
from orchestrator.store import SQLiteStore

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

DEVICES = 5
PER_DEVICE = 120  # 600 reports in all, six times the old broker queue limit
RESENT = 20  # per device, sent a second time (a device retrying after a lost PUBACK)


async def _publish(broker: MosquittoBroker, topics: Topics, device_id: str, password: str) -> int:
    """Publish this device's reports at QoS 1 (some twice); wait for every PUBACK."""
    client = aiomqtt.Client(broker.host, broker.port, username=device_id, password=password,
                            identifier=device_id, max_inflight_messages=1000)  # fmt: skip
    async with client:
        counters = [*range(1, PER_DEVICE + 1), *range(1, RESENT + 1)]
        for counter in counters:
            report = Report(
                device_id=device_id, notice_id=f"n-{device_id}", rollout_id="1",
                state=ReportState.DOWNLOADING, current_version="1.0", counter=counter,
                reported_at=int(time.time()),
            )  # fmt: skip
            await client.publish(topics.report(device_id), encode_message(report), qos=1)
        return len(counters)


def _stored(db_path: Path) -> list[tuple[str, int]]:
    store = SQLiteStore(db_path)
    try:
        return [(r[0], r[1]) for r in store.db.execute("SELECT device_id, counter FROM reports")]
    finally:
        store.close()


async def test_reports_sent_while_stopped_are_all_ingested_once_after_restart(
    tmp_path: Path, broker: MosquittoBroker, topics: Topics
) -> None:
    config_path, _ = write_orchestrator(tmp_path, broker, topics)
    config = load_config(config_path)
    ids = [f"q-{i}" for i in range(DEVICES)]
    passwords = {d: broker.add_device(d) for d in ids}
    broker.reload()

    # First run: creates the persistent session and its subscriptions, then goes away.
    orch = Orchestrator(config)
    await orch.start()
    await orch.stop()

    sent = 0
    for d in ids:
        sent += await _publish(broker, topics, d, passwords[d])
    assert sent == DEVICES * (PER_DEVICE + RESENT)

    orch = Orchestrator(config)
    await orch.start()
    try:
        ingestor = orch.ingestor
        assert ingestor is not None

        async def all_in() -> bool:
            return ingestor.stats.committed >= sent

        await wait_until(all_in, within=60, what=f"{sent} messages committed")
    finally:
        await orch.stop()

    rows = _stored(config.db_path)
    expected = {(d, c) for d in ids for c in range(1, PER_DEVICE + 1)}
    assert len(rows) == len(expected)  # each report exactly once
    assert set(rows) == expected
    counters = SQLiteStore(config.db_path).counters()
    assert counters.get("reports_duplicate", 0) == DEVICES * RESENT
