"""The envelope every message travels in, and exactly which bytes are signed.

    envelope = {"body": bin, "signatures": [{"key": bin(32), "sig": bin(64)}, ...]}
    signed bytes = SIGNING_CONTEXT || body

The body is itself canonical msgpack; signatures cover its bytes as sent, so a verifier
never re-encodes anything before checking a signature. Device-sent messages (reports,
presence, inventory) use the same envelope with an empty signature list: the broker's
per-device credentials and ACLs authenticate them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from fleetpush_protocol import canonical
from fleetpush_protocol.errors import (
    MalformedError,
    UnknownTypeError,
    UnsupportedFormatError,
)
from fleetpush_protocol.fields import Fields
from fleetpush_protocol.keys import KeyPair
from fleetpush_protocol.messages import FORMAT, Message, message_class

__all__ = [
    "MAX_MESSAGE_BYTES",
    "SIGNING_CONTEXT",
    "Envelope",
    "Signature",
    "decode_envelope",
    "decode_message",
    "encode_message",
    "parse",
    "sign_message",
]

SIGNING_CONTEXT = b"fleetpush/v1 signed body\x00"
MAX_MESSAGE_BYTES = 65536  # bytes; the broker's message_size_limit matches
MAX_SIGNATURES = 16


@dataclass(frozen=True, slots=True)
class Signature:
    key: bytes  # the signer's 32-byte Ed25519 public key
    sig: bytes  # 64 bytes


@dataclass(frozen=True, slots=True)
class Envelope:
    """A decoded envelope: the body's exact bytes, its decoded map and the signatures."""

    body: bytes
    fields: dict[str, Any]
    signatures: tuple[Signature, ...]

    @property
    def type(self) -> str:
        value = self.fields.get("type")
        return value if isinstance(value, str) else ""


def decode_envelope(data: bytes, *, max_bytes: int = MAX_MESSAGE_BYTES) -> Envelope:
    """Step 1 and 2 of verification: decode, then check format version and type tag.

    Raises:
        OversizedError, MalformedError: step 1.
        UnsupportedFormatError, UnknownTypeError: step 2.
    """
    outer = canonical.decode(data, max_bytes=max_bytes)
    f = Fields(outer, "envelope")
    body = f.blob("body", max_len=max_bytes)
    sigs = []
    for i, item in enumerate(f.items("signatures", max_len=MAX_SIGNATURES)):
        s = Fields(item, f"envelope.signatures[{i}]")
        sigs.append(Signature(key=s.blob("key", length=32), sig=s.blob("sig", length=64)))
    inner = canonical.decode(body, max_bytes=max_bytes)
    fmt = inner.get("format")
    if not isinstance(fmt, int) or isinstance(fmt, bool):
        raise MalformedError("body.format: missing or not an integer")
    if fmt != FORMAT:
        raise UnsupportedFormatError(f"format {fmt} is not supported (this reader knows {FORMAT})")
    type_tag = inner.get("type")
    if not isinstance(type_tag, str):
        raise MalformedError("body.type: missing or not a string")
    if message_class(type_tag) is None:
        raise UnknownTypeError(f"unknown message type {type_tag[:64]!r}")
    return Envelope(body=body, fields=inner, signatures=tuple(sigs))


def parse(envelope: Envelope) -> Message:
    """Build the typed message from an envelope whose format and type were checked.

    Raises:
        MalformedError: a field is missing, mistyped or out of bounds.
    """
    cls = message_class(envelope.type)
    if cls is None:  # decode_envelope already refused it; kept for direct callers
        raise UnknownTypeError(f"unknown message type {envelope.type!r}")
    return cls.from_body(envelope.fields)


def sign_message(message: Message, keys: Sequence[KeyPair]) -> bytes:
    """Encode ``message`` and sign its body with each of ``keys``."""
    body = canonical.encode(message.to_body())
    signed = SIGNING_CONTEXT + body
    sigs = [{"key": k.public_key, "sig": k.sign(signed)} for k in keys]
    return canonical.encode({"body": body, "signatures": sigs})


def encode_message(message: Message) -> bytes:
    """Encode a device-sent message (report, presence, inventory): no signatures."""
    return sign_message(message, ())


def decode_message(data: bytes, *, max_bytes: int = MAX_MESSAGE_BYTES) -> Message:
    """Decode and parse without any signature check (device-sent messages only)."""
    return parse(decode_envelope(data, max_bytes=max_bytes))
