"""Typed, bounded reads of decoded msgpack maps; every failure names the field."""

from __future__ import annotations

import re
from typing import Any

from fleetpush_protocol.errors import MalformedError

__all__ = ["NAME_RE", "Fields", "check_name"]

# Device ids, group names and models end up inside MQTT topic levels and broker ACL
# patterns, so they may not contain '/', '+', '#' or whitespace.
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}")
MAX_TEXT = 4096
MAX_LIST = 1024
U64_MAX = 2**64 - 1


def check_name(value: str, what: str) -> str:
    """Return ``value`` if it is a valid identifier, else raise ``MalformedError``."""
    if not NAME_RE.fullmatch(value):
        raise MalformedError(f"{what}: {value!r} is not a valid name ([A-Za-z0-9_.:-], 1-128)")
    return value


class Fields:
    """Reads fields out of one decoded map; ``path`` prefixes error messages."""

    __slots__ = ("_map", "_path")

    def __init__(self, value: Any, path: str) -> None:
        if not isinstance(value, dict):
            raise MalformedError(f"{path}: expected a map")
        self._map: dict[str, Any] = value
        self._path = path

    def _get(self, key: str, kind: type | tuple[type, ...], kind_name: str) -> Any:
        if key not in self._map:
            raise MalformedError(f"{self._path}.{key}: missing")
        value = self._map[key]
        # bool is an int subclass; an int field must not accept True.
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise MalformedError(f"{self._path}.{key}: expected {kind_name}")
        return value

    def has(self, key: str) -> bool:
        return key in self._map

    def text(self, key: str, *, max_len: int = MAX_TEXT, min_len: int = 0) -> str:
        value: str = self._get(key, str, "a string")
        if not min_len <= len(value) <= max_len:
            raise MalformedError(f"{self._path}.{key}: length must be {min_len}..{max_len}")
        return value

    def name(self, key: str) -> str:
        return check_name(self.text(key, max_len=128, min_len=1), f"{self._path}.{key}")

    def integer(self, key: str, *, low: int = 0, high: int = U64_MAX) -> int:
        value: int = self._get(key, int, "an integer")
        if not low <= value <= high:
            raise MalformedError(f"{self._path}.{key}: must be {low}..{high}")
        return value

    def boolean(self, key: str) -> bool:
        value: bool = self._get(key, bool, "a boolean")
        return value

    def blob(self, key: str, *, length: int | None = None, max_len: int = MAX_TEXT) -> bytes:
        value: bytes = self._get(key, bytes, "bytes")
        if length is not None and len(value) != length:
            raise MalformedError(f"{self._path}.{key}: must be {length} bytes")
        if len(value) > max_len:
            raise MalformedError(f"{self._path}.{key}: longer than {max_len} bytes")
        return value

    def items(self, key: str, *, max_len: int = MAX_LIST, min_len: int = 0) -> list[Any]:
        value: list[Any] = self._get(key, list, "a list")
        if not min_len <= len(value) <= max_len:
            raise MalformedError(f"{self._path}.{key}: needs {min_len}..{max_len} entries")
        return value

    def names(self, key: str, *, max_len: int = MAX_LIST) -> tuple[str, ...]:
        out = []
        for i, item in enumerate(self.items(key, max_len=max_len)):
            if not isinstance(item, str):
                raise MalformedError(f"{self._path}.{key}[{i}]: expected a string")
            out.append(check_name(item, f"{self._path}.{key}[{i}]"))
        if len(set(out)) != len(out):
            raise MalformedError(f"{self._path}.{key}: duplicate entries")
        return tuple(out)

    def texts(
        self, key: str, *, max_len: int = MAX_LIST, item_max: int = MAX_TEXT
    ) -> tuple[str, ...]:
        out = []
        for i, item in enumerate(self.items(key, max_len=max_len)):
            if not isinstance(item, str) or len(item) > item_max:
                raise MalformedError(f"{self._path}.{key}[{i}]: expected a string <= {item_max}")
            out.append(item)
        return tuple(out)

    def sub(self, key: str) -> Fields:
        return Fields(self._get(key, dict, "a map"), f"{self._path}.{key}")

    def str_map(self, key: str, *, max_len: int = 64) -> dict[str, str]:
        value: dict[str, Any] = self._get(key, dict, "a map")
        if len(value) > max_len:
            raise MalformedError(f"{self._path}.{key}: more than {max_len} entries")
        for k, v in value.items():
            if not isinstance(v, str) or len(v) > MAX_TEXT:
                raise MalformedError(f"{self._path}.{key}.{k}: expected a string")
        return dict(value)
