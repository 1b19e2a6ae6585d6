"""ejabberd 23.01 (Debian's ``ejabberd``) as an MQTT 5 broker: mod_mqtt.

Started with ``erl`` directly, without Erlang distribution (``nonode@nohost``): no node
name, no cookie, nothing registered with epmd, so any number of instances run side by side
and none touches a system ejabberd. Its Mnesia database (accounts, retained messages) lives
in ``workdir/db``. Identities are ejabberd accounts created through its HTTP API
(``register``), the same command ``ejabberdctl register`` runs; permissions are mod_mqtt's
``access_subscribe`` / ``access_publish`` with ``%u`` rules, plus one ACL per group,
regenerated from the registry and applied with ``reload_config``.
"""

from __future__ import annotations

import glob
import json
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from fleetpush_protocol.topics import Topics
from orchestrator.broker.credentials import DEVICE_ROLE, ORCHESTRATOR_ROLE
from orchestrator.broker.process import free_port
from orchestrator.broker.registry import Identity

from .base import BrokerNotFoundError, ExternalBroker, fill, find_binary, write_file

__all__ = ["EjabberdBroker", "render_ejabberd"]

DOMAIN = "localhost"


def _yaml_str(value: str) -> str:
    return json.dumps(value)  # a JSON string is a YAML double-quoted scalar


def render_ejabberd(
    template: str, identities: Sequence[Identity], *, topics: Topics, host: str, port: int,
    api_port: int, hashed_logins: bool = True,
) -> str:  # fmt: skip
    """``ejabberd.yml`` for these identities: who is an orchestrator, and one ACL (and one
    subscribe rule) per group naming its member devices."""
    orchestrators = [i.username for i in identities if i.role == ORCHESTRATOR_ROLE]
    groups: dict[str, list[str]] = {}
    for i in identities:
        if i.role == DEVICE_ROLE:
            for g in i.groups:
                groups.setdefault(g, []).append(i.username)
    acls, rules = [], []
    for n, (group, members) in enumerate(sorted(groups.items())):
        acls += [f"  group_{n}:", "    user:"]
        acls += [f"      - {_yaml_str(f'{m}@{DOMAIN}')}" for m in sorted(members)]
        rules += [f"      {_yaml_str(topics.group_notice(group))}:", f"        - allow: group_{n}"]
    return fill(template, {
        "HOST": host, "PORT": str(port), "API_PORT": str(api_port), "DOMAIN": DOMAIN,
        "LOGIN_STORAGE": "scram" if hashed_logins else "plain",
        "PREFIX": topics.prefix,
        "ORCHESTRATORS": "\n".join(f"      - {_yaml_str(f'{o}@{DOMAIN}')}" for o in orchestrators),
        "GROUP_ACLS": "\n".join(acls), "GROUP_SUBSCRIBE": "\n".join(rules),
    })  # fmt: skip


def _ejabberd_libs() -> str:
    """The folder holding ``ejabberd-<version>/ebin`` (Debian: the multiarch lib dir)."""
    found = sorted(glob.glob("/usr/lib/*/ejabberd-*/ebin")) + sorted(
        glob.glob("/usr/lib/erlang/lib/ejabberd-*/ebin")
    )
    if not found:
        raise BrokerNotFoundError(
            "ejabberd is not installed: sudo apt-get install ejabberd (or scripts/install)"
        )
    return str(Path(found[-1]).parent.parent)


class EjabberdBroker(ExternalBroker):
    """One ejabberd (mod_mqtt) in ``workdir`` on free ports."""

    NAME = "ejabberd"
    MQTT_VERSION = "5"
    SHARED_SUBSCRIPTIONS = False  # 23.01's mod_mqtt has no `$share/...`

    def __init__(
        self, workdir: Path, *, topics: Topics, host: str = "127.0.0.1",
        hashed_logins: bool = True,
    ) -> None:  # fmt: skip
        # False is for benchmarks only: a SCRAM check costs 60-70 ms of CPU per CONNECT
        # here, which makes 10,000 logins a ten-minute set-up; never for a fleet.
        self.hashed_logins = hashed_logins
        self.api_port = free_port()
        self._applied = ""
        super().__init__(workdir, topics=topics, host=host)

    def ports(self) -> Sequence[int]:
        return [self.port, self.api_port]

    @property
    def config_path(self) -> Path:
        return self.workdir / "ejabberd.yml"

    def _render(self) -> str:
        template = (self.config_dir / "ejabberd.yml.template").read_text()
        return render_ejabberd(
            template, self.identities(), topics=self.topics, host=self.host, port=self.port,
            api_port=self.api_port, hashed_logins=self.hashed_logins,
        )  # fmt: skip

    def prepare(self) -> None:
        (self.workdir / "db").mkdir(exist_ok=True)
        self._applied = self._render()
        write_file(self.config_path, self._applied)

    def command(self) -> tuple[list[str], Mapping[str, str]]:
        erl = find_binary("erl", "ejabberd", "/usr/bin/erl")
        env = {
            "EJABBERD_CONFIG_PATH": str(self.config_path),
            "EJABBERD_LOG_PATH": str(self.workdir / "ejabberd.log"),
            "ERL_LIBS": _ejabberd_libs(),
            "ERL_CRASH_DUMP": str(self.workdir / "erl_crash.dump"),
        }
        db = f'"{self.workdir / "db"}"'  # an Erlang string
        return [erl, "-noinput", "-mnesia", "dir", db, "-s", "ejabberd"], env

    def ready(self) -> bool:
        try:
            self._api("status", {})
        except (OSError, urllib.error.URLError):
            return False
        return True

    def _api(self, command: str, args: dict[str, Any], timeout: float = 10.0) -> Any:
        request = urllib.request.Request(  # always http://127.0.0.1
            f"http://127.0.0.1:{self.api_port}/api/{command}",
            data=json.dumps(args).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=timeout) as resp:  # noqa: S310
            return json.loads(resp.read() or b"null")

    def _provision(self, username: str, password: str) -> None:
        account = {"user": username, "host": DOMAIN}
        try:
            self._api("register", {**account, "password": password})
        except urllib.error.HTTPError:
            # Already there (a restart, or a re-provisioned device with a new password).
            self._api("unregister", account)
            self._api("register", {**account, "password": password})

    def after_start(self) -> None:
        # Each register hashes a password (SCRAM): a few at once use both cores.
        with ThreadPoolExecutor(max_workers=4) as pool:
            list(pool.map(lambda item: self._provision(*item), list(self._passwords.items())))
        self._apply(10.0)

    def _apply(self, timeout: float) -> None:
        text = self._render()
        if text == self._applied:
            return
        write_file(self.config_path, text)
        self._api("reload_config", {}, timeout=timeout)
        self._applied = text
