"""Typed, bounded reads from one TOML table of ``orchestrator.toml``, and the small value
parsers the sections share; every error names ``section.key``."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fleetpush_common.atomic import ExposedSecretError, check_private
from fleetpush_common.units import parse_duration

__all__ = ["ConfigError", "Table", "host_port", "http_url", "password_file"]


class ConfigError(ValueError):
    """The configuration is invalid; the message names the field."""


class Table:
    """Typed reads from one TOML table; errors name ``section.key``."""

    def __init__(self, data: Any, section: str) -> None:
        if not isinstance(data, dict):
            raise ConfigError(f"[{section}]: expected a table")
        self.data: dict[str, Any] = data
        self.section = section
        self.used: set[str] = set()

    def name(self, key: str) -> str:
        return f"{self.section}.{key}" if self.section else key

    def get(self, key: str) -> Any:
        self.used.add(key)
        return self.data.get(key)

    def text(self, key: str, default: str) -> str:
        value = self.get(key)
        if value is None:
            return default
        if not isinstance(value, str):
            raise ConfigError(f"{self.name(key)}: expected a string")
        return value

    def boolean(self, key: str, default: bool) -> bool:
        value = self.get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise ConfigError(f"{self.name(key)}: expected true or false")
        return value

    def integer(self, key: str, default: int, low: int, high: int) -> int:
        value = self.get(key)
        if value is None:
            return default
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise ConfigError(f"{self.name(key)}: expected an integer in {low}..{high}")
        return value

    def flag(self, key: str, default: bool) -> bool:
        value = self.get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise ConfigError(f"{self.name(key)}: expected true or false")
        return value

    def number(self, key: str, default: float, low: float, high: float) -> float:
        value = self.get(key)
        if value is None:
            return default
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if not number or not low <= value <= high:
            raise ConfigError(f"{self.name(key)}: expected a number in {low}..{high}")
        return float(value)

    def duration(self, key: str, default: float, low: float, high: float) -> float:
        value = self.get(key)
        if value is None:
            return default
        try:
            seconds = parse_duration(value, self.name(key))
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if not low <= seconds <= high:
            raise ConfigError(f"{self.name(key)}: must be between {low}s and {high}s")
        return seconds

    def sub(self, key: str) -> Table:
        value = self.get(key)
        return Table({} if value is None else value, self.name(key))

    def check_unknown(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            raise ConfigError(f"{self.name(unknown[0])}: unknown setting")


def host_port(text: str, what: str, default_port: int) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep:
        return text, default_port
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{what}: expected host:port")
    return host or "127.0.0.1", int(port)


def http_url(value: str, what: str) -> str:
    if value and urlsplit(value).scheme not in ("http", "https"):
        raise ConfigError(f"{what}: must be an http:// or https:// URL")
    return value.rstrip("/")


def password_file(t: Table, base: Path, what: str) -> str:
    """The secret in ``password_file`` ("" when unset); refused unless private."""
    pw_file = t.text("password_file", "")
    if not pw_file:
        return ""
    try:
        check_private(base / pw_file, what)
        return (base / pw_file).read_text().strip()
    except ExposedSecretError as e:
        raise ConfigError(f"{t.name('password_file')}: {e}") from None
    except OSError as e:
        raise ConfigError(f"{t.name('password_file')}: cannot read ({e.strerror})") from None
