"""``[deltas]`` of ``orchestrator.toml``: when and how the orchestrator makes deltas
(orchestrator/deltas.py)."""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta

from fleetpush_common.config import SIZE

__all__ = ["DeltaConfig"]


class DeltaConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """``[deltas]``: made on upload from the releases the field runs (orchestrator/deltas.py)."""

    on_upload: bool = True  # make deltas when a release is uploaded
    # The most common field versions a delta is made from.
    max_bases: Annotated[int, Meta(ge=0, le=16)] = 3
    level: Annotated[int, Meta(ge=1, le=22)] = 19  # zstd level
    # Larger payloads get no delta (the maker's memory).
    max_payload_bytes: Annotated[int, SIZE, Meta(ge=1, le=1 << 31)] = 1 << 30
    # tar-bsdiff: a changed member pair larger than this is patched with zstd, not bsdiff
    # (bsdiff's suffix sort takes about 17x the member: 32 MiB -> about 550 MB).
    max_bsdiff_member_bytes: Annotated[int, SIZE, Meta(ge=0, le=1 << 30)] = 32 << 20
    # A delta larger than this share of the full payload is dropped.
    max_ratio: Annotated[float, Meta(ge=0.01, le=1.0)] = 0.9
