"""Getting a notice's payload through a delta when the device holds its base.

The base is the payload file of the installed release, kept in ``state_dir/base/`` (named
by its SHA-256) after each successful update (``keep_base``). The directory handler's slot
cannot be turned back into the same tar bytes, so re-creating the base is not an option; a
device that has no kept base (``keep_base = false``, its first update, a cleaned-up state
folder) simply matches no delta and fetches the full payload.

A delta is downloaded like a payload (``Fetcher``: resumable with Range, pinned to the
delta's own SHA-256 and size), rebuilt off the event loop into ``<notice>.rebuild``,
checked against the notice's pinned payload SHA-256 and size, and only then renamed to the
payload's final name, so nothing unverified reaches an installer. A ``zstd-patch`` rebuild
holds the base and a window as large as the payload; a ``tar-bsdiff`` one reads the base
by offset and holds at most one member (fleetpush_protocol/tar_delta.py): both are
refused before rebuilding when they would need more than ``max_rebuild_memory_bytes``.
Any failure on that way (no base, a bad or corrupt delta, a rebuild over the memory limit,
a mismatch, a transport error) falls back to the full payload and is said in
``FetchOutcome.detail``: the update goes on, it has not failed.

Crash safety: the job stays ``downloading`` throughout. A restart finds at most a verified
``<notice>.delta`` (handed back to the fetcher, which re-hashes it instead of fetching it
again), a partial ``<notice>.delta.part`` (resumed) and a torn ``<notice>.rebuild``
(rewritten from the start).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from device_client.commands import run_command
from device_client.config import DownloadConfig, PolicyConfig
from device_client.errors import UpdateError
from device_client.jobs.policy import Blocked, install_blocked
from device_client.transport.fetcher import Fetcher, ProgressCallback, hash_file
from fleetpush_common.atomic import fsync_dir, make_private_dir
from fleetpush_protocol.errors import ContentError, PayloadHashMismatchError, TransportError
from fleetpush_protocol.messages import SECURITY, Delta, Payload, UpdateNotice

if TYPE_CHECKING:
    from types import ModuleType

__all__ = ["BaseStore", "DeltaFetcher", "FetchOutcome"]

logger = logging.getLogger(__name__)

# fleetpush_protocol.delta.METHODS, without importing it: zstandard costs an idle agent
# about 1 MB, so it loads with the first delta
KNOWN_METHODS = frozenset({"zstd-patch", "tar-bsdiff"})
METERED_RECHECK_S = 60.0  # seconds between two asks of the metered command while waiting
METERED_COMMAND_TIMEOUT_S = 10.0  # seconds


@dataclass(frozen=True, slots=True)
class FetchOutcome:
    downloaded: int  # bytes received over the wire for this payload, by this process
    via_delta: bool
    detail: str  # why a delta was not used, or which one was; "" when there were none
    deferred: Blocked | None = None  # a delta failed and the link holds the full payload


def _failed_marker(part: Path) -> Path:
    return part.with_name(part.name.removesuffix(".part") + ".nodelta")


class BaseStore:
    """The one kept base payload, ``folder/<sha256 hex>``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def path(self, sha256: bytes) -> Path:
        return self.folder / sha256.hex()

    def find(self, deltas: tuple[Delta, ...]) -> tuple[Delta, Path] | None:
        """The first delta of a known method whose base this device holds."""
        for d in deltas:
            if d.method in KNOWN_METHODS and self.path(d.base_sha256).is_file():
                return d, self.path(d.base_sha256)
        return None

    def keep(self, payload_file: Path, sha256: bytes) -> None:
        """Make ``payload_file`` (verified, installed) the base; drop any older one."""
        make_private_dir(self.folder)
        final = self.path(sha256)
        os.replace(payload_file, final)
        for f in self.folder.iterdir():
            if f != final:
                f.unlink(missing_ok=True)
        fsync_dir(self.folder)

    def clear(self) -> None:
        if self.folder.is_dir():
            for f in self.folder.iterdir():
                f.unlink(missing_ok=True)


def _codec() -> ModuleType:
    from fleetpush_protocol import delta  # noqa: PLC0415 - see KNOWN_METHODS

    return delta


def _tar_codec() -> ModuleType:
    from fleetpush_protocol import tar_delta  # noqa: PLC0415 - see KNOWN_METHODS

    return tar_delta


def _rebuild(
    base: Path, delta: Path, out: Path, payload: Payload, *, max_memory: int, method: str
) -> None:
    """Rebuild the payload into ``out`` and check it; raises ``DeltaError`` (a
    ``ValueError``) or a ``ContentError`` when it is not the pinned payload."""
    codec = _codec()
    base_size = base.stat().st_size
    if method == codec.TAR_METHOD:  # streams: the base is read by offset, never whole
        with base.open("rb") as old, delta.open("rb") as patch, out.open("w+b") as f:
            written = _tar_codec().apply(
                old, base_size, patch, f, max_output=payload.size, max_memory=max_memory
            )
    else:
        with delta.open("rb") as patch:
            need = codec.needed_memory(patch.read(codec.HEADER_BYTES), base_size)
            if need > max_memory:  # refused before the base is read into memory
                raise codec.DeltaError(f"rebuild needs {need} bytes of memory, limit {max_memory}")
            patch.seek(0)
            with out.open("wb") as f:
                written = codec.apply(
                    base.read_bytes(), patch, f, max_output=payload.size, max_memory=max_memory
                )
    if written != payload.size:
        raise codec.DeltaError(f"rebuilt {written} bytes, the signed size is {payload.size}")
    if hash_file(out) != payload.sha256:
        raise PayloadHashMismatchError("the rebuilt payload does not match the signed SHA-256")


def _remove(*files: Path) -> None:
    for f in files:
        with contextlib.suppress(OSError):
            f.unlink(missing_ok=True)


class DeltaFetcher:
    """Fetches a notice's payload, through a delta when one applies.

    Args:
        fetcher: the device's payload fetcher (its bandwidth cap applies to deltas too).
        config: the download settings (memory limit, metered link).
        bases: where the kept base lives.
        clock: Unix time in seconds (metered windows).
    """

    def __init__(
        self,
        fetcher: Fetcher,
        config: DownloadConfig,
        bases: BaseStore,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.fetcher = fetcher
        self.config = config
        self.bases = bases
        self.clock = clock
        self._spent: dict[str, int] = {}  # bytes of a notice fetched before a deferral

    def keep_base(self, payload_file: Path, sha256: bytes) -> None:
        """After a successful install: keep its payload as the next base, or none when
        ``keep_base`` is off. Never fails the update: only deltas are lost."""
        try:
            if self.config.keep_base:
                self.bases.keep(payload_file, sha256)
            else:
                self.bases.clear()
        except OSError as e:
            logger.warning("could not keep the base payload: %s", e)

    def usable(self, notice: UpdateNotice, part: Path) -> Delta | None:
        """The delta this device would use, unless one already failed for this notice."""
        if _failed_marker(part).exists():
            return None
        found = self.bases.find(notice.deltas or ())
        return found[0] if found else None

    async def fetch(
        self, notice: UpdateNotice, part: Path, dest: Path, progress: ProgressCallback
    ) -> FetchOutcome:
        """Make ``dest`` hold the verified payload, unless a failed delta leaves a full
        download that a metered link defers (``FetchOutcome.deferred``); raises as
        ``Fetcher.fetch`` does, for the full payload only."""
        start = self.fetcher.bytes_received - self._spent.pop(notice.notice_id, 0)
        failed = _failed_marker(part)
        detail = ""
        found = None if failed.exists() else self.bases.find(notice.deltas or ())
        if failed.exists():
            detail = "a delta failed for this notice before; fetched the full payload"
        elif found is not None:
            delta, base = found
            try:
                await self._via_delta(delta, base, notice.payload, (part, dest), progress)
            # ValueError: the codec's DeltaError (a bad, foreign or oversized delta)
            except (ContentError, TransportError, UpdateError, ValueError, OSError) as e:
                failed.touch()  # never again for this notice, across restarts too
                base_hex = delta.base_sha256.hex()[:12]
                why = f"delta from base {base_hex} not used ({type(e).__name__}: {e})"
                logger.warning("%s", why)
                if (blocked := await self.metered_block(notice, part)) is not None:
                    self._spent[notice.notice_id] = self.fetcher.bytes_received - start
                    return FetchOutcome(0, False, f"{why}; {blocked.reason}"[:1024], blocked)
                detail = f"{why}; fetched the full payload"[:1024]
            else:
                got = self.fetcher.bytes_received - start
                base_hex = delta.base_sha256.hex()[:12]
                used = f"rebuilt from a {delta.size}-byte delta on base {base_hex}"
                return FetchOutcome(got, True, used)
        elif notice.deltas:
            detail = "no delta for a base this device holds; fetched the full payload"
        await self.fetcher.fetch(notice.payload, part, dest, progress)
        _remove(failed)
        return FetchOutcome(self.fetcher.bytes_received - start, False, detail)

    async def _via_delta(
        self,
        delta: Delta,
        base: Path,
        payload: Payload,
        files: tuple[Path, Path],
        progress: ProgressCallback,
    ) -> None:
        part, dest = files
        stem = part.name.removesuffix(".part")
        suffixes = (".delta.part", ".delta", ".rebuild")
        dpart, dfile, out = (part.with_name(stem + x) for x in suffixes)
        pinned = Payload(sha256=delta.sha256, size=delta.size, urls=delta.urls)
        try:
            if dfile.is_file():  # a crash after the download: let the fetcher re-check it
                os.replace(dfile, dpart)
            await self.fetcher.fetch(pinned, dpart, dfile, progress)
            await asyncio.to_thread(
                _rebuild, base, dfile, out, payload,
                max_memory=self.config.max_rebuild_memory_bytes, method=delta.method,
            )  # fmt: skip
            os.replace(out, dest)
        except Exception:
            _remove(dpart, dfile, out)
            raise
        # Not on cancel (the agent stopping): a partial delta resumes at the next start.
        _remove(dpart, dfile, out)

    async def metered_block(self, notice: UpdateNotice, part: Path) -> Blocked | None:
        """Why a full download must wait on a metered link, or None to go ahead.

        Deltas and security updates are always allowed; other full payloads only inside
        ``metered_windows``.
        """
        cfg = self.config
        if not (cfg.metered or cfg.metered_command) or self.usable(notice, part) is not None:
            return None
        if notice.update_class == SECURITY:  # urgent: a security update is not held
            return None
        now = self.clock()
        if not await self._link_metered():
            return None
        if cfg.metered_windows:
            blocked = install_blocked(PolicyConfig(maintenance_windows=cfg.metered_windows), now)
            if blocked is None:
                return None
            until = min(blocked.until, now + METERED_RECHECK_S)
            window = blocked.reason.removeprefix("waiting for maintenance window ")
            return Blocked(until, f"metered link: full download waits for window {window}")
        return Blocked(now + METERED_RECHECK_S, "metered link: full download waits")

    async def _link_metered(self) -> bool:
        cfg = self.config
        if not cfg.metered_command:
            return cfg.metered
        result = await run_command(cfg.metered_command, timeout_s=METERED_COMMAND_TIMEOUT_S)
        if result.returncode is None:  # cannot tell: the setting decides
            logger.warning("metered_command %s; using metered = %s", result.describe(), cfg.metered)
            return cfg.metered
        return result.returncode == 0
