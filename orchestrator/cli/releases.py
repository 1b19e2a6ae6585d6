"""``fleetpush release``: upload (with progress, an SBOM, a security advisory), list, show
(with the SBOM's components), attach an SBOM, delete; make and list deltas."""

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

from orchestrator.advisories import AdvisoryError, parse_advisory
from orchestrator.cli.common import api_command, emit, table
from orchestrator.cli.systems import component_lines, upload_system
from orchestrator.client import ApiClient
from orchestrator.hold_limits import HoldLimitsError, parse_hold_limits
from orchestrator.sbom import SbomError, parse_sbom

__all__ = ["release", "support"]

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
@click.argument("file", required=False,
                type=click.Path(exists=True, dir_okay=False, path_type=Path))  # fmt: skip
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
@click.option("--component", "components", multiple=True, metavar="NAME=HANDLER:FILE",
              help="A system release instead of FILE: components installed in this order "
                   "and rolled back together; repeat.")  # fmt: skip
@click.option("--sbom", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="SBOM: SPDX or CycloneDX JSON, checked before uploading.")  # fmt: skip
@click.option("--security", is_flag=True,
              help="A security update: devices install it automatically, outside maintenance "
                   "windows; needs --advisory.")  # fmt: skip
@click.option("--advisory", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="JSON: cves, severity, summary, disruptive, max_postpone (signed into "
                   "every notice).")  # fmt: skip
@click.option(
    "--urgent",
    is_flag=True,
    help="No application on a device may hold it (fleetpush-device hold, gate hook).",
)
@click.option(
    "--max-hold", help='Caps one device hold, e.g. "30m" (the device\'s bound applies when lower).'
)
@click.option("--max-hold-total", help='Caps all holds of the update on a device, e.g. "4h".')
@api_command
def release_upload(
    *,
    api: ApiClient, as_json: bool, file: Path | None, name: str, version: str,
                   models: tuple[str, ...], handler: str, args: tuple[str, ...],
                   meta: tuple[str, ...], components: tuple[str, ...], sbom: Path | None,
                   security: bool, advisory: Path | None, urgent: bool,
                   max_hold: str | None, max_hold_total: str | None) -> None:  # fmt: skip
    """Upload FILE as a release (stored by SHA-256), or a system of --component files."""
    if (file is None) == (not components):
        raise click.UsageError("give FILE, or --component NAME=HANDLER:FILE (repeated)")
    if components and (args or security or advisory or handler != "directory"):
        raise click.UsageError("--component goes without --handler, --arg, --security and "
                               "--advisory: each component names its handler")  # fmt: skip
    params = [("name", name), ("version", version), ("handler", handler)]
    params += [("model", m) for m in models] + [("arg", a) for a in args]
    params += [("meta", m) for m in meta]
    # Both documents are checked before anything is sent: a bad one uploads nothing.
    if security != (advisory is not None):
        raise click.UsageError("--security and --advisory FILE go together")
    if advisory is not None:
        try:
            parse_advisory(advisory.read_bytes())
        except AdvisoryError as e:
            raise click.UsageError(f"{advisory}: {e}") from None
        params += [("security", "true"), ("advisory", advisory.read_text())]
    try:  # checked here too: a bad one uploads nothing
        parse_hold_limits(urgent=urgent, max_hold=max_hold, max_hold_total=max_hold_total)
    except HoldLimitsError as e:
        raise click.UsageError(str(e)) from None
    params += [("urgent", "true")] if urgent else []
    params += [("max_hold", max_hold)] if max_hold is not None else []
    params += [("max_hold_total", max_hold_total)] if max_hold_total is not None else []
    sbom_bytes = _checked_sbom(sbom) if sbom is not None else None
    api.timeout = max(api.timeout, DELTA_TIMEOUT_S)
    if file is None:
        data = upload_system(api, name=name, version=version, models=models, meta=meta,
                             components=components)  # fmt: skip
    else:
        data = upload(api, file, params)
    for warning in data.get("warnings", []):
        click.echo(f"warning: {warning}", err=True)
    if sbom_bytes is not None:
        try:
            data["sbom"] = api.request("PUT", f"/v1/releases/{data['id']}/sbom", raw=sbom_bytes)
        except Exception:
            click.echo(f"release {data['id']} was uploaded, its SBOM was not: attach it with "
                       f"`fleetpush release sbom {data['id']} {sbom}`", err=True)  # fmt: skip
            raise

    def render(d: dict[str, Any]) -> None:
        click.echo(f"release {d['id']}: {d['name']} {d['version']} ({d['size']} bytes, "
                   f"sha256 {d['sha256']})")  # fmt: skip
        for line in _notes(d):
            click.echo(line)
        component_lines(d)
        if d.get("deltas"):
            _delta_lines(d["deltas"], d["size"])

    emit(data, as_json, render)


def _checked_sbom(path: Path) -> bytes:
    data = path.read_bytes()
    try:
        parse_sbom(data)
    except SbomError as e:
        raise click.UsageError(f"{path}: {e}") from None
    return data


def _notes(d: dict[str, Any]) -> list[str]:
    """The security class, advisory, hold caps and SBOM summary of a release, for people."""
    lines = []
    if (holds := d.get("holds")) is not None:
        lines.append("urgent: no device may hold it" if holds["max_total_s"] == 0
                     or holds["max_each_s"] == 0 else
                     f"device holds: at most {holds['max_each_s']} s each, "
                     f"{holds['max_total_s']} s in all")  # fmt: skip
    a = d.get("advisory")
    if d.get("update_class") == "security" and a:
        cves = ", ".join(a["cves"]) or "no CVE id"
        lines.append(f"security update ({a['severity']}): {cves}")
        lines.append(f"  {a['summary']}")
        lines.append(f"  disrupts function: {'yes' if a['disruptive'] else 'no'}; postponable "
                     f"for at most {a['max_postpone_s']} s")  # fmt: skip
    sbom = d.get("sbom")
    if sbom:
        count = sbom.get("component_count", sbom.get("components"))
        lines.append(f"sbom: {sbom['format']} {sbom['spec_version']}, {count} component(s)")
    return lines


@click.command("support")
@api_command
def support(api: ApiClient, as_json: bool) -> None:
    """Until when each hardware model gets security updates ([support] in the config)."""
    data = api.request("GET", "/v1/support")
    emit(data, as_json, lambda d: table(
        ["model", "security updates until", "status"],
        [[m["model"], m["security_updates_until"], "ended" if m["ended"] else "supported"]
         for m in d["models"]]))  # fmt: skip


@release.command("sbom")
@click.argument("ref")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@api_command
def release_sbom(api: ApiClient, as_json: bool, ref: str, file: Path) -> None:
    """Attach (or replace) the SBOM of release REF: SPDX or CycloneDX JSON FILE."""
    data = api.request("PUT", f"/v1/releases/{ref}/sbom", raw=_checked_sbom(file))
    emit(data, as_json, lambda d: click.echo(
        f"release {d['release']}: sbom {d['format']} {d['spec_version']}, "
        f"{d['components']} component(s)"
    ))  # fmt: skip


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
    """Show a release (id or name@version), its advisory and its SBOM's components."""
    data = api.request("GET", f"/v1/releases/{ref}")

    def render(d: dict[str, Any]) -> None:
        _release_rows([d])
        for line in _notes(d):
            click.echo(line)
        component_lines(d)
        if d.get("sbom"):
            rows = [[c["name"], c["version"], c["purl"]] for c in d["sbom"]["components"]]
            table(["component", "version", "purl"], rows)

    emit(data, as_json, render)


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
