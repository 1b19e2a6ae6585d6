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
import threading
import time
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from orchestrator.broker.process import listening

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
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=username, protocol=mqtt.MQTTv5)
    client.username_pw_set(username, password)
    done = threading.Event()
    result = ["no CONNACK"]

    def on_connect(c: mqtt.Client, u: object, f: object, rc: Any, p: object) -> None:
        result[0] = str(rc)
        done.set()

    def on_disconnect(c: mqtt.Client, u: object, f: object, rc: Any, p: object) -> None:
        if not done.is_set():
            result[0] = f"disconnected: {rc}"
            done.set()

    client.on_connect = on_connect
    client.on_disconnect = on_disconnect
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = 0
    try:
        client.connect(host, port, keepalive=10, clean_start=True, properties=props)
    except OSError as e:
        return f"connect failed: {e}"
    client.loop_start()
    try:
        done.wait(max(0.1, timeout))
        if result[0] == SUCCESS:
            client.disconnect()
    finally:
        client.loop_stop()
    return result[0]


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
