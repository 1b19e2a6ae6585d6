"""Invalid configuration files and unreadable or corrupted state files.

Configuration (device and orchestrator): a clear one-line error naming the file and the
field, exit code 2, no traceback (real processes). State: the device state file, the
orchestrator's SQLite database and its keys folder, each corrupted or made unreadable:
a clear error and no crash loop, and nothing lost that can be kept.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from device_helpers import REPO, write_config
from orch_helpers import Setup, setup, wait_until, write_orchestrator

from device_client.store import StateStore
from fleetpush_protocol.topics import Topics
from orchestrator.broker import MosquittoBroker

__all__ = ["setup"]

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

FLEETPUSH = Path(sys.executable).with_name("fleetpush")


def run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, cwd=REPO, check=False, timeout=60)


# --- device configuration ------------------------------------------------------------------


@dataclass
class BadDevice:
    sections: dict[str, dict[str, Any]]
    names: str  # what the message must name


DEVICE_CASES: dict[str, BadDevice] = {
    "id with a slash": BadDevice({"device": {"id": "a/b"}}, "[device] id"),
    "id with a wildcard": BadDevice({"device": {"id": "dev+1"}}, "[device] id"),
    "group with a hash": BadDevice({"device": {"groups": ["g#"]}}, "groups"),
    "broker url scheme": BadDevice({"broker": {"url": "ftp://x:1"}}, "[broker] url"),
    "keepalive out of range": BadDevice({"broker": {"keepalive": 1}}, "[broker] keepalive"),
    "root key not hex": BadDevice({"trust": {"root_keys": ["zz"]}}, "root_keys"),
    "threshold above keys": BadDevice({"trust": {"root_threshold": 2}}, "root_threshold"),
    "negative payload limit": BadDevice({"download": {"max_payload_bytes": -1}}, "max_payload"),
    "read timeout a string": BadDevice({"download": {"read_timeout": "soon"}}, "read_timeout"),
    "min rate negative": BadDevice({"download": {"min_bytes_per_s": -5}}, "min_bytes_per_s"),
    "unknown handler": BadDevice({"install": {"handler": "magic"}}, "handler"),
    "health command a string": BadDevice({"health": {"command": "/bin/true"}}, "command"),
    "bad window": BadDevice({"policy": {"maintenance_windows": ["25:00-26:00"]}}, "windows"),
    "unpack members zero": BadDevice({"unpack": {"max_members": 0}}, "[unpack] max_members"),
    "unpack ratio a string": BadDevice({"unpack": {"max_ratio": "10x"}}, "[unpack] max_ratio"),
    "unknown setting": BadDevice({"download": {"max_payload": 5}}, "max_payload"),
    "unknown table": BadDevice({"extras": {"x": 1}}, "extras"),
}


@pytest.mark.parametrize("name", list(DEVICE_CASES))
def test_invalid_device_config_exits_2_naming_the_field(
    name: str, tmp_path: Path, broker: MosquittoBroker, topics: Topics
) -> None:
    case = DEVICE_CASES[name]
    path = write_config(
        tmp_path / "device.toml", broker=broker, topics=topics, device_id="dev-1",
        password="pw", root_hex="ab" * 32, sections=case.sections,
    )  # fmt: skip
    result = run([sys.executable, "-m", "device_client", "--config", str(path), "--check"])
    assert result.returncode == 2, result.stderr
    assert "device.toml" in result.stderr
    assert case.names in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_device_config_not_toml_or_missing(tmp_path: Path) -> None:
    bad = tmp_path / "device.toml"
    bad.write_bytes(b"[device\nid = \xff\n")
    for path in (bad, tmp_path / "missing.toml"):
        result = run([sys.executable, "-m", "device_client", "--config", str(path), "--check"])
        assert result.returncode == 2, result.stderr
        assert path.name in result.stderr
        assert "Traceback" not in result.stderr


# --- orchestrator configuration ------------------------------------------------------------

ORCH_CASES: dict[str, tuple[str, str, str]] = {
    # name: (text replaced, replacement, what the message must name)
    "listen port out of range": ('listen = "127.0.0.1:', 'listen = "127.0.0.1:9', "listen"),
    "ttl without unit": ('url_ttl = "1h"', 'url_ttl = "an hour"', "url_ttl"),
    "mqtt url scheme": ('url = "mqtt://', 'url = "http://', "[mqtt] url"),
    "batch rows zero": ("batch_rows = 500", "batch_rows = 0", "batch_rows"),
    "batch interval negative": ('batch_interval = "20ms"', 'batch_interval = "-1s"', "batch"),
    "tick a number": ('tick = "200ms"', 'tick = "fast"', "tick"),
    "unknown setting": ("[rollouts]\n", "[rollouts]\nspeed = 3\n", "speed"),
    "not toml": ("[http]", "[http", "orchestrator.toml"),
}


@pytest.mark.parametrize("name", list(ORCH_CASES))
def test_invalid_orchestrator_config_is_a_click_error_naming_the_field(
    name: str, tmp_path: Path, broker: MosquittoBroker, topics: Topics
) -> None:
    old, new, names = ORCH_CASES[name]
    config, _ = write_orchestrator(tmp_path, broker, topics)
    text = config.read_text()
    assert old in text, text
    config.write_text(text.replace(old, new, 1))
    result = run([str(FLEETPUSH), "serve", "--config", str(config)])
    assert result.returncode == 1, (result.returncode, result.stderr)  # a ClickException
    assert result.stderr.startswith("Error: "), result.stderr
    assert names in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


# --- device state --------------------------------------------------------------------------


async def test_corrupt_device_state_is_kept_aside_and_no_report_is_lost(setup: Setup) -> None:
    """The state file is garbage after a disk fault: the agent keeps the bad file aside,
    starts fresh, and its reports still reach the orchestrator (a restarted counter would
    make the orchestrator drop them as duplicates of the old ones)."""
    s = setup
    s.fleet.provision("cs-1")
    s.broker.reload()
    s.fleet.start("cs-1")

    async def online() -> bool:
        d = await s.api.call("GET", "/v1/devices/cs-1", expect=None)
        return bool(d.get("online"))

    async def finished(rollout_id: int) -> dict[str, Any] | None:
        st = await s.api.status(rollout_id)
        return st if st["state"] in ("completed", "paused") else None

    await wait_until(online, what="cs-1 online")
    r1 = await s.api.rollout((await s.api.upload("app", "2.0"))["id"], target={"all": True})
    await wait_until(lambda: finished(r1["id"]), what="first rollout")
    await s.fleet.stop("cs-1")
    state_dir = s.fleet.root / "state-cs-1"
    (state_dir / StateStore.FILE).write_bytes(b"\x93\xff garbage from a broken disk")
    s.fleet.start("cs-1")
    await wait_until(online, what="cs-1 back online")
    assert (state_dir / f"{StateStore.FILE}.corrupt").read_bytes().startswith(b"\x93\xff")
    payload = b"another release"
    rel = await s.api.call(
        "POST", "/v1/releases", data=payload, expect=201,
        params=[("name", "app"), ("version", "3.0"), ("handler", "command")],
    )  # fmt: skip
    r2 = await s.api.rollout(rel["id"], target={"all": True}, device_timeout_s=30)

    async def reported() -> dict[str, Any] | None:
        t = (await s.api.call("GET", f"/v1/rollouts/{r2['id']}/targets"))["targets"][0]
        return t if t["state"] in ("failed", "succeeded", "rolled_back") else None

    # The device's handler is "directory", the release's "command": it fails, and says so.
    t = await wait_until(reported, within=40, what="the second rollout's report arrived")
    assert t["state"] == "failed", t
    agent = s.fleet.agents["cs-1"]
    assert agent.state.job is None


def test_unreadable_device_state_exits_1_with_a_clear_message(
    tmp_path: Path, broker: MosquittoBroker, topics: Topics
) -> None:
    path = write_config(
        tmp_path / "device.toml", broker=broker, topics=topics, device_id="dev-1",
        password="pw", root_hex="ab" * 32,
    )  # fmt: skip
    state = tmp_path / "state-dev-1"
    (state / StateStore.FILE).mkdir(parents=True)  # unreadable as a file, even for root
    result = run([sys.executable, "-m", "device_client", "--config", str(path)])
    assert result.returncode == 1, result.stderr
    assert "state.msgpack" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


# --- orchestrator state --------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["database garbage", "database unreadable", "keys garbage",
                                    "keys missing"])  # fmt: skip
def test_damaged_orchestrator_state_is_a_clear_error(
    damage: str, tmp_path: Path, broker: MosquittoBroker, topics: Topics
) -> None:
    config, _ = write_orchestrator(tmp_path, broker, topics)
    data = tmp_path / "orch"
    db = data / "fleetpush.db"
    if damage == "database garbage":
        db.write_bytes(b"this is not an SQLite database" * 100)
    elif damage == "database unreadable":
        db.unlink()
        db.mkdir()
    elif damage == "keys garbage":
        for f in (data / "keys").rglob("*.json"):
            f.write_text("{not json")
    else:
        for f in (data / "keys").rglob("*"):
            if f.is_file():
                f.unlink()
    before = db.read_bytes() if db.is_file() else None
    result = run([str(FLEETPUSH), "serve", "--config", str(config)])
    assert result.returncode in (1, 2), (result.returncode, result.stderr)
    assert "Error" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    # nothing was overwritten: the operator can still recover the file
    if before is not None:
        assert db.read_bytes() == before
