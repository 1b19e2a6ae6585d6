"""The support periods the orchestrator publishes (``{prefix}/support``, retained,
signed): until when each hardware model gets security updates (issue 17).

The agent verifies the message with its trusted keyring (``verify_support``: signing
keys, expiry, newer than the last one it accepted), keeps the last accepted one in
``state_dir/support.json`` (written atomically), and logs a warning when its own model's
period is over. It decides nothing else: updates keep being verified and installed.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

from device_client.config import DeviceConfig
from fleetpush_common.atomic import atomic_write
from fleetpush_protocol.driver import DeviceTrust
from fleetpush_protocol.errors import ContentError
from fleetpush_protocol.verify import verify_support

__all__ = ["SupportStatus"]

logger = logging.getLogger(__name__)


class SupportStatus:
    """The last verified support periods, and this device's own."""

    def __init__(self, config: DeviceConfig, *, durable: bool = True) -> None:
        self.model = config.device.model
        self.device_id = config.device.id
        self.path = config.device.state_dir / "support.json"
        self.durable = durable
        self.issued_at = 0
        self.models: dict[str, int] = {}
        self.parked: bytes | None = None  # signed by a key of a keyring not trusted yet
        try:
            data: Any = json.loads(self.path.read_text())
            self.issued_at = int(data["issued_at"])
            self.models = {str(k): int(v) for k, v in data["models"].items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            pass  # none yet, or unreadable: the retained message brings it again

    @property
    def until(self) -> int | None:
        """The end of this device's model's support period (Unix seconds), if published."""
        return self.models.get(self.model)

    def on_message(self, data: bytes, trust: DeviceTrust, now: int) -> bool:
        """Verify and keep a support message; False (logged) when it is refused."""
        try:
            verified = verify_support(
                data, keyring=trust.trusted, last_issued_at=self.issued_at,
                trusted_time=trust.trusted_time, now=now, policy=trust.policy,
            )  # fmt: skip
        except ContentError as e:
            if e.code == "unknown_key":  # retained messages race: the keyring may come next
                self.parked = data
            level = logging.DEBUG if e.code in ("duplicate", "rollback") else logging.WARNING
            logger.log(level, "%s: support periods refused: %s", self.device_id, e)
            return False
        msg = verified.message
        self.parked = None
        self.issued_at, self.models = msg.issued_at, dict(msg.models)
        atomic_write(self.path, json.dumps({"issued_at": self.issued_at,
                                            "models": self.models}).encode(),
                     durable=self.durable)  # fmt: skip
        until = self.until
        if until is not None and now > until:
            day = datetime.fromtimestamp(until, UTC).date().isoformat()
            logger.warning("%s: model %s gets no security updates after %s", self.device_id,
                           self.model, day)  # fmt: skip
        return True

    def retry(self, trust: DeviceTrust, now: int) -> None:
        """After a keyring was accepted: verify a parked support message again."""
        if self.parked is not None:
            parked, self.parked = self.parked, None
            self.on_message(parked, trust, now)
