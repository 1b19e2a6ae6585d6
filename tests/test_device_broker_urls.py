"""A device with several brokers (``[broker] urls``): spread over them, moved on when one
dies, and kept where it works. Two real Mosquittos, the first bridged to the second (two
nodes of one broker, as far as the device and the orchestrator can tell): the device
starts on the first, the orchestrator is on the second, and the first is killed
(SIGKILL) in the middle of the device's update.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import pytest
from orch_helpers import Setup, rollout_in, running, wait_until

from device_client.config import BrokerConfig
from device_client.transport.endpoints import Endpoints, start_index, starting_at
from device_client.transport.session import MqttSession
from fleetpush_common.config import ConfigError, decode
from fleetpush_protocol.topics import Topics
from orchestrator.broker import MosquittoBroker


class BridgedBroker(MosquittoBroker):
    """A Mosquitto forwarding the fleet's topics to and from ``remote``, as ``user`` on
    both ends (an orchestrator identity on both: with ``check_retain_source`` the retained
    messages it brings in are kept only if their source may write them)."""

    def __init__(
        self, workdir: Path, *, topics: Topics, remote: MosquittoBroker, user: str, password: str
    ) -> None:
        super().__init__(workdir, topics=topics)
        self.bridge = (
            f"\nconnection fleet-{user}\naddress {remote.host}:{remote.port}\n"
            f"bridge_protocol_version mqttv311\nremote_username {user}\n"
            f"remote_password {password}\nremote_clientid {user}\ncleansession false\n"
            f"try_private true\nnotifications false\nrestart_timeout 1 2\n"
            f"local_username {user}\ntopic {topics.prefix}/# both 1\n"
        )

    def render_config(self) -> Path:
        path = super().render_config()
        path.write_text(path.read_text() + self.bridge)
        return path


# --- which broker, pure ------------------------------------------------------------------


def test_a_fleet_spreads_over_the_urls_and_each_device_always_starts_at_the_same_one() -> None:
    counts = Counter(start_index(f"dev-{i}", 3) for i in range(3000))
    assert set(counts) == {0, 1, 2}
    assert min(counts.values()) > 900  # about a third each
    assert start_index("dev-7", 3) == start_index("dev-7", 3)


def test_a_failed_connect_moves_on_in_order_and_wraps_around() -> None:
    urls = ("mqtt://a:1883", "mqtts://b:8883", "mqtt://c:1883")
    broker = BrokerConfig(urls=urls, username="d", ca_file=Path("/ca.pem"))
    e = Endpoints(broker, "dev-7")
    first = start_index("dev-7", 3)
    seen = []
    for _ in range(4):
        seen.append(e.current.url)
        e.failed()
    assert seen == [urls[first], urls[(first + 1) % 3], urls[(first + 2) % 3], urls[first]]
    ca_files = {}
    for _ in range(3):  # the TLS files go with the mqtts:// URL only
        ca_files[e.current.url] = e.current.ca_file
        e.failed()
    assert ca_files == {
        "mqtt://a:1883": None,
        "mqtts://b:8883": Path("/ca.pem"),
        "mqtt://c:1883": None,
    }


def test_a_list_can_be_rotated_so_that_a_device_starts_on_its_first_url() -> None:
    urls = ["mqtt://a:1", "mqtt://b:2", "mqtt://c:3"]
    for i in range(20):
        e = Endpoints(BrokerConfig(urls=tuple(starting_at(f"d-{i}", urls)), username="d"), f"d-{i}")
        seen = []
        for _ in range(3):
            seen.append(e.current.url)
            e.failed()
        assert seen == urls


CERT_ONLY = {"username": None, "urls": ["mqtts://a", "mqtt://b"], "cert_file": "/c.pem",
             "key_file": "/c.key"}  # fmt: skip


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"url": "mqtt://a", "urls": ["mqtt://b"]}, "urls: give url or urls"),
        ({}, "url: missing"),
        ({"urls": ["mqtt://a", "mqtt://a"]}, "urls: duplicate"),
        ({"urls": ["mqtt://a", "http://b"]}, "urls[1]: 'http://b' must look like"),
        ({"urls": ["mqtt://a", "mqtt://b:99999"]}, "urls[1]: 'mqtt://b:99999' has an invalid"),
        ({"urls": ["mqtt://a"], "ca_file": "/ca.pem"}, "urls: TLS files are set but no URL"),
        (CERT_ONLY, "urls: a login by client certificate needs mqtts:// URLs only"),
    ],
)
def test_bad_url_lists_are_refused(table: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("?", r"\?")):
        decode(BrokerConfig, {"username": "d", **table}, "device.toml", Path("/"))


def test_url_is_a_list_of_one() -> None:
    b = BrokerConfig(url="mqtt://a:1883", username="d")
    assert b.all_urls == ("mqtt://a:1883",)
    assert Endpoints(b, "x").current.url == "mqtt://a:1883"


# --- two brokers, a real agent --------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.timeout(180)
@pytest.mark.parametrize("mqtt_protocol", ["5", "3.1.1"])
async def test_device_moves_to_the_next_broker_when_its_own_dies_and_stays_there(
    tmp_path: Path, broker: MosquittoBroker, topics: Topics, mqtt_protocol: str
) -> None:
    bridge_pw = broker.add_orchestrator("bridge-a")
    broker.reload()
    first = BridgedBroker(
        tmp_path / "first", topics=topics, remote=broker, user="bridge-a", password=bridge_pw
    )
    dev = "dev-move"
    urls = [first.url, broker.url]
    if start_index(dev, 2):  # the device must start on the first broker
        urls.reverse()
    go = tmp_path / "go"
    health = {"command": ["/bin/sh", "-c", f"while [ ! -e {go} ]; do sleep 0.05; done"],
              "timeout": "60s"}  # fmt: skip
    async with running(tmp_path / "o", broker, topics, protocol=mqtt_protocol) as s:
        s.fleet.provision(dev, sections={"broker": {"url": None, "urls": urls},
                                         "health": health})  # fmt: skip
        first.add_device(dev, password=broker.password(dev))
        first.add_orchestrator("bridge-a", bridge_pw)  # check_retain_source: its retained
        first.start()
        try:
            await _move(s, first, dev, go)
        finally:
            first.stop()


async def _move(s: Setup, first: MosquittoBroker, dev: str, go: Path) -> None:
    s.broker.reload()
    s.fleet.start(dev)

    async def online() -> bool:
        devices = (await s.api.call("GET", "/v1/devices", params={"online": "true"}))["devices"]
        return dev in {d["device_id"] for d in devices}

    await wait_until(online, what="device online through the bridge")
    session = s.fleet.agents[dev].session
    assert isinstance(session, MqttSession)
    assert session.broker_url == first.url
    rel = await s.api.upload("app", "2.0")
    r = await s.api.rollout(rel["id"], target={"devices": [dev]}, phases=[100])

    async def installed() -> bool:
        st = await s.api.status(r["id"])
        return "installed" in st["states"]

    await wait_until(installed, within=60, what="device installed, health check waiting")
    first.kill()  # SIGKILL, the device's broker, mid-rollout
    await asyncio.to_thread(go.touch)
    done = await rollout_in(s, r["id"], "completed", within=90)
    assert done["states"] == {"succeeded": 1}
    assert session.broker_url == s.broker.url
    connections = session.connections
    # The first comes back: the device stays where it is (a second rollout is the barrier).
    first.start()
    rel3 = await s.api.upload("app", "3.0")
    r3 = await s.api.rollout(rel3["id"], target={"devices": [dev]}, phases=[100])
    done3 = await rollout_in(s, r3["id"], "completed", within=90)
    assert done3["states"] == {"succeeded": 1}
    assert session.broker_url == s.broker.url
    assert session.connections == connections
