"""What every broker of the compatibility matrix shares: a working directory, the identity
registry the orchestrator targets by, the orchestrator's login, and a child process in its
own process group (SIGTERM, then SIGKILL).

Each broker (``ejabberd``, ``nats``, ``rabbitmq``) renders its own configuration from
``broker_config/<name>/`` and provisions identities with its own tool; the registry
(``identities.json``, ``orchestrator.broker.registry``) is the same file Mosquitto's
provisioning writes, so ``[registry] file`` works unchanged whichever broker runs.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import ClassVar, Protocol

from fleetpush_common.atomic import atomic_write, make_private_dir
from fleetpush_protocol.topics import Topics
from orchestrator.broker.credentials import DEVICE_ROLE, ORCHESTRATOR_ROLE
from orchestrator.broker.process import free_port, listening
from orchestrator.broker.registry import Identity, IdentityRegistry
from orchestrator.broker.render import CONFIG_DIR

__all__ = [
    "BrokerEndpoint",
    "BrokerNotFoundError",
    "ExternalBroker",
    "SharedIdentities",
    "fill",
    "find_binary",
    "write_file",
]

_PLACEHOLDER = re.compile(r"@[A-Z_]+@")

logger = logging.getLogger(__name__)


class BrokerEndpoint(Protocol):
    """What the test helpers and the stack need of a broker: Mosquitto or any other."""

    ORCHESTRATOR_USER: str
    topics: Topics
    host: str
    port: int
    orchestrator_password: str
    registry: IdentityRegistry

    @property
    def url(self) -> str: ...

    def add_device(
        self, device_id: str, groups: tuple[str, ...] = (), password: str | None = None
    ) -> str: ...

    def add_orchestrator(self, username: str, password: str | None = None) -> str: ...

    def reload(self, timeout: float = 5.0) -> bool: ...


class BrokerNotFoundError(RuntimeError):
    """A broker's program is not installed (scripts/install installs every one)."""


def find_binary(name: str, package: str, *candidates: str) -> str:
    """``name`` on PATH or at one of ``candidates``, else ``BrokerNotFoundError`` saying
    which Debian package to install."""
    found = shutil.which(name) or next((c for c in candidates if os.access(c, os.X_OK)), None)
    if found is None:
        raise BrokerNotFoundError(
            f"{name} is not installed: sudo apt-get install {package} (or scripts/install)"
        )
    return found


@dataclass
class SharedIdentities:
    """The registry and the passwords of the identities provisioned from this process: a
    broker's own, or one set shared by the nodes of a cluster (every node knows every login)."""

    registry: IdentityRegistry
    passwords: dict[str, str] = field(default_factory=dict)


class ExternalBroker:
    """One broker process configured from ``broker_config/<NAME>/``, on free ports.

    Subclasses say how to start the process (``command``), which ports must listen, and
    how identities reach the broker (``_provision``, ``_apply``).
    """

    NAME: ClassVar[str] = ""
    ORCHESTRATOR_USER = "fleetpush-orchestrator"
    # What the matrix records and the orchestrator is configured with.
    MQTT_VERSION: ClassVar[str] = "5"  # "5" or "3.1.1": the newest the broker speaks
    SHARED_SUBSCRIPTIONS: ClassVar[bool] = False  # `$share/...` honoured
    START_TIMEOUT: ClassVar[float] = 60.0  # seconds; generous: the machine may be loaded

    def __init__(
        self, workdir: Path, *, topics: Topics, host: str = "127.0.0.1",
        shared: SharedIdentities | None = None,
    ) -> None:  # fmt: skip
        self.workdir = Path(workdir).resolve()
        make_private_dir(self.workdir)
        self.topics = topics
        self.host = host
        self.port = free_port(host)
        if shared is None:
            shared = SharedIdentities(IdentityRegistry(self.workdir / "identities.json"))
        self.registry = shared.registry
        self.log_path = self.workdir / "broker.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._passwords = shared.passwords
        known = self._passwords.get(self.ORCHESTRATOR_USER)
        self.orchestrator_password = known or self.add_orchestrator(self.ORCHESTRATOR_USER)

    @property
    def config_dir(self) -> Path:
        """``broker_config/<NAME>``: the templates shipped as package data."""
        return CONFIG_DIR / self.NAME

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    # --- identities ----------------------------------------------------------------------

    def add_device(
        self, device_id: str, groups: tuple[str, ...] = (), password: str | None = None
    ) -> str:
        """Allow ``device_id`` (its own topics and ``groups``' notices); return its password.
        Call ``reload()`` after, as with Mosquitto."""
        if device_id == self.ORCHESTRATOR_USER:
            raise ValueError(f"{device_id!r} is reserved for the orchestrator")
        return self._put(Identity(device_id, DEVICE_ROLE, tuple(groups)), password)

    def add_orchestrator(self, username: str, password: str | None = None) -> str:
        """Another identity with the orchestrator's rights; return its password."""
        return self._put(Identity(username, ORCHESTRATOR_ROLE), password)

    def add_devices(
        self, device_ids: Sequence[str], groups: tuple[str, ...] = ()
    ) -> dict[str, str]:
        """Many devices in one registry write (benchmarks); return their passwords. Call
        ``reload()`` after."""
        passwords = {d: secrets.token_urlsafe(12) for d in device_ids}
        with self.registry.locked() as reg:
            for d in device_ids:
                reg.put(Identity(d, DEVICE_ROLE, tuple(groups)))
        self._passwords.update(passwords)
        if self.running:
            for d, pw in passwords.items():
                self._provision(d, pw)
        return passwords

    def _put(self, identity: Identity, password: str | None) -> str:
        password = password or secrets.token_urlsafe(18)
        with self.registry.locked() as reg:
            reg.put(identity)
        self._passwords[identity.username] = password
        if self.running:
            self._provision(identity.username, password)
        return password

    def password(self, username: str) -> str:
        return self._passwords[username]

    def identities(self) -> list[Identity]:
        self.registry.load()
        return [i for u in self.registry.users() if (i := self.registry.get(u.username))]

    def reload(self, timeout: float = 5.0) -> bool:
        """Apply registry changes (permissions, groups); True once the broker has them,
        False when it is not running (they apply at the next start)."""
        if not self.running:
            return False
        self._apply(timeout)
        return True

    # --- hooks ---------------------------------------------------------------------------

    def command(self) -> tuple[list[str], Mapping[str, str]]:
        """The program and its environment, after ``prepare()`` wrote the configuration."""
        raise NotImplementedError

    def prepare(self) -> None:
        """Write the configuration (and anything else the broker reads) before a start."""
        raise NotImplementedError

    def ports(self) -> Sequence[int]:
        """Every port that must accept connections before the broker counts as started."""
        return [self.port]

    def ready(self) -> bool:
        """Extra readiness beyond the listening ports (a management API answering...)."""
        return True

    def _provision(self, username: str, password: str) -> None:
        """Create or update one login on the running broker."""

    def _apply(self, timeout: float) -> None:
        """Bring the running broker's permissions in line with the registry."""

    def after_start(self) -> None:
        """Once listening: provision every identity the registry holds."""
        for name, password in self._passwords.items():
            self._provision(name, password)
        self._apply(10.0)

    # --- process -------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self.running and self._proc is not None else None

    def start(self, timeout: float | None = None) -> None:
        """Start the broker and wait until it listens and is provisioned."""
        timeout = self.START_TIMEOUT if timeout is None else timeout
        self.prepare()
        argv, env = self.command()
        with self.log_path.open("ab") as out:
            self._proc = subprocess.Popen(
                argv, stdout=out, stderr=out, env={**os.environ, **env}, cwd=self.workdir,
                start_new_session=True,
            )  # fmt: skip
        try:
            self._wait_started(self._proc, timeout)
        except BaseException:
            self.stop()  # never leave a half-started broker behind
            raise

    def _wait_started(self, proc: subprocess.Popen[bytes], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{self.NAME} exited at start; see {self.log_path}")
            if all(listening(self.host, p) for p in self.ports()) and self.ready():
                self.after_start()
                logger.debug("%s listening on %s", self.NAME, list(self.ports()))
                return
            time.sleep(0.1)
        raise RuntimeError(f"{self.NAME} did not start in {timeout}s; see {self.log_path}")

    def _signal(self, sig: int) -> None:
        if self._proc is not None and self._proc.poll() is None:
            # The whole group: Erlang brokers run helper processes (epmd stays, it is shared).
            os.killpg(self._proc.pid, sig)

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM (a clean shutdown writes the broker's state), SIGKILL after ``timeout``."""
        proc = self._proc
        if proc is None:
            return
        self._signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
        self._proc = None

    def kill(self) -> None:
        """SIGKILL: what a crashed node looks like."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            self._signal(signal.SIGKILL)
            proc.wait()

    def __enter__(self) -> ExternalBroker:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def write_file(path: Path, text: str, mode: int = 0o600) -> None:
    """Configuration files hold passwords for some brokers: private, and crash-safe."""
    atomic_write(path, text.encode(), mode=mode)


def fill(template: str, values: Mapping[str, str]) -> str:
    """Replace every ``@KEY@`` of ``template``; a placeholder left over is a bug."""
    for key, value in values.items():
        template = template.replace(f"@{key}@", value)
    leftover = _PLACEHOLDER.findall(template)
    if leftover:
        raise ValueError(f"unfilled placeholders: {sorted(set(leftover))}")
    return template
