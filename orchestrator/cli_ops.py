"""``fleetpush release|devices|rollout|audit``: operator commands over the HTTP API."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path
from typing import Any

import click
from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, Progress, TextColumn
from rich.text import Text

from orchestrator.cli_common import api_command, emit, fmt_time, table
from orchestrator.client import ApiClient
from orchestrator.policy import FAILURE_STATES
from orchestrator.units import parse_duration, parse_percent, parse_phases

__all__ = ["audit", "devices", "release", "rollout"]

TERMINAL = ("completed", "canceled", "aborted")


# --- releases ----------------------------------------------------------------------------


@click.group()
def release() -> None:
    """Upload, list, show and delete releases."""


def _release_rows(releases: list[dict[str, Any]]) -> None:
    table(["id", "name", "version", "size", "sha256", "models", "handler"],
          [[r["id"], r["name"], r["version"], r["size"], r["sha256"][:16],
            ",".join(r["models"]) or "any", r["handler"]] for r in releases])  # fmt: skip


@release.command("upload")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--name", required=True)
@click.option("--version", "version", required=True)
@click.option("--model", "models", multiple=True, help="Hardware model; repeat. None = any.")
@click.option(
    "--handler", type=click.Choice(["directory", "command"]), default="directory", show_default=True
)
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
    data = api.request("POST", "/v1/releases", params=params, upload=file)
    emit(data, as_json, lambda d: click.echo(
        f"release {d['id']}: {d['name']} {d['version']} ({d['size']} bytes, sha256 {d['sha256']})"
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


# --- devices -----------------------------------------------------------------------------


@click.group()
def devices() -> None:
    """The device registry."""


def _claims(d: dict[str, Any]) -> str:
    """What the device claims, when it differs from the registry (never used to target)."""
    if not d["claims_mismatch"]:
        return "-"
    return f"MISMATCH groups={','.join(d['claimed_groups']) or '-'} model={d['claimed_model']}"


def _device_rows(items: list[dict[str, Any]]) -> None:
    table(["device", "online", "model", "version", "groups", "tags", "last seen", "claims"],
          [[d["device_id"], "yes" if d["online"] else "no", d["model"] or "?",
            d["current_version"] or "-", ",".join(d["groups"]),
            ",".join(f"{k}={v}" for k, v in d["tags"].items()), fmt_time(d["last_seen"]),
            _claims(d)]
           for d in items])  # fmt: skip


@devices.command("list")
@click.option("--group")
@click.option("--model")
@click.option("--online/--offline", default=None)
@click.option("--version", "version")
@click.option("--tag", help="key or key=value")
@click.option("--limit", default=1000, show_default=True)
@api_command
def devices_list(
    *,
    api: ApiClient, as_json: bool, group: str | None, model: str | None,
                 online: bool | None, version: str | None, tag: str | None,
                 limit: int) -> None:  # fmt: skip
    """List devices, filtered."""
    params = [("limit", str(limit))]
    for key, value in (("group", group), ("model", model), ("version", version), ("tag", tag)):
        if value is not None:
            params.append((key, value))
    if online is not None:
        params.append(("online", "true" if online else "false"))
    data = api.request("GET", "/v1/devices", params=params)
    emit(data, as_json, lambda d: _device_rows(d["devices"]))


@devices.command("show")
@click.argument("device_id")
@api_command
def devices_show(api: ApiClient, as_json: bool, device_id: str) -> None:
    """One device, with its latest reports."""
    data = api.request("GET", f"/v1/devices/{device_id}")

    def render(d: dict[str, Any]) -> None:
        _device_rows([d])
        click.echo(
            f"provisioned: groups={','.join(d['registry_groups']) or '-'} "
            f"model={d['registry_model'] or '-'}; claimed by the device: "
            f"groups={','.join(d['claimed_groups']) or '-'} "
            f"model={d['claimed_model'] or '-'}"
            f"{' (MISMATCH: not used for targeting)' if d['claims_mismatch'] else ''}"
        )
        table(["counter", "rollout", "state", "version", "error", "at"],
              [[r["counter"], r["rollout_id"], r["state"], r["current_version"],
                r["error_code"] or "", fmt_time(r["received_at"])] for r in d["reports"]],
              title="reports")  # fmt: skip

    emit(data, as_json, render)


@devices.command("set")
@click.argument("device_id")
@click.option("--group", "groups", multiple=True, help="Operator group; repeat. Replaces.")
@click.option("--model", help='Hardware model; overrides the provisioned one ("": clears).')
@click.option("--tag", "tags", multiple=True, help="key=value; repeat. Replaces.")
@click.option("--clear-groups", is_flag=True)
@click.option("--clear-tags", is_flag=True)
@api_command
def devices_set(
    *,
    api: ApiClient, as_json: bool, device_id: str, groups: tuple[str, ...], model: str | None,
                tags: tuple[str, ...], clear_groups: bool, clear_tags: bool) -> None:  # fmt: skip
    """Set a device's operator groups, model and tags (audited); they add to the groups
    and replace the model it was provisioned with, and drive targeting with them."""
    body: dict[str, Any] = {}
    if model is not None:
        body["model"] = model
    if groups or clear_groups:
        body["groups"] = list(groups)
    if tags or clear_tags:
        pairs = [t.partition("=") for t in tags]
        if any(not sep for _, sep, _ in pairs):
            raise click.BadParameter("--tag: expected key=value")
        body["tags"] = {k: v for k, _, v in pairs}
    data = api.request("PATCH", f"/v1/devices/{device_id}", body=body)
    emit(data, as_json, lambda d: _device_rows([d]))


# --- rollouts ----------------------------------------------------------------------------


@click.group()
def rollout() -> None:
    """Staged rollouts."""


def _target(values: tuple[str, ...]) -> dict[str, Any]:
    target: dict[str, Any] = {"devices": [], "groups": [], "models": [], "all": False}
    for value in values:
        for item in value.split(","):
            kind, sep, name = item.strip().partition(":")
            if item.strip() == "all":
                target["all"] = True
            elif sep and kind in ("device", "group", "model"):
                target[kind + "s"].append(name)
            elif item.strip():
                raise click.BadParameter(
                    f"{item!r}: use device:ID, group:NAME, model:NAME or all", param_hint="--target"
                )
    return target


def _start_at(text: str | None) -> float | None:
    if text is None:
        return None
    if text.startswith("+"):
        return time.time() + parse_duration(text[1:], "--start-at")
    try:
        return float(text)
    except ValueError:
        pass
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(
            "ISO time, Unix seconds or +DURATION", param_hint="--start-at"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.timestamp()


@rollout.command("create")
@click.argument("release_ref")
@click.option(
    "--target",
    "targets",
    multiple=True,
    required=True,
    help="device:ID, group:NAME, model:NAME or all; comma-separate or repeat.",
)
@click.option("--phases", default="100%", show_default=True, help="e.g. 1%,10%,50%,100%")
@click.option(
    "--success", default="100%", show_default=True, help="Gate: share of a phase that must succeed."
)
@click.option("--soak", default="0s", show_default=True, help="Gate must hold this long.")
@click.option("--failure-threshold", default="20%", show_default=True)
@click.option("--min-attempts", default=5, show_default=True)
@click.option(
    "--on-failure", type=click.Choice(["pause", "abort"]), default="pause", show_default=True
)
@click.option("--rate", default=0.0, help="Online devices notified per minute (0: no limit).")
@click.option("--rate-mode", type=click.Choice(["constant", "exponential"]), default="constant")
@click.option("--rate-factor", default=2.0, help="Exponential: multiply the rate ...")
@click.option("--rate-every", default=10, help="... every N successes.")
@click.option("--rate-max", default=0.0, help="Exponential: cap (per minute).")
@click.option("--device-timeout", default="1h", show_default=True)
@click.option("--start-at", help="ISO time (UTC), Unix seconds, or +DURATION.")
@click.option("--window", "windows", multiple=True, help="'[mon,tue ]HH:MM-HH:MM' UTC; repeat.")
@click.option(
    "--continuous", is_flag=True,
    help="Devices that match the target later join too; never completes on its own.",
)  # fmt: skip
@api_command
def rollout_create(
    *,
    api: ApiClient, as_json: bool, release_ref: str, targets: tuple[str, ...],
                   phases: str, success: str, soak: str, failure_threshold: str,
                   min_attempts: int, on_failure: str, rate: float, rate_mode: str,
                   rate_factor: float, rate_every: int, rate_max: float, device_timeout: str,
                   start_at: str | None, windows: tuple[str, ...],
                   continuous: bool) -> None:  # fmt: skip
    """Roll RELEASE (id or name@version) out to --target in --phases."""
    try:
        body = {
            "release": release_ref, "target": _target(targets),
            "phases": list(parse_phases(phases)),
            "success_pct": parse_percent(success, "--success"),
            "soak_s": parse_duration(soak, "--soak"),
            "failure_pct": parse_percent(failure_threshold, "--failure-threshold"),
            "min_attempts": min_attempts, "on_failure": on_failure,
            "rate_per_min": rate, "rate_mode": rate_mode, "rate_factor": rate_factor,
            "rate_every": rate_every, "rate_max_per_min": rate_max,
            "device_timeout_s": parse_duration(device_timeout, "--device-timeout"),
            "start_at": _start_at(start_at), "windows": list(windows),
            "continuous": continuous,
        }  # fmt: skip
    except ValueError as e:
        raise click.BadParameter(str(e)) from None
    data = api.request("POST", "/v1/rollouts", body=body)
    emit(data, as_json, lambda d: click.echo(
        f"rollout {d['id']}: {d['release']['name']} {d['release']['version']} to "
        f"{d['devices']} device(s), {d['state']}"
    ))  # fmt: skip


@rollout.command("list")
@click.option("--state", "states", multiple=True)
@api_command
def rollout_list(api: ApiClient, as_json: bool, states: tuple[str, ...]) -> None:
    """List rollouts."""
    data = api.request("GET", "/v1/rollouts", params=[("state", s) for s in states])
    emit(data, as_json, lambda d: table(
        ["id", "release", "state", "phase", "devices", "succeeded", "failed", "reason"],
        [[r["id"], f"{r['release']['name']} {r['release']['version']}", r["state"],
          f"{r['phase'] + 1}/{len(r['phases'])}", r["devices"],
          r["states"].get("succeeded", 0),
          sum(r["states"].get(s, 0) for s in FAILURE_STATES),
          r["reason"]] for r in d["rollouts"]]))  # fmt: skip


def render_status(d: dict[str, Any]) -> Group:
    """Per-phase progress bars and per-state counts (rich renderable)."""
    head = Text(
        f"rollout {d['id']}: {d['release']['name']} {d['release']['version']} - {d['state']}"
        f" - phase {d['phase'] + 1}/{len(d['phases'])} - {d['devices']} device(s)"
        + (f"\n{d['reason']}" if d["reason"] else ""),
        style="bold",
    )
    bars = Progress(TextColumn("{task.description}"), BarColumn(),
                    TextColumn("{task.completed}/{task.total}"), TextColumn("{task.fields[info]}"),
                    auto_refresh=False)  # fmt: skip
    for p in d["phases"]:
        info = (f"failed {p['failed']}  in flight {p['in_flight']}  pending {p['pending']}  "
                f"offline {p['waiting_offline']}  canceled {p['canceled']}")  # fmt: skip
        mark = "open" if p["open"] else "closed"
        bars.add_task(f"phase {p['index']} ({p['percent']:g}%, {mark})",
                      total=max(p["devices"], 1), completed=p["succeeded"], info=info)  # fmt: skip
    states = Text("  ".join(f"{k}: {v}" for k, v in sorted(d["states"].items())) or "no devices")
    return Group(head, bars, states)


@rollout.command("status")
@click.argument("rollout_id", type=int)
@click.option("--watch", is_flag=True, help="Refresh until the rollout ends (Ctrl-C stops).")
@click.option("--interval", default=1.0, show_default=True, help="Seconds between refreshes.")
@api_command
def rollout_status(api: ApiClient, as_json: bool, rollout_id: int, watch: bool,
                   interval: float) -> None:  # fmt: skip
    """Per-phase progress and per-state counts."""
    data = api.request("GET", f"/v1/rollouts/{rollout_id}")
    if as_json or not watch:
        emit(data, as_json, lambda d: Console().print(render_status(d)))
        while watch and data["state"] not in TERMINAL:
            time.sleep(interval)
            data = api.request("GET", f"/v1/rollouts/{rollout_id}")
            emit(data, as_json, lambda d: None)
        return
    try:
        with Live(render_status(data), refresh_per_second=4) as live:
            while data["state"] not in TERMINAL:
                time.sleep(interval)
                data = api.request("GET", f"/v1/rollouts/{rollout_id}")
                live.update(render_status(data))
    except KeyboardInterrupt:
        pass


@rollout.command("targets")
@click.argument("rollout_id", type=int)
@click.option("--state")
@api_command
def rollout_targets(api: ApiClient, as_json: bool, rollout_id: int, state: str | None) -> None:
    """Per-device state of a rollout."""
    params = [("state", state)] if state else []
    data = api.request("GET", f"/v1/rollouts/{rollout_id}/targets", params=params)
    emit(data, as_json, lambda d: table(
        ["device", "phase", "state", "reason", "notified", "updated"],
        [[t["device_id"], t["phase"] + 1, t["state"], t["reason"], fmt_time(t["notified_at"]),
          fmt_time(t["updated_at"])] for t in d["targets"]]))  # fmt: skip


def _action(name: str, help_: str, with_reason: bool) -> None:
    @rollout.command(name, help=help_)
    @click.argument("rollout_id", type=int)
    @click.option("--reason", default="", help="Recorded in the audit log.")
    @api_command
    def command(api: ApiClient, as_json: bool, rollout_id: int, reason: str) -> None:
        body = {"reason": reason} if with_reason and reason else None
        data = api.request("POST", f"/v1/rollouts/{rollout_id}/{name}", body=body)
        emit(data, as_json, lambda d: click.echo(f"rollout {d['id']}: {d['state']}"))


_action("pause", "Stop notifying devices (in-flight ones continue).", True)
_action("resume", "Continue a paused rollout; failures so far stop counting.", False)
_action("cancel", "Cancel: pending devices are dropped, notified ones get a cancel notice.", True)
_action("retry", "Notify failed, rolled back, rejected and timed-out devices again.", False)


@click.command("audit")
@click.option("--limit", default=50, show_default=True)
@api_command
def audit(api: ApiClient, as_json: bool, limit: int) -> None:
    """The audit log of operator (and engine) actions, newest first."""
    data = api.request("GET", "/v1/audit", params=[("limit", str(limit))])
    emit(data, as_json, lambda d: table(
        ["at", "actor", "action", "subject", "detail"],
        [[fmt_time(e["at"]), e["actor"], e["action"], e["subject"], str(e["detail"])[:80]]
         for e in d["entries"]]))  # fmt: skip
