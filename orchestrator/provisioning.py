"""Device identities for the broker: provision, change groups, revoke.

A device is provisioned with either a client certificate from the fleet CA (CN = device id;
it connects to the TLS listener) or a password (added to Mosquitto's password file). Either
way it gets a ready-to-use device configuration (``device.toml``, read by
``device_client.config``) with the fleet's root public keys, in a bundle folder to copy onto
the device::

    <bundle>/device.toml   mode 0600 (may hold the password)
    <bundle>/ca.pem        the CA that signed the broker's certificate (TLS only)
    <bundle>/ID.pem ID.key the client certificate and key (certificate devices only)

Paths inside ``device.toml`` are relative to the file's folder unless ``config_dir`` says
where the bundle will live on the device.

The identity registry, password file, ACL, CA and CRL live in ``<data>/broker/`` and are
managed by ``orchestrator.broker.MosquittoBroker`` (see its module doc); this module adds
the device-level steps and hooks the orchestrator uses to record devices in its database.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from fleetpush_common.atomic import atomic_write, make_private_dir
from fleetpush_protocol.fields import check_name
from fleetpush_protocol.keys import load_public_key
from fleetpush_protocol.topics import Topics
from orchestrator.broker import MosquittoBroker, ReloadError, read_info

__all__ = [
    "DEFAULT_SESSION_EXPIRY_S",
    "DEFAULT_STATE_DIR",
    "AuthKind",
    "DeviceRecord",
    "Provisioner",
    "broker_for_data_dir",
    "read_root_keys",
    "render_device_config",
]

logger = logging.getLogger(__name__)

AuthKind = Literal["cert", "password"]
# Relative to device.toml: a bundle works wherever it is put, and two bundles on one host
# never share a state folder. A real device passes --state-dir /var/lib/fleetpush.
DEFAULT_STATE_DIR = "state"
DEFAULT_KEEPALIVE_S = 60
DEFAULT_SESSION_EXPIRY_S = 604800  # 7 days; the broker caps sessions at 30 days


@dataclass(frozen=True)
class DeviceRecord:
    """What provisioning created; handed to the ``on_provision`` hook."""

    device_id: str
    model: str
    groups: tuple[str, ...]
    auth: AuthKind
    broker_url: str
    bundle_dir: Path
    config_path: Path
    cert_serial: int | None = None
    created_at: int = field(default_factory=lambda: int(time.time()))


ProvisionHook = Callable[[DeviceRecord], None]
RevokeHook = Callable[[str], None]


def read_root_keys(keys_dir: Path) -> tuple[list[str], int]:
    """Root public keys (hex) and threshold from the keystore's ``root.json``."""
    path = Path(keys_dir) / "root.json"
    try:
        data = json.loads(path.read_text())
        keys = [load_public_key(k).hex() for k in data["keys"]]
        return keys, int(data["threshold"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: missing or invalid root keys ({e})") from None


def _toml_str(s: str) -> str:
    # JSON string escapes are valid TOML basic-string escapes.
    return json.dumps(s, ensure_ascii=False)


def render_device_config(
    *,
    device_id: str,
    model: str,
    groups: Sequence[str],
    broker_url: str,
    root_keys: Sequence[str],
    root_threshold: int,
    topic_prefix: str,
    state_dir: str = DEFAULT_STATE_DIR,
    username: str | None = None,
    password: str | None = None,
    ca_file: str | None = None,
    cert_file: str | None = None,
    key_file: str | None = None,
    keepalive_s: int = DEFAULT_KEEPALIVE_S,
    session_expiry_s: int = DEFAULT_SESSION_EXPIRY_S,
) -> str:
    """The device configuration TOML (the schema ``device_client.config`` reads)."""
    if not root_keys or not 1 <= root_threshold <= len(root_keys):
        raise ValueError("need at least one root key and 1 <= threshold <= number of keys")
    lines = [
        f"# fleetpush device configuration for {device_id}, written by provisioning.",
        "# Relative paths are relative to this file's folder.",
        "",
        "[device]",
        f"id = {_toml_str(device_id)}",
        f"model = {_toml_str(model)}",
        f"groups = [{', '.join(_toml_str(g) for g in groups)}]",
        f"state_dir = {_toml_str(state_dir)}",
        "",
        "[broker]",
        f"url = {_toml_str(broker_url)}",
    ]
    if username is not None:
        lines.append(f"username = {_toml_str(username)}")
    if password is not None:
        lines.append(f"password = {_toml_str(password)}")
    for name, value in (("ca_file", ca_file), ("cert_file", cert_file), ("key_file", key_file)):
        if value is not None:
            lines.append(f"{name} = {_toml_str(value)}")
    lines += [
        f'keepalive = "{keepalive_s}s"',
        f'session_expiry = "{session_expiry_s}s"',
        f"topic_prefix = {_toml_str(topic_prefix)}",
        "",
        "[trust]",
        f"root_keys = [{', '.join(_toml_str(k) for k in root_keys)}]",
        f"root_threshold = {root_threshold}",
        "",
        "# [download], [install], [health] and [policy] take their defaults; see docs/device.md.",
        "",
    ]
    return "\n".join(lines)


def broker_for_data_dir(data_dir: Path, *, topics: Topics | None = None) -> MosquittoBroker:
    """The broker state in ``<data>/broker``, with the ports it was last started on.

    ``fleetpush broker run`` (or ``quickstart init``) records its listeners in
    ``broker.json``; without it, the standard ports of deploy/ (1883, 8883 on localhost)
    are assumed.

    Raises:
        ValueError: ``broker.json`` exists but is not valid.
    """
    workdir = Path(data_dir) / "broker"
    info = read_info(workdir)
    if topics is None:
        topics = Topics(info.topic_prefix) if info else Topics()
    if info is None:
        return MosquittoBroker(workdir, topics=topics, port=1883, tls=True, tls_port=8883)
    return MosquittoBroker(
        workdir,
        topics=topics,
        host=info.host,
        port=info.port,
        tls=info.tls_port is not None,
        tls_port=info.tls_port,
    )


class Provisioner:
    """Provision and revoke devices against one broker state directory.

    Args:
        broker: the broker whose registry, CA and files are managed (running or not; a
            broker started by another process is reloaded through its pid file).
        root_keys: the fleet's root public keys (hex) written into every device config.
        root_threshold: how many root signatures a device requires.
        broker_url: URL written into password devices' configs (default: the broker's
            password listener). Use an ``mqtts://`` URL for a TLS password listener.
        tls_url: URL written into certificate devices' configs (default: the broker's TLS
            listener).
        on_provision: called with the ``DeviceRecord`` after a device is provisioned (the
            orchestrator records the device in its database here).
        on_revoke: called with the device id after a device is revoked.
        server_ca_file: the CA devices use to verify the broker (default: the fleet CA,
            which signs the broker certificate unless the operator brings their own).
    """

    def __init__(
        self,
        broker: MosquittoBroker,
        *,
        root_keys: Sequence[str],
        root_threshold: int = 1,
        broker_url: str | None = None,
        tls_url: str | None = None,
        on_provision: ProvisionHook | None = None,
        on_revoke: RevokeHook | None = None,
        server_ca_file: Path | None = None,
    ) -> None:
        self.broker = broker
        self.server_ca_file = Path(server_ca_file) if server_ca_file else broker.ca_file
        self.root_keys = [load_public_key(k).hex() for k in root_keys]
        self.root_threshold = root_threshold
        self.broker_url = broker_url or broker.url
        self.tls_url = tls_url or broker.tls_url
        self.on_provision = on_provision
        self.on_revoke = on_revoke

    def provision(
        self,
        device_id: str,
        *,
        model: str,
        groups: Sequence[str] = (),
        auth: AuthKind = "cert",
        bundle_dir: Path | None = None,
        state_dir: str = DEFAULT_STATE_DIR,
        config_dir: str | None = None,
        replace: bool = False,
    ) -> DeviceRecord:
        """Create ``device_id``'s credentials and its bundle; reload the broker.

        Args:
            device_id: the device id, also its broker username and certificate CN.
            model: the hardware model (written to the config and the registry).
            groups: rollout groups; the device may read their notice topics.
            auth: ``"cert"`` (client certificate, TLS listener) or ``"password"``.
            bundle_dir: where to write the bundle (default ``<broker dir>/provisioned/ID``).
            state_dir: the device's state folder, written into its config.
            config_dir: where the bundle will live on the device; makes the file paths
                in the config absolute. Default: relative to the config file.
            replace: re-provision an existing device (its old credentials are revoked
                first, so the old certificate or password stops working).

        Raises:
            FileExistsError: the device exists and ``replace`` is false.
            ValueError: invalid id, model or group, or no TLS listener for ``"cert"``.
            ReloadError: a running broker did not confirm it loaded the new credentials;
                the device is provisioned and its bundle written all the same (and
                ``on_provision`` called), so a later reload is all that is missing.
        """
        check_name(device_id, "device id")
        check_name(model, "model")
        groups = tuple(dict.fromkeys(check_name(g, "group") for g in groups))
        if auth not in ("cert", "password"):
            raise ValueError(f"auth must be 'cert' or 'password', not {auth!r}")
        if self.broker.registry.get(device_id) is not None:
            if not replace:
                raise FileExistsError(f"device {device_id} is already provisioned")
            self.broker.revoke(device_id)
        bundle = Path(bundle_dir) if bundle_dir else self.broker.workdir / "provisioned" / device_id
        make_private_dir(bundle)

        def where(name: str) -> str:
            return f"{config_dir.rstrip('/')}/{name}" if config_dir else name

        creds: dict[str, str] = {}
        serial: int | None = None
        if auth == "cert":
            if self.tls_url is None:
                raise ValueError("the broker has no TLS listener; provision with a password")
            url = self.tls_url
            cert_path, key_path = self.broker.add_device_cert(device_id, groups, directory=bundle)
            serial = self.broker.registry.identities[device_id].cert_serials[-1]
            creds |= {"cert_file": where(cert_path.name), "key_file": where(key_path.name)}
        else:
            url = self.broker_url
            password = self.broker.add_device(device_id, groups)
            creds |= {"username": device_id, "password": password}
        if url.startswith("mqtts://"):
            atomic_write(bundle / "ca.pem", Path(self.server_ca_file).read_bytes(), mode=0o644)
            creds["ca_file"] = where("ca.pem")
        self.broker.set_model(device_id, model)
        unconfirmed: ReloadError | None = None
        try:
            self.broker.reload()
        except ReloadError as e:
            unconfirmed = e

        text = render_device_config(
            device_id=device_id,
            model=model,
            groups=groups,
            broker_url=url,
            root_keys=self.root_keys,
            root_threshold=self.root_threshold,
            topic_prefix=self.broker.topics.prefix,
            state_dir=state_dir,
            username=creds.get("username"),
            password=creds.get("password"),
            ca_file=creds.get("ca_file"),
            cert_file=creds.get("cert_file"),
            key_file=creds.get("key_file"),
        )
        config_path = bundle / "device.toml"
        atomic_write(config_path, text.encode(), mode=0o600)
        record = DeviceRecord(device_id, model, groups, auth, url, bundle, config_path, serial)
        logger.info("provisioned %s (%s) in %s", device_id, auth, bundle)
        if self.on_provision is not None:
            self.on_provision(record)
        if unconfirmed is not None:
            raise unconfirmed
        return record

    def revoke(self, device_id: str, *, timeout: float = 10.0) -> bool:
        """Take all broker access away from ``device_id`` and drop its connection.

        Removes it from the password file and ACL, adds its certificates to the CRL,
        reloads the broker and takes over (discards) its session. Returns whether the
        device was known. Raises ``RevocationError`` when a running broker did not confirm
        that within ``timeout`` seconds (``on_revoke`` is not called then: the device may
        still be connected).
        """
        known = self.broker.revoke(device_id, timeout=timeout)
        if self.on_revoke is not None:
            self.on_revoke(device_id)
        return known

    def set_groups(self, device_id: str, groups: Sequence[str]) -> None:
        """Change a device's groups: regenerates the ACL and reloads the broker.

        The device must also learn its new groups (its config lists them) to subscribe.
        """
        self.broker.set_groups(device_id, tuple(check_name(g, "group") for g in groups))
