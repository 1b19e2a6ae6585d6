"""The envelope every message travels in, and exactly which bytes are signed.

    envelope = {"body": bin, "signatures": [{"key": bin(32), "sig": bin(64)}, ...]}
    signed bytes = SIGNING_CONTEXT || body

The body is itself canonical msgpack; signatures cover its bytes as sent, so a verifier
never re-encodes anything before checking a signature. Device-sent messages (reports,
presence, inventory) use the same envelope with an empty signature list: the broker's
per-device credentials and ACLs authenticate them.

Decoding takes a fast path: msgspec decodes and validates in one pass, and re-encoding the
typed value must give back the exact bytes received. Only when it does not (non-canonical
input, or fields this version does not know) does the slower generic check run, to either
name the canonical-form violation or accept the unknown fields.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Annotated, Any, TypeVar

import msgspec

from fleetpush_protocol import canonical
from fleetpush_protocol.errors import (
    MalformedError,
    OversizedError,
    UnexpectedTypeError,
    UnknownTypeError,
    UnsupportedFormatError,
    WrongDeviceError,
)
from fleetpush_protocol.keys import KeyPair
from fleetpush_protocol.messages import FORMAT, Message, message_class

__all__ = [
    "MAX_MESSAGE_BYTES",
    "SIGNING_CONTEXT",
    "Envelope",
    "Signature",
    "decode_envelope",
    "decode_message",
    "encode_body",
    "encode_message",
    "parse",
    "sign_message",
    "verify_device_message",
]

SIGNING_CONTEXT = b"fleetpush/v1 signed body\x00"
MAX_MESSAGE_BYTES = 65536  # bytes; the broker's max_packet_size leaves room for this
MAX_SIGNATURES = 16

T = TypeVar("T")


class Signature(msgspec.Struct, frozen=True, kw_only=True):
    key: Annotated[bytes, msgspec.Meta(min_length=32, max_length=32)]  # Ed25519 public key
    sig: Annotated[bytes, msgspec.Meta(min_length=64, max_length=64)]


class _Wire(msgspec.Struct, frozen=True, kw_only=True):
    body: bytes
    signatures: Annotated[tuple[Signature, ...], msgspec.Meta(max_length=MAX_SIGNATURES)]


class _Header(msgspec.Struct, frozen=True):
    format: int
    type: str


_ENCODER = msgspec.msgpack.Encoder(order="deterministic")


def _encode(value: Any) -> bytes:
    """``value`` in canonical form. msgspec writes the map header of a struct with more
    than 15 fields as a map16 even when it writes 15 or fewer (the unset optional fields
    of a notice are left out), where the canonical form is the shortest one: a fixmap."""
    data = _ENCODER.encode(value)
    if len(data) >= 3 and data[0] == 0xDE and data[1] == 0 and data[2] <= 15:
        return bytes((0x80 | data[2],)) + data[3:]
    return data


_WIRE = msgspec.msgpack.Decoder(_Wire)
_HEADER = msgspec.msgpack.Decoder(_Header)
_DECODERS: dict[type[Any], msgspec.msgpack.Decoder[Any]] = {}


def _decoder(cls: type[T]) -> msgspec.msgpack.Decoder[T]:
    dec = _DECODERS.get(cls)
    if dec is None:
        dec = _DECODERS[cls] = msgspec.msgpack.Decoder(cls)
    return dec


def _typed(
    data: bytes, cls: type[T], what: str, max_bytes: int, max_unknown: int | None = None
) -> T:
    """Decode ``data`` as ``cls``; require canonical form. Raises MalformedError.

    With ``max_unknown``, fields this version does not know may take at most that many
    bytes (OversizedError): checked before the slow generic pass, which is what a body
    padded with unknown fields would otherwise cost.
    """
    try:
        value = _decoder(cls).decode(data)
    except (msgspec.MsgspecError, ValueError) as e:  # invalid UTF-8 is a ValueError
        # Prefer naming a canonical-form violation, which is the more basic failure.
        canonical.decode(data, max_bytes=max_bytes)
        raise MalformedError(f"{what}: {e}") from None
    known = _encode(value)
    if known != data:
        if max_unknown is not None and len(data) - len(known) > max_unknown:
            raise OversizedError(
                f"{what}: {len(data) - len(known)} bytes of unknown fields, limit {max_unknown}"
            )
        # Either not canonical (raises here) or carrying fields we do not know (fine).
        canonical.decode(data, max_bytes=max_bytes)
    return value


@dataclass(frozen=True)
class Envelope:
    """A decoded envelope: the body's exact bytes, its type tag and the signatures."""

    body: bytes
    signatures: tuple[Signature, ...]
    type: str

    @cached_property
    def fields(self) -> dict[str, Any]:
        """The body as a generic map, unknown fields included (slow; for display)."""
        return canonical.decode(self.body, max_bytes=len(self.body))


def decode_envelope(
    data: bytes, *, max_bytes: int = MAX_MESSAGE_BYTES, max_unknown_bytes: int | None = None
) -> Envelope:
    """Steps 1 and 2 of verification: decode, then check format version and type tag.

    Raises:
        OversizedError, MalformedError: step 1.
        UnsupportedFormatError, UnknownTypeError: step 2.
    """
    if len(data) > max_bytes:
        raise OversizedError(f"message is {len(data)} bytes, limit is {max_bytes}")
    wire = _typed(data, _Wire, "envelope", max_bytes, max_unknown_bytes)
    cls = _body_class(wire.body, max_bytes)
    return Envelope(body=wire.body, signatures=wire.signatures, type=cls.TYPE)


def _body_class(body: bytes, max_bytes: int) -> type[Message]:
    """Step 2 on a body: its format must be ours and its type one we know."""
    try:
        header = _HEADER.decode(body)
    except (msgspec.MsgspecError, ValueError) as e:  # invalid UTF-8 is a ValueError
        canonical.decode(body, max_bytes=max_bytes)
        raise MalformedError(f"body: {e}") from None
    if header.format != FORMAT:
        raise UnsupportedFormatError(
            f"format {header.format} is not supported (this reader knows {FORMAT})"
        )
    cls = message_class(header.type)
    if cls is None:
        raise UnknownTypeError(f"unknown message type {header.type[:64]!r}")
    return cls


# The canonical encoding of an unsigned envelope, around its body: a map of two, "body" as
# bin 8 (bodies under 256 bytes) or bin 16, then "signatures" as an empty array.
_UNSIGNED_HEAD = b"\x82\xa4body"
_UNSIGNED_TAIL = b"\xaasignatures\x90"


def _unsigned_body(data: bytes) -> bytes | None:
    """The body of ``data`` if it is exactly the canonical encoding of an unsigned
    envelope (what every device sends), found by its bytes alone; else None."""
    if not (data.startswith(_UNSIGNED_HEAD) and data.endswith(_UNSIGNED_TAIL)):
        return None
    n = len(data) - len(_UNSIGNED_HEAD) - len(_UNSIGNED_TAIL)  # bin header + body
    kind = data[6] if n >= 2 else 0
    if kind == 0xC4 and data[7] == n - 2:
        return data[8:-12]
    if kind == 0xC5 and n - 3 >= 256 and int.from_bytes(data[7:9], "big") == n - 3:
        return data[9:-12]
    return None


def parse(
    envelope: Envelope, *, max_bytes: int = MAX_MESSAGE_BYTES, max_unknown_bytes: int | None = None
) -> Message:
    """Step 3: build the typed message from an envelope whose format and type were checked.

    Raises:
        MalformedError: a field is missing, mistyped, out of bounds, or not canonical.
    """
    cls = message_class(envelope.type)
    if cls is None:  # decode_envelope already refused it; kept for direct callers
        raise UnknownTypeError(f"unknown message type {envelope.type!r}")
    return _typed(envelope.body, cls, cls.TYPE, max_bytes, max_unknown_bytes)


def encode_body(message: Message) -> bytes:
    """The canonical body bytes of ``message``."""
    return _encode(message)


def sign_message(message: Message, keys: Sequence[KeyPair]) -> bytes:
    """Encode ``message`` and sign its body with each of ``keys``."""
    body = encode_body(message)
    signed = SIGNING_CONTEXT + body
    sigs = tuple(Signature(key=k.public_key, sig=k.sign(signed)) for k in keys)
    return _encode(_Wire(body=body, signatures=sigs))


def encode_message(message: Message) -> bytes:
    """Encode a device-sent message (report, presence, inventory): no signatures."""
    return sign_message(message, ())


def decode_message(
    data: bytes, *, max_bytes: int = MAX_MESSAGE_BYTES, max_unknown_bytes: int | None = None
) -> Message:
    """Decode and parse without any signature check (device-sent messages and acks).

    ``max_unknown_bytes`` bounds the unknown fields of the envelope and of the body, each.
    """
    body = _unsigned_body(data) if len(data) <= max_bytes else None
    if body is None:
        env = decode_envelope(data, max_bytes=max_bytes, max_unknown_bytes=max_unknown_bytes)
        return parse(env, max_bytes=max_bytes, max_unknown_bytes=max_unknown_bytes)
    # The ingestion hot path: an envelope that is canonical and unsigned byte for byte
    # decodes to this body, so the generic envelope decode (and its re-encoding check) is
    # skipped; the body gets every check it would have had.
    cls = _body_class(body, max_bytes)
    return _typed(body, cls, cls.TYPE, max_bytes, max_unknown_bytes)


DEVICE_MESSAGE_TYPES = ("report", "presence", "inventory")


def verify_device_message(
    data: bytes,
    *,
    kind: str,
    device_id: str,
    max_bytes: int = MAX_MESSAGE_BYTES,
    max_unknown_bytes: int | None = None,
) -> Message:
    """A receiver's checks of what arrived on device ``device_id``'s ``kind`` topic.

    ``kind`` is the topic's last level (``report``, ``presence`` or ``inventory``). The
    signature list is not looked at: the broker authenticated the sender and its ACL bound
    it to its own topics (docs/protocol.md, "Device-sent messages").

    Raises:
        OversizedError, MalformedError, UnsupportedFormatError, UnknownTypeError: as for
            every message.
        UnexpectedTypeError: a known type other than ``kind``.
        WrongDeviceError: the body's ``device_id`` is not the topic's.
    """
    if kind not in DEVICE_MESSAGE_TYPES:
        raise ValueError(f"{kind!r} is not a device-sent message type")
    env = decode_envelope(data, max_bytes=max_bytes, max_unknown_bytes=max_unknown_bytes)
    if env.type != kind:
        raise UnexpectedTypeError(f"a {env.type[:64]} message on a {kind} topic")
    msg = parse(env, max_bytes=max_bytes, max_unknown_bytes=max_unknown_bytes)
    claimed = getattr(msg, "device_id", None)
    if claimed != device_id:
        raise WrongDeviceError(f"device {device_id} sent a {kind} for device {claimed}")
    return msg
