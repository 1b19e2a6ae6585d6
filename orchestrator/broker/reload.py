"""Confirming, through the broker itself, that Mosquitto applied the files just written.

A SIGHUP says nothing about when (or whether) Mosquitto re-read its files, and a log line
is a weak witness (another reload may have written it; a broker this process cannot signal
writes none). Instead every reload adds a *canary*: a fresh username with a random password
and no ACL lines, written into ``passwd`` with the change. Mosquitto reads ``passwd`` and
``acl`` together on reload, so once a CONNECT with the canary's password is accepted, the
broker runs on files at least as new as the change. A revoke uses the same proof with the
device's own username (its one-time takeover password), which also drops its session.
"""

from __future__ import annotations

import secrets
import socket
import time
from typing import TYPE_CHECKING

from orchestrator.broker.process import listening
from orchestrator.mqtt import codec
from orchestrator.mqtt.reasons import reason_name

if TYPE_CHECKING:
    from orchestrator.broker.process import MosquittoProcess

__all__ = [
    "CANARY_PREFIX",
    "ReloadError",
    "canary_name",
    "connect_once",
    "signal_and_confirm",
    "wait_for_login",
]

CANARY_PREFIX = "fleetpush-reload-"
SUCCESS = "Success"


class ReloadError(RuntimeError):
    """The broker did not confirm that it applied new passwords, ACLs or CRL."""

    def __init__(self, message: str, *, detail: str = "") -> None:
        super().__init__(message)
        self.detail = detail or message


def canary_name() -> str:
    """A username no device can have (``CANARY_PREFIX`` is reserved), new for each reload."""
    return CANARY_PREFIX + secrets.token_hex(6)


def connect_once(host: str, port: int, username: str, password: str, timeout: float) -> str:
    """Connect as ``username`` (client id = username), clean start, expiry 0; disconnect.

    Returns the CONNACK reason as text ("Success" when accepted). With the broker's
    ``use_username_as_clientid``, an accepted CONNECT takes over any session of that
    username: Mosquitto closes the old connection and, with expiry 0, discards the session.
    """
    decoder = codec.Decoder()
    deadline = time.monotonic() + max(0.1, timeout)
    try:
        with socket.create_connection((host, port), max(0.1, timeout)) as s:
            s.sendall(codec.connect(username, username, password, keepalive_s=10))
            while True:
                s.settimeout(max(0.1, deadline - time.monotonic()))
                data = s.recv(4096)
                if not data:
                    return "disconnected before CONNACK"
                for packet in decoder.feed(data):
                    if isinstance(packet, codec.ConnAck):
                        if packet.reason:
                            return reason_name(packet.reason)
                        s.sendall(codec.disconnect())
                        return SUCCESS
    except TimeoutError:
        return "no CONNACK"
    except (OSError, codec.MalformedPacketError) as e:
        return f"connect failed: {e}"


def wait_for_login(host: str, port: int, username: str, password: str, timeout: float) -> str:
    """Retry ``connect_once`` until it is accepted or ``timeout`` passes; the last reason."""
    deadline = time.monotonic() + timeout
    last = "no attempt"
    while True:
        last = connect_once(host, port, username, password, deadline - time.monotonic())
        if last == SUCCESS or time.monotonic() >= deadline:
            return last
        time.sleep(0.05)


def signal_and_confirm(
    process: MosquittoProcess,
    host: str,
    port: int,
    *,
    username: str,
    password: str,
    timeout: float,
) -> bool:
    """SIGHUP the broker, then wait until it accepts ``username``/``password``.

    The login exists only in the files just written, so its acceptance confirms the reload.
    Returns False when no broker runs (nothing to signal and nothing listening). Raises
    ``ReloadError`` when one runs but did not confirm within ``timeout`` seconds.
    """
    pid = process.hangup()
    # A broker this process cannot signal may be reloaded by someone else (deploy/: a
    # systemd path unit watching the files): wait for that whenever the listener answers.
    if pid is None and not listening(host, port):
        return False
    last = wait_for_login(host, port, username, password, timeout)
    if last == SUCCESS:
        return True
    how = f"sent SIGHUP to pid {pid}" if pid is not None else process.why_no_pid()
    detail = f"{how}; last login attempt: {last}"
    raise ReloadError(
        f"the broker at {host}:{port} did not confirm within {timeout:g}s that it loaded the "
        f"new passwd, acl and CRL ({detail}); reload it (kill -HUP <mosquitto pid>, or "
        f"systemctl reload mosquitto) and check that it runs from {process.config}",
        detail=detail,
    )
