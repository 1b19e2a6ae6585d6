"""What holds on a broker without Mosquitto's extras (docs/broker.md, "MQTT 3.1.1" and
"Features not every broker has"): a real Mosquitto with ``use_username_as_clientid`` and
``check_retain_source`` taken out of broker_config/mosquitto.conf.

* A device logging in with another device's client id takes that session over (the
  broker no longer forces the id), but gets nothing of the other device's: the ACL is by
  username, at delivery, so neither the queued nor the live notices reach it, and what it
  publishes on the other's topics reaches no one.
* A retained notice left behind by an identity that has since lost its write right (no
  ``check_retain_source``: the broker still hands it out) is refused by the device: it
  is not signed by a key the device trusts. Then a genuine notice goes through.
* Reports no one confirms (a 3.1.1 broker cannot say it dropped them) are sent again ever
  less often, and the device says so once.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import aiomqtt
import pytest
from device_helpers import Signer, publish, wait_for
from test_device_agent import RELEASE, Rig, StartDevice, rig, start_device, untrusted_rig

from device_client.transport.session import MqttSession
from fleetpush_protocol.keys import KeyPair
from fleetpush_protocol.topics import Topics
from fleetpush_sim.broker import Probe
from orchestrator.broker import MosquittoBroker

__all__ = ["rig", "start_device", "untrusted_rig"]

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

EXTRAS = ("use_username_as_clientid true\n", "check_retain_source true\n")


class PlainBroker(MosquittoBroker):
    """broker_config/mosquitto.conf without the Mosquitto-only checks in ``EXTRAS``."""

    def render_config(self) -> Path:
        path = super().render_config()
        text = path.read_text()
        for line in EXTRAS:
            assert line in text, line
            text = text.replace(line, "")
        path.write_text(text)
        return path


@pytest.fixture
def broker(tmp_path: Path, topics: Topics) -> Iterator[MosquittoBroker]:
    b = PlainBroker(tmp_path / "broker", topics=topics)
    b.start()
    try:
        yield b
    finally:
        b.stop()


@pytest.mark.parametrize("version", [5, 4])
def test_another_devices_client_id_gets_a_device_nothing_of_that_device(
    broker: MosquittoBroker, topics: Topics, version: int
) -> None:
    pw_a, pw_b = broker.add_device("dev-a"), broker.add_device("dev-b")
    broker.reload()
    probes: list[Probe] = []

    def connect(user: str, password: str, **kw: object) -> Probe:
        p = Probe(broker.host, broker.port, username=user, password=password, version=version,
                  clean_start=False, session_expiry=3600, **kw)  # type: ignore[arg-type]  # fmt: skip
        probes.append(p)
        assert p.connect() == "Success"
        return p

    try:
        orch = connect(broker.ORCHESTRATOR_USER, broker.orchestrator_password)
        orch.subscribe(f"{topics.prefix}/#")
        a = connect("dev-a", pw_a)
        a.subscribe(topics.device_notice("dev-a"))
        a.subscribe(topics.ack("dev-a"))
        a.disconnect()  # its session, and its subscriptions, wait in the broker
        assert orch.publish(topics.device_notice("dev-a"), b"queued-for-a") == "Success"

        b = connect("dev-b", pw_b, client_id="dev-a")  # not replaced by its username now
        b.subscribe(f"{topics.prefix}/#")
        assert orch.publish(topics.device_notice("dev-a"), b"live-for-a") == "Success"
        assert orch.publish(topics.ack("dev-a"), b"ack-for-a") == "Success"
        assert b.drain() == []  # neither the queued notice nor the live ones
        orch.drain()
        forged = b.publish(topics.report("dev-a"), b"impostor")
        assert forged == ("Not authorized" if version == 5 else "Success")  # 3.1.1: silent
        assert orch.drain() == []  # reached no one
    finally:
        for p in probes:
            p.close()


async def test_a_retained_notice_whose_writer_lost_its_right_is_refused_by_the_device(
    rig: Rig, broker: MosquittoBroker
) -> None:
    password = broker.add_orchestrator("intruder")
    broker.reload()
    url = rig.server.add("app.tar", RELEASE)
    forged, data = rig.signer.notice("dev-001", RELEASE, [url], topics=rig.topics,
                                     key=KeyPair.generate())  # fmt: skip
    async with aiomqtt.Client(broker.host, broker.port, username="intruder", password=password,
                              identifier="intruder") as c:  # fmt: skip
        await c.publish(rig.topics.device_notice("dev-001"), data, qos=1, retain=True)
    assert broker.revoke("intruder")  # its retained notice stays: nothing checks its source
    assert "intruder" not in broker.acl_path.read_text()
    device = await rig.start_device()
    rejected = await rig.reports.wait_state("rejected", forged.notice_id)
    assert rejected.error is not None
    assert rejected.error.code == "unknown_key"
    assert rig.server.ranges == []
    genuine = await rig.send(RELEASE, [url])
    await rig.reports.wait_state("succeeded", genuine.notice_id)
    assert device.current() == f"slot-{genuine.notice_id}"


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_reports_never_confirmed_are_resent_ever_slower_and_said_once(
    start_device: StartDevice, broker: MosquittoBroker, topics: Topics, signer: Signer,
    caplog: pytest.LogCaptureFixture, *, protocol: str,
) -> None:  # fmt: skip
    """No one confirms the device's reports (a 3.1.1 broker dropping them looks the same):
    it goes on resending them with a growing delay, and says so once, as a warning."""
    await publish(broker, topics.keyring(1), signer.keyring(1))
    device = await start_device(sections={"broker": {"ack_timeout": "100ms", "protocol": protocol}})
    # For another device: refused before any download, and reported.
    _, data = signer.notice("dev-001", RELEASE, ["http://127.0.0.1:9/app.tar"], topics=topics,
                            targets=("dev-999",))  # fmt: skip
    session = device.agent.session
    assert isinstance(session, MqttSession)
    with caplog.at_level(logging.INFO, logger="device_client.transport.session"):
        await publish(broker, topics.device_notice("dev-001"), data)  # rejected: a report
        await wait_for(lambda: session.resends >= 5, 30, "five resends")
    ours = [r for r in caplog.records if r.name == "device_client.transport.session"]
    warnings = [r for r in ours if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "never confirmed" in warnings[0].getMessage()
    # Not a hot loop: each resend doubles the next wait (0.1 s, 0.2 s, ... up to 10 min).
    assert session.resend_backoff.attempt >= 5
