"""Secrets and permissions (issue #12, hole 6), against the real CLIs, service and agent.

The attacks: under ``umask 000`` the key, broker and bundle folders came out 0777 and the
database 0644 (an unprivileged user read a signed payload URL from it); ``fleetpush serve``
started with a 0644 signing key, and the device agent with a world-readable config holding
its password. Now folders are 0700 and secret files 0600 whatever the umask, and a secret
that group or others can read stops the program, with the ``chmod`` that fixes it.
"""

from __future__ import annotations

import contextlib
import os
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from device_helpers import write_config
from orch_helpers import write_orchestrator

from device_client.store import StateStore
from fleetpush_protocol.topics import Topics
from orchestrator.broker import MosquittoBroker
from orchestrator.payloads import UrlSigner
from orchestrator.store import SQLiteStore

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

REPO = Path(__file__).resolve().parents[1]
ROOT_HEX = "ab" * 32


def fleetpush() -> list[str]:
    script = Path(sys.executable).parent / "fleetpush"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from orchestrator.cli.main import main; main()"]


def device_cli() -> list[str]:
    return [sys.executable, "-m", "device_client"]


def run(argv: list[str], *, umask_000: bool = False) -> subprocess.CompletedProcess[str]:
    """Run a real command; ``umask_000``: as an operator whose shell has ``umask 000``."""
    if umask_000:
        argv = ["/bin/sh", "-c", 'umask 000 && exec "$@"', "sh", *argv]
    return subprocess.run(argv, capture_output=True, text=True, cwd=REPO, check=False, timeout=60)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


@contextlib.contextmanager
def umask(value: int) -> Iterator[None]:
    old = os.umask(value)
    try:
        yield
    finally:
        os.umask(old)


# --- created private, whatever the umask ---------------------------------------------------


def test_operator_commands_under_umask_000_create_0700_folders_and_0600_secrets(
    tmp_path: Path,
) -> None:
    data = tmp_path / "var" / "fleetpush"  # neither folder exists yet
    config = tmp_path / "orchestrator.toml"
    config.write_text(f'data_dir = "{data}"\n')
    steps = [
        [*fleetpush(), "broker", "refresh", "--data", str(data)],
        [*fleetpush(), "keys", "init", "--config", str(config)],
        [*fleetpush(), "tokens", "create", "ops", "--role", "admin", "--config", str(config)],
        [*fleetpush(), "devices", "provision", "dev-pw", "--model", "rpi4", "--password",
         "--data", str(data)],
        [*fleetpush(), "devices", "provision", "dev-cert", "--model", "rpi4", "--cert",
         "--data", str(data), "--tls-url", "mqtts://broker.example.net:8883"],
        [*fleetpush(), "broker", "server-cert", "--data", str(data), "--name", "broker.lan",
         "--out", str(data / "broker" / "tls")],
    ]  # fmt: skip
    for argv in steps:
        result = run(argv, umask_000=True)
        assert result.returncode == 0, (argv, result.stdout, result.stderr)

    secrets = [
        data / "fleetpush.db",
        data / "broker" / "orchestrator.secret",
        data / "broker" / "identities.json",
        data / "broker" / "ca" / "ca.key",
        data / "broker" / "tls" / "server.key",
        data / "broker" / "provisioned" / "dev-pw" / "device.toml",
        data / "broker" / "provisioned" / "dev-cert" / "device.toml",
        data / "broker" / "provisioned" / "dev-cert" / "dev-cert.key",
        *(data / "keys" / "signing").glob("*.key"),
        *(data / "keys" / "offline-root").glob("*.key"),
    ]
    assert len(secrets) == 10
    for path in secrets:
        assert mode(path) == 0o600, f"{path}: {mode(path):04o}"
    folders = [data.parent, data, *(p for p in data.rglob("*") if p.is_dir())]
    assert data / "broker" / "ca" in folders
    assert data / "keys" / "signing" in folders
    for folder in folders:
        assert mode(folder) == 0o700, f"{folder}: {mode(folder):04o}"
    for path in data.rglob("*"):  # public files (certificates, keyrings): nobody else writes
        assert not mode(path) & 0o022 or path.is_symlink(), f"{path}: {mode(path):04o}"


def test_database_and_its_wal_and_shm_are_0600_under_umask_000(tmp_path: Path) -> None:
    path = tmp_path / "data" / "fleetpush.db"
    with umask(0):
        store = SQLiteStore(path)
    try:
        store.migrate()
        store.add_token("ops", "admin", "ab" * 32, 1.0)
        files = [path, path.with_name("fleetpush.db-wal"), path.with_name("fleetpush.db-shm")]
        for f in files:
            assert mode(f) == 0o600, f"{f}: {mode(f):04o}"
        assert mode(path.parent) == 0o700
    finally:
        store.close()


def test_a_database_left_0644_is_made_0600(tmp_path: Path) -> None:
    path = tmp_path / "fleetpush.db"
    SQLiteStore(path).close()
    path.chmod(0o644)
    SQLiteStore(path).close()
    assert mode(path) == 0o600


def test_device_state_folder_is_0700_under_umask_000(tmp_path: Path) -> None:
    state = tmp_path / "var" / "lib" / "fleetpush"
    with umask(0):
        StateStore(state).load()
    for folder in (tmp_path / "var", tmp_path / "var" / "lib", state):
        assert mode(folder) == 0o700, f"{folder}: {mode(folder):04o}"


# --- refused when readable by group or others ----------------------------------------------


def _signing_key(root: Path) -> Path:
    return next((root / "orch" / "keys" / "signing").glob("*.key"))


def _url_key(root: Path) -> Path:
    path = root / "orch" / "url-signing.key"
    UrlSigner.from_file(path)
    return path


def _mqtt_password_file(root: Path) -> Path:
    return root / "mqtt.password"


def _inline_password_config(root: Path) -> Path:
    config = root / "orchestrator.toml"
    password = (root / "mqtt.password").read_text().strip()
    text = config.read_text().replace('password_file = "mqtt.password"', f'password = "{password}"')
    config.write_text(text)
    return config


SERVE_SECRETS: dict[str, Callable[[Path], Path]] = {
    "signing key": _signing_key,
    "URL signing key": _url_key,
    "MQTT password file": _mqtt_password_file,
    "config holding the MQTT password": _inline_password_config,
}


@pytest.mark.parametrize("name", list(SERVE_SECRETS))
@pytest.mark.parametrize("loose", [0o644, 0o640, 0o604])
def test_serve_refuses_a_secret_readable_by_group_or_others(
    name: str, loose: int, tmp_path: Path, broker: MosquittoBroker, topics: Topics
) -> None:
    config, _ = write_orchestrator(tmp_path, broker, topics)
    secret = SERVE_SECRETS[name](tmp_path)
    secret.chmod(loose)
    result = run([*fleetpush(), "serve", "--config", str(config)])
    assert result.returncode != 0, result.stderr
    assert f"chmod 600 {secret}" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr, result.stderr


def _device_config(tmp_path: Path, broker: MosquittoBroker, topics: Topics) -> Path:
    return write_config(
        tmp_path / "device.toml", broker=broker, topics=topics, device_id="dev-1",
        password="s3cret", root_hex=ROOT_HEX,
    )  # fmt: skip


def _device_password_file(tmp_path: Path, broker: MosquittoBroker, topics: Topics) -> Path:
    config = _device_config(tmp_path, broker, topics)
    (tmp_path / "password").write_text("s3cret\n")
    config.write_text(
        config.read_text().replace('password = "s3cret"', 'password_file = "password"')
    )
    return tmp_path / "password"


DEVICE_SECRETS: dict[str, Callable[[Path, MosquittoBroker, Topics], Path]] = {
    "config holding the password": _device_config,
    "password file": _device_password_file,
}


@pytest.mark.parametrize("name", list(DEVICE_SECRETS))
def test_device_agent_refuses_a_secret_readable_by_group_or_others(
    name: str, tmp_path: Path, broker: MosquittoBroker, topics: Topics
) -> None:
    secret = DEVICE_SECRETS[name](tmp_path, broker, topics)
    config = tmp_path / "device.toml"
    secret.chmod(0o644)
    result = run([*device_cli(), "--config", str(config), "--check"])
    assert result.returncode == 2, result.stderr
    assert f"chmod 600 {secret}" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    secret.chmod(0o600)
    result = run([*device_cli(), "--config", str(config), "--check"])
    assert result.returncode == 0, result.stderr


def test_device_agent_refuses_a_readable_tls_client_key(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("x")
    (tmp_path / "dev-1.pem").write_text("x")
    key = tmp_path / "dev-1.key"
    key.write_text("x")
    key.chmod(0o640)
    config = tmp_path / "device.toml"
    config.write_text(
        '[device]\nid = "dev-1"\nmodel = "rpi4"\nstate_dir = "state"\n'
        '[broker]\nurl = "mqtts://broker.lan:8883"\nca_file = "ca.pem"\n'
        'cert_file = "dev-1.pem"\nkey_file = "dev-1.key"\n'
        f'[trust]\nroot_keys = ["{ROOT_HEX}"]\nroot_threshold = 1\n'
    )
    result = run([*device_cli(), "--config", str(config), "--check"])
    assert result.returncode == 2, result.stderr
    assert f"chmod 600 {key.resolve()}" in result.stderr, result.stderr
