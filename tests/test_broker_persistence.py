"""Retained notices and persistent sessions survive a broker restart."""

from __future__ import annotations

import pytest

from fleetpush_protocol.topics import Topics
from fleetpush_sim.broker import Probe
from orchestrator.broker import MosquittoBroker

pytestmark = pytest.mark.integration

OK = "Success"


def _orch(b: MosquittoBroker) -> Probe:
    p = Probe(b.host, b.port, username=b.ORCHESTRATOR_USER, password=b.orchestrator_password)
    assert p.connect() == OK
    return p


def test_retained_notice_and_queued_message_survive_restart(
    broker: MosquittoBroker, topics: Topics
) -> None:
    pw = broker.add_device("dev-a", ("canary",))
    broker.reload()

    def device() -> Probe:
        return Probe(
            broker.host,
            broker.port,
            username="dev-a",
            password=pw,
            clean_start=False,
            session_expiry=3600,
        )

    # A persistent session with a QoS 1 subscription, then the device goes offline.
    a = device()
    assert a.connect() == OK
    a.subscribe(topics.device_notice("dev-a"))
    a.disconnect()

    orch = _orch(broker)
    assert orch.publish(topics.group_notice("canary"), b"retained", retain=True) == OK
    assert orch.publish(topics.device_notice("dev-a"), b"queued") == OK  # not retained
    orch.close()

    broker.restart()

    a = device()
    try:
        assert a.connect() == OK
        assert a.session_present
        assert a.wait_for(topics.device_notice("dev-a")).payload == b"queued"
        a.subscribe(topics.group_notice("canary"))
        m = a.wait_for(topics.group_notice("canary"))
        assert (m.payload, m.retain) == (b"retained", True)
    finally:
        a.close()
