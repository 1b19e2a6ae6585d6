"""The client-certificate listener: certificate CN = device id = username = client id; the
orchestrator's link over TLS."""

from __future__ import annotations

import asyncio
import queue
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleetpush_protocol.topics import Topics
from fleetpush_sim.broker import Probe, tls_context
from orchestrator.broker import MosquittoBroker
from orchestrator.config import MqttConfig, parse_config
from orchestrator.mqtt.link import MqttLink
from orchestrator.mqtt.message import Message
from orchestrator.security.pki import FleetCA

pytestmark = pytest.mark.integration

OK = "Success"


@pytest.fixture
def probes() -> Iterator[list[Probe]]:
    opened: list[Probe] = []
    yield opened
    for p in opened:
        p.close()


def _cert_probe(
    b: MosquittoBroker, probes: list[Probe], cert: Path | None, key: Path | None, **kw: object
) -> Probe:
    assert b.tls_port is not None
    p = Probe(b.host, b.tls_port, tls=tls_context(b.ca_file, cert, key), **kw)  # type: ignore[arg-type]
    probes.append(p)
    p.connect()
    return p


def _orch(b: MosquittoBroker, probes: list[Probe]) -> Probe:
    p = Probe(b.host, b.port, username=b.ORCHESTRATOR_USER, password=b.orchestrator_password)
    probes.append(p)
    assert p.connect() == OK
    return p


def test_certificate_device_gets_exactly_its_own_topics(
    tls_broker: MosquittoBroker, topics: Topics, probes: list[Probe]
) -> None:
    b = tls_broker
    cert, key = b.add_device_cert("dev-a", ("canary",))
    b.add_device_cert("dev-b")
    b.reload()
    orch = _orch(b, probes)
    orch.subscribe(f"{topics.prefix}/#")
    # The client id asked for is ignored: it becomes the certificate's CN.
    a = _cert_probe(b, probes, cert, key, client_id="dev-b")
    assert a.connack == OK
    a.subscribe("#")
    assert orch.publish(topics.device_notice("dev-b"), b"for-b") == OK
    assert orch.publish(topics.device_notice("dev-a"), b"for-a") == OK
    assert orch.publish(topics.group_notice("canary"), b"canary") == OK
    assert [m.payload for m in a.drain()] == [b"for-a", b"canary"]
    assert a.publish(topics.report("dev-b"), b"forged") == "Not authorized"
    assert a.publish(topics.device_notice("dev-a"), b"forged", retain=True) == "Not authorized"
    assert a.publish(topics.report("dev-a"), b"mine") == OK
    seen = [(m.topic, m.payload) for m in orch.drain()]
    assert (topics.report("dev-a"), b"mine") in seen
    assert all(p not in (b"forged",) for _, p in seen)


def test_tls_listener_refuses_missing_or_foreign_certificates(
    tls_broker: MosquittoBroker, tmp_path: Path, probes: list[Probe]
) -> None:
    b = tls_broker
    b.add_device_cert("dev-a")
    b.reload()
    # No certificate at all (a password does not help on this listener).
    assert _cert_probe(b, probes, None, None).connack != OK
    assert b.tls_port is not None
    p = Probe(b.host, b.tls_port, username="dev-a", password="x", tls=tls_context(b.ca_file))
    probes.append(p)
    assert p.connect() != OK
    # A certificate for the same CN from another CA.
    rogue = FleetCA.create(tmp_path / "rogue")
    rogue.issue_client("dev-a").write(tmp_path / "r.pem", tmp_path / "r.key")
    assert _cert_probe(b, probes, tmp_path / "r.pem", tmp_path / "r.key").connack != OK
    # A certificate from the fleet CA for an identity that was never provisioned connects
    # (the CA vouches for it) but the ACL gives it nothing.
    ghost = b.ca.issue_client("ghost")
    ghost.write(tmp_path / "g.pem", tmp_path / "g.key")
    g = _cert_probe(b, probes, tmp_path / "g.pem", tmp_path / "g.key")
    assert g.publish(b.topics.report("ghost"), b"x") == "Not authorized"


def test_revoked_certificate_is_dropped_and_cannot_reconnect(
    tls_broker: MosquittoBroker, topics: Topics, probes: list[Probe]
) -> None:
    b = tls_broker
    cert, key = b.add_device_cert("dev-a")
    cert_b, key_b = b.add_device_cert("dev-b")
    b.reload()
    a = _cert_probe(b, probes, cert, key)
    other = _cert_probe(b, probes, cert_b, key_b)
    assert a.connack == OK
    assert b.revoke("dev-a")
    assert a.disconnected.wait(5)
    assert _cert_probe(b, probes, cert, key).connack != OK  # the CRL refuses the handshake
    assert other.connected.is_set()
    assert _cert_probe(b, probes, cert_b, key_b).connack == OK


async def test_orchestrator_link_reaches_the_broker_over_tls(
    tls_broker: MosquittoBroker, topics: Topics, probes: list[Probe], tmp_path: Path
) -> None:
    """``[mqtt] url = "mqtts://..."`` with ca_file and a client certificate: the link
    checks the broker's certificate against the CA, logs in with its own, and carries
    notices and reports both ways."""
    b = tls_broker
    assert b.tls_url is not None
    b.ca.issue_client(b.ORCHESTRATOR_USER).write(tmp_path / "o.pem", tmp_path / "o.key")
    cert, key = b.add_device_cert("dev-a")
    b.reload()
    cfg = parse_config(
        {"data_dir": "data", "mqtt": {
            "url": b.tls_url, "username": b.ORCHESTRATOR_USER, "ca_file": str(b.ca_file),
            "cert_file": "o.pem", "key_file": "o.key", "topic_prefix": topics.prefix}},
        tmp_path,
    )  # fmt: skip
    assert (cfg.mqtt.tls, cfg.mqtt.port) == (True, b.tls_port)
    received: queue.Queue[Message] = queue.Queue()
    link = MqttLink(cfg.mqtt, [topics.reports_filter], on_message=received.put)
    await asyncio.to_thread(link.start)
    try:
        device = _cert_probe(b, probes, cert, key)
        assert device.connack == OK
        device.subscribe(topics.device_notice("dev-a"))
        await link.publish_many([(topics.device_notice("dev-a"), b"notice", False)])
        assert device.wait_for(topics.device_notice("dev-a")).payload == b"notice"
        assert device.publish(topics.report("dev-a"), b"report") == OK
        got = await asyncio.to_thread(received.get, timeout=15)
        assert (got.topic, got.payload) == (topics.report("dev-a"), b"report")
        link.ack(got.mid, got.qos)
    finally:
        await asyncio.to_thread(link.stop)


def test_orchestrator_link_refuses_a_broker_its_ca_did_not_sign(
    tls_broker: MosquittoBroker, topics: Topics, tmp_path: Path
) -> None:
    b = tls_broker
    assert b.tls_url is not None
    rogue = FleetCA.create(tmp_path / "rogue")
    cfg = MqttConfig(url=b.tls_url, username=b.ORCHESTRATOR_USER, ca_file=rogue.cert_path,
                     topic_prefix=topics.prefix)  # fmt: skip
    link = MqttLink(cfg)
    with pytest.raises(ConnectionError, match="certificate"):
        link.start(timeout=10)
