"""Content-addressed payload files and the short-lived signed URLs devices fetch them by."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import os
import re
import secrets
import tarfile
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from urllib.parse import urlencode

from fleetpush_common.atomic import check_private, create_secret, fsync_dir, make_private_dir

__all__ = ["PayloadError", "PayloadStore", "TooLargeError", "UrlSigner", "check_tar"]

logger = logging.getLogger(__name__)

_SHA_RE = re.compile(r"[0-9a-f]{64}")


class TooLargeError(ValueError):
    """The upload went past the configured limit."""


class PayloadError(ValueError):
    """The payload does not suit its handler (e.g. not a tar for ``directory``)."""


def check_tar(path: Path) -> None:
    """Read ``path`` as a stream of tar headers, as the device's ``directory`` handler
    will unpack it (plain, gzip, bz2 or xz): never all of it in memory.

    Raises:
        PayloadError: not a readable tar archive.
    """
    try:
        with tarfile.open(path, "r|*") as tar:
            if tar.next() is None:
                raise PayloadError("an empty tar archive")
            for _ in tar:  # each header, skipping over the data: a truncated archive fails
                pass
    except (tarfile.TarError, EOFError, OSError, ValueError) as e:  # zlib/lzma errors too
        if isinstance(e, PayloadError):
            raise
        raise PayloadError(f"not a readable tar archive ({e})") from None


def _check_size(size: int, max_bytes: int) -> None:
    if size > max_bytes:
        raise TooLargeError(f"payload larger than {max_bytes} bytes")


class PayloadStore:
    """Payload files named by their SHA-256 under ``folder/ab/abcdef...``.

    Args:
        folder: where payloads live.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def path(self, sha256_hex: str) -> Path:
        """The file for a digest (which may not exist).

        Raises:
            ValueError: not a lowercase hex SHA-256.
        """
        if not _SHA_RE.fullmatch(sha256_hex):
            raise ValueError("not a SHA-256 hex digest")
        return self.folder / sha256_hex[:2] / sha256_hex

    def exists(self, sha256_hex: str) -> bool:
        try:
            return self.path(sha256_hex).is_file()
        except ValueError:
            return False

    async def store_stream(
        self,
        chunks: AsyncIterator[bytes],
        max_bytes: int,
        check: Callable[[Path], None] | None = None,
    ) -> tuple[str, int]:
        """Write a stream to a temp file while hashing it, then move it into place.

        ``check`` (run off the event loop) reads the complete temp file before it is
        moved into place; what it raises leaves nothing behind.

        Returns:
            ``(sha256_hex, size)``.

        Raises:
            TooLargeError: more than ``max_bytes`` arrived; nothing is kept.
        """
        make_private_dir(self.folder)
        fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=".upload.", suffix=".tmp")
        digest = hashlib.sha256()
        size = 0
        try:
            with os.fdopen(fd, "wb") as f:
                async for chunk in chunks:
                    size += len(chunk)
                    _check_size(size, max_bytes)
                    digest.update(chunk)
                    f.write(chunk)
                f.flush()
                # fsync of a large payload can take seconds: not on the event loop, which
                # also serves the API and the MQTT link.
                await asyncio.to_thread(os.fsync, f.fileno())
            if check is not None and size:
                await asyncio.to_thread(check, Path(tmp))
            sha = digest.hexdigest()
            final = self.path(sha)
            await asyncio.to_thread(_move_into_place, Path(tmp), final)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        return sha, size

    def delete(self, sha256_hex: str) -> None:
        with contextlib.suppress(FileNotFoundError, ValueError):
            self.path(sha256_hex).unlink()


def _move_into_place(tmp: Path, final: Path) -> None:
    make_private_dir(final.parent)
    os.replace(tmp, final)
    fsync_dir(final.parent)


class UrlSigner:
    """HMAC-SHA256 over ``sha256|expiry``: a URL is good until its expiry and no longer.

    Args:
        secret: at least 32 random bytes kept by the orchestrator only.
    """

    def __init__(self, secret: bytes) -> None:
        if len(secret) < 32:
            raise ValueError("URL signing secret must be at least 32 bytes")
        self._secret = secret

    @classmethod
    def from_file(cls, path: Path) -> UrlSigner:
        """Load the secret, creating it (mode 0600) on first use. Replicas starting at once
        on one data directory all load the one that was created first.

        Raises:
            ExposedSecretError: group or others may read it: anyone who can could sign
                download URLs for every payload.
        """
        if create_secret(path, secrets.token_bytes(32).hex().encode()):
            logger.info("created the URL signing key %s", path)
        check_private(path, "URL signing key")
        return cls(bytes.fromhex(path.read_text().strip()))

    @property
    def key_id(self) -> str:
        """Names the secret without revealing it: replicas compare theirs by it (a URL one
        signs must pass on every other one)."""
        mac = hmac.new(self._secret, b"fleetpush url-signing key id", hashlib.sha256)
        return mac.hexdigest()[:16]

    def _mac(self, sha256_hex: str, expires: int) -> str:
        msg = f"{sha256_hex}|{expires}".encode()
        return hmac.new(self._secret, msg, hashlib.sha256).hexdigest()[:32]

    def sign(self, base_url: str, sha256_hex: str, expires: int) -> str:
        """``{base_url}/payloads/{sha}?exp=..&sig=..``."""
        query = urlencode({"exp": expires, "sig": self._mac(sha256_hex, expires)})
        return f"{base_url}/payloads/{sha256_hex}?{query}"

    def check(self, sha256_hex: str, exp: str, sig: str, now: float) -> str | None:
        """None when the URL is valid at ``now``, else the reason it is not."""
        if not exp.isdigit() or len(exp) > 12:
            return "missing or invalid exp"
        if int(exp) < now:
            return "link expired"
        if not hmac.compare_digest(self._mac(sha256_hex, int(exp)), sig):
            return "bad signature"
        return None
