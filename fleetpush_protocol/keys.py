"""Ed25519 keys: generation, signing and the on-disk form operators keep.

Key files hold the 32-byte seed as hex on one line. They are written with mode 0600 and
never logged; a public key is identified by its 32 raw bytes (hex in text).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from nacl.bindings import crypto_sign_BYTES, crypto_sign_open, crypto_sign_PUBLICKEYBYTES
from nacl.exceptions import BadSignatureError as _NaclBadSignature
from nacl.signing import SigningKey

from fleetpush_common.atomic import atomic_write, check_private

__all__ = ["KeyPair", "load_public_key", "verify_signature"]


@dataclass(frozen=True)
class KeyPair:
    """A private Ed25519 key; ``repr`` never shows the secret."""

    _signing: SigningKey = field(repr=False)

    @classmethod
    def generate(cls) -> KeyPair:
        return cls(SigningKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> KeyPair:
        if len(seed) != 32:
            raise ValueError("an Ed25519 seed is 32 bytes")
        return cls(SigningKey(seed))

    @classmethod
    def load(cls, path: Path) -> KeyPair:
        """Read a key written by ``save``.

        Raises:
            ExposedSecretError: group or others may read the file (as ssh, refuse it).
            ValueError: the file does not hold a key.
        """
        check_private(path, "private key")
        text = path.read_text().strip()
        try:
            return cls.from_seed(bytes.fromhex(text))
        except ValueError:
            raise ValueError(f"{path}: not a fleetpush private key (64 hex digits)") from None

    def save(self, path: Path) -> None:
        """Write the seed atomically with mode 0600."""
        atomic_write(path, self._signing.encode().hex().encode() + b"\n", mode=0o600)

    @property
    def public_key(self) -> bytes:
        return bytes(self._signing.verify_key)

    def sign(self, message: bytes) -> bytes:
        return bytes(self._signing.sign(message).signature)

    def __repr__(self) -> str:
        return f"KeyPair(public_key={self.public_key.hex()})"


def load_public_key(text: str) -> bytes:
    """Parse a public key written as 64 hex digits."""
    try:
        raw = bytes.fromhex(text.strip())
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise ValueError(f"{text!r} is not an Ed25519 public key (64 hex digits)")
    return raw


def verify_signature(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """True when ``signature`` is ``public_key``'s Ed25519 signature over ``message``."""
    # The binding below is the one call every notice pays for: no VerifyKey object, no
    # argument re-checking. libsodium reads exactly 32 and 64 bytes, so lengths come first.
    if len(public_key) != crypto_sign_PUBLICKEYBYTES or len(signature) != crypto_sign_BYTES:
        return False
    try:
        crypto_sign_open(signature + message, public_key)
    except _NaclBadSignature:
        return False
    return True
