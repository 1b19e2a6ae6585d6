"""What the link says and hears differently in MQTT 5 and MQTT 3.1.1 (``[mqtt] protocol``).

3.1.1 (protocol level 4) has no properties, so no session expiry, no message expiry and
no receive maximum; its CONNACK has five return codes of its own, a refused subscription
is a bare 0x80 in the SUBACK, a PUBACK carries no reason (a broker that denies a publish
drops it and acknowledges it anyway), and the broker never sends DISCONNECT. What
fleetpush does instead is in docs/broker.md, "MQTT 3.1.1"; the pieces of it the link
needs are here, so ``link.py`` only asks.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from orchestrator.mqtt import codec
from orchestrator.mqtt.reasons import reason_name
from orchestrator.mqtt.settings import MqttConfig

__all__ = ["RefusedError", "connack_name", "hello", "subscription_fallback"]

logger = logging.getLogger(__name__)

V311 = 4  # the CONNECT protocol level of MQTT 3.1.1
SHARE = "$share/"
# A session asked to end this soon after we vanish (a replica on a shared subscription)
# cannot be asked for in 3.1.1, where a session lives as long as the broker likes: a clean
# session instead, so a dead replica's session is not fed its share of device messages.
SHORT_SESSION_S = 86400

_V311_CONNACK = {
    0: "Success", 1: "Unacceptable protocol version", 2: "Identifier rejected",
    3: "Server unavailable", 4: "Bad user name or password", 5: "Not authorized",
}  # fmt: skip
# CONNACK reasons that retrying cannot fix: start() fails at once instead of waiting.
_PERMANENT = {
    5: frozenset({0x04, 0x05, 0x81, 0x82, 0x84, 0x85, 0x86, 0x87, 0x8A, 0x8C}),
    V311: frozenset({1, 2, 4, 5}),
}


def connack_name(code: int, level: int) -> str:
    """The spec's name for a CONNACK reason (MQTT 5) or return code (3.1.1)."""
    if level == V311:
        return _V311_CONNACK.get(code, f"return code {code}")
    return reason_name(code)


class RefusedError(ConnectionError):
    """The broker answered CONNECT with a refusal; ``permanent`` when no retry can fix it."""

    def __init__(self, reason: int, level: int) -> None:
        kind = "return code" if level == V311 else "reason"
        super().__init__(f"{connack_name(reason, level)} (CONNACK {kind} 0x{reason:02x})")
        self.reason = reason
        self.permanent = reason in _PERMANENT.get(level, frozenset())


def hello(cfg: MqttConfig, *, session_expiry_s: int, receive_maximum: int) -> bytes:
    """The link's CONNECT: a persistent session in either version (see SHORT_SESSION_S)."""
    user = cfg.login
    level = cfg.protocol_level
    clean = level == V311 and session_expiry_s < SHORT_SESSION_S
    return codec.connect(user, user, cfg.password, keepalive_s=cfg.keepalive_s,
                         clean_start=clean, session_expiry_s=session_expiry_s,
                         receive_maximum=receive_maximum, version=level)  # fmt: skip


def subscription_fallback(
    filters: Sequence[str], reasons: Sequence[int], level: int
) -> tuple[str, ...] | None:
    """Log the filters the broker refused; the filters to use instead, or None.

    A broker without shared subscriptions refuses ``$share/...`` (0x9E in MQTT 5, a bare
    0x80 in 3.1.1, which cannot tell why): the link then subscribes to the plain filters,
    once, and keeps them for later connects. Every replica then receives every device
    message, and each report is still stored and counted once (docs/scaling.md).
    """
    refused = [f for f, r in zip(filters, reasons, strict=False) if r >= 0x80]
    if not refused:
        return None
    why = ", ".join(
        f"{f} ({reason_name(r, suback=True) if level != V311 else 'Failure'})"
        for f, r in zip(filters, reasons, strict=False) if r >= 0x80
    )  # fmt: skip
    logger.warning("broker refused subscriptions: %s", why)
    if not any(f.startswith(SHARE) for f in refused):
        return None
    plain = tuple(f.split("/", 2)[2] if f.startswith(SHARE) else f for f in filters)
    logger.error(
        "this broker refused shared subscriptions: subscribing to the plain filters "
        "(every replica now receives every device message; each is stored once). Set "
        '[mqtt] share_group = "" to say so in the configuration'
    )
    return plain
