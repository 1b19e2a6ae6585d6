"""nats-server 2.9 (Debian's ``nats-server``) as an MQTT 3.1.1 broker: its MQTT gateway.

One server per working directory, on free ports, JetStream in ``workdir/jetstream``.
Identities are users in the configuration file, each with subject permissions generated
from the registry (MQTT topics become subjects: ``/`` -> ``.``, ``.`` -> ``//``); a reload is
SIGHUP, confirmed by a canary login (a fresh user only the new file has) on the NATS port.
"""

from __future__ import annotations

import json
import secrets
import signal
import socket
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path

from fleetpush_protocol.topics import Topics
from orchestrator.broker.credentials import ORCHESTRATOR_ROLE
from orchestrator.broker.process import free_port
from orchestrator.broker.registry import Identity

from .base import ExternalBroker, SharedIdentities, fill, find_binary, write_file

__all__ = ["NatsBroker", "mqtt_subject", "render_nats"]


def mqtt_subject(topic: str) -> str:
    """The NATS subject of an MQTT topic (or filter: ``+`` -> ``*``, ``#`` -> ``>``)."""
    levels = topic.split("/")
    out = [{"+": "*", "#": ">"}.get(level, level.replace(".", "//")) for level in levels]
    return ".".join(out)


def _permissions(i: Identity, topics: Topics) -> dict[str, object]:
    if i.role == ORCHESTRATOR_ROLE:
        # An MQTT filter `P/#` is two NATS subscriptions, `P` and `P.>`: both are needed.
        everything = [mqtt_subject(topics.prefix), mqtt_subject(f"{topics.prefix}/#")]
        return {"publish": everything, "subscribe": [*everything, "$MQTT.sub.>"]}
    d = i.username
    reads = [topics.device_notice(d), topics.ack(d), topics.keyring_filter, topics.support,
             *(topics.group_notice(g) for g in i.groups)]  # fmt: skip
    writes = [topics.report(d), topics.presence(d), topics.inventory(d)]
    return {
        "publish": [mqtt_subject(t) for t in writes],
        # QoS 1 subscriptions are JetStream consumers delivering on $MQTT.sub.<id>.
        "subscribe": [*(mqtt_subject(t) for t in reads), "$MQTT.sub.>"],
    }


def render_nats(
    template: str, identities: Sequence[Identity], passwords: Mapping[str, str], *,
    topics: Topics, name: str, host: str, port: int, client_port: int, directory: Path,
    canary: tuple[str, str] | None = None, cluster: str = "", mqtt_cluster: str = "",
) -> str:  # fmt: skip
    """``nats.conf``: one user per identity with a password (JSON is valid NATS config).

    ``cluster`` and ``mqtt_cluster`` are a cluster node's own lines (``nats_cluster``): the
    top-level ``cluster`` block and the ``mqtt`` block's replica settings."""
    users = []
    for i in identities:
        if i.username not in passwords:
            continue  # provisioned by another process: its password is not known here
        entry = {
            "user": i.username,
            # Plain text in a 0600 file: nats-server also takes bcrypt hashes.
            "password": passwords[i.username],
            "permissions": _permissions(i, topics),
            "allowed_connection_types": ["MQTT"],
        }
        users.append("    " + json.dumps(entry))
    if canary is not None:  # may log in on the NATS port, and do nothing
        users.append("    " + json.dumps({
            "user": canary[0], "password": canary[1],
            "permissions": {"publish": {"deny": [">"]}, "subscribe": {"deny": [">"]}},
            "allowed_connection_types": ["STANDARD"],
        }))  # fmt: skip
    return fill(template, {
        "NAME": name, "HOST": host, "PORT": str(port), "CLIENT_PORT": str(client_port),
        "DIR": str(directory), "USERS": "\n".join(users), "CLUSTER": cluster,
        "MQTT_CLUSTER": mqtt_cluster,
    })  # fmt: skip


def nats_login(host: str, port: int, user: str, password: str) -> bool:
    """Whether the server at ``host:port`` accepts this login (NATS protocol CONNECT)."""
    try:
        with socket.create_connection((host, port), 2) as s:
            s.settimeout(2)
            s.recv(4096)  # INFO
            hello = {"user": user, "pass": password, "verbose": False, "pedantic": False}
            s.sendall(b"CONNECT " + json.dumps(hello).encode() + b"\r\nPING\r\n")
            data = b""
            while b"PONG" not in data and b"-ERR" not in data:
                chunk = s.recv(4096)
                if not chunk:
                    return False
                data += chunk
            return b"PONG" in data
    except OSError:
        return False


class NatsBroker(ExternalBroker):
    """One nats-server with the MQTT listener in ``workdir`` on free ports."""

    NAME = "nats"
    MQTT_VERSION = "3.1.1"
    SHARED_SUBSCRIPTIONS = False  # no `$share/...` (NATS queue groups are not MQTT's)

    def __init__(
        self, workdir: Path, *, topics: Topics, host: str = "127.0.0.1",
        shared: SharedIdentities | None = None,
    ) -> None:  # fmt: skip
        self.client_port = free_port()
        self.server_name = f"fp_{uuid.uuid4().hex[:10]}"
        super().__init__(workdir, topics=topics, host=host, shared=shared)

    def cluster_lines(self) -> tuple[str, str]:
        """The ``cluster`` block and the ``mqtt`` block's cluster lines: none for one server."""
        return "", ""

    def ports(self) -> Sequence[int]:
        return [self.port, self.client_port]

    @property
    def config_path(self) -> Path:
        return self.workdir / "nats.conf"

    def _write(self, canary: tuple[str, str] | None = None) -> None:
        template = (self.config_dir / "nats.conf.template").read_text()
        cluster, mqtt_cluster = self.cluster_lines()
        write_file(self.config_path, render_nats(
            template, self.identities(), self._passwords, topics=self.topics,
            name=self.server_name, host=self.host, port=self.port,
            client_port=self.client_port, directory=self.workdir, canary=canary,
            cluster=cluster, mqtt_cluster=mqtt_cluster,
        ))  # fmt: skip

    def prepare(self) -> None:
        self._write()

    def command(self) -> tuple[list[str], Mapping[str, str]]:
        binary = find_binary("nats-server", "nats-server", "/usr/sbin/nats-server")
        return [binary, "-c", str(self.config_path)], {}

    def after_start(self) -> None:
        pass  # the users are in the configuration it started with

    def _provision(self, username: str, password: str) -> None:
        pass  # applied by reload(), with the permissions

    def _apply(self, timeout: float) -> None:
        canary = (f"fleetpush-reload-{secrets.token_hex(6)}", secrets.token_urlsafe(18))
        self._write(canary)
        self._signal(signal.SIGHUP)
        deadline = time.monotonic() + timeout
        while not nats_login(self.host, self.client_port, *canary):
            if time.monotonic() > deadline:
                raise RuntimeError(f"nats-server did not apply {self.config_path}")
            time.sleep(0.05)
