"""The one canonical msgpack encoding every fleetpush message uses.

Rules (docs/protocol.md, "Canonical encoding"):

* maps have string keys, sorted by their UTF-8 bytes, no duplicates;
* strings are msgpack ``str`` (UTF-8), byte strings are ``bin``;
* integers use the shortest msgpack form; ``nil`` only for an absent optional field;
  no floats, no ext types;
* nesting is at most ``MAX_DEPTH`` deep.

``decode`` accepts only bytes that ``encode`` would have produced, so every message has
exactly one byte form and a signature covers exactly one meaning.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgpack

from fleetpush_protocol.errors import MalformedError, OversizedError

__all__ = ["MAX_DEPTH", "Value", "decode", "encode"]

MAX_DEPTH = 8
INT_MIN = -(2**63)
INT_MAX = 2**64 - 1

Value = Any  # str | bytes | int | bool | list[Value] | dict[str, Value]


def _canonicalize(value: Value, depth: int) -> Value:
    if depth > MAX_DEPTH:
        raise MalformedError(f"nesting deeper than {MAX_DEPTH}")
    if value is None or isinstance(value, bool | str | bytes):
        return value
    if isinstance(value, int):
        if not INT_MIN <= value <= INT_MAX:
            raise MalformedError("integer out of the 64-bit range")
        return value
    if isinstance(value, Mapping):
        items = []
        for key, item in value.items():
            if not isinstance(key, str):
                raise MalformedError("map keys must be strings")
            items.append((key.encode(), key, _canonicalize(item, depth + 1)))
        items.sort(key=lambda kv: kv[0])
        return {key: item for _, key, item in items}
    if isinstance(value, list | tuple):
        return [_canonicalize(item, depth + 1) for item in value]
    raise MalformedError(f"type {type(value).__name__} has no canonical encoding")


def encode(value: Mapping[str, Value]) -> bytes:
    """Encode a map canonically.

    Raises:
        MalformedError: the value holds something without a canonical form (floats).
    """
    packed: bytes = msgpack.packb(_canonicalize(value, 0), use_bin_type=True)
    return packed


def _check_types(value: Value, depth: int) -> None:
    # Cheaper than a full canonicalize: decode already gave us dicts in wire order.
    if depth > MAX_DEPTH:
        raise MalformedError(f"nesting deeper than {MAX_DEPTH}")
    if isinstance(value, dict):
        previous: bytes | None = None
        for key, item in value.items():
            if not isinstance(key, str):
                raise MalformedError("map keys must be strings")
            raw = key.encode()
            if previous is not None and raw <= previous:
                raise MalformedError("map keys are not in canonical (sorted, unique) order")
            previous = raw
            _check_types(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _check_types(item, depth + 1)
    elif isinstance(value, float):
        raise MalformedError(f"{type(value).__name__} values are not allowed")


def decode(data: bytes, *, max_bytes: int) -> dict[str, Value]:
    """Decode canonical msgpack bytes holding one map.

    Args:
        data: the bytes received.
        max_bytes: refuse anything longer before decoding it.

    Raises:
        OversizedError: ``data`` is longer than ``max_bytes``.
        MalformedError: not msgpack, not one map, or not in canonical form.
    """
    if len(data) > max_bytes:
        raise OversizedError(f"message is {len(data)} bytes, limit is {max_bytes}")
    try:
        value = msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            use_list=True,
            max_str_len=max_bytes,
            max_bin_len=max_bytes,
            max_array_len=max_bytes,
            max_map_len=max_bytes,
            max_ext_len=0,
        )
    except (ValueError, TypeError, msgpack.UnpackException) as e:
        raise MalformedError(f"not msgpack: {e}") from None
    except RecursionError:
        raise MalformedError("nesting too deep") from None
    if not isinstance(value, dict):
        raise MalformedError("top level is not a map")
    _check_types(value, 0)
    # Shortest-form integers and str/bin distinctions are only visible in the bytes.
    if msgpack.packb(value, use_bin_type=True) != data:
        raise MalformedError("not in canonical encoding")
    return value
