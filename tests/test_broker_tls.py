"""The client-certificate listener: certificate CN = device id = username = client id."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from fleetpush_protocol.topics import Topics
from fleetpush_sim.broker import Probe, tls_context
from orchestrator.broker import MosquittoBroker
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
