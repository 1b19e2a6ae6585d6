"""``broker.json``: where a broker working directory's Mosquitto listens, kept across starts.

Written when the ports are first chosen (``fleetpush quickstart init``, or the first
``fleetpush broker run``) and again at every start. Read by ``broker run`` to listen on the
same ports after a restart (devices and the orchestrator keep their URLs), by provisioning
for the URLs it writes into device bundles, and by ``fleetpush serve`` when
``orchestrator.toml`` has no ``[mqtt] url``. No secrets: the orchestrator's password stays
in the file it names.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fleetpush_common.atomic import atomic_write

__all__ = ["INFO_FILE", "BrokerInfo", "read_info", "write_info"]

INFO_FILE = "broker.json"


@dataclass(frozen=True, slots=True)
class BrokerInfo:
    """The listeners recorded for one broker working directory."""

    host: str
    port: int
    tls_port: int | None
    topic_prefix: str
    orchestrator_user: str
    password_file: Path

    @property
    def connect_host(self) -> str:
        """The address a client on this host connects to (a wildcard listener is local)."""
        return "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host  # noqa: S104


def _port(value: Any, what: str, path: Path) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value < 65536:
        raise ValueError(f"{path}: {what}: expected a port number")
    return value


def read_info(workdir: Path) -> BrokerInfo | None:
    """The recorded listeners of ``workdir``, or None when nothing was recorded yet.

    Raises:
        ValueError: the file exists but is not a valid record.
    """
    path = Path(workdir) / INFO_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: unreadable ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")  # noqa: TRY004
    tls_port = data.get("tls_port")
    host, prefix = data.get("host", "127.0.0.1"), data.get("topic_prefix", "fleetpush")
    user = data.get("orchestrator_user", "fleetpush-orchestrator")
    secret = data.get("orchestrator_password_file") or str(path.parent / "orchestrator.secret")
    if not all(isinstance(v, str) for v in (host, prefix, user, secret)):
        raise ValueError(f"{path}: host, topic_prefix and orchestrator_user must be strings")
    return BrokerInfo(
        host=host,
        port=_port(data.get("port"), "port", path),
        tls_port=None if tls_port is None else _port(tls_port, "tls_port", path),
        topic_prefix=prefix,
        orchestrator_user=user,
        password_file=Path(secret),
    )


def write_info(workdir: Path, info: dict[str, Any]) -> None:
    """Record ``info`` (``MosquittoBroker.connection_info()``) atomically."""
    atomic_write(Path(workdir) / INFO_FILE, json.dumps(info, indent=1).encode() + b"\n")
