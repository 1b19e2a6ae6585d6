"""``fleetpush delta``: make and apply delta payloads by hand, for operators and tests."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click

from fleetpush_common.atomic import atomic_write
from fleetpush_protocol import delta as codec
from fleetpush_protocol import tar_delta
from orchestrator import tar_delta_make
from orchestrator.config_deltas import DeltaConfig
from orchestrator.deltas import smallest

__all__ = ["delta"]

_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)
_OUT = click.Path(dir_okay=False, path_type=Path)
_MAX_OUTPUT = 1 << 40
_METHODS = click.Choice(["auto", *sorted(codec.METHODS)])


def _print(result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(result, indent=1))
        return
    click.echo(
        f"{result['method']}: base {result['base_bytes']} B, target {result['target_bytes']} B, "
        f"delta {result['delta_bytes']} B ({result['delta_share']:.2%} of the target) "
        f"in {result['seconds']:.3f} s -> {result['out']}"
    )


def _result(
    method: str, base: int, target: int, patch: int, *, seconds: float, out: Path
) -> dict[str, Any]:
    return {
        "method": method,
        "base_bytes": base,
        "target_bytes": target,
        "delta_bytes": patch,
        "delta_share": patch / target if target else 0.0,
        "seconds": round(seconds, 3),
        "out": str(out),
    }


@click.group()
def delta() -> None:
    """Delta payloads: ``zstd-patch`` (compatible with ``zstd --patch-from``) and
    ``tar-bsdiff`` (member by member, for tar payloads)."""


@delta.command("make")
@click.argument("old", type=_FILE)
@click.argument("new", type=_FILE)
@click.option("--out", "out", required=True, type=_OUT, help="Where to write the delta.")
@click.option("--level", default=19, show_default=True, type=click.IntRange(1, 22))
@click.option(
    "--method", default="auto", show_default=True, type=_METHODS,
    help="auto: the smallest that rebuilds NEW (tar-bsdiff only applies to two tars).",
)  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def make_command(
    old: Path, new: Path, *, out: Path, level: int, method: str, as_json: bool
) -> None:
    """Write to OUT a delta that rebuilds NEW from OLD."""
    base, target = old.read_bytes(), new.read_bytes()
    start = time.perf_counter()
    if method == "auto":
        patch, method = smallest(base, target, DeltaConfig(level=level))
    elif method == codec.TAR_METHOD:
        try:
            patch = tar_delta_make.make(base, target, level=level)
        except tar_delta_make.NotATarError as e:
            raise click.ClickException(f"{e}: use --method {codec.METHOD}") from None
    else:
        patch = codec.make(base, target, level=level)
    seconds = time.perf_counter() - start
    atomic_write(out, patch)
    _print(_result(method, len(base), len(target), len(patch), seconds=seconds, out=out), as_json)


@delta.command("apply")
@click.argument("old", type=_FILE)
@click.argument("patch", type=_FILE)
@click.option("--out", "out", required=True, type=_OUT, help="Where to write the rebuilt file.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def apply_command(old: Path, patch: Path, out: Path, as_json: bool) -> None:
    """Rebuild into OUT the file that PATCH makes from OLD (its method is read from PATCH)."""
    tmp = out.with_name(f".{out.name}.tmp")
    start = time.perf_counter()
    method = codec.METHOD
    try:
        with patch.open("rb") as src, tmp.open("w+b") as dst:
            if tar_delta.is_tar_delta(src):
                method = codec.TAR_METHOD
                with old.open("rb") as base:
                    size = old.stat().st_size
                    written = tar_delta.apply(base, size, src, dst, max_output=_MAX_OUTPUT,
                                              max_memory=_MAX_OUTPUT)  # fmt: skip
            else:
                written = codec.apply(old.read_bytes(), src, dst, max_output=_MAX_OUTPUT,
                                      max_memory=_MAX_OUTPUT)  # fmt: skip
            dst.flush()
    except codec.DeltaError as e:
        tmp.unlink(missing_ok=True)
        raise click.ClickException(f"{patch}: {e}") from None
    seconds = time.perf_counter() - start
    tmp.replace(out)
    base_size = old.stat().st_size
    size = patch.stat().st_size
    _print(_result(method, base_size, written, size, seconds=seconds, out=out), as_json)
