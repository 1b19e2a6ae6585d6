"""A security release's advisory, read from the operator's JSON file and checked against
what the signed notice may carry (``fleetpush_protocol.messages.Advisory``).

The file::

    {"cves": ["CVE-2026-10001"], "severity": "high",
     "summary": "Fixes a remote code execution in the HTTP parser.",
     "disruptive": true, "max_postpone": "24h"}

``disruptive`` (default false) says installing it interrupts the device's function (a
restart); ``max_postpone`` (a duration, default 7d, at most 365d) caps how long a device
may put it off, counted from the notice's issue time.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec

from fleetpush_common.units import parse_duration
from fleetpush_protocol.messages import Advisory

__all__ = ["DEFAULT_MAX_POSTPONE_S", "AdvisoryError", "parse_advisory", "to_advisory"]

DEFAULT_MAX_POSTPONE_S = 7 * 86400
_KEYS = {"cves", "severity", "summary", "disruptive", "max_postpone"}


class AdvisoryError(ValueError):
    """Not a valid advisory; the message names the field."""


def parse_advisory(data: bytes | str) -> dict[str, Any]:
    """The advisory as the notices carry it (``Advisory.to_body()``).

    Raises:
        AdvisoryError: not JSON, an unknown or missing field, or a value out of bounds.
    """
    try:
        doc = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise AdvisoryError(f"advisory: not valid JSON ({e})") from None
    if not isinstance(doc, dict):
        raise AdvisoryError("advisory: expected a JSON object")
    unknown = sorted(set(doc) - _KEYS)
    if unknown:
        known = ", ".join(sorted(_KEYS))
        raise AdvisoryError(f"advisory.{unknown[0]}: unknown field (known: {known})")
    for key in ("cves", "severity", "summary"):
        if key not in doc:
            raise AdvisoryError(f"advisory.{key}: missing")
    postpone = doc.get("max_postpone", "7d")
    try:
        seconds = parse_duration(postpone, "advisory.max_postpone")
    except (TypeError, ValueError) as e:
        raise AdvisoryError(str(e)) from None
    fields = {
        "cves": doc["cves"], "severity": doc["severity"], "summary": doc["summary"],
        "disruptive": doc.get("disruptive", False), "max_postpone_s": int(seconds),
    }  # fmt: skip
    try:
        advisory = msgspec.convert(fields, Advisory)
    except (msgspec.ValidationError, ValueError) as e:
        raise AdvisoryError(f"advisory: {_hint(str(e))}") from None
    return advisory.to_body()


def _hint(message: str) -> str:
    """msgspec's wording, with what each bound means for people."""
    if "$.cves" in message:
        return f"{message} (cves: a list of at most 64 distinct ids like CVE-2026-12345)"
    if "$.severity" in message:
        return f"{message} (severity: none, low, medium, high or critical)"
    if "$.summary" in message:
        return f"{message} (summary: 1..1000 characters)"
    if "$.max_postpone_s" in message:
        return f"{message} (max_postpone: at most 365d)"
    return message


def to_advisory(body: dict[str, Any]) -> Advisory:
    """The stored advisory as the notice's struct."""
    return msgspec.convert(body, Advisory)
