"""The matrix brokers' configuration, rendered from the registry: pure, no broker.

What each broker enforces is checked end to end in tests/test_matrix_brokers.py; these
pin the translations (MQTT topics to NATS subjects and RabbitMQ routing keys) and that
each identity's rules name exactly its own topics and groups.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from fleetpush_protocol.topics import Topics
from fleetpush_sim.brokers.ejabberd import render_ejabberd
from fleetpush_sim.brokers.nats import mqtt_subject, render_nats
from fleetpush_sim.brokers.nats_cluster import NatsCluster
from fleetpush_sim.brokers.rabbitmq import amqp_key, password_hash, render_definitions
from orchestrator.broker.credentials import DEVICE_ROLE, ORCHESTRATOR_ROLE
from orchestrator.broker.registry import Identity
from orchestrator.broker.render import CONFIG_DIR

T = Topics(prefix="acme/fleet")
IDS = [
    Identity("fleetpush-orchestrator", ORCHESTRATOR_ROLE),
    Identity("dev.1", DEVICE_ROLE, ("canary",)),
    Identity("dev-2", DEVICE_ROLE, ("prod",)),
]
PASSWORDS = {i.username: "pw" for i in IDS}


@pytest.mark.parametrize(
    ("topic", "subject"),
    [("acme/fleet/device/dev.1/report", "acme.fleet.device.dev//1.report"),
     ("acme/fleet/keyring/+", "acme.fleet.keyring.*"), ("acme/#", "acme.>")],
)  # fmt: skip
def test_nats_subjects(topic: str, subject: str) -> None:
    assert mqtt_subject(topic) == subject


def test_nats_permissions_name_only_the_devices_own_topics_and_groups() -> None:
    text = render_nats((CONFIG_DIR / "nats" / "nats.conf.template").read_text(), IDS, PASSWORDS,
                       topics=T, name="n", host="127.0.0.1", port=1, client_port=2,
                       directory=CONFIG_DIR)  # fmt: skip
    users = {u["user"]: u for u in map(json.loads, re.findall(r"^    (\{.*\})$", text, re.M))}
    dev = users["dev.1"]
    assert dev["allowed_connection_types"] == ["MQTT"]
    assert "acme.fleet.group.canary.notice" in dev["permissions"]["subscribe"]
    assert "acme.fleet.group.prod.notice" not in dev["permissions"]["subscribe"]
    assert dev["permissions"]["publish"] == [
        "acme.fleet.device.dev//1.report", "acme.fleet.device.dev//1.presence",
        "acme.fleet.device.dev//1.inventory",
    ]  # fmt: skip
    orch = users["fleetpush-orchestrator"]["permissions"]
    assert {"acme.fleet", "acme.fleet.>"} <= set(orch["subscribe"])


def test_rabbitmq_topic_permissions() -> None:
    assert amqp_key("acme/fleet/device/dev.1/report") == "acme.fleet.device.dev/1.report"
    template = (CONFIG_DIR / "rabbitmq" / "permissions.json.template").read_text()
    d = render_definitions(template, IDS, PASSWORDS, topics=T)
    topic = {p["user"]: p for p in d["topic_permissions"]}

    def allows(user: str, kind: str, topic_or_filter: str) -> bool:
        regex = topic[user][kind].replace("{username}", user)
        key = amqp_key(topic_or_filter).replace("+", "*")
        return re.fullmatch(regex, key) is not None

    assert allows("dev.1", "write", T.report("dev.1"))
    assert not allows("dev.1", "write", T.report("dev-2"))
    assert not allows("dev.1", "write", T.device_notice("dev.1"))
    assert allows("dev.1", "read", T.group_notice("canary"))
    assert allows("dev.1", "read", T.keyring_filter)
    assert allows("dev.1", "read", T.keyring_latest)  # RabbitMQ's only retained keyring
    assert not allows("dev.1", "read", f"{T.prefix}/keyring/#")
    assert not allows("dev.1", "read", T.group_notice("prod"))
    assert not allows("dev.1", "read", T.device_notice("dev-2"))
    assert not allows("dev.1", "read", f"{T.prefix}/device/+/notice")
    assert allows("fleetpush-orchestrator", "read", T.reports_filter)
    perms = {p["user"]: p for p in d["permissions"]}
    assert re.fullmatch(perms["dev-2"]["configure"], "mqtt-subscription-dev-2qos1")
    assert not re.fullmatch(perms["dev-2"]["configure"], "mqtt-subscription-dev.1qos1")
    salted = password_hash("pw", salt=b"abcd")
    assert salted == password_hash("pw", salt=b"abcd") != password_hash("pw")


def test_ejabberd_group_rules_list_the_groups_members() -> None:
    template = (CONFIG_DIR / "ejabberd" / "ejabberd.yml.template").read_text()
    text = render_ejabberd(template, IDS, topics=T, host="127.0.0.1", port=1, api_port=2)
    assert '- "fleetpush-orchestrator@localhost"' in text
    canary = text.index("group_0:")
    assert '"dev.1@localhost"' in text[canary : canary + 80]
    assert '"acme/fleet/group/canary/notice":\n        - allow: group_0' in text
    assert '"acme/fleet/device/%u/report":' in text


def test_a_nats_cluster_node_routes_to_the_others_with_a_login_and_replicates_mqtt(
    tmp_path: Path,
) -> None:
    cluster = NatsCluster(tmp_path, topics=T, size=3)
    for node in cluster.nodes:
        node.prepare()
    texts = [n.config_path.read_text() for n in cluster.nodes]
    a, b, c = cluster.nodes
    routes = re.findall(r"nats-route://fleetpush-route:([^@]+)@127\.0\.0\.1:(\d+)", texts[0])
    assert {int(port) for _, port in routes} == {b.cluster_port, c.cluster_port}
    assert {pw for pw, _ in routes} == {a.route_login[1]}
    assert f'listen: "127.0.0.1:{a.cluster_port}"' in texts[0]
    assert (
        f'authorization {{ user: "fleetpush-route", password: "{a.route_login[1]}" }}' in texts[0]
    )
    assert all("stream_replicas: 3" in t for t in texts)
    # One set of users for every node: the same rules, rendered from the one registry.
    users = [re.findall(r"^    (\{.*\})$", t, re.M) for t in texts]
    assert users[0] == users[1] == users[2]
    assert len(users[0]) == 1
    single = render_nats((CONFIG_DIR / "nats" / "nats.conf.template").read_text(), IDS,
                         PASSWORDS, topics=T, name="n", host="127.0.0.1", port=1,
                         client_port=2, directory=CONFIG_DIR)  # fmt: skip
    assert not re.search(r"^cluster \{", single, re.M)
    assert "stream_replicas" not in single
