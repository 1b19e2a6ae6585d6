"""``fleetpush broker ...`` and the device identity commands.

``broker`` is a click group (``fleetpush broker run``, ``fleetpush broker identities``);
``provision_command``, ``revoke_command`` and ``set_groups_command`` are meant to be mounted
under ``fleetpush devices``. A parent command can pass hooks through ``ctx.obj`` (a dict):
``on_provision`` (called with a ``DeviceRecord``) and ``on_revoke`` (called with the device
id), e.g. to record the device in the orchestrator's database.
"""

from __future__ import annotations

import json
import os
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from fleetpush_common.atomic import make_private_dir, write_secret
from fleetpush_protocol.topics import DEFAULT_PREFIX, Topics
from orchestrator.broker import (
    INFO_FILE,
    MosquittoBroker,
    MosquittoNotFoundError,
    ReloadError,
    RevocationError,
    listening,
    read_info,
)
from orchestrator.broker.credentials import ORCHESTRATOR_ROLE
from orchestrator.config import ConfigError, load_config
from orchestrator.provisioning import (
    DEFAULT_STATE_DIR,
    Provisioner,
    broker_for_data_dir,
    read_root_keys,
)

__all__ = ["broker", "provision_command", "revoke_command", "set_groups_command"]

# Every path is made absolute where it enters: the broker, `broker run` and provisioning
# each resolve a relative path against their own working directory, and a broker found
# through a path spelled differently was once never reloaded (docs/security.md).
_folder = click.Path(file_okay=False, path_type=Path, resolve_path=True)


def _data_dir(ctx: click.Context, param: click.Parameter, value: Path | None) -> Path:
    """``--data``, else FLEETPUSH_DATA, else the data_dir of FLEETPUSH_CONFIG or of
    ./orchestrator.toml: the commands the README lists work as written next to it."""
    if value is not None:
        return value
    config = Path(os.environ.get("FLEETPUSH_CONFIG") or "orchestrator.toml")
    if not config.exists():
        raise click.UsageError(
            "give --data DIR (the orchestrator's data_dir), set FLEETPUSH_DATA, or run "
            "next to orchestrator.toml (or set FLEETPUSH_CONFIG)",
            ctx,
        )
    try:
        return load_config(config).data_dir
    except ConfigError as e:
        raise click.UsageError(f"--data not given, and {e}", ctx) from None


_data_option = click.option(
    "--data",
    "data_dir",
    type=_folder,
    envvar="FLEETPUSH_DATA",
    callback=_data_dir,
    help="The orchestrator's data directory; broker state lives in DATA/broker "
    "(env FLEETPUSH_DATA; default: data_dir of orchestrator.toml / FLEETPUSH_CONFIG).",
)


def _hook(ctx: click.Context, name: str) -> Callable[..., None] | None:
    obj = ctx.find_root().obj
    hook = obj.get(name) if isinstance(obj, dict) else None
    return hook if callable(hook) else None


@click.group("broker")
def broker() -> None:
    """Run the Mosquitto broker and inspect broker identities."""


@broker.command("run")
@_data_option
@click.option("--host", help="Listen address (default: as recorded, else 127.0.0.1).")
@click.option("--port", type=int, default=0, help="Password listener port (0: as recorded).")
@click.option("--tls-port", type=int, default=0, help="Certificate listener port (0: recorded).")
@click.option("--no-tls", is_flag=True, help="Only the username/password listener.")
@click.option("--prefix", help="Topic prefix (default: as recorded, else fleetpush).")
def run_command(  # noqa: PLR0917 - click passes options as parameters
    data_dir: Path, host: str | None, port: int, tls_port: int, no_tls: bool, prefix: str | None
) -> None:
    """Start Mosquitto from broker_config/ with the identities in DATA/broker.

    Listens on the ports recorded in DATA/broker/broker.json, so a restarted broker keeps
    the URLs the orchestrator and the devices use; the first start picks free ports (or
    --port/--tls-port) and records them. Prints where it listens and how the orchestrator
    logs in, then runs until Ctrl-C or SIGTERM. Provisioning in another shell (same --data)
    reloads it through its pid file.
    """
    b = recorded_broker(
        data_dir / "broker", host=host, port=port, tls=not no_tls, tls_port=tls_port,
        prefix=prefix,
    )  # fmt: skip
    try:
        b.start()
    except MosquittoNotFoundError as e:
        raise click.ClickException(str(e)) from None
    except RuntimeError as e:
        taken = [p for p in (b.port, b.tls_port) if p is not None and listening(b.host, p)]
        hint = f"; port {taken[0]} is taken by another process" if taken else ""
        raise click.ClickException(
            f"{e}{hint} (ports recorded in {b.workdir / INFO_FILE}; --port and --tls-port "
            "choose others, which devices provisioned before then do not know)"
        ) from None
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        info = b.connection_info()
        click.echo(json.dumps(info, indent=1))
        click.echo(f"# log: {b.log_path}  (Ctrl-C stops the broker)", err=True)
        while not stop.wait(0.5):
            if not b.running:
                raise click.ClickException(f"mosquitto exited; see {b.log_path}")
    finally:
        b.stop()


def recorded_broker(
    workdir: Path, *, host: str | None, port: int, tls: bool, tls_port: int, prefix: str | None
) -> MosquittoBroker:
    """The broker of ``workdir`` on its recorded listeners; options given override them."""
    try:
        info = read_info(workdir)
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    if info is not None and prefix and prefix != info.topic_prefix:
        raise click.ClickException(
            f"--prefix {prefix!r}: this broker's devices use {info.topic_prefix!r}"
        )
    recorded_tls = info.tls_port if info else None
    return MosquittoBroker(
        workdir,
        topics=Topics(prefix or (info.topic_prefix if info else DEFAULT_PREFIX)),
        host=host or (info.host if info else "127.0.0.1"),
        port=port or (info.port if info else None),
        tls=tls,
        tls_port=tls_port or recorded_tls,
    )


@broker.command("server-cert")
@_data_option
@click.option("--name", "names", multiple=True, required=True, help="DNS name or IP; repeat.")
@click.option(
    "--out",
    type=_folder,
    required=True,
    help="Folder for server.pem and server.key (e.g. /etc/fleetpush/tls).",
)
def server_cert_command(data_dir: Path, names: tuple[str, ...], out: Path) -> None:
    """Issue the broker's TLS certificate from the fleet CA (for a real install)."""
    ca = broker_for_data_dir(data_dir).ca
    make_private_dir(out)
    ca.issue_server(names).write(out / "server.pem", out / "server.key")
    click.echo(f"wrote {out / 'server.pem'} and {out / 'server.key'}; CA: {ca.cert_path}")


@broker.command("refresh")
@_data_option
def refresh_command(data_dir: Path) -> None:
    """Create the fleet CA and orchestrator identity if missing; rewrite passwd, acl, CRL.

    Also re-signs the CRL, whose expiry would otherwise lock every certificate out.
    """
    b = broker_for_data_dir(data_dir)
    b.write_auth_files()
    try:
        b.reload()
    except ReloadError as e:
        raise click.ClickException(f"files written, but {e}") from None
    click.echo(f"wrote {b.passwd_path}, {b.acl_path} and {b.ca.crl_path}")


@broker.command("add-orchestrator")
@click.argument("name")
@_data_option
@click.option(
    "--password-file",
    "password_file",
    type=click.Path(dir_okay=False, path_type=Path, resolve_path=True),
    required=True,
    help="Where to write its password (0600), for that replica's [mqtt] password_file.",
)
def add_orchestrator_command(name: str, data_dir: Path, password_file: Path) -> None:
    """Add a broker identity with the orchestrator's rights, for one more replica.

    Each `fleetpush serve` replica logs in with its own identity: the broker makes the
    username the client id, and two connections with one client id knock each other off
    (docs/scaling.md). Reloads a running broker.
    """
    b = broker_for_data_dir(data_dir)
    existing = b.registry.get(name)
    if existing is not None and existing.role != ORCHESTRATOR_ROLE:
        raise click.ClickException(f"{name!r} is a {existing.role} identity, not a replica's")
    try:
        password = b.add_orchestrator(name)
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    write_secret(password_file, password.encode() + b"\n")
    try:
        b.reload()
    except ReloadError as e:
        raise click.ClickException(f"identity added, but {e}") from None
    click.echo(f"added orchestrator identity {name}; password in {password_file}")


@broker.command("identities")
@_data_option
def identities_command(data_dir: Path) -> None:
    """List broker identities (no secrets) as JSON lines."""
    b = broker_for_data_dir(data_dir)
    for ident in sorted(b.registry.identities.values(), key=lambda i: i.username):
        d: dict[str, Any] = ident.to_json()
        d["password"] = d.pop("password_hash") is not None
        click.echo(json.dumps(d))


def _root_keys(
    data_dir: Path, keys: tuple[str, ...], keys_dir: Path | None
) -> tuple[list[str], int]:
    if keys:
        return list(keys), 0
    try:
        return read_root_keys(keys_dir or data_dir / "keys")
    except ValueError as e:
        raise click.UsageError(f"{e}; or give --root-key") from None


@click.command("provision")
@click.argument("device_id")
@click.option("--model", required=True, help="Hardware model, e.g. rpi4.")
@click.option("--groups", default="", help="Comma-separated groups, e.g. canary,eu.")
@click.option("--cert", "auth", flag_value="cert", default=True, help="Certificate (default).")
@click.option("--password", "auth", flag_value="password", help="Password instead.")
@_data_option
@click.option(
    "--out",
    type=_folder,
    help="Bundle folder (default DATA/broker/provisioned/DEVICE_ID).",
)
@click.option("--root-key", "root_key", multiple=True, help="Root public key (hex); repeat.")
@click.option("--root-threshold", type=int, default=0, help="Default: 1, or keys/root.json.")
@click.option(
    "--keys",
    "keys_dir",
    type=_folder,
    help="Keys folder with root.json (default DATA/keys), when no --root-key.",
)
@click.option(
    "--state-dir",
    default=DEFAULT_STATE_DIR,
    show_default=True,
    help="The device's state folder; relative: next to device.toml (real devices: "
    "/var/lib/fleetpush, the folder deploy/fleetpush-device.service creates).",
)
@click.option("--config-dir", help="Where the bundle will live on the device (absolute paths).")
@click.option("--broker-url", help="URL for password devices (default: the broker's).")
@click.option("--tls-url", help="URL for certificate devices (default: the broker's).")
@click.option(
    "--server-ca",
    type=click.Path(dir_okay=False, exists=True, path_type=Path, resolve_path=True),
    help="CA of the broker's certificate, if not the fleet CA.",
)
@click.option("--replace", is_flag=True, help="Re-provision: revoke the old credentials.")
@click.pass_context
def provision_command(  # noqa: PLR0917 - click passes options as parameters
    ctx: click.Context,
    device_id: str,
    model: str,
    groups: str,
    auth: str,
    data_dir: Path,
    out: Path | None,
    root_key: tuple[str, ...],
    root_threshold: int,
    keys_dir: Path | None,
    state_dir: str,
    config_dir: str | None,
    broker_url: str | None,
    tls_url: str | None,
    server_ca: Path | None,
    replace: bool,
) -> None:
    """Create DEVICE_ID's broker credentials and its ready-to-use device config bundle."""
    keys, threshold = _root_keys(data_dir, root_key, keys_dir)
    p = Provisioner(
        broker_for_data_dir(data_dir),
        root_keys=keys,
        root_threshold=root_threshold or threshold or 1,
        broker_url=broker_url,
        tls_url=tls_url,
        on_provision=_hook(ctx, "on_provision"),
        server_ca_file=server_ca,
    )
    try:
        record = p.provision(
            device_id,
            model=model,
            groups=[g.strip() for g in groups.split(",") if g.strip()],
            auth="cert" if auth == "cert" else "password",
            bundle_dir=out,
            state_dir=state_dir,
            config_dir=config_dir,
            replace=replace,
        )
    except (ValueError, FileExistsError, RevocationError) as e:
        raise click.ClickException(str(e)) from None
    except ReloadError as e:
        raise click.ClickException(
            f"{device_id} is provisioned and its bundle written, but {e}; until then the "
            "broker refuses its credentials"
        ) from None
    click.echo(f"provisioned {record.device_id} ({record.auth}) -> {record.config_path}")
    click.echo(f"copy {record.bundle_dir}/ to the device; it holds its secret credentials")


@click.command("revoke")
@click.argument("device_id")
@_data_option
@click.option(
    "--timeout",
    type=click.FloatRange(0.1, 600),
    default=10.0,
    show_default=True,
    help="Seconds to wait for the broker to confirm it dropped the device.",
)
@click.pass_context
def revoke_command(ctx: click.Context, device_id: str, data_dir: Path, timeout: float) -> None:
    """Take DEVICE_ID's broker access away and drop its connection.

    Exits non-zero, saying so, when the broker did not confirm that it dropped the device.
    """
    p = Provisioner(
        broker_for_data_dir(data_dir),
        root_keys=[],
        on_revoke=_hook(ctx, "on_revoke"),
    )
    try:
        known = p.revoke(device_id, timeout=timeout)
    except ReloadError as e:
        raise click.ClickException(str(e)) from None
    click.echo(
        f"revoked {device_id}" if known else f"{device_id} was not provisioned (or already revoked)"
    )


@click.command("set-groups")
@click.argument("device_id")
@click.argument("groups")
@_data_option
def set_groups_command(device_id: str, groups: str, data_dir: Path) -> None:
    """Set DEVICE_ID's provisioned groups (comma-separated) in the registry: the broker ACL
    (reloaded) and the groups the orchestrator targets it by."""
    b = broker_for_data_dir(data_dir)
    try:
        b.set_groups(device_id, tuple(g.strip() for g in groups.split(",") if g.strip()))
    except KeyError:
        raise click.ClickException(f"{device_id} is not provisioned") from None
    except ReloadError as e:
        raise click.ClickException(f"{device_id}'s groups are written, but {e}") from None
    click.echo(f"{device_id}: groups {groups}")
