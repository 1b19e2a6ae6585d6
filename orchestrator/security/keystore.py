"""The orchestrator's keys: offline root keys, online signing keys and signed keyrings.

Layout of the keys folder (``[keys] dir``, default ``<data_dir>/keys``)::

    root.json               root public keys + threshold: the anchor devices are built with
    keyrings/<N>.bin        every signed keyring, version 1..N; all are published, retained
    signing/<pubhex>.key    online signing keys (mode 0600)

Root private keys are written to a separate folder that the operator moves offline; they
are only needed again to sign the next keyring (``fleetpush keys rotate``).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from fleetpush_common.atomic import atomic_write, make_private_dir
from fleetpush_protocol.envelope import sign_message
from fleetpush_protocol.errors import ContentError
from fleetpush_protocol.keys import KeyPair
from fleetpush_protocol.messages import Keyring, SigningKeyInfo
from fleetpush_protocol.verify import TrustedKeyring, VerifyPolicy, verify_keyring_chain

__all__ = [
    "KeyStoreError",
    "KeyStore",
    "SigningSet",
]

logger = logging.getLogger(__name__)


class KeyStoreError(Exception):
    """The keys folder is missing, inconsistent, or the given root keys cannot sign."""


@dataclass(frozen=True)
class SigningSet:
    """The keys that sign notices now, and the last instant they may be used."""

    keys: tuple[KeyPair, ...]
    not_after: int  # Unix seconds: no notice may expire later than this


class KeyStore:
    """Reads and writes the keys folder.

    Args:
        folder: the keys folder.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    @property
    def _rings(self) -> Path:
        return self.folder / "keyrings"

    @property
    def _signing(self) -> Path:
        return self.folder / "signing"

    # --- reading -------------------------------------------------------------------------

    def exists(self) -> bool:
        return (self.folder / "root.json").exists()

    def anchor(self) -> TrustedKeyring:
        """The version-0 trust anchor devices are provisioned with."""
        try:
            data = json.loads((self.folder / "root.json").read_text())
            keys = [bytes.fromhex(k) for k in data["keys"]]
            return TrustedKeyring.anchor(keys, int(data["threshold"]))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise KeyStoreError(f"{self.folder}/root.json: missing or invalid ({e})") from None

    def keyring_blobs(self) -> list[tuple[int, bytes]]:
        """Every signed keyring as ``(version, bytes)``, oldest first."""
        if not self._rings.is_dir():
            return []
        out = []
        for path in self._rings.glob("*.bin"):
            if path.stem.isdigit():
                out.append((int(path.stem), path.read_bytes()))
        return sorted(out)

    def current(self) -> Keyring:
        """The newest keyring, after checking the whole chain from the anchor.

        Raises:
            KeyStoreError: no keyring, or the chain does not verify.
        """
        blobs = self.keyring_blobs()
        if not blobs:
            raise KeyStoreError(f"{self.folder}: no keyring; run 'fleetpush keys init'")
        if [v for v, _ in blobs] != list(range(1, len(blobs) + 1)):
            raise KeyStoreError(f"{self._rings}: keyring versions are not 1..{len(blobs)}")
        try:
            trusted = verify_keyring_chain(
                [b for _, b in blobs],
                trusted=self.anchor(),
                policy=VerifyPolicy(max_rotations=1024),
            )
        except ContentError as e:
            raise KeyStoreError(f"{self._rings}: the keyring chain does not verify: {e}") from None
        return trusted.keyring

    def signing_set(self, now: float) -> SigningSet:
        """The signing keys to use now: the newest valid ones this host holds.

        Raises:
            KeyStoreError: fewer usable keys than the keyring's signing threshold.
        """
        ring = self.current()
        usable = []
        for info in sorted(ring.signing_keys, key=lambda i: i.not_after, reverse=True):
            path = self._signing / f"{info.public_key.hex()}.key"
            if info.not_before <= now <= info.not_after and path.exists():
                usable.append((KeyPair.load(path), info))
        chosen = usable[: ring.signing_threshold]
        if len(chosen) < ring.signing_threshold:
            raise KeyStoreError(
                f"keyring v{ring.version} needs {ring.signing_threshold} signing key(s) valid "
                f"now; this host has {len(usable)}; run 'fleetpush keys rotate'"
            )
        return SigningSet(
            keys=tuple(k for k, _ in chosen),
            not_after=min(i.not_after for _, i in chosen),
        )

    # --- writing -------------------------------------------------------------------------

    def _new_signing_key(self, now: int, validity_s: int) -> SigningKeyInfo:
        key = KeyPair.generate()
        make_private_dir(self._signing)
        key.save(self._signing / f"{key.public_key.hex()}.key")
        return SigningKeyInfo(public_key=key.public_key, not_before=now - 60,
                              not_after=now + validity_s)  # fmt: skip

    def _write_ring(self, ring: Keyring, signers: list[KeyPair]) -> bytes:
        blob = sign_message(ring, signers)
        make_private_dir(self._rings)
        atomic_write(self._rings / f"{ring.version}.bin", blob)
        logger.info("wrote keyring v%d", ring.version)
        return blob

    def init(
        self, root_out: Path, *, roots: int, threshold: int, validity_s: int, now: int
    ) -> Keyring:
        """Create root keys (into ``root_out``), a signing key and keyring version 1.

        Raises:
            KeyStoreError: the folder already holds keys, or the counts are invalid.
        """
        if self.exists() or self.keyring_blobs():
            raise KeyStoreError(f"{self.folder} already holds keys; use 'fleetpush keys rotate'")
        if not 1 <= threshold <= roots <= 16:
            raise KeyStoreError("need 1 <= threshold <= roots <= 16")
        make_private_dir(root_out)
        root_keys = [KeyPair.generate() for _ in range(roots)]
        for i, key in enumerate(root_keys, start=1):
            key.save(root_out / f"root-{i}-{key.public_key.hex()[:16]}.key")
        make_private_dir(self.folder)
        anchor = {"keys": [k.public_key.hex() for k in root_keys], "threshold": threshold}
        atomic_write(self.folder / "root.json", json.dumps(anchor, indent=2).encode() + b"\n")
        info = self._new_signing_key(now, validity_s)
        ring = Keyring(
            version=1,
            root_keys=tuple(k.public_key for k in root_keys),
            root_threshold=threshold,
            signing_keys=(info,),
            signing_threshold=1,
            revoked=(),
            issued_at=now,
        )
        self._write_ring(ring, root_keys[:threshold])
        return ring

    def _check_roots(self, ring: Keyring, root_keys: list[KeyPair]) -> list[KeyPair]:
        valid = [k for k in root_keys if k.public_key in ring.root_keys]
        if len(valid) < ring.root_threshold:
            raise KeyStoreError(
                f"keyring v{ring.version} needs {ring.root_threshold} of its root keys to "
                f"sign the next one; {len(valid)} given"
            )
        return valid[: ring.root_threshold]

    def rotate_signing(
        self, root_keys: list[KeyPair], *, validity_s: int, revoke_old: bool, now: int
    ) -> Keyring:
        """Add a new signing key in keyring N+1 signed by the current root.

        Old keys stay valid until they expire (notices already out keep verifying),
        unless ``revoke_old``: then they are listed as revoked.
        """
        ring = self.current()
        signers = self._check_roots(ring, root_keys)
        info = self._new_signing_key(now, validity_s)
        old = tuple(k for k in ring.signing_keys if k.not_after >= now)
        revoked = ring.revoked
        if revoke_old:
            revoked = tuple(dict.fromkeys((*revoked, *(k.public_key for k in old))))
            old = ()
        new = Keyring(
            version=ring.version + 1,
            root_keys=ring.root_keys,
            root_threshold=ring.root_threshold,
            signing_keys=(info, *old),
            signing_threshold=ring.signing_threshold,
            revoked=revoked,
            issued_at=max(now, ring.issued_at),
        )
        self._write_ring(new, signers)
        return new

    def rotate_root(
        self, root_keys: list[KeyPair], root_out: Path, *, roots: int, threshold: int, now: int
    ) -> Keyring:
        """Replace the root keys: keyring N+1 signed by the old AND the new root."""
        ring = self.current()
        old_signers = self._check_roots(ring, root_keys)
        if not 1 <= threshold <= roots <= 16:
            raise KeyStoreError("need 1 <= threshold <= roots <= 16")
        make_private_dir(root_out)
        new_roots = [KeyPair.generate() for _ in range(roots)]
        for i, key in enumerate(new_roots, start=1):
            key.save(root_out / f"root-v{ring.version + 1}-{i}-{key.public_key.hex()[:16]}.key")
        new = Keyring(
            version=ring.version + 1,
            root_keys=tuple(k.public_key for k in new_roots),
            root_threshold=threshold,
            signing_keys=ring.signing_keys,
            signing_threshold=ring.signing_threshold,
            revoked=ring.revoked,
            issued_at=max(now, ring.issued_at),
        )
        self._write_ring(new, [*old_signers, *new_roots[:threshold]])
        return new


def describe(ring: Keyring) -> dict[str, object]:
    """A JSON-able summary of a keyring (public data only)."""
    return {
        "version": ring.version,
        "root_keys": [k.hex() for k in ring.root_keys],
        "root_threshold": ring.root_threshold,
        "signing_keys": [
            {"key": k.public_key.hex(), "not_before": k.not_before, "not_after": k.not_after}
            for k in ring.signing_keys
        ],
        "signing_threshold": ring.signing_threshold,
        "revoked": [k.hex() for k in ring.revoked],
        "issued_at": ring.issued_at,
    }
