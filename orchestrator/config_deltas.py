"""``[deltas]`` of ``orchestrator.toml``: when and how the orchestrator makes deltas
(orchestrator/deltas.py)."""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.config_tables import Table

__all__ = ["DeltaConfig", "parse_deltas"]


@dataclass(frozen=True, slots=True)
class DeltaConfig:
    """``[deltas]``: made on upload from the releases the field runs (orchestrator/deltas.py)."""

    on_upload: bool = True  # make deltas when a release is uploaded
    max_bases: int = 3  # the most common field versions a delta is made from, 0..16
    level: int = 19  # zstd level, 1..22
    max_payload_bytes: int = 1 << 30  # bytes; larger payloads get no delta (maker memory)
    max_ratio: float = 0.9  # a delta larger than this share of the full payload is dropped


def parse_deltas(t: Table) -> DeltaConfig:
    return DeltaConfig(
        on_upload=t.boolean("on_upload", True),
        max_bases=t.integer("max_bases", 3, 0, 16),
        level=t.integer("level", 19, 1, 22),
        max_payload_bytes=t.integer("max_payload_bytes", 1 << 30, 1, 1 << 31),
        max_ratio=t.number("max_ratio", 0.9, 0.01, 1.0),
    )
