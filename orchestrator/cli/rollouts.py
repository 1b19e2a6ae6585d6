"""``fleetpush rollout``: create (or dry-run), list, status and watch, targets, approve,
reject, pause, resume, cancel, retry, revert."""

from __future__ import annotations

import datetime as dt
import json
import sys
import time
from typing import Any

import click
from rich.console import Console
from rich.live import Live

from fleetpush_common.units import parse_duration, parse_percent, parse_phases
from orchestrator.cli.common import api_command, emit, fmt_time, table
from orchestrator.cli.rollout_views import approval_line, gate_lines, plan_lines, render_status
from orchestrator.client import ApiClient
from orchestrator.rules import FAILURE_STATES

__all__ = ["WATCH_EXIT", "rollout"]

# ``rollout status --watch`` ends when the rollout stops moving, with one code per way.
WATCH_EXIT = {"completed": 0, "paused": 3, "aborted": 4, "canceled": 5, "rejected": 6}
EXIT_INTERRUPTED = 130  # Ctrl-C


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
@click.option("--dry-run", is_flag=True,
              help="Create nothing: print which devices each phase would take, and why any "
                   "would be held back.")  # fmt: skip
@click.option("--force", is_flag=True,
              help="Create even when other active rollouts hold some of the devices.")  # fmt: skip
@click.option("--require-approval", is_flag=True,
              help="Start only once another operator or an admin approves it (the "
                   "installation may require this for every rollout).")  # fmt: skip
@api_command
def rollout_create(
    *,
    api: ApiClient, as_json: bool, release_ref: str, targets: tuple[str, ...],
                   phases: str, success: str, soak: str, failure_threshold: str,
                   min_attempts: int, on_failure: str, rate: float, rate_mode: str,
                   rate_factor: float, rate_every: int, rate_max: float, device_timeout: str,
                   start_at: str | None, windows: tuple[str, ...],
                   continuous: bool, dry_run: bool, force: bool,
                   require_approval: bool) -> None:  # fmt: skip
    """Roll RELEASE (NAME@VERSION or id) out to --target in --phases."""
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
            "continuous": continuous, "dry_run": dry_run, "force": force,
        }  # fmt: skip
        if require_approval:  # else the installation's setting decides
            body["require_approval"] = True
    except ValueError as e:
        raise click.BadParameter(str(e)) from None
    data = api.request("POST", "/v1/rollouts", body=body)
    if dry_run:
        emit(data, as_json, lambda d: click.echo("\n".join(plan_lines(d))))
        return

    def created(d: dict[str, Any]) -> None:
        click.echo(f"rollout {d['id']}: {d['release']['name']} {d['release']['version']} to "
                   f"{d['devices']} device(s), {d['state']}")  # fmt: skip
        line = approval_line(d)
        if line:
            click.echo(line)

    emit(data, as_json, created)


@rollout.command("list")
@click.option("--state", "states", multiple=True)
@api_command
def rollout_list(api: ApiClient, as_json: bool, states: tuple[str, ...]) -> None:
    """List rollouts."""
    data = api.request("GET", "/v1/rollouts", params=[("state", s) for s in states])
    emit(data, as_json, lambda d: table(
        ["id", "release", "state", "phase", "devices", "succeeded", "failed", "reason"],
        [[r["id"], f"{r['release']['name']} {r['release']['version']}", r["state"],
          f"{r['current_phase']}/{len(r['phases'])}", r["devices"],
          r["states"].get("succeeded", 0),
          sum(r["states"].get(s, 0) for s in FAILURE_STATES),
          r["reason"]] for r in d["rollouts"]]))  # fmt: skip


def _watch_end(data: dict[str, Any]) -> int | None:
    """The exit code once the rollout stopped moving; None while it moves (or is
    scheduled to start)."""
    return WATCH_EXIT.get(data["state"])


@rollout.command("status")
@click.argument("rollout_id", type=int)
@click.option("--watch", is_flag=True,
              help="Refresh until the rollout stops moving; the exit code says how: 0 "
                   "completed, 3 paused, 4 aborted, 5 canceled, 6 rejected.")  # fmt: skip
@click.option("--interval", default=1.0, show_default=True, help="Seconds between refreshes.")
@api_command
def rollout_status(api: ApiClient, as_json: bool, rollout_id: int, watch: bool,
                   interval: float) -> None:  # fmt: skip
    """Per-phase progress, per-state counts and the success gate."""
    data = api.request("GET", f"/v1/rollouts/{rollout_id}")
    if not watch:
        emit(data, as_json, lambda d: Console().print(render_status(d)))
        return
    try:
        if as_json:  # one status per line (JSON Lines), for scripts to follow
            click.echo(json.dumps(data, default=str))
            while _watch_end(data) is None:
                time.sleep(interval)
                data = api.request("GET", f"/v1/rollouts/{rollout_id}")
                click.echo(json.dumps(data, default=str))
        else:
            with Live(render_status(data), refresh_per_second=4) as live:
                while _watch_end(data) is None:
                    time.sleep(interval)
                    data = api.request("GET", f"/v1/rollouts/{rollout_id}")
                    live.update(render_status(data))
    except KeyboardInterrupt:
        sys.exit(EXIT_INTERRUPTED)
    code = _watch_end(data)
    assert code is not None  # noqa: S101 - the loops end only there
    if code and not as_json:
        click.echo(f"rollout {rollout_id} {data['state']}: {data['reason'] or 'no reason given'}",
                   err=True)  # fmt: skip
    sys.exit(code)


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


def _acted(d: dict[str, Any]) -> None:
    """The new state; after resume or retry, the gate when it is not met (the engine
    pauses a rollout again whose phase finished below it)."""
    extra = f" ({d['retried']} device(s) to notify again)" if "retried" in d else ""
    click.echo(f"rollout {d['id']}: {d['state']}{extra}")
    line = approval_line(d)
    if line and d["approval"]["state"] != "pending":
        click.echo(line)
    if d["state"] == "running":
        for line in gate_lines(d["gate"]):
            click.echo(line)


def _action(name: str, help_: str, with_reason: bool, *, reason_required: bool = False) -> None:
    # No default at all when required: click 8.5 takes default=None as a given value.
    extra: dict[str, Any] = {} if reason_required else {"default": ""}

    @rollout.command(name, help=help_)
    @click.argument("rollout_id", type=int)
    @click.option("--reason", required=reason_required, help="Recorded in the audit log.",
                  **extra)  # fmt: skip
    @api_command
    def command(api: ApiClient, as_json: bool, rollout_id: int, reason: str) -> None:
        body = {"reason": reason} if with_reason and reason else None
        data = api.request("POST", f"/v1/rollouts/{rollout_id}/{name}", body=body)
        emit(data, as_json, _acted)


_action("approve", "Approve a rollout awaiting approval (not your own): it starts.", True)
_action("reject", "Reject a rollout awaiting approval (not your own): it ends, devices free.",
        True, reason_required=True)  # fmt: skip
_action("pause", "Stop notifying devices (in-flight ones continue).", True)
_action("resume", "Continue a paused rollout; failures so far stop counting.", False)
_action("cancel", "Cancel: pending devices are dropped, notified ones get a cancel notice.", True)
_action("retry", "Notify failed, rolled back, rejected and timed-out devices again.", False)


@rollout.command("revert")
@click.argument("rollout_id", type=int)
@click.option("--phases", default="100%", show_default=True, help="e.g. 10%,100%")
@click.option("--success", default="100%", show_default=True, help="Gate of each phase.")
@click.option("--dry-run", is_flag=True, help="Create nothing; print what would be reverted.")
@click.option("--force", is_flag=True,
              help="Create even when other active rollouts hold some of the devices.")  # fmt: skip
@api_command
def rollout_revert(
    *, api: ApiClient, as_json: bool, rollout_id: int, phases: str, success: str,
    dry_run: bool, force: bool,
) -> None:  # fmt: skip
    """Put the devices ROLLOUT_ID updated back on the release each ran before: one new
    signed rollout per such release (the rollout must be over: cancel it first)."""
    try:
        body = {"phases": list(parse_phases(phases)),
                "success_pct": parse_percent(success, "--success"),
                "dry_run": dry_run, "force": force}  # fmt: skip
    except ValueError as e:
        raise click.BadParameter(str(e)) from None
    data = api.request("POST", f"/v1/rollouts/{rollout_id}/revert", body=body)

    def render(d: dict[str, Any]) -> None:
        for r in d["rollouts"]:
            rel = r["release"]
            if dry_run:
                click.echo(f"to {rel['name']} {rel['version']} (release {rel['id']}):")
                click.echo("\n".join("  " + line for line in plan_lines(r)[1:]))
            else:
                click.echo(f"rollout {r['id']}: {rel['name']} {rel['version']} to "
                           f"{r['devices']} device(s), {r['state']}")  # fmt: skip
        for k in d["skipped"]:
            click.echo(f"not reverted: {k['device']}: {k['reason']}")
        if dry_run:
            click.echo("dry run: nothing was created")

    emit(data, as_json, render)
