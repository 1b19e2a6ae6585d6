"""Identifier rules shared by messages, topics, broker ACLs and configuration."""

from __future__ import annotations

import re

from fleetpush_protocol.errors import MalformedError
from fleetpush_protocol.messages import NAME_PATTERN

__all__ = ["NAME_RE", "check_name"]

# Device ids, group names and models end up inside MQTT topic levels and broker ACL
# patterns, so they may not contain '/', '+', '#' or whitespace.
NAME_RE = re.compile(NAME_PATTERN)


def check_name(value: str, what: str) -> str:
    """Return ``value`` if it is a valid identifier, else raise ``MalformedError``."""
    if not NAME_RE.fullmatch(value):
        raise MalformedError(f"{what}: {value!r} is not a valid name ([A-Za-z0-9_.:-], 1-128)")
    return value
