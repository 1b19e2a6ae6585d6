"""Payload download over HTTP(S): resumable, bounded, verified. aiohttp lives only here.

For each URL in the notice, in order: up to ``max_attempts`` attempts, each resuming with
``Range`` from the partial file kept on disk (so a crash or a cut connection costs at most
the bytes in flight; the file is not fsynced, since after a restart it is hashed again
before use and a torn partial file is downloaded again). Reading stops at the signed
size, whatever the server sends or claims (endless-data attack); a declared length that
contradicts the signed size is a ``size_mismatch``. The SHA-256 is computed while
streaming (``PayloadCheck``) and checked before the file is renamed to its final name, so
nothing unverified reaches an installer.

Transport errors (connect/read timeouts, cut connections, 5xx) are retried with jittered
backoff; content errors (hash or size mismatch) discard the partial file and move on to
the next URL, since another mirror may serve the right bytes; if every URL fails, the
content error is raised if there was one, else ``DownloadError``.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from device_client.config import DownloadConfig
from device_client.errors import DownloadError, SlowRetrievalError, UpdateError
from device_client.transport.base import ProgressCallback
from fleetpush_common.backoff import Backoff
from fleetpush_protocol.errors import ContentError, PayloadSizeMismatchError
from fleetpush_protocol.messages import FailureCode, Payload
from fleetpush_protocol.payload import PayloadCheck

if TYPE_CHECKING:
    import aiohttp

__all__ = ["Fetcher", "ProgressCallback", "hash_file"]

logger = logging.getLogger(__name__)

RETRY_BASE_S = 0.5  # seconds; the first retry waits up to this, then doubling
RETRY_CAP_S = 30.0  # seconds
_BLOCK = 1 << 20  # bytes read at a time when hashing a file


def hash_file(path: Path) -> bytes:
    """SHA-256 of a whole file."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(_BLOCK):
            h.update(block)
    return h.digest()


def _check_partial(part: Path, payload: Payload, length: int) -> PayloadCheck:
    # Rebuild the running hash from the bytes already on disk (after a restart).
    check = PayloadCheck(payload.size, payload.sha256)
    with part.open("rb") as f:
        while check.done < length and (block := f.read(min(_BLOCK, length - check.done))):
            check.update(block)
    return check


def _disk_full(e: OSError) -> UpdateError:
    return UpdateError(FailureCode.DISK_FULL, f"no space left to store the payload ({e.strerror})")


def _discard(path: Path) -> None:
    path.unlink(missing_ok=True)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return -1


class _Throttle:
    """Keeps the average rate at or below ``rate`` bytes/s since the attempt started."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self.start = time.monotonic()
        self.sent = 0

    async def account(self, n: int) -> None:
        if self.rate <= 0:
            return
        self.sent += n
        ahead = self.sent / self.rate - (time.monotonic() - self.start)
        if ahead > 0:
            await asyncio.sleep(ahead)


class _MinRate:
    """Slow-retrieval guard: a server that trickles bytes (each one just inside the read
    timeout) would hold a download forever. Over every window of ``window`` seconds the
    average must reach ``rate`` bytes/s, else ``SlowRetrievalError`` (a transport error)."""

    def __init__(self, rate: float, window: float) -> None:
        self.rate = rate
        self.window = window
        self.start = time.monotonic()
        self.got = 0

    def account(self, n: int) -> None:
        if self.rate <= 0:
            return
        self.got += n
        elapsed = time.monotonic() - self.start
        if elapsed >= self.window:
            if self.got < self.rate * elapsed:
                raise SlowRetrievalError(
                    f"server sent {self.got} bytes in {elapsed:.1f}s, "
                    f"below the minimum of {self.rate:g} bytes/s"
                )
            self.start, self.got = time.monotonic(), 0


class Fetcher:
    """Downloads payloads: one ``fetch`` per payload.

    Args:
        config: limits and timeouts.
        user_agent: sent as the User-Agent header.
    """

    def __init__(self, config: DownloadConfig, *, user_agent: str = "fleetpush-device") -> None:
        self.config = config
        self.user_agent = user_agent
        self.bytes_received = 0  # body bytes read from servers, all attempts (for tests)
        self._resumed_from_disk = False

    async def fetch(
        self, payload: Payload, part: Path, dest: Path, progress: ProgressCallback
    ) -> None:
        """Make ``dest`` hold exactly the payload's bytes, verified.

        Raises:
            PayloadHashMismatchError, PayloadSizeMismatchError: the URLs served wrong bytes.
            DownloadError: every URL failed with transport errors.
            UpdateError: disk full (``disk_full``).
        """
        # Imported on first use: aiohttp is a third of an idle agent's memory otherwise.
        import aiohttp  # noqa: PLC0415

        cfg = self.config
        self._resumed_from_disk = _size(part) > 0
        content_error: ContentError | None = None
        transport_error: DownloadError | None = None
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=cfg.connect_timeout_s, sock_read=cfg.read_timeout_s
        )
        headers = {"User-Agent": self.user_agent, "Accept-Encoding": "identity"}
        # read_bufsize: what aiohttp buffers ahead of us is lost if the connection is cut
        # (it raises before handing it over), so keep it to one chunk.
        async with aiohttp.ClientSession(
            timeout=timeout, headers=headers, auto_decompress=False, read_bufsize=cfg.chunk_bytes
        ) as session:
            for url in payload.urls:
                retry = Backoff(RETRY_BASE_S, RETRY_CAP_S)
                for attempt in range(cfg.max_attempts):
                    try:
                        await self._attempt(session, url, payload, part, progress)
                    except ContentError as e:
                        _discard(part)
                        if self._resumed_from_disk:
                            # The partial file came from an earlier run and is not fsynced:
                            # after a power cut its tail may be garbage. Start over once.
                            self._resumed_from_disk = False
                            logger.info("resumed payload did not verify; downloading again")
                            continue
                        logger.warning("payload from %s rejected: %s", _safe(url), e)
                        content_error = e
                        break
                    except DownloadError as e:
                        transport_error = e
                        logger.info(
                            "download from %s failed (attempt %d): %s", _safe(url), attempt + 1, e
                        )
                        if not e.retry_same_url or attempt + 1 == cfg.max_attempts:
                            break
                        await asyncio.sleep(retry.next_delay())
                    else:
                        os.replace(part, dest)
                        return
        if content_error is not None:
            raise content_error
        raise DownloadError(f"every payload URL failed; last error: {transport_error}")

    async def _attempt(
        self,
        session: aiohttp.ClientSession,
        url: str,
        payload: Payload,
        part: Path,
        progress: ProgressCallback,
    ) -> None:
        """One request; on return ``part`` holds the whole, verified payload."""
        size = payload.size
        offset = max(0, _size(part))
        if offset > size:
            _discard(part)
            offset = 0
        check = await asyncio.to_thread(_check_partial, part, payload, offset) if offset else None
        if offset == size and check is not None:
            check.finish()
            return
        import aiohttp  # noqa: PLC0415 - already loaded by fetch()

        req_headers = {"Range": f"bytes={offset}-"} if offset else {}
        try:
            async with session.get(url, headers=req_headers) as resp:
                start = self._check_response(resp, offset, size)
                if start != offset or check is None:
                    check = PayloadCheck(size, payload.sha256)
                await self._stream(resp, check, part, start, progress)
        except (aiohttp.ServerTimeoutError, TimeoutError) as e:
            raise SlowRetrievalError(f"no data within the timeout ({type(e).__name__})") from e
        except aiohttp.ClientResponseError as e:
            raise DownloadError(f"HTTP error {e.status}") from e
        except aiohttp.ClientError as e:
            raise DownloadError(f"{type(e).__name__}: {e}") from e
        check.finish()

    def _check_response(self, resp: aiohttp.ClientResponse, offset: int, size: int) -> int:
        """Return the offset the body starts at; raise for statuses we cannot use."""
        status = resp.status
        if status == 206 and offset:
            start, total = _content_range(resp.headers.get("Content-Range", ""))
            if total is not None and total != size:
                raise PayloadSizeMismatchError(f"server has {total} bytes, signed size is {size}")
            if start != offset:
                raise DownloadError(f"server resumed at byte {start}, asked for {offset}")
            return offset
        if status == 200:
            length = resp.content_length
            if length is not None and length != size:
                raise PayloadSizeMismatchError(
                    f"server sends {length} bytes, signed size is {size}"
                )
            return 0  # a server that ignores Range: start over
        if status == 416:
            raise DownloadError("server refused the range")
        retry = status >= 500 or status in (408, 425, 429)
        raise DownloadError(f"HTTP status {status}", retry_same_url=retry)

    async def _stream(
        self,
        resp: aiohttp.ClientResponse,
        check: PayloadCheck,
        part: Path,
        offset: int,
        progress: ProgressCallback,
    ) -> None:
        size = check.size
        chunk = self.config.chunk_bytes
        throttle = _Throttle(self.config.bandwidth_bytes_per_s)
        min_rate: float = self.config.min_bytes_per_s
        if self.config.bandwidth_bytes_per_s:  # never trip over our own throttle
            min_rate = min(min_rate, self.config.bandwidth_bytes_per_s / 2)
        guard = _MinRate(min_rate, self.config.read_timeout_s)
        try:
            with part.open("r+b" if offset else "wb") as f:
                if offset:
                    f.seek(offset)
                    f.truncate()  # drop any bytes past what the running hash covers
                while offset < size:
                    # Never ask for more than the signed size: an endless stream stops here.
                    data = await resp.content.read(min(chunk, size - offset))
                    if not data:
                        raise DownloadError(f"connection closed at byte {offset} of {size}")
                    self.bytes_received += len(data)
                    check.update(data)
                    f.write(data)
                    offset += len(data)
                    await progress(offset, size)
                    guard.account(len(data))
                    await throttle.account(len(data))
                    # On a fast link every read is ready at once and this loop would never
                    # yield: let reports, keepalives and other agents in this loop run.
                    await asyncio.sleep(0)
                # No fsync: the file is verified again before it is installed after a
                # restart, and a torn file is simply downloaded again.
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                _discard(part)  # free the space: the old release must keep working
                raise _disk_full(e) from e
            raise


def _content_range(value: str) -> tuple[int, int | None]:
    # "bytes 100-199/1000" or "bytes 100-199/*"
    unit, _, rest = value.partition(" ")
    span, _, total = rest.partition("/")
    try:
        start = int(span.split("-", 1)[0])
        total_size = None if total == "*" else int(total)
    except ValueError:
        raise DownloadError(f"unusable Content-Range {value[:64]!r}") from None
    if unit != "bytes":
        raise DownloadError(f"unusable Content-Range {value[:64]!r}")
    return start, total_size


def _safe(url: str) -> str:
    # Presigned URLs carry credentials in the query string: never log it.
    return url.split("?", 1)[0][:200]
