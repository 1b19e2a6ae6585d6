"""Typed, bounded reads from one TOML table of ``device.toml``; every error names the file,
table and key."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fleetpush_protocol.fields import NAME_RE

__all__ = ["REQUIRED", "ConfigError", "Table", "parse_time"]

REQUIRED: Any = object()  # a default meaning "this key must be given"


class ConfigError(ValueError):
    """The configuration file is missing, unreadable or has an invalid field."""


class Table:
    """Typed reads from one TOML table; every error names the file, table and key."""

    def __init__(self, data: Mapping[str, Any], name: str, source: str, base: Path) -> None:
        self.data = data
        self.name = name
        self.source = source
        self.base = base
        self.used: set[str] = set()

    def fail(self, key: str, problem: str) -> ConfigError:
        return ConfigError(f"{self.source}: [{self.name}] {key}: {problem}")

    def get(self, key: str, default: Any) -> Any:
        self.used.add(key)
        if key not in self.data:
            if default is REQUIRED:
                raise self.fail(key, "missing")
            return default
        return self.data[key]

    def string(self, key: str, default: Any = None, *, max_len: int = 4096) -> Any:
        value = self.get(key, default)
        if value is default and key not in self.data:
            return value
        if not isinstance(value, str) or not value or len(value) > max_len:
            raise self.fail(key, f"must be a non-empty string of at most {max_len} characters")
        return value

    def name_(self, key: str, default: Any = None) -> Any:
        value = self.string(key, default, max_len=128)
        if value is not None and value is not REQUIRED and not NAME_RE.fullmatch(value):
            raise self.fail(key, f"{value!r} must match {NAME_RE.pattern}")
        return value

    def integer(self, key: str, default: Any, low: int, high: int) -> int:
        value = self.get(key, default)
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise self.fail(key, f"must be {low}..{high}")
        return value

    def number(self, key: str, default: float, low: float, high: float) -> float:
        value = self.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(key, f"must be a number {low:g}..{high:g}")
        if not low <= value <= high:
            raise self.fail(key, f"must be {low:g}..{high:g}")
        return float(value)

    def boolean(self, key: str, default: bool) -> bool:
        value = self.get(key, default)
        if not isinstance(value, bool):
            raise self.fail(key, "must be true or false")
        return value

    def strings(self, key: str, *, max_len: int = 64) -> tuple[str, ...]:
        value = self.get(key, [])
        if not isinstance(value, list) or len(value) > max_len:
            raise self.fail(key, f"must be a list of at most {max_len} strings")
        for item in value:
            if not isinstance(item, str) or not item:
                raise self.fail(key, "every entry must be a non-empty string")
        return tuple(value)

    def argv(self, key: str) -> tuple[str, ...]:
        return self.strings(key, max_len=256)

    def path(self, key: str, default: Any = None) -> Any:
        value = self.string(key, default)
        if not isinstance(value, str):
            return value
        p = Path(value).expanduser()
        return p if p.is_absolute() else self.base / p

    def check_unknown(self) -> None:
        for key in self.data:
            if key not in self.used:
                raise self.fail(key, "unknown setting")


def parse_time(table: Table, key: str) -> int | None:
    value = table.get(key, None)
    if value is None:
        return None
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise table.fail(key, "must be an RFC 3339 time like 2026-12-01T00:00:00Z") from None
    else:
        raise table.fail(key, "must be an RFC 3339 time like 2026-12-01T00:00:00Z")
    if moment.tzinfo is None:
        raise table.fail(key, "needs a time zone (for example a trailing Z for UTC)")
    return int(moment.astimezone(UTC).timestamp())
