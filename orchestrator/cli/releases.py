"""``fleetpush release``: upload (with progress), list, show and delete releases; deltas."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TransferSpeedColumn,
)

from orchestrator.cli.common import api_command, emit, table
from orchestrator.client import ApiClient

__all__ = ["release"]

# The server answers an upload or a deltas request once the deltas are made: level 19 on a
# payload of tens of MB takes up to a minute or more (docs/performance.md).
DELTA_TIMEOUT_S = 3600.0


@click.group()
def release() -> None:
    """Upload, list, show and delete releases."""


def _release_rows(releases: list[dict[str, Any]]) -> None:
    table(["id", "name", "version", "size", "sha256", "models", "handler"],
          [[r["id"], r["name"], r["version"], r["size"], r["sha256"][:16],
            ",".join(r["models"]) or "any", r["handler"]] for r in releases])  # fmt: skip


def upload(api: ApiClient, file: Path, params: list[tuple[str, str]]) -> Any:
    """POST ``file`` as a release, streamed; a progress bar on stderr when it is a terminal."""
    if not sys.stderr.isatty():
        return api.request("POST", "/v1/releases", params=params, upload=file)
    bar = Progress(
        "[progress.description]{task.description}", BarColumn(), DownloadColumn(),
        TransferSpeedColumn(), console=Console(stderr=True), transient=True,
    )  # fmt: skip
    with bar:
        task = bar.add_task(f"uploading {file.name}", total=file.stat().st_size)
        return api.request(
            "POST", "/v1/releases", params=params, upload=file,
            on_upload=lambda n: bar.advance(task, n),
        )  # fmt: skip


@release.command("upload")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--name", required=True)
@click.option("--version", "version", required=True)
@click.option("--model", "models", multiple=True, help="Hardware model; repeat. None = any.")
@click.option(
    "--handler", type=click.Choice(["directory", "command"]), default="directory",
    show_default=True,
    help="directory: FILE is a tar (gzip, bz2 or xz too), checked at upload; command: any file.",
)  # fmt: skip
@click.option("--arg", "args", multiple=True, help="Handler argument key=value; repeat.")
@click.option("--meta", "meta", multiple=True, help="Metadata key=value; repeat.")
@api_command
def release_upload(
    *,
    api: ApiClient, as_json: bool, file: Path, name: str, version: str,
                   models: tuple[str, ...], handler: str, args: tuple[str, ...],
                   meta: tuple[str, ...]) -> None:  # fmt: skip
    """Upload FILE as a release (stored by SHA-256)."""
    params = [("name", name), ("version", version), ("handler", handler)]
    params += [("model", m) for m in models] + [("arg", a) for a in args]
    params += [("meta", m) for m in meta]
    api.timeout = max(api.timeout, DELTA_TIMEOUT_S)
    data = upload(api, file, params)

    def show(d: dict[str, Any]) -> None:
        click.echo(f"release {d['id']}: {d['name']} {d['version']} ({d['size']} bytes, "
                   f"sha256 {d['sha256']})")  # fmt: skip
        if d.get("deltas"):
            _delta_lines(d["deltas"], d["size"])

    emit(data, as_json, show)


@release.command("list")
@api_command
def release_list(api: ApiClient, as_json: bool) -> None:
    """List releases."""
    data = api.request("GET", "/v1/releases")
    emit(data, as_json, lambda d: _release_rows(d["releases"]))


@release.command("show")
@click.argument("ref")
@api_command
def release_show(api: ApiClient, as_json: bool, ref: str) -> None:
    """Show a release (id or name@version)."""
    data = api.request("GET", f"/v1/releases/{ref}")
    emit(data, as_json, lambda d: _release_rows([d]))


@release.command("delete")
@click.argument("ref")
@api_command
def release_delete(api: ApiClient, as_json: bool, ref: str) -> None:
    """Delete a release no active rollout uses."""
    data = api.request("DELETE", f"/v1/releases/{ref}")
    emit(data, as_json, lambda d: click.echo(f"deleted release {d['deleted']}"))


def _delta_lines(d: dict[str, Any], size: int | None = None) -> None:
    for k in d.get("made", []):
        share = f" ({100 * k['size'] / size:.1f}% of the full payload)" if size else ""
        click.echo(f"made: from {k['base_version']}: {k['size']} bytes{share}, "
                   f"{k['method']}, {k['seconds']:g} s")  # fmt: skip
    for k in d.get("skipped", []):
        click.echo(f"skipped: from {k['base_version']}: {k['reason']}")
    stored = d.get("stored", [])
    click.echo(f"{len(stored)} delta(s) stored: "
               + (", ".join(f"from {k['base_version']} ({k['size']} bytes)" for k in stored)
                  or "none"))  # fmt: skip


@release.command("deltas")
@click.argument("ref")
@click.option(
    "--from", "versions", multiple=True,
    help="Base version; repeat. Default: the versions most devices run ([deltas] max_bases).",
)  # fmt: skip
@click.option("--list", "list_only", is_flag=True, help="Only show the stored deltas.")
@api_command
def release_deltas(
    api: ApiClient, as_json: bool, ref: str, versions: tuple[str, ...], list_only: bool
) -> None:
    """Make (or list) the deltas to release REF (id or name@version)."""
    if list_only:
        data = api.request("GET", f"/v1/releases/{ref}/deltas")
    else:
        api.timeout = max(api.timeout, DELTA_TIMEOUT_S)
        body = {"from": list(versions)} if versions else {}
        data = api.request("POST", f"/v1/releases/{ref}/deltas", body=body)
    emit(data, as_json, _delta_lines)
