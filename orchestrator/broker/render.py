"""The files Mosquitto reads, rendered from values: no I/O, no process, no clock.

``render_config`` fills in ``broker_config/mosquitto.conf``; ``render_auth_files`` turns the
registry's identities (plus its transient entries) into the ``passwd`` and ``acl`` files.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from fleetpush_protocol.topics import Topics
from orchestrator.broker.credentials import DEVICE_ROLE, BrokerUser, render_acl, render_passwd

__all__ = ["CONFIG_DIR", "AuthFiles", "render_auth_files", "render_config"]

CONFIG_DIR = Path(str(resources.files("broker_config")))
_TLS_BLOCK = re.compile(r"^@TLS_BEGIN@\n(.*?)^@TLS_END@\n", re.MULTILINE | re.DOTALL)


def render_config(
    template: str,
    *,
    directory: Path,
    host: str,
    port: int,
    tls_port: int | None,
    user: str,
) -> str:
    """Fill in broker_config/mosquitto.conf; drop the TLS listener when ``tls_port`` is None.

    ``directory`` should be absolute: Mosquitto resolves relative paths against its own
    working directory, which need not be the one of the process that manages it.
    """
    text = _TLS_BLOCK.sub(lambda m: m.group(1) if tls_port is not None else "", template)
    return (
        text.replace("@DIR@", str(directory))
        .replace("@PORT@", str(port))
        .replace("@TLS_PORT@", str(tls_port))
        .replace("@HOST@", host)
        .replace("@USER@", user)
    )


@dataclass(frozen=True)
class AuthFiles:
    """The text of Mosquitto's ``password_file`` and ``acl_file``."""

    passwd: str
    acl: str


def render_auth_files(
    users: Iterable[BrokerUser], transient: Mapping[str, str], topics: Topics
) -> AuthFiles:
    """``passwd`` and ``acl`` for the registry's users and transient entries.

    ``transient`` maps a username to a password hash that gets a ``passwd`` line and no ACL
    line: a reload canary or a revoke's one-time takeover password can log in (which is all
    they are for) and do nothing else. A transient name that is also a user is ignored.
    """
    users = list(users)
    names = {u.username for u in users}
    extra = [
        BrokerUser(name, DEVICE_ROLE, (), h)
        for name, h in sorted(transient.items())
        if name not in names
    ]
    return AuthFiles(render_passwd([*users, *extra]), render_acl(users, topics))
