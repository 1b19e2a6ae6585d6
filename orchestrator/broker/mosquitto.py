"""Start Mosquitto from broker_config/ in a working directory, on free ports.

Used by the tests, the demo, ``fleetpush broker run`` and provisioning. The working directory
holds everything the broker reads, generated from the identity registry::

    identities.json        the registry (orchestrator.broker.registry)
    passwd, acl            generated from it
    ca/ca.pem ca/ca.key    the fleet CA (orchestrator.pki), ca/crl.pem its CRL
    server.pem server.key  the TLS listener's certificate, issued by the fleet CA at start
    certs/ID.pem ID.key    client certificates issued by add_device_cert
    orchestrator.secret    the orchestrator identity's password (mode 0600)
    mosquitto.conf         rendered from broker_config/mosquitto.conf
    mosquitto.pid, mosquitto.log, data/ (persistence), broker.json (where it listens)

``reload()`` sends SIGHUP so password, ACL and CRL changes apply without dropping connected
clients. Several processes may manage one working directory (a broker started by ``fleetpush
broker run`` and a ``fleetpush devices provision`` next to it): registry changes are locked,
and a process that did not start the broker signals the pid in ``mosquitto.pid``.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import replace
from pathlib import Path
from types import TracebackType
from typing import Any

from fleetpush_protocol.atomic import atomic_write
from fleetpush_protocol.topics import Topics
from orchestrator.broker.credentials import (
    DEVICE_ROLE,
    ORCHESTRATOR_ROLE,
    BrokerUser,
    hash_password,
    render_acl,
    render_passwd,
)
from orchestrator.broker.registry import Identity, IdentityRegistry
from orchestrator.mqtt import codec
from orchestrator.pki import FleetCA

__all__ = [
    "CONFIG_DIR",
    "MosquittoBroker",
    "MosquittoNotFoundError",
    "find_mosquitto",
    "free_port",
    "render_config",
]

logger = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).resolve().parents[2] / "broker_config"
INSTALL_HINT = "install it with: sudo apt-get install mosquitto (Debian/Ubuntu)"
RELOAD_LOG_LINE = b"Reloading config."
_TLS_BLOCK = re.compile(r"^@TLS_BEGIN@\n(.*?)^@TLS_END@\n", re.MULTILINE | re.DOTALL)


class MosquittoNotFoundError(RuntimeError):
    """No mosquitto binary on this machine."""


def find_mosquitto() -> str:
    """Path of the mosquitto binary, or raise ``MosquittoNotFoundError``."""
    found = shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if os.access(p, os.X_OK)),
        None,
    )
    if found is None:
        raise MosquittoNotFoundError(f"mosquitto is not installed; {INSTALL_HINT}")
    return found


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (the usual small race applies)."""
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def render_config(
    template: str,
    *,
    directory: Path,
    host: str,
    port: int,
    tls_port: int | None,
    user: str,
) -> str:
    """Fill in broker_config/mosquitto.conf; drop the TLS listener when ``tls_port`` is None."""
    text = _TLS_BLOCK.sub(lambda m: m.group(1) if tls_port is not None else "", template)
    return (
        text.replace("@DIR@", str(directory))
        .replace("@PORT@", str(port))
        .replace("@TLS_PORT@", str(tls_port))
        .replace("@HOST@", host)
        .replace("@USER@", user)
    )


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
    ) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.topics = topics or Topics()
        self.host = host
        self.port = port or free_port(host)
        self.tls = tls
        self.tls_port: int | None = (tls_port or free_port(host)) if tls else None
        self.registry = IdentityRegistry(self.workdir / "identities.json")
        self._passwords: dict[str, str] = {}
        # Passwords that exist only while revoke() takes over a session (username -> hash).
        self._transient: dict[str, str] = {}
        self._proc: subprocess.Popen[bytes] | None = None
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
        with self.registry.locked() as reg:
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
            self._write_files(reg)
        self._passwords[username] = password

    def add_device(
        self, device_id: str, groups: tuple[str, ...] = (), password: str | None = None
    ) -> str:
        """Allow ``device_id`` to connect with a password; return it. Call ``reload()`` after."""
        if device_id == self.ORCHESTRATOR_USER:
            raise ValueError(f"{device_id!r} is reserved for the orchestrator")
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
        if device_id == self.ORCHESTRATOR_USER:
            raise ValueError(f"{device_id!r} is reserved for the orchestrator")
        BrokerUser(device_id, DEVICE_ROLE, tuple(groups))  # validate before issuing
        issued = self.ca.issue_client(device_id)
        folder = Path(directory) if directory is not None else self.workdir / "certs"
        folder.mkdir(parents=True, exist_ok=True)
        cert_path, key_path = folder / f"{device_id}.pem", folder / f"{device_id}.key"
        issued.write(cert_path, key_path)
        with self.registry.locked() as reg:
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
            self._write_files(reg)
        return cert_path, key_path

    def add_orchestrator(self, username: str, password: str | None = None) -> str:
        """Add another identity with the orchestrator's rights; return its password."""
        password = password or secrets.token_urlsafe(18)
        self._put(username, ORCHESTRATOR_ROLE, (), password)
        return password

    def set_groups(self, device_id: str, groups: tuple[str, ...]) -> None:
        """Change a device's groups: regenerates the ACL and reloads the broker."""
        with self.registry.locked() as reg:
            old = reg.get(device_id)
            if old is None:
                raise KeyError(device_id)
            reg.put(replace(old, groups=tuple(groups)))
            self._write_files(reg)
        self.reload()

    def set_model(self, device_id: str, model: str | None) -> None:
        """Record the device's model in the registry (informational)."""
        with self.registry.locked() as reg:
            old = reg.get(device_id)
            if old is None:
                raise KeyError(device_id)
            reg.put(replace(old, model=model))

    def revoke(self, device_id: str, *, timeout: float = 10.0) -> bool:
        """Take all access away from ``device_id`` and drop it if it is connected.

        Removes it from the password file and ACL, adds its certificate serials to the CRL,
        reloads the broker, and then takes over its session: Mosquitto 2.0 keeps already
        connected clients on reload, so a revoked device would otherwise stay connected (its
        ACL is gone, so it could no longer publish or receive, but its session and queue
        would live on). The takeover connects with the device's own client id (= username),
        using a one-time password that exists only for this step, with clean start and
        session expiry 0: Mosquitto closes the old connection and discards its session.

        Returns whether the identity existed. Raises ``TimeoutError`` when the broker is
        running but the takeover did not succeed within ``timeout`` seconds.
        """
        with self.registry.locked() as reg:
            identity = reg.pop(device_id)
            if identity is not None:
                reg.revoked_serials.update(identity.cert_serials)
            self._passwords.pop(device_id, None)
            one_time = secrets.token_urlsafe(24)
            self._transient[device_id] = hash_password(one_time)
            self._write_files(reg)
        try:
            # A broker this process cannot signal (a systemd service reloaded by a path unit,
            # deploy/) may still be running: try the takeover whenever the listener answers;
            # it retries until the reload that knows the one-time password has happened.
            if self.reload() or _listening(self.host, self.port):
                self._take_over_session(device_id, one_time, timeout)
        finally:
            self._transient.pop(device_id, None)
            self.reload()
        return identity is not None

    def password(self, username: str) -> str:
        """The password of an identity added by this object (not stored elsewhere)."""
        return self._passwords[username]

    def _write_files(self, reg: IdentityRegistry) -> None:
        users = reg.users()
        transient = [
            BrokerUser(name, DEVICE_ROLE, (), h)
            for name, h in self._transient.items()
            if name not in reg.identities
        ]
        # The one-time takeover identity has a password but no ACL lines: it can do nothing.
        # 0640: in a real install Mosquitto runs as its own user and reads these through
        # the group (deploy/README.md); they hold hashes and topic names, not secrets.
        _write(self.passwd_path, render_passwd([*users, *transient]), 0o640)
        _write(self.acl_path, render_acl(users, self.topics), 0o640)
        if self.tls or (self.workdir / "ca" / "ca.key").exists():
            self.ca.write_crl(reg.revoked_serials)

    def write_auth_files(self) -> None:
        """Regenerate ``passwd``, ``acl`` and the CRL from the registry."""
        with self.registry.locked() as reg:
            self._write_files(reg)

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
        return self._proc is not None and self._proc.poll() is None

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
        (self.workdir / "data").mkdir(parents=True, exist_ok=True)
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
        binary = find_mosquitto()
        if self.tls:
            self._prepare_tls()
        # Also re-signs the CRL: OpenSSL rejects every client once a CRL's nextUpdate passes.
        self.write_auth_files()
        config = self.render_config()
        log = (self.workdir / "stderr.log").open("ab")
        self._proc = subprocess.Popen(
            [binary, "-c", str(config)], stdout=log, stderr=log, start_new_session=True
        )
        log.close()
        ports = [p for p in (self.port, self.tls_port) if p is not None]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited at start; see {self.log_path}")
            if all(_listening(self.host, p) for p in ports):
                logger.debug("mosquitto listening on %s:%s", self.host, ports)
                atomic_write(
                    self.workdir / "broker.json",
                    json.dumps(self.connection_info(), indent=1).encode(),
                )
                return
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"mosquitto did not listen on {self.host}:{ports} in {timeout}s")

    @property
    def pid(self) -> int | None:
        """The running broker's process id, or None."""
        return self._broker_pid()

    def _broker_pid(self) -> int | None:
        if self._proc is not None:
            return self._proc.pid if self.running else None
        # Started by another process (fleetpush broker run): signal the pid it wrote.
        # The pid file may be stale and its pid reused: only signal a mosquitto running from
        # this working directory's configuration.
        try:
            pid = int(self.pid_path.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            return None
        config = str(self.workdir / "mosquitto.conf").encode()
        if not any(a.endswith(b"mosquitto") for a in cmdline) or config not in cmdline:
            return None
        return pid

    def reload(self, timeout: float = 5.0) -> bool:
        """Re-read passwords, ACLs and the CRL (SIGHUP); connected clients stay connected.

        Waits (up to ``timeout``) until Mosquitto has logged that it reloaded, so a caller
        can rely on the new rules right after. Returns False when no broker is running
        (the files are written either way and apply at the next start).
        """
        self.write_auth_files()
        pid = self._broker_pid()
        if pid is None:
            return False
        before = _size(self.log_path)
        os.kill(pid, signal.SIGHUP)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), self.log_path.open("rb") as f:
                f.seek(before)
                if RELOAD_LOG_LINE in f.read():
                    return True
            time.sleep(0.01)
        logger.warning("mosquitto did not log a reload within %.1fs", timeout)
        return True

    def _take_over_session(self, username: str, password: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = "no attempt"
        while time.monotonic() < deadline:
            last = _connect_once(self.host, self.port, username, password, deadline)
            if last == "Success":
                logger.info("took over and discarded the session of %s", username)
                return
            time.sleep(0.05)
        raise TimeoutError(f"could not take over {username}'s session: {last}")

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


def _connect_once(host: str, port: int, username: str, password: str, deadline: float) -> str:
    """Connect as ``username`` (client id = username), clean start, expiry 0; disconnect.

    Returns the CONNACK reason as text ("Success" when the session was taken over).
    """
    decoder = codec.Decoder()
    try:
        with socket.create_connection((host, port), max(0.1, deadline - time.monotonic())) as s:
            s.sendall(codec.connect(username, username, password, keepalive_s=10))
            while True:
                s.settimeout(max(0.1, deadline - time.monotonic()))
                data = s.recv(4096)
                if not data:
                    return "disconnected before CONNACK"
                for packet in decoder.feed(data):
                    if isinstance(packet, codec.ConnAck):
                        if packet.reason:
                            return f"refused: reason 0x{packet.reason:02x}"
                        s.sendall(codec.disconnect())
                        return "Success"
    except (OSError, codec.MalformedPacketError) as e:
        return f"connect failed: {e}"


def _listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), 0.2):
            return True
    except OSError:
        return False


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _write(path: Path, text: str, mode: int) -> None:
    atomic_write(path, text.encode(), mode=mode)
