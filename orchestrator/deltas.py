"""Delta payloads on the orchestrator: which bases, making them, and where they are kept.

A delta rebuilds a release's payload from the payload of an older release of the same
name. The bases are the releases devices in the field run: the ``current_version`` of
every device record, counted, the ``max_bases`` most common that are stored releases of
that name (``field_bases``). Deltas are made when a release is uploaded and on demand
(``POST /v1/releases/{ref}/deltas``, ``fleetpush release deltas``).

The delta bytes are content-addressed in the payload store itself, so the signed payload
URL route serves them (with Range) exactly like payloads. Which deltas lead to a release is
a small JSON index per target payload, ``<payloads>/deltas/<target sha256>.json``,
written atomically; the notice factory reads it and lists the deltas in every notice of
that release. Each pair gets the smallest of the methods that apply (``smallest``), and
every delta is applied before it is kept. A delta that would not save at least
``1 - max_ratio`` of the full payload is not kept: a device would pay for the rebuild and
save little.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import logging
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fleetpush_common.atomic import atomic_write, make_private_dir
from fleetpush_protocol import delta as codec
from fleetpush_protocol import tar_delta
from orchestrator import tar_delta_make
from orchestrator.config_deltas import DeltaConfig
from orchestrator.payloads import PayloadStore
from orchestrator.store import NotFoundError, ReleaseRecord, Store
from orchestrator.tar_delta_make import NotATarError

__all__ = ["DeltaIndex", "DeltaMaker", "DeltaRecord", "Skipped", "applied", "field_bases",
           "smallest"]  # fmt: skip

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class DeltaRecord:
    """One stored delta to a target payload."""

    base_sha256: str  # hex
    base_version: str
    sha256: str  # hex, of the delta bytes
    size: int
    method: str
    seconds: float  # time taken to make it

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Skipped:
    """A base no delta was kept for, and why."""

    base_version: str
    reason: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class DeltaIndex:
    """The deltas stored for each target payload."""

    def __init__(self, payloads: PayloadStore) -> None:
        self.payloads = payloads
        self.folder = payloads.folder / "deltas"

    def _file(self, target_sha256: str) -> Path:
        self.payloads.path(target_sha256)  # validates the hex digest
        return self.folder / f"{target_sha256}.json"

    def records(self, target_sha256: str) -> list[DeltaRecord]:
        """Deltas to ``target_sha256`` whose bytes are present, newest base first."""
        try:
            raw = json.loads(self._file(target_sha256).read_bytes())
        except (FileNotFoundError, ValueError):
            return []
        records = [DeltaRecord(**r) for r in raw]
        return [r for r in records if self.payloads.exists(r.sha256)]

    def add(self, target_sha256: str, record: DeltaRecord) -> None:
        # Two makers of one target must not lose each other's entry: threads of one
        # replica, or replicas sharing the payload folder. flock excludes both (each call
        # opens the lock file anew, and each open is locked on its own).
        with self._locked():
            kept = [r for r in self.records(target_sha256) if r.base_sha256 != record.base_sha256]
            self._write(target_sha256, [record, *kept])

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        make_private_dir(self.folder)
        fd = os.open(self.folder / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing drops the flock

    def _write(self, target_sha256: str, records: Sequence[DeltaRecord]) -> None:
        """Under ``_locked``, which made the folder."""
        data = json.dumps([r.to_json() for r in records], indent=1).encode()
        atomic_write(self._file(target_sha256), data, mode=0o600)

    def remove(self, target_sha256: str) -> list[DeltaRecord]:
        """Forget the deltas to ``target_sha256`` (its release was deleted); returns them."""
        records = self.records(target_sha256)
        with contextlib.suppress(FileNotFoundError, ValueError):
            self._file(target_sha256).unlink()
        return records


def applied(method: str, base: bytes, patch: bytes, max_output: int) -> bytes:
    """What ``patch`` rebuilds from ``base`` (``DeltaError`` when it does not apply)."""
    out = io.BytesIO()
    if method == codec.TAR_METHOD:
        tar_delta.apply(io.BytesIO(base), len(base), io.BytesIO(patch), out,
                        max_output=max_output, max_memory=1 << 40)  # fmt: skip
    else:
        codec.apply(base, io.BytesIO(patch), out, max_output=max_output, max_memory=1 << 40)
    return out.getvalue()


def smallest(base: bytes, target: bytes, config: DeltaConfig) -> tuple[bytes, str]:
    """The smallest delta of the methods that apply to the pair: ``zstd-patch`` always,
    ``tar-bsdiff`` when both are tars. Each is applied here before it is kept: a delta
    that does not rebuild the target byte for byte is a bug, never published."""
    made = [(codec.make(base, target, level=config.level), codec.METHOD)]
    with contextlib.suppress(NotATarError):
        patch = tar_delta_make.make(
            base, target, level=config.level,
            max_bsdiff_member=config.max_bsdiff_member_bytes,
        )  # fmt: skip
        made.append((patch, codec.TAR_METHOD))
    made.sort(key=lambda m: len(m[0]))
    for patch, method in made:
        if applied(method, base, patch, len(target)) == target:
            return patch, method
        logger.error("a %s delta did not rebuild its target; not kept", method)
    raise codec.DeltaError("no delta method rebuilt the target")


def field_bases(store: Store, target: ReleaseRecord, limit: int) -> list[ReleaseRecord]:
    """The stored releases of ``target``'s name that the most devices run, at most
    ``limit``, most common first (ties: the newer release first)."""
    counts = store.version_counts()
    found: list[tuple[int, float, ReleaseRecord]] = []
    for version, n in counts.items():
        if version == target.version:
            continue
        with contextlib.suppress(NotFoundError):
            rec = store.find_release(target.name, version)
            if rec.sha256 != target.sha256:
                found.append((n, rec.created_at, rec))
    found.sort(key=lambda f: (-f[0], -f[1]))
    return [rec for _, _, rec in found[:limit]]


class DeltaMaker:
    """Makes and stores deltas (blocking: run it in a thread).

    Args:
        payloads: where payloads and delta bytes live.
        index: the per-target lists.
        config: the ``[deltas]`` settings.
    """

    def __init__(self, payloads: PayloadStore, index: DeltaIndex, config: DeltaConfig) -> None:
        self.payloads = payloads
        self.index = index
        self.config = config

    def make(
        self, target: ReleaseRecord, bases: Sequence[ReleaseRecord]
    ) -> tuple[list[DeltaRecord], list[Skipped]]:
        """A delta to ``target`` from each of ``bases``; what could not be made is skipped
        with its reason, never an error of the whole call."""
        made: list[DeltaRecord] = []
        skipped: list[Skipped] = []
        limit = self.config.max_payload_bytes
        if target.size > limit:
            why = f"the payload is larger than deltas.max_payload_bytes ({limit})"
            return [], [Skipped(b.version, why) for b in bases]
        target_bytes: bytes | None = None
        for base in bases:
            if base.sha256 == target.sha256:
                skipped.append(Skipped(base.version, "the same payload"))
                continue
            if base.size > limit:
                skipped.append(Skipped(base.version, "base larger than deltas.max_payload_bytes"))
                continue
            if not self.payloads.exists(base.sha256):
                skipped.append(Skipped(base.version, "the base payload file is missing"))
                continue
            if target_bytes is None:
                target_bytes = self.payloads.path(target.sha256).read_bytes()
            start = time.monotonic()
            base_bytes = self.payloads.path(base.sha256).read_bytes()
            patch, method = smallest(base_bytes, target_bytes, self.config)
            seconds = round(time.monotonic() - start, 3)
            if len(patch) > target.size * self.config.max_ratio:
                why = f"{len(patch)} bytes, over deltas.max_ratio of the full payload"
                skipped.append(Skipped(base.version, why))
                continue
            sha = self._store(patch)
            record = DeltaRecord(
                base_sha256=base.sha256, base_version=base.version, sha256=sha,
                size=len(patch), method=method, seconds=seconds,
            )  # fmt: skip
            self.index.add(target.sha256, record)
            made.append(record)
            logger.info("delta %s -> %s: %s, %d bytes of %d", base.version, target.version,
                        method, len(patch), target.size)  # fmt: skip
        return made, skipped

    def _store(self, data: bytes) -> str:
        sha = hashlib.sha256(data).hexdigest()
        final = self.payloads.path(sha)
        if not final.is_file():
            make_private_dir(self.payloads.folder)
            make_private_dir(final.parent)
            atomic_write(final, data, mode=0o600)
        return sha
