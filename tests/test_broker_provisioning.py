"""Provisioning and revocation end to end: bundles a device can use, against real Mosquitto."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from fleetpush_protocol.keys import KeyPair
from fleetpush_protocol.topics import Topics
from fleetpush_sim.broker import Probe, tls_context
from orchestrator.broker import MosquittoBroker, ReloadError, find_mosquitto
from orchestrator.broker.process import listening
from orchestrator.cli.broker import provision_command, revoke_command, set_groups_command
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
        "state_dir": "state",  # next to device.toml: two bundles on one host never share
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
    assert loaded.device.state_dir == rec.bundle_dir / "state"

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
    code = "from orchestrator.cli.broker import broker; broker()"
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
    monkeypatch.setattr(manager.process, "find_pid", lambda: None)
    stop = threading.Event()

    def path_unit() -> None:
        files = [tls_broker.passwd_path, tls_broker.acl_path]
        seen = [f.stat().st_mtime_ns for f in files]
        while not stop.wait(0.05):
            now = [f.stat().st_mtime_ns for f in files]
            if now != seen:
                seen = now
                assert tls_broker.pid is not None
                os.kill(tls_broker.pid, signal.SIGHUP)

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


@contextlib.contextmanager
def _broker_run(cwd: Path, *args: str) -> Iterator[dict[str, Any]]:
    """``fleetpush broker run ARGS`` in its own process started in ``cwd``; its JSON info."""
    root = Path(__file__).resolve().parents[1]
    code = "from orchestrator.cli.broker import broker; broker()"
    cwd.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "run", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    try:
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:  # JSON ends with a lone "}"
            lines.append(line)
            if line.strip() == b"}":
                break
        yield json.loads(b"".join(lines))
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0


def _provision_args(device_id: str, data: str, out: str) -> list[str]:
    return [device_id, "--model", "rpi4", "--password", "--data", data, "--root-key", ROOT,
            "--out", out]  # fmt: skip


def test_provision_with_a_relative_data_path_reaches_the_running_broker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Attack review (issue #12, hole 5): the broker runs from `--data data` in one folder,
    # an operator provisions from another with `--data ../site/data`. The credentials were
    # written but the broker was never reloaded, and nothing said so.
    site, elsewhere = tmp_path / "site", tmp_path / "elsewhere"
    with _broker_run(site, "--data", "data", "--no-tls"):
        elsewhere.mkdir()
        monkeypatch.chdir(elsewhere)
        res = CliRunner().invoke(
            provision_command, _provision_args("dev-n", "../site/data", "bundle")
        )
        assert res.exit_code == 0, res.output
        dev = _probe_from_config(elsewhere / "bundle" / "device.toml")
        try:
            assert dev.connack == OK
        finally:
            dev.close()


def test_revoke_with_a_relative_data_path_drops_the_device(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Attack review (issue #12, hole 5): revoke from another folder with a relative --data
    # exited 1 ("could not take over dev-r's session") and the revoked device kept
    # publishing and reconnecting.
    site, elsewhere = tmp_path / "site", tmp_path / "elsewhere"
    with _broker_run(site, "--data", "data", "--no-tls") as info:
        monkeypatch.chdir(site)
        runner = CliRunner()
        res = runner.invoke(provision_command, _provision_args("dev-r", "data", "bundle"))
        assert res.exit_code == 0, res.output
        bundle = site / "bundle" / "device.toml"
        secret = Path(info["orchestrator_password_file"]).read_text().strip()
        orch = Probe(info["host"], info["port"], username=info["orchestrator_user"],
                     password=secret)  # fmt: skip
        dev = _probe_from_config(bundle)
        again: Probe | None = None
        try:
            assert dev.connack == OK
            assert orch.connect() == OK
            elsewhere.mkdir()
            monkeypatch.chdir(elsewhere)
            res = runner.invoke(revoke_command, ["dev-r", "--data", "../site/data"])
            assert res.exit_code == 0, res.output
            assert dev.disconnected.wait(5)
            again = _probe_from_config(bundle)
            assert again.connack != OK
            orch.barrier()  # the orchestrator's own connection was not touched
        finally:
            dev.close()
            orch.close()
            if again is not None:
                again.close()


def test_revoke_that_cannot_reach_the_broker_fails_loudly(
    tls_broker: MosquittoBroker, tmp_path: Path
) -> None:
    # The broker runs, but the pid file names a process that is not this broker (stale after
    # a crash, pid reused): no reload can be sent. The revoke must not pass for done.
    data = tls_broker.workdir.parent
    pw = tls_broker.add_device("dev-s")
    tls_broker.reload()
    dev = Probe(tls_broker.host, tls_broker.port, username="dev-s", password=pw)
    try:
        assert dev.connect() == OK
        tls_broker.pid_path.write_text(f"{os.getpid()}\n")
        res = CliRunner().invoke(revoke_command, ["dev-s", "--data", str(data), "--timeout", "1"])
        assert res.exit_code != 0
        assert "REVOKE INCOMPLETE" in res.output
        assert "dev-s may still be connected" in res.output
        assert str(tls_broker.pid_path) in res.output
        dev.barrier()  # and indeed it still is: the message told the truth
    finally:
        dev.close()


def test_a_reload_the_broker_did_not_confirm_is_an_error(tls_broker: MosquittoBroker) -> None:
    # Before: with no broker it could signal, reload() returned as if nothing ran, and with
    # one it waited for a log line and went on after the timeout either way.
    manager = broker_for_data_dir(tls_broker.workdir.parent)
    # Confirmed through the pid file. False would mean no broker runs: its log says why.
    assert manager.reload(), tls_broker.process.output.read_text(errors="replace")[-2000:]
    pw = manager.add_device("dev-u")
    tls_broker.pid_path.write_text(f"{os.getpid()}\n")
    with pytest.raises(ReloadError, match=r"is not a mosquitto running .*mosquitto\.conf"):
        manager.reload(timeout=0.5)
    probe = Probe(tls_broker.host, tls_broker.port, username="dev-u", password=pw)
    try:
        assert probe.connect() != OK  # indeed the broker never loaded dev-u
    finally:
        probe.close()


def test_a_broker_started_with_a_relative_config_path_is_found_from_anywhere(
    tmp_path: Path, topics: Topics, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A broker started (by an older fleetpush, or by hand) as `mosquitto -c broker/...conf`
    # from its own folder is still this directory's broker for a manager elsewhere.
    site = tmp_path / "site"
    b = MosquittoBroker(site / "broker", topics=topics)
    b.write_auth_files()
    b.render_config()
    proc = subprocess.Popen(
        [find_mosquitto(), "-c", "broker/mosquitto.conf"], cwd=site,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while not listening(b.host, b.port):  # readiness, like MosquittoBroker.start
            assert proc.poll() is None
            assert time.monotonic() < deadline
            time.sleep(0.02)
        monkeypatch.chdir(tmp_path)
        manager = MosquittoBroker(Path("site/broker"), topics=topics, port=b.port)
        assert manager.pid == proc.pid
        assert manager.reload()  # confirmed by the broker: it accepted the new canary
    finally:
        proc.terminate()
        proc.wait(10)
