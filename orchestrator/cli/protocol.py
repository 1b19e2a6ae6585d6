"""``fleetpush protocol``: check the implementation against test vectors, inspect messages."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from fleetpush_protocol.envelope import SIGNING_CONTEXT, decode_envelope, parse
from fleetpush_protocol.errors import ContentError
from fleetpush_protocol.keys import load_public_key, verify_signature
from fleetpush_protocol.vectors import VectorResult, jsonable, run_vectors

__all__ = ["protocol"]


@click.group()
def protocol() -> None:
    """The wire protocol: test vectors and message inspection."""


@protocol.command("verify")
@click.option(
    "--vectors",
    "vectors_file",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A test-vectors JSON file (docs/protocol/test-vectors.json).",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print JSON: [{name, expected, actual, ok, detail, differences}].",
)
def verify_vectors(vectors_file: Path, as_json: bool) -> None:
    """Run every vector through this implementation; exit 1 on any mismatch.

    A case that cannot be set up (a policy out of bounds, bad hex) fails on its own as
    ``invalid_case``; a case accepted with other decoded fields lists each difference.
    """
    try:
        document = json.loads(vectors_file.read_text())
        results = run_vectors(document)
    except (ValueError, KeyError, TypeError) as e:
        raise click.ClickException(f"{vectors_file}: not a valid vectors file ({e})") from None
    failed = [r for r in results if not r.ok]
    if as_json:
        click.echo(json.dumps([_row(r) for r in results], indent=1))
    else:
        width = max((len(r.name) for r in results), default=4)
        for r in results:
            mark = "ok  " if r.ok else "FAIL"
            line = f"{mark} {r.name:<{width}}  expected {r.expected:<22} actual {r.actual}"
            click.echo(line + (f"  ({r.detail})" if not r.ok and r.detail else ""))
            for path, want, got in r.differences:
                click.echo(f"     {path}: expected {json.dumps(want)}, actual {json.dumps(got)}")
        click.echo(f"{len(results) - len(failed)} passed, {len(failed)} failed")
    if failed:
        sys.exit(1)


def _row(r: VectorResult) -> dict[str, Any]:
    row: dict[str, Any] = {
        "name": r.name,
        "expected": r.expected,
        "actual": r.actual,
        "ok": r.ok,
        "detail": "" if r.ok else r.detail,
    }
    if r.differences:
        row["differences"] = [
            {"path": p, "expected": want, "actual": got} for p, want, got in r.differences
        ]
    return row


def _signature_report(body: bytes, sigs: list[Any], keys: list[bytes]) -> list[dict[str, str]]:
    out = []
    for s in sigs:
        if keys and s.key not in keys:
            status = "unknown key"
        elif verify_signature(s.key, SIGNING_CONTEXT + body, s.sig):
            status = "valid" if keys else "valid (key not checked against a trust list)"
        else:
            status = "INVALID"
        out.append({"key": s.key.hex(), "status": status})
    return out


@protocol.command("inspect")
@click.argument("message_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--key", "keys", multiple=True, help="Trusted public key (hex); repeatable.")
@click.option("--hex", "is_hex", is_flag=True, help="The file holds hex text, not raw bytes.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def inspect(message_file: Path, keys: tuple[str, ...], is_hex: bool, as_json: bool) -> None:
    """Decode a message and print it readably; check signatures against --key if given."""
    data = message_file.read_bytes()
    if is_hex:
        try:
            data = bytes.fromhex(data.decode().strip())
        except ValueError:
            raise click.ClickException(f"{message_file}: not hex") from None
    try:
        trusted = [load_public_key(k) for k in keys]
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    try:
        envelope = decode_envelope(data)
        parse(envelope)
    except ContentError as e:
        raise click.ClickException(f"{message_file}: {e.code}: {e}") from None
    result = {
        "type": envelope.type,
        "size": len(data),
        "body": jsonable(envelope.fields),
        "signatures": _signature_report(envelope.body, list(envelope.signatures), trusted),
    }
    if as_json:
        click.echo(json.dumps(result, indent=1))
        return
    click.echo(f"{result['type']} message, {len(data)} bytes")
    click.echo(json.dumps(result["body"], indent=2))
    if not envelope.signatures:
        click.echo("signatures: none")
    for s in result["signatures"]:
        click.echo(f"signature by {s['key']}: {s['status']}")
