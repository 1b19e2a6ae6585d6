"""A whole fleetpush installation for one machine, in one folder (``fleetpush quickstart``).

``init_quickstart(DIR)`` writes, once::

    DIR/orchestrator.toml        data_dir = "data", the API on a fixed port, no [mqtt]
                                 (the broker is the one recorded in data/broker/broker.json)
    DIR/data/broker/             broker state; broker.json fixes its two ports for good
    DIR/data/keys/               keyring v1; root private keys in keys/offline-root
    DIR/data/fleetpush.db        with an admin token, whose value is only in:
    DIR/admin.token, DIR/env.sh  (0600) the token, and FLEETPUSH_* exports for the CLI
    DIR/devices/dev-001/         a device bundle (client certificate, state in ./state)

Ports are chosen free once and kept: a restart listens where devices already connect.
``run_quickstart`` is ``fleetpush broker run`` and ``fleetpush serve`` in one process.
"""

from __future__ import annotations

import shlex
import time
from dataclasses import dataclass
from pathlib import Path

from fleetpush_common.atomic import atomic_write, make_private_dir
from orchestrator.broker import MosquittoBroker, find_mosquitto, free_port
from orchestrator.provisioning import Provisioner, read_root_keys
from orchestrator.security.auth import hash_token, new_token
from orchestrator.security.keystore import KeyStore
from orchestrator.store import SQLiteStore

__all__ = ["CONFIG_NAME", "Quickstart", "init_quickstart"]

CONFIG_NAME = "orchestrator.toml"
KEY_VALIDITY_S = 365 * 86400


@dataclass(frozen=True)
class Quickstart:
    """What ``init_quickstart`` wrote (paths absolute)."""

    root: Path
    api_url: str
    broker_url: str
    tls_url: str
    token: str
    bundles: tuple[Path, ...]

    @property
    def config(self) -> Path:
        return self.root / CONFIG_NAME

    @property
    def env_file(self) -> Path:
        return self.root / "env.sh"


def _orchestrator_toml(http_port: int) -> str:
    return f"""\
# fleetpush orchestrator for one machine, written by `fleetpush quickstart init`.
# Relative paths are relative to this file's folder; docs/orchestrator.md explains each
# setting. There is no [mqtt] table: `fleetpush serve` uses the broker recorded in
# data/broker/broker.json (its ports were chosen once and stay).
data_dir = "data"

[http]
listen = "127.0.0.1:{http_port}"
"""


def init_quickstart(
    root: Path,
    *,
    devices: int = 1,
    http_port: int = 0,
    mqtt_port: int = 0,
    tls_port: int = 0,
    model: str = "rpi4",
    groups: tuple[str, ...] = ("canary",),
) -> Quickstart:
    """Write a one-machine installation into ``root`` (see the module doc).

    Raises:
        MosquittoNotFoundError: Mosquitto is not installed (nothing is written).
        FileExistsError: ``root`` already holds an installation.
        ValueError: an invalid number of devices, model or group.
    """
    if not 1 <= devices <= 999:
        raise ValueError("devices: expected 1..999")
    find_mosquitto()
    root = Path(root).resolve()
    if (root / CONFIG_NAME).exists() or (root / "data").exists():
        raise FileExistsError(f"{root} already holds an installation")
    make_private_dir(root)  # the token and the keys: 0700 whatever the umask
    data = make_private_dir(root / "data")
    broker = MosquittoBroker(
        data / "broker", port=mqtt_port or None, tls=True, tls_port=tls_port or None
    )
    broker.write_auth_files()  # also creates the fleet CA
    broker.record()  # the ports, fixed from now on
    port = http_port or free_port()
    atomic_write(root / CONFIG_NAME, _orchestrator_toml(port).encode(), mode=0o600)

    keys_dir = data / "keys"
    KeyStore(keys_dir).init(
        keys_dir / "offline-root", roots=1, threshold=1, validity_s=KEY_VALIDITY_S,
        now=int(time.time()),
    )  # fmt: skip
    token = new_token()
    store = SQLiteStore(data / "fleetpush.db")
    try:
        store.migrate()
        store.add_token("admin", "admin", hash_token(token), time.time())
    finally:
        store.close()
    api_url = f"http://127.0.0.1:{port}"
    atomic_write(root / "admin.token", token.encode() + b"\n", mode=0o600)
    exports = {
        "FLEETPUSH_SERVER": api_url,
        "FLEETPUSH_TOKEN": token,
        "FLEETPUSH_CONFIG": str(root / CONFIG_NAME),
        "FLEETPUSH_DATA": str(data),
    }
    atomic_write(
        root / "env.sh",
        (
            "# fleetpush CLI settings for this installation: . ./env.sh\n"
            + "".join(f"export {k}={shlex.quote(v)}\n" for k, v in exports.items())
        ).encode(),
        mode=0o600,
    )

    root_keys, threshold = read_root_keys(keys_dir)
    provisioner = Provisioner(broker, root_keys=root_keys, root_threshold=threshold)
    bundles = []
    make_private_dir(root / "devices")  # the bundles hold private keys
    for n in range(1, devices + 1):
        device_id = f"dev-{n:03d}"
        record = provisioner.provision(
            device_id, model=model, groups=groups, auth="cert",
            bundle_dir=root / "devices" / device_id, state_dir="state",
        )  # fmt: skip
        bundles.append(record.config_path)
    return Quickstart(
        root=root,
        api_url=api_url,
        broker_url=broker.url,
        tls_url=broker.tls_url or "",
        token=token,
        bundles=tuple(bundles),
    )
