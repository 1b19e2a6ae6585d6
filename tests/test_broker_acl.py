"""The broker keeps devices apart: a real Mosquitto started from broker_config/.

Mosquitto 2.0's acl_file does not check subscriptions: a SUBACK grants any filter, even
``#``, and the ACL is applied to every message at delivery (and to retained messages on
subscribe). So these tests assert what actually protects a device: nothing forbidden is
*delivered*, and forbidden publishes get PUBACK "Not authorized" and reach no one.

The isolation tests run in MQTT 3.1.1 too (``mqtt_protocol``): a 3.1.1 PUBACK has no
reason code, so there a forbidden publish is acknowledged like any other and what the
test asserts is that it reached no one (``denied``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from fleetpush_protocol.topics import Topics
from fleetpush_sim.broker import Probe
from orchestrator.broker import MosquittoBroker, render_acl
from orchestrator.broker.credentials import BrokerUser

pytestmark = pytest.mark.integration

OK = "Success"
DENIED = "Not authorized"

Connect = Callable[..., Probe]


BOTH = pytest.mark.parametrize("mqtt_protocol", ["5", "3.1.1"])


def denied(p: Probe) -> str:
    """What the broker answers a forbidden publish: 3.1.1 cannot say it, so it says OK."""
    return DENIED if p.version == 5 else OK


@pytest.fixture
def connect(broker: MosquittoBroker, mqtt_protocol: str) -> Iterator[Connect]:
    """Open probes on the password listener, speaking ``mqtt_protocol``; all closed at
    the end."""
    probes: list[Probe] = []
    version = 4 if mqtt_protocol == "3.1.1" else 5

    def _connect(username: str | None, password: str | None = None, **kw: object) -> Probe:
        kw.setdefault("version", version)
        p = Probe(broker.host, broker.port, username=username, password=password, **kw)  # type: ignore[arg-type]
        probes.append(p)
        p.connect()
        return p

    yield _connect
    for p in probes:
        p.close()


@pytest.fixture
def orch(broker: MosquittoBroker, connect: Connect) -> Probe:
    p = connect(broker.ORCHESTRATOR_USER, broker.orchestrator_password)
    assert p.connack == OK
    return p


def _device(broker: MosquittoBroker, connect: Connect, dev: str, *groups: str) -> Probe:
    pw = broker.add_device(dev, groups)
    broker.reload()
    p = connect(dev, pw)
    assert p.connack == OK
    return p


def test_acl_has_no_patterns_and_lists_every_identity(topics: Topics) -> None:
    acl = render_acl(
        [
            BrokerUser("dev-a", groups=("canary",)),
            BrokerUser("dev-b"),
            BrokerUser("orch", role="orchestrator"),
        ],
        topics,
    )
    p = topics.prefix
    # No pattern lines: nothing applies to an identity missing from the registry.
    assert not any(line.startswith("pattern") for line in acl.splitlines())
    block_b = acl.split("user dev-b\n")[1].split("\n\n")[0].splitlines()
    assert block_b == [
        f"topic read {p}/device/dev-b/notice",
        f"topic read {p}/keyring/+",
        f"topic read {p}/support",
        f"topic read {p}/device/dev-b/ack",
        f"topic write {p}/device/dev-b/report",
        f"topic write {p}/device/dev-b/presence",
        f"topic write {p}/device/dev-b/inventory",
    ]
    assert f"topic read {p}/group/canary/notice" in acl.split("user dev-b")[0]
    assert f"user orch\ntopic readwrite {p}/#" in acl


@BOTH
def test_device_receives_only_its_own_notices_even_when_subscribed_to_everything(
    broker: MosquittoBroker, topics: Topics, connect: Connect, orch: Probe
) -> None:
    a = _device(broker, connect, "dev-a", "canary")
    b = _device(broker, connect, "dev-b", "other")
    # Retained before A subscribes: must not be replayed to A's wildcard subscriptions.
    assert orch.publish(topics.device_notice("dev-b"), b"b-retained", retain=True) == OK
    assert orch.publish(topics.group_notice("other"), b"other-retained", retain=True) == OK
    assert b.publish(topics.report("dev-b"), b"b-report") == OK
    for f in ("#", f"{topics.prefix}/#", topics.device_notice("dev-b"), topics.reports_filter):
        a.subscribe(f)
    assert a.drain() == []

    # Live, after the subscriptions.
    assert orch.publish(topics.device_notice("dev-b"), b"b-live") == OK
    assert orch.publish(topics.ack("dev-b"), b"b-ack") == OK
    assert orch.publish(topics.group_notice("other"), b"other-live") == OK
    assert b.publish(topics.presence("dev-b"), b"b-presence", retain=True) == OK
    assert b.publish(topics.inventory("dev-b"), b"b-inventory") == OK
    # What A may see.
    assert orch.publish(topics.device_notice("dev-a"), b"a-live") == OK
    assert orch.publish(topics.group_notice("canary"), b"canary-live") == OK
    assert orch.publish(topics.keyring(1), b"keyring", retain=True) == OK

    assert orch.publish(topics.ack("dev-a"), b"a-ack") == OK
    got = {(m.topic, m.payload) for m in a.drain()}
    assert got == {
        (topics.ack("dev-a"), b"a-ack"),
        (topics.device_notice("dev-a"), b"a-live"),
        (topics.group_notice("canary"), b"canary-live"),
        (topics.keyring(1), b"keyring"),
    }


@BOTH
def test_device_cannot_publish_notices_or_keyrings_retained_or_not(
    broker: MosquittoBroker, topics: Topics, connect: Connect, orch: Probe
) -> None:
    a = _device(broker, connect, "dev-a", "canary")
    orch.subscribe(f"{topics.prefix}/#")
    forbidden = [
        topics.device_notice("dev-a"),  # even its own notice topic
        topics.ack("dev-a"),  # and its own ack topic: only the orchestrator confirms
        topics.device_notice("dev-b"),
        topics.group_notice("canary"),
        topics.keyring(7),
    ]
    for topic in forbidden:
        for retain in (False, True):
            assert a.publish(topic, b"forged", retain=retain) == denied(a), (topic, retain)
    assert orch.drain() == []
    # No retained message was left behind for anyone subscribing later.
    pw_late = broker.add_orchestrator("orch-late")
    broker.reload()
    late = connect("orch-late", pw_late)
    late.subscribe(f"{topics.prefix}/#")
    assert late.drain() == []


@BOTH
def test_device_cannot_report_as_another_device(
    broker: MosquittoBroker, topics: Topics, connect: Connect, orch: Probe
) -> None:
    a = _device(broker, connect, "dev-a")
    broker.add_device("dev-b")
    broker.reload()
    orch.subscribe(f"{topics.prefix}/#")
    for topic in (topics.report("dev-b"), topics.presence("dev-b"), topics.inventory("dev-b")):
        assert a.publish(topic, b"impostor") == denied(a)
        assert a.publish(topic, b"impostor", retain=True) == denied(a)
    # Its own topics work, and are all the orchestrator saw.
    assert a.publish(topics.report("dev-a"), b"r") == OK
    assert a.publish(topics.presence("dev-a"), b"p", retain=True) == OK
    assert a.publish(topics.inventory("dev-a"), b"i", retain=True) == OK
    got = [(m.topic, m.payload) for m in orch.drain()]
    assert got == [
        (topics.report("dev-a"), b"r"),
        (topics.presence("dev-a"), b"p"),
        (topics.inventory("dev-a"), b"i"),
    ]


@BOTH
def test_orchestrator_can_do_everything_it_needs(
    broker: MosquittoBroker, topics: Topics, connect: Connect, orch: Probe
) -> None:
    a = _device(broker, connect, "dev-a", "canary")
    for f in (topics.reports_filter, topics.presence_filter, topics.inventory_filter):
        assert orch.subscribe(f) == ["Granted QoS 1"]
    # Retained notices (device and group) and keyrings, then clearing one.
    assert orch.publish(topics.device_notice("dev-a"), b"n", retain=True) == OK
    assert orch.publish(topics.group_notice("canary"), b"g", retain=True) == OK
    assert orch.publish(topics.keyring(2), b"k", retain=True) == OK
    assert orch.publish(topics.group_notice("canary"), b"", retain=True) == OK  # clear
    a.subscribe(topics.device_notice("dev-a"))
    a.subscribe(topics.group_notice("canary"))
    a.subscribe(topics.keyring_filter)
    got = {(m.topic, m.payload, m.retain) for m in a.drain()}
    assert got == {
        (topics.device_notice("dev-a"), b"n", True),
        (topics.keyring(2), b"k", True),
    }
    # It receives what devices report.
    assert a.publish(topics.report("dev-a"), b"rep") == OK
    assert a.publish(topics.presence("dev-a"), b"online", retain=True) == OK
    assert a.publish(topics.inventory("dev-a"), b"inv", retain=True) == OK
    got_o = [m.topic for m in orch.drain()]
    assert got_o == [topics.report("dev-a"), topics.presence("dev-a"), topics.inventory("dev-a")]


@BOTH
@pytest.mark.parametrize(
    ("username", "password"),
    [(None, None), ("dev-a", None), ("dev-a", "wrong"), ("nobody", "x"), ("", "")],
)
def test_cannot_connect_without_valid_credentials(
    broker: MosquittoBroker, connect: Connect, username: str | None, password: str | None
) -> None:
    broker.add_device("dev-a")
    broker.reload()
    p = connect(username, password)
    assert p.connack != OK
    assert not p.connected.is_set()


def test_oversized_message_is_refused(
    broker: MosquittoBroker, topics: Topics, connect: Connect, orch: Probe
) -> None:
    a = _device(broker, connect, "dev-a")
    a.subscribe(topics.device_notice("dev-a"))
    orch.publish_nowait(topics.device_notice("dev-a"), b"x" * 70_000)
    assert orch.disconnected.wait(5)  # max_packet_size: the broker drops the sender
    assert a.drain() == []


@BOTH
def test_client_id_takeover_of_another_devices_session_is_impossible(
    broker: MosquittoBroker, topics: Topics, connect: Connect, orch: Probe
) -> None:
    a = _device(broker, connect, "dev-a")
    a.subscribe(topics.device_notice("dev-a"))
    pw_b = broker.add_device("dev-b")
    broker.reload()
    # B asks for A's client id: the broker replaces it with B's username.
    b = connect("dev-b", pw_b, client_id="dev-a", clean_start=True)
    assert b.connack == OK
    b.barrier()
    assert a.connected.is_set()
    assert not a.disconnected.is_set()
    # A's session is intact and still A's; B receives nothing of A's.
    b.subscribe(f"{topics.prefix}/#")
    assert orch.publish(topics.device_notice("dev-a"), b"for-a") == OK
    assert [m.payload for m in a.drain()] == [b"for-a"]
    assert b.drain() == []
    # Without credentials the client id gets nobody anywhere.
    anon = connect(None, client_id="dev-a")
    assert anon.connack != OK
    assert a.connected.is_set()


def test_reload_keeps_connected_clients_and_applies_changes(
    broker: MosquittoBroker, topics: Topics, connect: Connect, orch: Probe
) -> None:
    a = _device(broker, connect, "dev-a", "canary")
    a.subscribe(f"{topics.prefix}/group/+/notice")
    pw_c = broker.add_device("dev-c")
    assert broker.reload()
    assert connect("dev-c", pw_c).connack == OK
    # Group change: regenerated ACL, applied to the live connection.
    broker.set_groups("dev-a", ("beta",))
    assert a.connected.is_set()
    assert orch.connected.is_set()
    assert not a.disconnected.is_set()
    assert not orch.disconnected.is_set()
    assert orch.publish(topics.group_notice("canary"), b"old-group") == OK
    assert orch.publish(topics.group_notice("beta"), b"new-group") == OK
    assert [m.payload for m in a.drain()] == [b"new-group"]


@BOTH
def test_revoked_password_device_is_dropped_and_cannot_reconnect(
    broker: MosquittoBroker, topics: Topics, connect: Connect, orch: Probe, tmp_path: Path
) -> None:
    a = _device(broker, connect, "dev-a")
    pw = broker.password("dev-a")
    other = _device(broker, connect, "dev-b")
    assert broker.revoke("dev-a")
    assert a.disconnected.wait(5)  # taken over and dropped
    assert connect("dev-a", pw).connack == DENIED
    # Nobody else was disturbed.
    assert other.connected.is_set()
    assert orch.connected.is_set()
    assert "dev-a" not in broker.passwd_path.read_text()
    assert "dev-a" not in broker.acl_path.read_text()
