"""Start Mosquitto from broker_config/ in a working directory, on a free port.

Used by the tests, the demo and operators trying fleetpush locally. The broker runs as a
child process; ``reload()`` sends SIGHUP so password and ACL changes apply without
dropping connected clients.
"""

from __future__ import annotations

import contextlib
import getpass
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

from fleetpush_protocol.topics import Topics
from orchestrator.broker.credentials import (
    DEVICE_ROLE,
    ORCHESTRATOR_ROLE,
    BrokerUser,
    hash_password,
    render_acl,
    render_passwd,
)

__all__ = ["MosquittoBroker", "MosquittoNotFoundError", "find_mosquitto", "free_port"]

logger = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).resolve().parents[2] / "broker_config"
INSTALL_HINT = "install it with: sudo apt-get install mosquitto (Debian/Ubuntu)"


class MosquittoNotFoundError(RuntimeError):
    """No mosquitto binary on this machine."""


def find_mosquitto() -> str:
    found = shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if os.access(p, os.X_OK)),
        None,
    )
    if found is None:
        raise MosquittoNotFoundError(f"mosquitto is not installed; {INSTALL_HINT}")
    return found


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


class MosquittoBroker:
    """One Mosquitto process configured from ``broker_config/mosquitto.conf``.

    Args:
        workdir: holds the rendered config, password file, ACL, persistence and log.
        topics: topic layout the ACL protects.
        port: listener port; a free one is picked when omitted.
        host: listener address.
    """

    ORCHESTRATOR_USER = "fleetpush-orchestrator"

    def __init__(
        self,
        workdir: Path,
        *,
        topics: Topics | None = None,
        port: int | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        self.workdir = Path(workdir)
        self.topics = topics or Topics()
        self.host = host
        self.port = port or free_port(host)
        self._users: dict[str, BrokerUser] = {}
        self._passwords: dict[str, str] = {}
        self._proc: subprocess.Popen[bytes] | None = None
        self.orchestrator_password = secrets.token_urlsafe(18)
        self._put(
            BrokerUser(self.ORCHESTRATOR_USER, role=ORCHESTRATOR_ROLE), self.orchestrator_password
        )

    # --- identities ----------------------------------------------------------------------

    def _put(self, user: BrokerUser, password: str) -> None:
        self._users[user.username] = BrokerUser(
            user.username, user.role, user.groups, hash_password(password)
        )
        self._passwords[user.username] = password

    def add_device(
        self, device_id: str, groups: tuple[str, ...] = (), password: str | None = None
    ) -> str:
        """Allow ``device_id`` to connect; return its password. Call ``reload()`` after."""
        password = password or secrets.token_urlsafe(18)
        self._put(BrokerUser(device_id, DEVICE_ROLE, tuple(groups)), password)
        self.write_auth_files()
        return password

    def add_orchestrator(self, username: str, password: str | None = None) -> str:
        password = password or secrets.token_urlsafe(18)
        self._put(BrokerUser(username, ORCHESTRATOR_ROLE), password)
        self.write_auth_files()
        return password

    def remove_user(self, username: str) -> None:
        self._users.pop(username, None)
        self._passwords.pop(username, None)
        self.write_auth_files()

    def password(self, username: str) -> str:
        return self._passwords[username]

    def write_auth_files(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        users = list(self._users.values())
        _write(self.workdir / "passwd", render_passwd(users), 0o600)
        _write(self.workdir / "acl", render_acl(users, self.topics), 0o600)

    # --- process -------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def render_config(self) -> Path:
        template = (CONFIG_DIR / "mosquitto.conf").read_text()
        text = (
            template.replace("@DIR@", str(self.workdir))
            .replace("@PORT@", str(self.port))
            .replace("@HOST@", self.host)
            .replace("@USER@", getpass.getuser())
        )
        (self.workdir / "data").mkdir(parents=True, exist_ok=True)
        path = self.workdir / "mosquitto.conf"
        _write(path, text, 0o600)
        return path

    def start(self, timeout: float = 10.0) -> None:
        binary = find_mosquitto()
        self.write_auth_files()
        config = self.render_config()
        log = (self.workdir / "stderr.log").open("ab")
        self._proc = subprocess.Popen(
            [binary, "-c", str(config)], stdout=log, stderr=log, start_new_session=True
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"mosquitto exited at start; see {self.workdir / 'mosquitto.log'}"
                )
            with (
                contextlib.suppress(OSError),
                socket.create_connection((self.host, self.port), 0.2),
            ):
                logger.debug("mosquitto listening on %s:%d", self.host, self.port)
                return
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"mosquitto did not listen on {self.host}:{self.port} in {timeout}s")

    def reload(self) -> None:
        """Re-read passwords and ACLs (SIGHUP); connected clients stay connected."""
        self.write_auth_files()
        if self._proc is not None and self.running:
            self._proc.send_signal(signal.SIGHUP)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop gracefully, so persistence is written."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def kill(self) -> None:
        """SIGKILL: no chance to save state beyond the last autosave."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def restart(self) -> None:
        self.stop()
        self.start()

    def __enter__(self) -> MosquittoBroker:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _write(path: Path, text: str, mode: int) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)
