"""rabbitmq-server 3.10 (Debian's ``rabbitmq-server``) as an MQTT 3.1.1 broker: the
rabbitmq_mqtt plugin.

A node of its own per working directory: its own node name (registered with epmd under a
random name, so it never meets the system node ``rabbit@localhost``), distribution port,
Erlang cookie (``HOME`` is the working directory), Mnesia folder, configuration and
plugins file, all on free ports. Identities, their permissions and topic permissions go in
through ``rabbitmqctl import_definitions`` (one CLI call per reload: each costs seconds).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import secrets
import subprocess
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fleetpush_protocol.topics import Topics
from orchestrator.broker.credentials import ORCHESTRATOR_ROLE
from orchestrator.broker.process import free_port
from orchestrator.broker.registry import Identity

from .base import BrokerNotFoundError, ExternalBroker, fill, write_file

__all__ = ["RabbitmqBroker", "amqp_key", "render_definitions"]

RABBIT_BIN = Path("/usr/lib/rabbitmq/bin")  # Debian's wrappers in /usr/sbin su to rabbitmq


def amqp_key(topic: str) -> str:
    """The routing key of an MQTT topic: rabbitmq_mqtt swaps ``/`` and ``.``."""
    return topic.translate(str.maketrans("/.", "./"))


def password_hash(password: str, salt: bytes | None = None) -> str:
    """RabbitMQ's ``rabbit_password_hashing_sha256``: base64(salt + sha256(salt + pw))."""
    salt = salt if salt is not None else os.urandom(4)
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode()).digest()).decode()


def _json(text: str) -> str:
    return json.dumps(text)[1:-1]


def render_definitions(
    template: str, identities: Sequence[Identity], passwords: Mapping[str, str], *,
    topics: Topics,
) -> dict[str, Any]:  # fmt: skip
    """The definitions to import: users, their permissions and topic permissions."""
    users, permissions, topic_permissions = [], [], []
    for i in identities:
        if i.username not in passwords:
            continue  # provisioned by another process: its password is not known here
        groups = "".join(f"|group\\.{re.escape(amqp_key(g))}\\.notice" for g in i.groups)
        text = fill(template, {  # regexes inside JSON strings: escaped twice
            "USER": _json(re.escape(i.username)), "GROUPS": _json(groups),
            "PREFIX": _json(re.escape(amqp_key(topics.prefix))),
        })  # fmt: skip
        rules = json.loads(text)["orchestrator" if i.role == ORCHESTRATOR_ROLE else "device"]
        users.append({
            "name": i.username, "password_hash": password_hash(passwords[i.username]),
            "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": [],
        })  # fmt: skip
        permissions.append({"user": i.username, "vhost": "/", **rules["permissions"]})
        topic_permissions.append({"user": i.username, "vhost": "/", **rules["topic_permissions"]})
    return {"users": users, "vhosts": [{"name": "/"}], "permissions": permissions,
            "topic_permissions": topic_permissions}  # fmt: skip


class RabbitmqBroker(ExternalBroker):
    """One RabbitMQ node with the MQTT plugin in ``workdir`` on free ports."""

    NAME = "rabbitmq"
    MQTT_VERSION = "3.1.1"
    SHARED_SUBSCRIPTIONS = False  # not in 3.10's MQTT plugin
    START_TIMEOUT = 240.0  # 40 s measured with the machine's load average at 12

    def __init__(self, workdir: Path, *, topics: Topics, host: str = "127.0.0.1") -> None:
        self.amqp_port = free_port()
        self.dist_port = free_port()
        self.node = f"fleetpush-{uuid.uuid4().hex[:10]}@localhost"
        super().__init__(workdir, topics=topics, host=host)

    def ports(self) -> Sequence[int]:
        return [self.port, self.amqp_port]

    def _env(self) -> dict[str, str]:
        w = self.workdir
        return {
            "HOME": str(w),  # the Erlang cookie, shared by the node and rabbitmqctl
            "RABBITMQ_CONF_ENV_FILE": str(w / "rabbitmq-env.conf"),  # not /etc/rabbitmq's
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_CONFIG_FILE": str(w / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(w / "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(w / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(w / "mnesia"),
            "RABBITMQ_LOG_BASE": str(w / "log"),
            "RABBITMQ_PID_FILE": str(w / "rabbitmq.pid"),
            "RABBITMQ_PLUGINS_EXPAND_DIR": str(w / "plugins-expand"),
        }

    def prepare(self) -> None:
        w = self.workdir
        cookie = w / ".erlang.cookie"
        if not cookie.exists():
            write_file(cookie, secrets.token_hex(20), 0o400)
        write_file(w / "rabbitmq-env.conf", "")
        write_file(w / "enabled_plugins", "[rabbitmq_mqtt].\n")
        template = (self.config_dir / "rabbitmq.conf.template").read_text()
        write_file(w / "rabbitmq.conf", fill(template, {
            "HOST": self.host, "PORT": str(self.port), "AMQP_PORT": str(self.amqp_port),
            "DIR": str(w), "DEFAULT_USER": f"unused-{secrets.token_hex(8)}",
            "DEFAULT_PASS": secrets.token_urlsafe(24),
        }))  # fmt: skip

    def command(self) -> tuple[list[str], Mapping[str, str]]:
        return [self._program("rabbitmq-server")], self._env()

    @staticmethod
    def _program(name: str) -> str:
        path = RABBIT_BIN / name
        if not os.access(path, os.X_OK):
            raise BrokerNotFoundError(
                f"{path} is missing: sudo apt-get install rabbitmq-server (or scripts/install)"
            )
        return str(path)

    def ctl(self, *args: str, timeout: float = 120.0) -> str:
        """``rabbitmqctl -n NODE ARGS`` against this node."""
        ctl = self._program("rabbitmqctl")
        done = subprocess.run(
            [ctl, "-n", self.node, *args], env={**os.environ, **self._env()},
            capture_output=True, timeout=timeout, check=False, cwd=self.workdir,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"rabbitmqctl {args[0]} failed: {done.stderr.decode()[-500:]}")
        return done.stdout.decode()

    def _apply(self, timeout: float) -> None:
        template = (self.config_dir / "permissions.json.template").read_text()
        definitions = render_definitions(
            template, self.identities(), self._passwords, topics=self.topics
        )
        path = self.workdir / "definitions.json"
        write_file(path, json.dumps(definitions, indent=1))
        # Synchronous on the node despite its wording ("started ... asynchronous"): the
        # CLI returns once users and permissions are in (the isolation tests rely on it).
        self.ctl("import_definitions", str(path), timeout=max(timeout, 120.0))

    def after_start(self) -> None:
        self._apply(120.0)
