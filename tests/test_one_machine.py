"""The one-machine path against real Mosquitto (issue #16, items 2 and 3).

``fleetpush serve`` never falls back to a default broker: it uses the one ``broker run``
recorded in the data dir, or refuses. ``broker run`` keeps its ports across restarts, and
the orchestrator reconnects to it. A device refused by the broker says so at the default
log level.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest
from device_helpers import wait_for, write_config

from device_client.config import load_config as load_device_config
from device_client.wiring import build_agent
from fleetpush_common.tasks import cancel_and_wait
from fleetpush_protocol.topics import Topics
from fleetpush_sim.signing import Signer
from orchestrator.broker import MosquittoBroker, free_port
from orchestrator.config import parse_config
from orchestrator.security.keystore import KeyStore

ROOT = Path(__file__).resolve().parents[1]
CLI = "from orchestrator.cli.main import main; main()"


def _fleetpush(*args: str, cwd: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", CLI, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM; wait while reading the pipes to their end (a child blocked on a full pipe
    never exits), then close them."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()


def _read_json(stream: IO[bytes]) -> dict[str, Any]:
    lines = []
    for line in stream:  # broker run's JSON ends with a lone "}"
        lines.append(line)
        if line.strip() == b"}":
            break
    info: dict[str, Any] = json.loads(b"".join(lines))
    return info


@contextlib.contextmanager
def _broker_run(data: Path) -> Iterator[dict[str, Any]]:
    proc = _fleetpush("broker", "run", "--data", str(data), cwd=data.parent)
    try:
        assert proc.stdout is not None
        yield _read_json(proc.stdout)
    finally:
        _stop(proc)
        assert proc.returncode == 0


def _installation(tmp_path: Path) -> tuple[Path, Path, int]:
    """orchestrator.toml with only data_dir and the API port, and keys; no broker."""
    data = tmp_path / "data"
    KeyStore(data / "keys").init(
        tmp_path / "offline-root", roots=1, threshold=1, validity_s=86400, now=int(time.time())
    )
    port = free_port()
    config = tmp_path / "orchestrator.toml"
    config.write_text(f'data_dir = "data"\n[http]\nlisten = "127.0.0.1:{port}"\n')
    return config, data, port


def _health(port: int) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
            return str(json.loads(r.read())["status"])
    except urllib.error.HTTPError as e:
        return str(json.loads(e.read())["status"])
    except OSError:
        return "down"


def _until(condition: Any, what: str, within: float = 30) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        time.sleep(0.05)


def test_config_without_mqtt_and_without_a_recorded_broker_has_no_broker(
    tmp_path: Path,
) -> None:
    cfg = parse_config({"data_dir": "d"}, tmp_path)
    assert "fleetpush broker run --data" in cfg.mqtt.missing
    assert not cfg.mqtt.source


def test_serve_without_a_broker_refuses_instead_of_trying_a_default(tmp_path: Path) -> None:
    # A broker answers on a free port, but nothing records it for this data dir: serve must
    # not go looking for one (it once logged in to whatever listened on 127.0.0.1:1883).
    config, _, port = _installation(tmp_path)
    proc = _fleetpush("serve", "--config", str(config), cwd=tmp_path)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, (out, err)
    assert b"no broker configured" in err
    assert b"fleetpush broker run --data" in err
    assert _health(port) == "down"


def test_broker_run_keeps_its_ports_and_serve_follows_it_across_a_restart(
    tmp_path: Path,
) -> None:
    config, data, port = _installation(tmp_path)
    with _broker_run(data) as first:
        serve = _fleetpush("serve", "--config", str(config), cwd=tmp_path)
        try:
            assert serve.stdout is not None
            said = [serve.stdout.readline().decode(), serve.stdout.readline().decode()]
            assert said[0].startswith(f"broker: {first['url']} as fleetpush-orchestrator")
            assert str(data / "broker" / "broker.json") in said[0]
            assert said[1].startswith(f"API and payloads: http://127.0.0.1:{port}")
            _until(lambda: _health(port) == "ok", "the orchestrator to connect")
        except BaseException:
            _stop(serve)
            raise
    try:
        _until(lambda: _health(port) == "degraded", "the orchestrator to see the broker go")
        with _broker_run(data) as second:
            assert (second["port"], second["tls_port"]) == (first["port"], first["tls_port"])
            _until(lambda: _health(port) == "ok", "the orchestrator to reconnect")
    finally:
        _stop(serve)
    assert serve.returncode == 0


@pytest.mark.parametrize("how", ["wrong password", "wrong password in MQTT 3.1.1",
                                 "revoked certificate"])  # fmt: skip
async def test_a_device_refused_by_the_broker_says_so_at_the_default_level(  # noqa: PLR0917
    how: str,
    tls_broker: MosquittoBroker,
    topics: Topics,
    signer: Signer,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)  # the agent's default: no -v
    broker: dict[str, Any] = {"url": tls_broker.url}
    if how == "revoked certificate":
        cert, key = tls_broker.add_device_cert("dev-r", directory=tmp_path)
        tls_broker.revoke("dev-r")
        broker = {"url": tls_broker.tls_url, "username": None, "password": None,
                  "ca_file": tls_broker.ca_file, "cert_file": cert, "key_file": key}  # fmt: skip
    else:
        tls_broker.add_device("dev-r", password="right")
        tls_broker.reload()
        if how.endswith("3.1.1"):  # a CONNACK return code, not an MQTT 5 reason
            broker["protocol"] = "3.1.1"
    path = write_config(
        tmp_path / "device.toml", broker=tls_broker, topics=topics, device_id="dev-r",
        password="wrong", root_hex=signer.root_hex, sections={"broker": broker},
    )  # fmt: skip
    agent = build_agent(load_device_config(path), durable=False)
    task = asyncio.create_task(agent.run())

    def said() -> list[logging.LogRecord]:
        return [
            r
            for r in caplog.records
            if r.levelno >= logging.ERROR and r.name.startswith("device_client")
        ]

    try:
        await wait_for(lambda: bool(said()), within=30, what="an error about the refusal")
    finally:
        agent.stop()
        await cancel_and_wait(task)
    message = said()[0].getMessage()
    expected = "refused the login" if how.startswith("wrong password") else "TLS with the broker"
    assert expected in message, message
    assert "wrong" not in message  # never the password itself


def test_the_sample_orchestrator_toml_in_the_docs_is_valid(tmp_path: Path) -> None:
    import re
    import tomllib

    doc = (ROOT / "docs" / "orchestrator.md").read_text()
    samples = [b for b in re.findall(r"```toml\n(.*?)```", doc, re.DOTALL) if "data_dir" in b]
    assert samples, "docs/orchestrator.md lost its sample orchestrator.toml"
    data = tomllib.loads(samples[0])
    del data["mqtt"]["password_file"]  # names a file of a real installation
    cfg = parse_config(data, tmp_path)
    assert cfg.mqtt.source == "mqtt.url in the configuration"
    assert cfg.http.public_url == "http://updates.example.net:8080"


def test_devices_provision_finds_the_data_dir_as_the_readme_writes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from orchestrator.cli.main import main

    for name in ("FLEETPUSH_DATA", "FLEETPUSH_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    args = ["devices", "provision", "dev-001", "--model", "rpi4", "--groups", "canary"]
    monkeypatch.chdir(tmp_path)
    refused = CliRunner().invoke(main, args)
    assert refused.exit_code == 2
    assert "--data" in refused.output
    assert "FLEETPUSH_DATA" in refused.output
    _, data, _ = _installation(tmp_path)  # orchestrator.toml here, data_dir = "data"
    done = CliRunner().invoke(main, args)
    assert done.exit_code == 0, done.output
    bundle = data / "broker" / "provisioned" / "dev-001"
    device = load_device_config(bundle / "device.toml")
    assert device.device.state_dir == bundle / "state"
