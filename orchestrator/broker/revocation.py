"""Revoking a broker identity so that the broker, not just its files, forgets it.

Mosquitto 2.0 keeps already connected clients on reload: a revoked device whose ACL lines
are gone can no longer publish or receive, but its connection, session and queue live on.
So a revoke takes its session over: it gives the device id a one-time password (a transient
registry entry with no ACL lines), reloads, and connects with the device's own client id
(= username), clean start and session expiry 0. Mosquitto closes the old connection and
discards its session. That accepted CONNECT is also the broker's own confirmation that it
runs on the new files: the device's old password and certificate are refused from then on.

When the takeover cannot be done, ``RevocationError`` says so: the device may still be
connected and able to reconnect, which an operator must not learn from a dashboard later.
"""

from __future__ import annotations

import logging
import secrets
from typing import TYPE_CHECKING

from orchestrator.broker.credentials import hash_password
from orchestrator.broker.registry import Transient
from orchestrator.broker.reload import ReloadError, signal_and_confirm

if TYPE_CHECKING:
    from orchestrator.broker.mosquitto import MosquittoBroker

__all__ = ["RevocationError", "revoke_identity"]

logger = logging.getLogger(__name__)


class RevocationError(ReloadError):
    """The identity is gone from the files, but the broker did not confirm it dropped it."""


def revoke_identity(broker: MosquittoBroker, username: str, timeout: float) -> bool:
    """Remove ``username`` from the registry, CRL it, reload and take over its session.

    Returns whether the identity existed. Raises ``RevocationError`` when a broker is
    running (or listening) but did not accept the takeover within ``timeout`` seconds.
    When no broker runs at all, the files are enough: they apply at its next start.
    """
    one_time = secrets.token_urlsafe(24)
    with broker.changing() as reg:
        identity = reg.pop(username)
        if identity is not None:
            reg.revoked_serials.update(identity.cert_serials)
        reg.transient[username] = Transient(hash_password(one_time), broker.clock() + timeout + 60)
    try:
        running = signal_and_confirm(
            broker.process,
            broker.host,
            broker.port,
            username=username,
            password=one_time,
            timeout=timeout,
        )
    except ReloadError as e:
        raise RevocationError(_incomplete(broker, username, timeout, e.detail)) from None
    finally:
        with broker.changing() as reg:
            reg.transient.pop(username, None)
    if not running:
        logger.info("revoked %s; no broker is running, the files apply at its start", username)
        return identity is not None
    logger.info("revoked %s; took over and discarded its session", username)
    try:
        broker.reload()  # the one-time password stops working too
    except ReloadError as e:
        # The device is already dropped and refused; only a password nobody knows remains.
        logger.warning("revoked %s, but the clean-up reload failed: %s", username, e)
    return identity is not None


def _incomplete(broker: MosquittoBroker, username: str, timeout: float, detail: str) -> str:
    return (
        f"REVOKE INCOMPLETE: {username} was removed from {broker.passwd_path}, "
        f"{broker.acl_path} and the CRL, but the broker at {broker.host}:{broker.port} did not "
        f"confirm within {timeout:g}s that it applied them ({detail}). {username} may still "
        f"be connected, and may reconnect with its old credentials until the broker reloads. "
        f"Reload the broker (kill -HUP <mosquitto pid>, or systemctl reload mosquitto), check "
        f"that it runs from {broker.process.config}, then run the revoke again."
    )
