"""``MosquittoBroker``: one broker working directory, its identities and its process.

Used by the tests, the demo, ``fleetpush broker run`` and provisioning. The working directory
holds everything the broker reads, generated from the identity registry::

    identities.json        the registry (orchestrator.broker.registry)
    passwd, acl            generated from it (orchestrator.broker.render)
    ca/ca.pem ca/ca.key    the fleet CA (orchestrator.security.pki), ca/crl.pem its CRL
    server.pem server.key  the TLS listener's certificate, issued by the fleet CA at start
    certs/ID.pem ID.key    client certificates issued by add_device_cert
    orchestrator.secret    the orchestrator identity's password (mode 0600)
    mosquitto.conf         rendered from broker_config/mosquitto.conf
    mosquitto.pid, mosquitto.log, data/ (persistence), broker.json (where it listens)

This class ties the parts together: the pure rendering (``render``), the process
(``process``), the confirmation of reloads by the broker itself (``reload``) and revocation
(``revocation``). ``reload()`` sends SIGHUP so password, ACL and CRL changes apply without
dropping connected clients, and returns only once the broker accepted a login that exists
only in the new files. Several processes may manage one working directory (a broker started
by ``fleetpush broker run`` and a ``fleetpush devices provision`` next to it): registry
changes are locked, and a process that did not start the broker signals the pid in
``mosquitto.pid``. The working directory is made absolute, so it means the same folder to
every process whatever its working directory.
"""

from __future__ import annotations

import contextlib
import getpass
import secrets
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from types import TracebackType
from typing import Any

from fleetpush_common.atomic import atomic_write, make_private_dir
from fleetpush_protocol.topics import Topics
from orchestrator.broker.credentials import (
    DEVICE_ROLE,
    ORCHESTRATOR_ROLE,
    BrokerUser,
    hash_password,
)
from orchestrator.broker.info import write_info
from orchestrator.broker.process import (
    MosquittoNotFoundError,
    MosquittoProcess,
    find_mosquitto,
    free_port,
)
from orchestrator.broker.registry import Identity, IdentityRegistry, Transient
from orchestrator.broker.reload import CANARY_PREFIX, canary_name, signal_and_confirm
from orchestrator.broker.render import CONFIG_DIR, render_auth_files, render_config
from orchestrator.broker.revocation import revoke_identity
from orchestrator.security.pki import FleetCA

__all__ = [
    "CONFIG_DIR",
    "MosquittoBroker",
    "MosquittoNotFoundError",
    "find_mosquitto",
    "free_port",
    "render_config",
]

# A canary outlives its reload only if its process died mid-step; the next write drops it.
CANARY_TTL_S = 300.0


class MosquittoBroker:
    """One Mosquitto process configured from ``broker_config/mosquitto.conf``.

    Args:
        workdir: holds the registry, generated files, persistence and log (module doc).
        topics: topic layout the ACL protects.
        port: username/password listener port; a free one is picked when omitted.
        host: listeners' address.
        tls: also open the client-certificate listener (creates the fleet CA on first use
            and issues the broker a server certificate for ``host``, localhost, 127.0.0.1).
        tls_port: its port; a free one is picked when omitted.
        clock: wall-clock seconds, for the expiry of transient entries (canaries).
    """

    ORCHESTRATOR_USER = "fleetpush-orchestrator"

    def __init__(
        self,
        workdir: Path,
        *,
        topics: Topics | None = None,
        port: int | None = None,
        host: str = "127.0.0.1",
        tls: bool = False,
        tls_port: int | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.clock = clock
        self.workdir = Path(workdir).resolve()
        make_private_dir(self.workdir)
        self.topics = topics or Topics()
        self.host = host
        self.port = port or free_port(host)
        self.tls = tls
        self.tls_port: int | None = (tls_port or free_port(host)) if tls else None
        self.registry = IdentityRegistry(self.workdir / "identities.json")
        self.process = MosquittoProcess(
            self.workdir / "mosquitto.conf", self.pid_path, self.workdir / "stderr.log"
        )
        self._passwords: dict[str, str] = {}
        self._ca: FleetCA | None = None
        self.orchestrator_password = self._orchestrator_secret()

    # --- paths ---------------------------------------------------------------------------

    @property
    def passwd_path(self) -> Path:
        return self.workdir / "passwd"

    @property
    def acl_path(self) -> Path:
        return self.workdir / "acl"

    @property
    def log_path(self) -> Path:
        return self.workdir / "mosquitto.log"

    @property
    def pid_path(self) -> Path:
        return self.workdir / "mosquitto.pid"

    @property
    def ca_file(self) -> Path:
        """The fleet CA certificate: devices verify the broker with it (``ca_file``)."""
        return self.workdir / "ca" / "ca.pem"

    @property
    def ca(self) -> FleetCA:
        """The fleet CA in ``workdir/ca``, created on first use."""
        if self._ca is None:
            self._ca = FleetCA.load_or_create(self.workdir / "ca")
        return self._ca

    # --- identities ----------------------------------------------------------------------

    @contextlib.contextmanager
    def changing(self) -> Iterator[IdentityRegistry]:
        """Change the registry under its lock; ``passwd``, ``acl`` and the CRL follow."""
        with self.registry.locked() as reg:
            yield reg
            self._write_files(reg)

    def _orchestrator_secret(self) -> str:
        """The orchestrator's password, kept in ``orchestrator.secret`` across restarts."""
        path = self.workdir / "orchestrator.secret"
        if path.exists() and self.registry.get(self.ORCHESTRATOR_USER) is not None:
            return path.read_text().strip()
        password = secrets.token_urlsafe(18)
        atomic_write(path, password.encode() + b"\n", mode=0o600)
        self._put(self.ORCHESTRATOR_USER, ORCHESTRATOR_ROLE, (), password)
        return password

    def _put(self, username: str, role: str, groups: tuple[str, ...], password: str) -> None:
        with self.changing() as reg:
            old = reg.get(username)
            reg.put(
                Identity(
                    username,
                    role,
                    tuple(groups),
                    hash_password(password),
                    cert_serials=old.cert_serials if old else (),
                    model=old.model if old else None,
                )
            )
        self._passwords[username] = password

    def _check_free(self, username: str, *, device: bool = True) -> None:
        if (device and username == self.ORCHESTRATOR_USER) or username.startswith(CANARY_PREFIX):
            raise ValueError(f"{username!r} is reserved for the orchestrator")

    def add_device(
        self, device_id: str, groups: tuple[str, ...] = (), password: str | None = None
    ) -> str:
        """Allow ``device_id`` to connect with a password; return it. Call ``reload()`` after."""
        self._check_free(device_id)
        password = password or secrets.token_urlsafe(18)
        self._put(device_id, DEVICE_ROLE, tuple(groups), password)
        return password

    def add_device_cert(
        self, device_id: str, groups: tuple[str, ...] = (), *, directory: Path | None = None
    ) -> tuple[Path, Path]:
        """Issue ``device_id`` a client certificate (CN = device id) from the fleet CA.

        Writes ``ID.pem`` and ``ID.key`` into ``directory`` (default ``workdir/certs``) and
        returns their paths. The device keeps any password it already had. Call
        ``reload()`` after.
        """
        self._check_free(device_id)
        BrokerUser(device_id, DEVICE_ROLE, tuple(groups))  # validate before issuing
        issued = self.ca.issue_client(device_id)
        folder = Path(directory) if directory is not None else self.workdir / "certs"
        make_private_dir(folder)
        cert_path, key_path = folder / f"{device_id}.pem", folder / f"{device_id}.key"
        issued.write(cert_path, key_path)
        with self.changing() as reg:
            old = reg.get(device_id)
            reg.put(
                Identity(
                    device_id,
                    DEVICE_ROLE,
                    tuple(groups),
                    old.password_hash if old else None,
                    cert_serials=(*(old.cert_serials if old else ()), issued.serial),
                    model=old.model if old else None,
                )
            )
        return cert_path, key_path

    def add_orchestrator(self, username: str, password: str | None = None) -> str:
        """Add another identity with the orchestrator's rights; return its password."""
        self._check_free(username, device=False)
        password = password or secrets.token_urlsafe(18)
        self._put(username, ORCHESTRATOR_ROLE, (), password)
        return password

    def set_groups(self, device_id: str, groups: tuple[str, ...]) -> None:
        """Change a device's groups: regenerates the ACL and reloads the broker."""
        with self.changing() as reg:
            old = reg.get(device_id)
            if old is None:
                raise KeyError(device_id)
            reg.put(replace(old, groups=tuple(groups)))
        self.reload()

    def set_model(self, device_id: str, model: str | None) -> None:
        """Record the device's model in the registry: the model the orchestrator targets."""
        with self.registry.locked() as reg:
            old = reg.get(device_id)
            if old is None:
                raise KeyError(device_id)
            reg.put(replace(old, model=model))

    def revoke(self, device_id: str, *, timeout: float = 10.0) -> bool:
        """Take all access away from ``device_id`` and drop it if it is connected.

        Removes it from the password file and ACL, adds its certificate serials to the CRL,
        reloads the broker and takes over its session (``orchestrator.broker.revocation``).
        Returns whether the identity existed. Raises ``RevocationError`` when a broker is
        running but did not confirm the takeover within ``timeout`` seconds: the device may
        then still be connected.
        """
        self._passwords.pop(device_id, None)
        return revoke_identity(self, device_id, timeout)

    def password(self, username: str) -> str:
        """The password of an identity added by this object (not stored elsewhere)."""
        return self._passwords[username]

    def _write_files(self, reg: IdentityRegistry) -> None:
        files = render_auth_files(reg.users(), reg.transient_hashes(self.clock()), self.topics)
        # 0640: in a real install Mosquitto runs as its own user and reads these through
        # the group (deploy/README.md); they hold hashes and topic names, not secrets.
        _write(self.passwd_path, files.passwd, 0o640)
        _write(self.acl_path, files.acl, 0o640)
        if self.tls or (self.workdir / "ca" / "ca.key").exists():
            self.ca.write_crl(reg.revoked_serials)

    def write_auth_files(self) -> None:
        """Regenerate ``passwd``, ``acl`` and the CRL from the registry."""
        with self.changing():
            pass

    # --- process -------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The username/password listener."""
        return f"mqtt://{self.host}:{self.port}"

    @property
    def tls_url(self) -> str | None:
        """The client-certificate listener, when enabled."""
        return f"mqtts://{self.host}:{self.tls_port}" if self.tls_port is not None else None

    @property
    def running(self) -> bool:
        """The broker this object started is alive."""
        return self.process.running

    def connection_info(self) -> dict[str, Any]:
        """Where the broker listens and how to log in as the orchestrator (no secrets)."""
        return {
            "host": self.host,
            "port": self.port,
            "url": self.url,
            "tls_port": self.tls_port,
            "tls_url": self.tls_url,
            "ca_file": str(self.ca_file) if self.tls else None,
            "orchestrator_user": self.ORCHESTRATOR_USER,
            "orchestrator_password_file": str(self.workdir / "orchestrator.secret"),
            "topic_prefix": self.topics.prefix,
            "workdir": str(self.workdir),
        }

    def render_config(self) -> Path:
        """Write ``workdir/mosquitto.conf`` from the template."""
        text = render_config(
            (CONFIG_DIR / "mosquitto.conf").read_text(),
            directory=self.workdir,
            host=self.host,
            port=self.port,
            tls_port=self.tls_port,
            user=getpass.getuser(),
        )
        make_private_dir(self.workdir / "data")
        path = self.workdir / "mosquitto.conf"
        _write(path, text, 0o600)
        return path

    def _prepare_tls(self) -> None:
        # A fresh server certificate each start: devices pin the CA, not this certificate,
        # so nothing needs to be distributed, and it never expires under a running fleet.
        names = [self.host, "localhost", "127.0.0.1"]
        if self.host in ("0.0.0.0", "::"):  # noqa: S104 - naming the wildcard, not binding
            names += [socket.gethostname(), socket.getfqdn()]
            names = [n for n in names if n not in ("0.0.0.0", "::")]  # noqa: S104
        self.ca.issue_server(names).write(self.workdir / "server.pem", self.workdir / "server.key")

    def start(self, timeout: float = 10.0) -> None:
        """Start Mosquitto and wait until every listener accepts connections."""
        find_mosquitto()  # before writing anything: the error says how to install it
        if self.tls:
            self._prepare_tls()
        # Also re-signs the CRL: OpenSSL rejects every client once a CRL's nextUpdate passes.
        self.write_auth_files()
        self.render_config()
        ports = [p for p in (self.port, self.tls_port) if p is not None]
        self.process.start(self.host, ports, timeout)
        self.record()

    def record(self) -> None:
        """Write ``broker.json``: the ports to start on next time, and how to log in."""
        write_info(self.workdir, self.connection_info())

    @property
    def pid(self) -> int | None:
        """The running broker's process id, or None."""
        return self.process.find_pid()

    def reload(self, timeout: float = 5.0) -> bool:
        """Re-read passwords, ACLs and the CRL (SIGHUP); connected clients stay connected.

        Returns True once the broker itself confirmed it applied the files written here: it
        accepted a login (a canary, see ``orchestrator.broker.reload``) that exists only in
        them. Returns False when no broker is running (the files apply at the next start).
        Raises ``ReloadError`` when a broker runs (or listens) but did not confirm within
        ``timeout`` seconds.
        """
        name, password = canary_name(), secrets.token_urlsafe(18)
        with self.changing() as reg:
            reg.transient[name] = Transient(hash_password(password), self.clock() + CANARY_TTL_S)
        try:
            return signal_and_confirm(
                self.process, self.host, self.port,
                username=name, password=password, timeout=timeout,
            )  # fmt: skip
        finally:
            # Registry only: the canary's password stays valid (and useless) until the next
            # write, which need not wait for another reload.
            with self.registry.locked() as reg:
                reg.transient.pop(name, None)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop gracefully, so persistence is written."""
        self.process.stop(timeout)

    def kill(self) -> None:
        """SIGKILL: no chance to save state beyond the last autosave."""
        self.process.kill()

    def restart(self) -> None:
        """Stop gracefully and start again on the same ports."""
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
    atomic_write(path, text.encode(), mode=mode)
