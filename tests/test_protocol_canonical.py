"""The canonical encoding: one byte form per value, everything else refused."""

from __future__ import annotations

import msgpack
import pytest

from fleetpush_protocol import canonical
from fleetpush_protocol.errors import MalformedError, OversizedError


def test_round_trip_sorts_keys_by_utf8_bytes() -> None:
    value = {"b": 1, "a": [True, b"\x00", "x"], "é": {"z": -5, "y": 2**40}}
    data = canonical.encode(value)
    assert canonical.decode(data, max_bytes=1024) == value
    assert list(canonical.decode(data, max_bytes=1024)) == ["a", "b", "é"]


def test_encoding_is_independent_of_insertion_order() -> None:
    assert canonical.encode({"a": 1, "b": 2}) == canonical.encode({"b": 2, "a": 1})


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("unsorted keys", msgpack.packb({"b": 1, "a": 2})),
        ("duplicate keys", b"\x82\xa1a\x01\xa1a\x02"),
        ("int not in shortest form", b"\x81\xa1a\xcd\x00\x01"),
        ("float", msgpack.packb({"a": 1.5})),
        ("ext type", b"\x81\xa1a\xd4\x01\x00"),
        ("binary key", msgpack.packb({b"a": 1}, use_bin_type=True)),
        ("int key", b"\x81\x01\x01"),
        ("not a map", msgpack.packb([1, 2])),
        ("trailing bytes", canonical.encode({"a": 1}) + b"\x00"),
        ("truncated", canonical.encode({"a": "hello"})[:-1]),
        ("invalid utf-8", b"\x81\xa1a\xa1\xff"),
        ("empty", b""),
        ("too deep", canonical.encode({"a": 1}).replace(b"\x01", b"\x91" * 12 + b"\x01")),
    ],
)
def test_refuses_non_canonical(name: str, data: bytes) -> None:
    with pytest.raises(MalformedError):
        canonical.decode(data, max_bytes=4096)


def test_nil_is_allowed_for_absent_optional_fields() -> None:
    assert canonical.decode(msgpack.packb({"a": None}), max_bytes=64) == {"a": None}


def test_oversized_refused_before_decoding() -> None:
    data = canonical.encode({"a": "x" * 100})
    with pytest.raises(OversizedError):
        canonical.decode(data, max_bytes=50)


@pytest.mark.parametrize("value", [{"a": 1.0}, {"a": object()}, {1: 2}, {"a": 2**64}])
def test_encode_refuses_values_without_canonical_form(value: dict[str, object]) -> None:
    with pytest.raises(MalformedError):
        canonical.encode(value)  # type: ignore[arg-type]
