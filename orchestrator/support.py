"""Support periods per hardware model (issue 17): ``[support]`` in orchestrator.toml says
until which day each model gets security updates. The orchestrator publishes them signed
and retained on ``{prefix}/support`` (a ``SupportPeriods`` message, re-signed at every
start and key reload, valid until the signing keys' ``not_after``), shows them
(``GET /v1/support``, ``fleetpush support``), and a release uploaded for a model past its
period gets a warning (in the upload's answer and on the CLI's stderr).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from fleetpush_protocol.envelope import sign_message
from fleetpush_protocol.messages import SupportPeriods

if TYPE_CHECKING:
    from orchestrator.security.keystore import SigningSet

__all__ = ["day_end", "release_warnings", "signed_periods", "support_view"]


def day_end(day: dt.date) -> int:
    """The last second of ``day`` (UTC), Unix seconds: "until 2030-12-31" includes it."""
    start = dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)
    return int(start.timestamp()) + 86400 - 1


def signed_periods(periods: Mapping[str, dt.date], signing: SigningSet, now: int) -> bytes:
    """The retained ``SupportPeriods`` message, signed with the current signing keys."""
    msg = SupportPeriods(
        issued_at=now,
        expires_at=max(now, signing.not_after),
        models={model: day_end(day) for model, day in sorted(periods.items())},
    )
    return sign_message(msg, signing.keys)


def support_view(periods: Mapping[str, dt.date], now: float) -> list[dict[str, Any]]:
    """Per model: until when, and whether that has passed."""
    return [{"model": m, "security_updates_until": day.isoformat(), "ended": now > day_end(day)}
            for m, day in sorted(periods.items())]  # fmt: skip


def release_warnings(
    periods: Mapping[str, dt.date], models: Sequence[str], now: float
) -> list[str]:
    """A warning per model of a release whose support period is over."""
    return [
        f"model {m!r} is past its support period (security updates until "
        f"{periods[m].isoformat()}, [support] in orchestrator.toml)"
        for m in models
        if m in periods and now > day_end(periods[m])
    ]
