"""Provisioning and revocation end to end: bundles a device can use, against real Mosquitto."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from fleetpush_protocol.keys import KeyPair
from fleetpush_protocol.topics import Topics
from orchestrator.broker import MosquittoBroker
from orchestrator.broker.testing import Probe, tls_context
from orchestrator.cli_broker import provision_command, revoke_command, set_groups_command
from orchestrator.provisioning import DeviceRecord, Provisioner, broker_for_data_dir

pytestmark = pytest.mark.integration

OK = "Success"
ROOT = KeyPair.from_seed(bytes(range(32))).public_key.hex()


@pytest.fixture
def tls_broker(tmp_path: Path, topics: Topics) -> Iterator[MosquittoBroker]:
    b = MosquittoBroker(tmp_path / "data" / "broker", topics=topics, tls=True)
    b.start()
    try:
        yield b
    finally:
        b.stop()


def _probe_from_config(path: Path, **kw: object) -> Probe:
    """Connect the way a device would, from nothing but its config bundle."""
    cfg = tomllib.loads(path.read_text())["broker"]
    host_port = cfg["url"].split("://")[1]
    host, port = host_port.rsplit(":", 1)

    def rel(name: str) -> Path | None:
        return path.parent / cfg[name] if name in cfg else None

    tls = None
    if cfg["url"].startswith("mqtts://"):
        ca = rel("ca_file")
        assert ca is not None
        tls = tls_context(ca, rel("cert_file"), rel("key_file"))
    p = Probe(
        host,
        int(port),
        username=cfg.get("username"),
        password=cfg.get("password"),
        tls=tls,
        **kw,  # type: ignore[arg-type]
    )
    p.connect()
    return p


def test_password_device_bundle_is_complete_and_works(
    tls_broker: MosquittoBroker, topics: Topics, tmp_path: Path
) -> None:
    records: list[DeviceRecord] = []
    prov = Provisioner(tls_broker, root_keys=[ROOT], on_provision=records.append)
    rec = prov.provision("dev-1", model="rpi4", groups=["canary", "eu"], auth="password")
    assert records == [rec]
    assert oct(rec.config_path.stat().st_mode & 0o777) == "0o600"
    cfg = tomllib.loads(rec.config_path.read_text())
    assert cfg["device"] == {
        "id": "dev-1",
        "model": "rpi4",
        "groups": ["canary", "eu"],
        "state_dir": "/var/lib/fleetpush",
    }
    assert cfg["broker"]["url"] == tls_broker.url
    assert cfg["broker"]["username"] == "dev-1"
    assert cfg["broker"]["topic_prefix"] == topics.prefix
    assert cfg["trust"] == {"root_keys": [ROOT], "root_threshold": 1}
    # The device client's own loader accepts it.
    loader = pytest.importorskip("device_client.config")
    loaded = loader.load_config(rec.config_path)
    assert loaded.broker.username == "dev-1"
    assert loaded.trust.root_keys == (bytes.fromhex(ROOT),)

    p = _probe_from_config(rec.config_path)
    try:
        assert p.connack == OK
        assert p.publish(topics.report("dev-1"), b"r") == OK
        assert p.publish(topics.report("dev-2"), b"r") == "Not authorized"
    finally:
        p.close()
    reg = json.loads((tls_broker.workdir / "identities.json").read_text())
    (ident,) = [i for i in reg["identities"] if i["username"] == "dev-1"]
    assert ident["model"] == "rpi4"
    assert ident["groups"] == ["canary", "eu"]
    with pytest.raises(FileExistsError):
        prov.provision("dev-1", model="rpi4")


def test_certificate_device_bundle_works_and_revocation_drops_it(
    tls_broker: MosquittoBroker, topics: Topics
) -> None:
    revoked: list[str] = []
    prov = Provisioner(tls_broker, root_keys=[ROOT], on_revoke=revoked.append)
    rec = prov.provision("dev-c", model="rpi4", groups=["canary"])
    assert rec.auth == "cert"
    assert rec.cert_serial is not None
    cfg = tomllib.loads(rec.config_path.read_text())["broker"]
    assert "password" not in cfg
    assert {cfg["ca_file"], cfg["cert_file"], cfg["key_file"]} == {
        "ca.pem",
        "dev-c.pem",
        "dev-c.key",
    }
    assert oct((rec.bundle_dir / "dev-c.key").stat().st_mode & 0o777) == "0o600"
    p = _probe_from_config(rec.config_path)
    again: Probe | None = None
    try:
        assert p.connack == OK
        assert prov.revoke("dev-c")
        assert revoked == ["dev-c"]
        assert p.disconnected.wait(5)
        again = _probe_from_config(rec.config_path)
        assert again.connack != OK
    finally:
        p.close()
        if again is not None:
            again.close()
    # Re-provisioning issues a new certificate; the old serial stays revoked.
    rec2 = prov.provision("dev-c", model="rpi4")
    assert rec2.cert_serial != rec.cert_serial
    p2 = _probe_from_config(rec2.config_path)
    try:
        assert p2.connack == OK
    finally:
        p2.close()


def test_cli_provision_set_groups_and_revoke_against_a_running_broker(
    tls_broker: MosquittoBroker, topics: Topics, tmp_path: Path
) -> None:
    # The CLI runs as a separate identity manager on the same data dir: it finds the broker
    # through broker.json and reloads it through its pid file.
    data = tls_broker.workdir.parent
    seen: list[DeviceRecord] = []
    runner = CliRunner()
    res = runner.invoke(
        provision_command,
        [
            "dev-p",
            "--model",
            "rpi4",
            "--groups",
            "canary",
            "--password",
            "--data",
            str(data),
            "--root-key",
            ROOT,
            "--out",
            str(tmp_path / "bundle"),
        ],
        obj={"on_provision": seen.append},
    )
    assert res.exit_code == 0, res.output
    assert [r.device_id for r in seen] == ["dev-p"]
    dev = _probe_from_config(tmp_path / "bundle" / "device.toml")
    orch = Probe(
        tls_broker.host,
        tls_broker.port,
        username=tls_broker.ORCHESTRATOR_USER,
        password=tls_broker.orchestrator_password,
    )
    try:
        assert dev.connack == OK
        assert orch.connect() == OK
        dev.subscribe(f"{topics.prefix}/group/+/notice")
        res = runner.invoke(set_groups_command, ["dev-p", "beta", "--data", str(data)])
        assert res.exit_code == 0, res.output
        assert orch.publish(topics.group_notice("canary"), b"old") == OK
        assert orch.publish(topics.group_notice("beta"), b"new") == OK
        assert [m.payload for m in dev.drain()] == [b"new"]

        res = runner.invoke(revoke_command, ["dev-p", "--data", str(data)])
        assert res.exit_code == 0, res.output
        assert dev.disconnected.wait(5)
        assert orch.connected.is_set()
    finally:
        dev.close()
        orch.close()
    res = runner.invoke(provision_command, ["dev-x", "--model", "m", "--data", str(data)])
    assert res.exit_code != 0
    assert "root" in res.output


def test_broker_run_prints_connection_info_and_stops_on_sigterm(tmp_path: Path) -> None:
    code = "from orchestrator.cli_broker import broker; broker()"
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "run", "--data", str(tmp_path / "data")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=Path(__file__).resolve().parents[1],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    try:
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:  # JSON ends with a lone "}"
            lines.append(line)
            if line.strip() == b"}":
                break
        info = json.loads(b"".join(lines))
        assert info["url"].startswith("mqtt://127.0.0.1:")
        assert info["tls_url"].startswith("mqtts://127.0.0.1:")
        secret = Path(info["orchestrator_password_file"]).read_text().strip()
        p = Probe(info["host"], info["port"], username=info["orchestrator_user"], password=secret)
        try:
            assert p.connect() == OK
        finally:
            p.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0


def test_revoke_works_when_the_broker_is_reloaded_by_someone_else(
    tls_broker: MosquittoBroker, topics: Topics, monkeypatch: pytest.MonkeyPatch
) -> None:
    # In deploy/ the orchestrator cannot signal Mosquitto (another user); a systemd path
    # unit reloads it when passwd/acl/crl change. Stand-in: a thread watching the files.
    pw = tls_broker.add_device("dev-e")
    tls_broker.reload()
    dev = Probe(tls_broker.host, tls_broker.port, username="dev-e", password=pw)
    manager = broker_for_data_dir(tls_broker.workdir.parent)
    monkeypatch.setattr(manager, "_broker_pid", lambda: None)
    stop = threading.Event()

    def path_unit() -> None:
        files = [tls_broker.passwd_path, tls_broker.acl_path]
        seen = [f.stat().st_mtime_ns for f in files]
        while not stop.wait(0.05):
            now = [f.stat().st_mtime_ns for f in files]
            if now != seen:
                seen = now
                pid = tls_broker.pid
                assert pid is not None
                os.kill(pid, signal.SIGHUP)

    watcher = threading.Thread(target=path_unit, daemon=True)
    watcher.start()
    try:
        assert dev.connect() == OK
        assert manager.revoke("dev-e")
        assert dev.disconnected.wait(5)
    finally:
        stop.set()
        watcher.join(5)
        dev.close()
