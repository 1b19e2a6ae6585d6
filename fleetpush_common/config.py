"""The one configuration layer: TOML (and JSON) into frozen msgspec structs with bounds.

A section is a ``msgspec.Struct`` (``forbid_unknown_fields``) whose fields carry their
bounds as ``msgspec.Meta(ge=, le=)``; a field's TOML key is its ``msgspec.field(name=)``
when the Python name carries the unit (``keepalive_s`` is written ``keepalive = "60s"``).
Two markers widen what a number field accepts before msgspec checks it:

- ``DURATION``: ``"100ms"``, ``"30s"``, ``"5m"``, ``"2h"``, ``"1d"`` or a number of seconds;
- ``SIZE``: ``"64KiB"``, ``"1GiB"``, ``"4MB"`` or a number of bytes;
- ``TIME`` (an int of Unix seconds): an RFC 3339 time with a zone, as string or TOML datetime.

``Window`` values are strings in the one window syntax (fleetpush_common.windows), ``Path``
values are relative to the file's folder.

Class variables a struct may set: ``renamed`` (older spellings of its keys, old -> new;
still read, so deployed files keep working), ``internal`` (fields filled in after decoding,
refused in a file) and ``missing_hints`` (what a required key takes). Every error is a
``ConfigError`` naming the file, the table and the key.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, get_args, get_origin

import msgspec

from fleetpush_common.atomic import ExposedSecretError, check_private
from fleetpush_common.units import parse_duration
from fleetpush_common.windows import Window, parse_window
from fleetpush_protocol.messages import NAME_PATTERN

__all__ = [
    "DURATION",
    "SIZE",
    "TIME",
    "ConfigError",
    "Name",
    "decode",
    "parse_size",
    "read_secret",
    "resolve_path",
]

T = TypeVar("T")
# Device ids, groups, models: they end up in topic levels and broker ACLs.
Name = Annotated[str, msgspec.Meta(pattern=NAME_PATTERN, max_length=128)]


class _Marker:
    def __init__(self, what: str) -> None:
        self.what = what

    def __repr__(self) -> str:
        return self.what.upper()


DURATION = _Marker("duration")
SIZE = _Marker("size")
TIME = _Marker("time")  # an int field of Unix seconds, written as an RFC 3339 time

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(b|k|kb|kib|m|mb|mib|g|gb|gib|tb|tib)?\s*(?:/s)?\s*$")
_SIZE_UNITS = {None: 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9,
               "gb": 10**9, "tb": 10**12,
               "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}  # fmt: skip


class ConfigError(ValueError):
    """The configuration is invalid: ``FILE: [table] key: problem`` for a file, and
    ``table.key: problem`` for a JSON body (no ``source``)."""

    def __init__(self, problem: str, *, source: str = "", table: str = "", key: str = "") -> None:
        self.source, self.table, self.key, self.problem = source, table, key, problem
        if not source:
            where = [".".join(p for p in (table, key) if p)]
        elif table and key:
            where = [source, f"[{table}] {key}"]
        elif table:
            where = [source, f"[{table}]"]
        else:
            where = [source, key]
        super().__init__(": ".join([*(w for w in where if w), problem]))

    @classmethod
    def at(cls, e: ValueError, source: str, table: str) -> ConfigError:
        """``e`` (``"key: problem"``, as the structs' own checks word it) in ``table``."""
        key, sep, problem = str(e).partition(": ")
        if not sep or " " in key:
            return cls(str(e), source=source, table=table)
        return cls(problem, source=source, table=table, key=key)


def parse_size(value: str | int, what: str = "size") -> int:
    """Bytes from ``"64KiB"``, ``"1GiB"``, ``"4MB"``, ``"65536"`` or a number.

    Raises:
        ValueError: not a size.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    m = _SIZE_RE.match(str(value).lower())
    if m is None:
        raise ValueError(f"{what}: expected a size like 65536, '64KiB', '1GiB' or '4MB'")
    return int(float(m.group(1)) * _SIZE_UNITS[m.group(2)])


def resolve_path(base: Path, text: str) -> Path:
    """``text`` (``~`` expanded) relative to ``base`` unless absolute."""
    p = Path(text).expanduser()
    return p if p.is_absolute() else base / p


def read_secret(path: Path, what: str) -> str:
    """A password from a private file (0600 in a folder others cannot write), stripped.

    Raises:
        ValueError: exposed, unreadable or empty; the message says which.
    """
    try:
        check_private(path, what)
        secret = path.read_text().strip()
    except ExposedSecretError as e:
        raise ValueError(str(e)) from None
    except OSError as e:
        raise ValueError(f"cannot read {path}: {e.strerror}") from None
    if not secret:
        raise ValueError(f"{path} is empty")
    return secret


def _hook(base: Path | None) -> Any:
    def dec_hook(tp: type, value: Any) -> Any:
        if tp is Window:
            if not isinstance(value, str):
                raise TypeError("expected a window like 'Mon-Fri 02:00-04:00'")
            return parse_window(value)
        if tp is Path and base is not None:
            if not isinstance(value, str) or not value:
                raise TypeError("expected a path (a non-empty string)")
            return resolve_path(base, value)
        raise NotImplementedError(f"{tp!r}")

    return dec_hook


def _unwrap(tp: Any) -> tuple[Any, list[Any]]:
    """The type under ``Annotated`` / ``X | None``, and the annotations."""
    extras: list[Any] = []
    while True:
        if get_origin(tp) is Annotated:
            base, *more = get_args(tp)
            extras += more
            tp = base
            continue
        args = [a for a in get_args(tp) if a is not type(None)]
        if get_origin(tp) is not None and len(args) == 1 and type(None) in get_args(tp):
            tp = args[0]
            continue
        return tp, extras


@functools.cache
def _fields(tp: type) -> tuple[tuple[str, str, Any, tuple[Any, ...]], ...]:
    """``(name, key, type, annotations)`` of each field of struct ``tp``, resolved once
    (msgspec.structs.fields evaluates the annotations at every call: milliseconds)."""
    out = []
    for f in msgspec.structs.fields(tp):
        base, extras = _unwrap(f.type)
        out.append((f.name, f.encode_name, base, tuple(extras)))
    return tuple(out)


def _is_struct(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, msgspec.Struct)


def _prepare(
    tp: type, data: Any, where: tuple[str, ...], source: str, renames: dict[str, str]
) -> Any:
    """``data`` with durations and sizes in numbers, older key spellings renamed (each
    recorded in ``renames``, ``table.new`` -> ``old``, so that errors name what was written)."""
    if not isinstance(data, dict):
        return data
    out = dict(data)
    table = ".".join(where)
    for old, new in getattr(tp, "renamed", {}).items():
        if old in out:
            if new in out:
                raise ConfigError(f"give {new} only ({old} is its older spelling)",
                                  source=source, table=table, key=old)  # fmt: skip
            out[new] = out.pop(old)
            renames[f"{table}.{new}"] = old
    for name, key, base, extras in _fields(tp):
        if key not in out or name in getattr(tp, "internal", ()):
            continue
        value = out[key]
        try:
            if DURATION in extras and isinstance(value, str):
                seconds = parse_duration(value, key)
                out[key] = _whole(seconds, key) if base is int else seconds
            elif SIZE in extras and isinstance(value, str):
                out[key] = parse_size(value, key)
            elif TIME in extras and isinstance(value, str | datetime):
                out[key] = _unix(value)
        except ValueError as e:
            problem = str(e).removeprefix(f"{key}: ")
            raise ConfigError(problem, source=source, table=table, key=key) from None
        if _is_struct(base):
            out[key] = _prepare(base, value, (*where, key), source, renames)
        elif get_origin(base) is dict and isinstance(value, dict):  # tables of one struct
            item = _unwrap(get_args(base)[1])[0]
            if _is_struct(item):
                out[key] = {k: _prepare(item, v, (*where, key, str(k)), source, renames)
                            for k, v in value.items()}  # fmt: skip
    for name in getattr(tp, "internal", ()):
        if name in out:
            raise ConfigError("unknown setting", source=source, table=table, key=name)
    return out


def _unix(value: str | datetime) -> int:
    form = "must be an RFC 3339 time like 2026-12-01T00:00:00Z"
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(form) from None
    if value.tzinfo is None:
        raise ValueError("needs a time zone (for example a trailing Z for UTC)")
    return int(value.astimezone(UTC).timestamp())


def _whole(seconds: float, what: str) -> int:
    if seconds != int(seconds):
        raise ValueError(f"{what}: must be whole seconds")
    return int(seconds)


_NAMES = {"int": "an integer", "float": "a number", "str": "a string", "bool": "true or false",
          "array": "a list", "object": "a table", "null": "nothing"}  # fmt: skip
_MSG_RE = re.compile(r"^(.*?)(?: - at `\$(.*)`)?$", re.DOTALL)
_STEP_RE = re.compile(r"\.([^.\[]+)|(\[[^\]]*\])")


def _field_at(tp: Any, steps: list[str]) -> tuple[Any, list[Any]] | None:
    """The type and annotations of the field at ``steps`` (names and ``[i]``)."""
    base: Any = tp
    extras: list[Any] = []
    for step in steps:
        if step.startswith("["):
            args = get_args(base)
            if not args:
                return None
            base, extras = _unwrap(args[0])
            continue
        if not _is_struct(base):
            return None
        found = [(b, list(x)) for _, key, b, x in _fields(base) if key == step]
        if not found:
            return None
        base, extras = found[0]
    return base, extras


def _bounds(extras: list[Any]) -> tuple[Any, Any]:
    metas = [m for m in extras if isinstance(m, msgspec.Meta)]
    lo = next((m.ge for m in metas if m.ge is not None), None)
    hi = next((m.le for m in metas if m.le is not None), None)
    return lo, hi


def _seconds(value: float) -> str:
    if value == 0:
        return "0s"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if value >= size and value % size == 0:
            return f"{int(value // size)}{unit}"
    return f"{value * 1000:g}ms" if value < 1 else f"{value:g}s"


def _number(value: Any) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _explain(problem: str, field: tuple[Any, list[Any]] | None, json: bool) -> str:
    """msgspec's words for a bad value, in ours (with the field's unit and range)."""
    base, extras = field if field is not None else (None, [])
    lo, hi = _bounds(extras)
    wrong = re.match(r"Expected `([^`]+)`, got `([^`]+)`$", problem)
    if DURATION in extras:
        span = f" {_seconds(lo or 0)}..{_seconds(hi)}" if hi is not None else ""
        span = f" of at least {_seconds(lo)}" if hi is None and lo else span
        return f"must be a duration{span}, like '30s', '5m', '2h' or '1d' (or seconds)"
    if TIME in extras:
        return "must be an RFC 3339 time like 2026-12-01T00:00:00Z"
    if problem.startswith("Expected") and (lo is not None or hi is not None):
        span = f"{_number(lo)}..{_number(hi)}" if lo is not None and hi is not None else ""
        span = span or (f"at least {_number(lo)}" if lo is not None else f"at most {_number(hi)}")
        unit = " bytes, or a size like '64KiB'" if SIZE in extras else ""
        if wrong:
            return (
                f"expected {_wanted(wrong[1])} {span}{unit}, got {_NAMES.get(wrong[2], wrong[2])}"
            )
        return f"must be {span}{unit}"
    if problem.startswith("Invalid enum value") and get_origin(base) is Literal:
        choices = ", ".join(map(str, get_args(base)))
        return f"{problem.removeprefix('Invalid enum value ')}: one of {choices}"
    if problem.startswith("Invalid RFC3339 encoded date"):
        return "expected a date like 2030-12-31"
    if "matching regex" in problem:  # the names (ids, groups, models) are the patterns used
        return "must be a name: 1-128 of A-Z a-z 0-9 _ . : -, starting with a letter or digit"
    if wrong:
        text = f"expected {_wanted(wrong[1])}, got {_NAMES.get(wrong[2], wrong[2])}"
        return text.replace("a table", "an object") if json else text
    return problem


def _wanted(types: str) -> str:
    return " or ".join(_NAMES.get(w.strip(), w.strip()) for w in types.split("|"))


def _translate(
    e: msgspec.ValidationError, tp: type, source: str, renames: dict[str, str]
) -> ConfigError:
    m = _MSG_RE.match(str(e))
    if m is None:  # pragma: no cover - the pattern matches any text
        return ConfigError(str(e), source=source)
    problem, path = m[1], m[2] or ""
    steps = [a or b for a, b in _STEP_RE.findall(path)]
    extra = re.match(r"Object (contains unknown|missing required) field `([^`]+)`$", problem)
    if extra:
        steps.append(extra[2])
        unknown = "unknown setting" if source else "unknown field"
        problem = unknown if extra[1] == "contains unknown" else "missing"
    field = _field_at(tp, steps)
    if problem == "missing" and source and field is not None and _is_struct(field[0]):
        return ConfigError("missing table", source=source, table=".".join(steps))
    if problem == "missing":  # a struct may say what the key takes (``missing_hints``)
        owner = _field_at(tp, steps[:-1])
        hint = getattr(owner[0], "missing_hints", {}).get(steps[-1]) if owner else None
        problem = f"missing ({hint})" if hint else problem
    own = re.match(r"^([A-Za-z_]\w*(?:\[\d+\])?): (.*)$", problem, re.DOTALL)
    if own and not extra and _is_struct(field[0] if field else None):
        steps.append(own[1])  # a struct's own check (__post_init__) names its key
        problem = own[2]
    elif not extra:
        problem = _explain(problem, field, json=not source)
    # The table is every step up to the last struct; the rest (``key[0]``) names the key.
    split = len(steps) - 1
    while split > 0 and steps[split].startswith("["):
        split -= 1
    table = ".".join(steps[:split]).replace(".[", "[")
    key = "".join(steps[split:]) if steps else ""
    key = renames.get(f"{table}.{key}", key)
    return ConfigError(problem, source=source, table=table, key=key)


def decode(tp: type[T], data: Mapping[str, Any], source: str, base: Path | None = None) -> T:
    """``data`` (a decoded TOML document or JSON object) as ``tp``, checked.

    Raises:
        ConfigError: a key is unknown, missing, mistyped or out of bounds; names it.

    ``Path`` fields are resolved against ``base`` (the folder of the file).
    """
    renames: dict[str, str] = {}
    prepared = _prepare(tp, dict(data), (), source, renames)
    try:
        return msgspec.convert(prepared, tp, dec_hook=_hook(base))
    except msgspec.ValidationError as e:
        raise _translate(e, tp, source, renames) from None
