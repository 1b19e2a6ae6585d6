"""``fleetpush keys`` and ``fleetpush tokens``: run on the orchestrator host (local files)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from fleetpush_common.units import parse_duration
from fleetpush_protocol.keys import KeyPair
from orchestrator.cli.common import fmt_time, table
from orchestrator.client import ApiClient, ApiClientError
from orchestrator.config import ConfigError, OrchestratorConfig, load_config
from orchestrator.security.auth import ROLES, hash_token, new_token
from orchestrator.security.keystore import KeyStore, KeyStoreError, describe
from orchestrator.store import Store, StoreError, open_store

__all__ = ["keys", "load", "tokens"]

config_option = click.option(
    "--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
    envvar="FLEETPUSH_CONFIG", default="orchestrator.toml", show_default=True,
    help="orchestrator.toml (env FLEETPUSH_CONFIG).",
)  # fmt: skip


def load(path: Path) -> OrchestratorConfig:
    try:
        return load_config(path)
    except ConfigError as e:
        raise click.ClickException(str(e)) from None


def _duration(text: str, what: str) -> int:
    try:
        return int(parse_duration(text, what))
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


def _print(data: dict[str, Any], as_json: bool, message: str) -> None:
    click.echo(json.dumps(data, indent=2) if as_json else message)


@click.group()
def keys() -> None:
    """Root keys, signing keys and keyrings."""


@keys.command("init")
@config_option
@click.option(
    "--root-out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where root private keys go (default: KEYS/offline-root); move them offline.",
)
@click.option("--roots", default=1, show_default=True, help="Number of root keys.")
@click.option("--threshold", default=1, show_default=True, help="Root signatures required.")
@click.option(
    "--signing-validity",
    default="365d",
    show_default=True,
    help="How long the online signing key is valid.",
)
@click.option("--json", "as_json", is_flag=True)  # fmt: skip
def keys_init(
    *,
    config_path: Path, root_out: Path | None, roots: int, threshold: int,
    signing_validity: str, as_json: bool,
) -> None:  # fmt: skip
    """Create root key(s), an online signing key and keyring version 1."""
    cfg = load(config_path)
    store = KeyStore(cfg.keys_dir)
    out = root_out or cfg.keys_dir / "offline-root"
    try:
        ring = store.init(out, roots=roots, threshold=threshold,
                          validity_s=_duration(signing_validity, "--signing-validity"),
                          now=int(time.time()))  # fmt: skip
    except KeyStoreError as e:
        raise click.ClickException(str(e)) from None
    _print(
        {"keyring": describe(ring), "root_keys_dir": str(out), "keys_dir": str(cfg.keys_dir)},
        as_json,
        f"keyring v1 written to {cfg.keys_dir}\n"
        f"root private keys in {out}: move them OFFLINE now; they sign future keyrings\n"
        f"device trust anchor: {cfg.keys_dir / 'root.json'}",
    )


@keys.command("rotate")
@config_option
@click.option(
    "--root-key",
    "root_keys",
    multiple=True,
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A current root private key file; repeat up to the threshold.",
)
@click.option(
    "--root", "rotate_root", is_flag=True, help="Rotate the root keys instead of the signing key."
)
@click.option("--roots", default=1, show_default=True, help="With --root: new root keys.")
@click.option("--threshold", default=1, show_default=True, help="With --root: new threshold.")
@click.option(
    "--root-out",
    type=click.Path(file_okay=False, path_type=Path),
    help="With --root: where the new root private keys go.",
)
@click.option("--signing-validity", default="365d", show_default=True)
@click.option("--revoke-old", is_flag=True, help="Revoke the old signing keys at once.")
@click.option("--server", envvar="FLEETPUSH_SERVER", help="Running API to publish through.")
@click.option("--token", envvar="FLEETPUSH_TOKEN", help="Admin token for --server.")
@click.option("--json", "as_json", is_flag=True)  # fmt: skip
def keys_rotate(
    *,
    config_path: Path, root_keys: tuple[Path, ...], rotate_root: bool, roots: int,
    threshold: int, root_out: Path | None, signing_validity: str, revoke_old: bool,
    server: str | None, token: str | None, as_json: bool,
) -> None:  # fmt: skip
    """Write keyring N+1 (signed by the current root; for --root by old AND new root), then
    ask the running orchestrator to publish it (every version stays retained)."""
    cfg = load(config_path)
    store = KeyStore(cfg.keys_dir)
    try:
        signers = [KeyPair.load(p) for p in root_keys]
        now = int(time.time())
        if rotate_root:
            out = root_out or cfg.keys_dir / "offline-root"
            ring = store.rotate_root(signers, out, roots=roots, threshold=threshold, now=now)
        else:
            ring = store.rotate_signing(
                signers, validity_s=_duration(signing_validity, "--signing-validity"),
                revoke_old=revoke_old, now=now,
            )  # fmt: skip
    except (KeyStoreError, ValueError) as e:
        raise click.ClickException(str(e)) from None
    published: Any = "restart or run with --server to publish"
    if server:
        try:
            published = ApiClient(server, token).request("POST", "/v1/keys/reload")
        except ApiClientError as e:
            raise click.ClickException(
                f"keyring v{ring.version} written; publish failed: {e}"
            ) from None
    _print({"keyring": describe(ring), "published": published}, as_json,
           f"keyring v{ring.version} written; published: {published}")  # fmt: skip


@keys.command("show")
@config_option
@click.option("--json", "as_json", is_flag=True)
def keys_show(config_path: Path, as_json: bool) -> None:
    """The current keyring (public keys only)."""
    cfg = load(config_path)
    try:
        ring = KeyStore(cfg.keys_dir).current()
    except KeyStoreError as e:
        raise click.ClickException(str(e)) from None
    data = describe(ring)
    _print(data, as_json, json.dumps(data, indent=2))


@click.group()
def tokens() -> None:
    """API tokens, managed directly in the database (run on the orchestrator host)."""


@contextmanager
def _store(cfg: OrchestratorConfig) -> Iterator[Store]:
    """The configured store, closed afterwards; its errors become one-line CLI errors."""
    try:
        store = open_store(cfg.database)
    except StoreError as e:
        raise click.ClickException(str(e)) from None
    try:
        yield store
    except StoreError as e:
        raise click.ClickException(str(e)) from None
    finally:
        store.close()


@tokens.command("create")
@config_option
@click.argument("name")
@click.option("--role", type=click.Choice(ROLES), required=True)
@click.option("--json", "as_json", is_flag=True)
def tokens_create(config_path: Path, name: str, role: str, as_json: bool) -> None:
    """Create a token; it is printed once and only its SHA-256 is stored."""
    cfg = load(config_path)
    token = new_token()
    with _store(cfg) as store:
        store.add_token(name, role, hash_token(token), time.time())
    _print({"name": name, "role": role, "token": token}, as_json, token)


@tokens.command("list")
@config_option
@click.option("--json", "as_json", is_flag=True)
def tokens_list(config_path: Path, as_json: bool) -> None:
    """List tokens: name, role, when created, revoked or not (never the token itself)."""
    cfg = load(config_path)
    with _store(cfg) as store:
        found = store.list_tokens()
    data = {"tokens": [t.to_json() for t in found]}
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    table(["name", "role", "created", "revoked"],
          [[t.name, t.role, fmt_time(t.created_at), "yes" if t.revoked else "no"]
           for t in found])  # fmt: skip


@tokens.command("revoke")
@config_option
@click.argument("name")
def tokens_revoke(config_path: Path, name: str) -> None:
    """Revoke a token by name."""
    cfg = load(config_path)
    with _store(cfg) as store:
        store.revoke_token(name)
    click.echo(f"revoked {name}")
