"""Streaming check of a downloaded payload against the size and SHA-256 a notice signed.

Sans-IO: feed it chunks as they arrive. It refuses the first byte past the signed size,
so an endless-data server costs the device at most one chunk more than the payload.
"""

from __future__ import annotations

import hashlib

from fleetpush_protocol.errors import PayloadHashMismatchError, PayloadSizeMismatchError

__all__ = ["PayloadCheck"]


class PayloadCheck:
    """Hashes and counts payload bytes; raises as soon as they cannot match."""

    __slots__ = ("_hash", "done", "sha256", "size")

    def __init__(self, size: int, sha256: bytes) -> None:
        self.size = size
        self.sha256 = sha256
        self._hash = hashlib.sha256()
        self.done = 0

    def update(self, chunk: bytes) -> None:
        """Account for ``chunk``.

        Raises:
            PayloadSizeMismatchError: the payload is now longer than the signed size.
        """
        if self.done + len(chunk) > self.size:
            raise PayloadSizeMismatchError(
                f"payload longer than the signed {self.size} bytes; stopped reading"
            )
        self._hash.update(chunk)
        self.done += len(chunk)

    def finish(self) -> None:
        """Call at end of data.

        Raises:
            PayloadSizeMismatchError: fewer bytes than signed.
            PayloadHashMismatchError: the SHA-256 differs from the signed one.
        """
        if self.done != self.size:
            raise PayloadSizeMismatchError(f"payload is {self.done} bytes, signed size {self.size}")
        if self._hash.digest() != self.sha256:
            raise PayloadHashMismatchError("payload SHA-256 differs from the signed hash")
