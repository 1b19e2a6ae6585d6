"""``fleetpush devices|audit``: the device registry and the audit log, over the HTTP API."""

from __future__ import annotations

import json
from typing import Any

import click

from orchestrator.cli.common import api_command, emit, fmt_time, table
from orchestrator.cli.evidence import echo_log
from orchestrator.cli.systems import system_tables
from orchestrator.client import ApiClient

__all__ = ["audit", "devices"]


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
@click.option("--limit", default=1000, show_default=True, help="devices per page")
@click.option("--after", help="start after this device id (the previous page's next)")
@click.option("--all", "every", is_flag=True, help="follow the pages to the end")
@click.option("--missing-security", is_flag=True,
              help="Only devices missing a security release, and which.")  # fmt: skip
@api_command
def devices_list(
    *,
    api: ApiClient, as_json: bool, group: str | None, model: str | None,
                 online: bool | None, version: str | None, tag: str | None,
                 limit: int, after: str | None, every: bool,
                 missing_security: bool) -> None:  # fmt: skip
    """List devices, filtered, in id order, one page (--limit) at a time: the answer's
    ``next`` (shown last) is the --after of the following page."""
    params = [("limit", str(limit))]
    if missing_security:
        params.append(("missing_security", "true"))
    for key, value in (("group", group), ("model", model), ("version", version), ("tag", tag)):
        if value is not None:
            params.append((key, value))
    if online is not None:
        params.append(("online", "true" if online else "false"))
    data = api.request("GET", "/v1/devices", params=[*params, *_after(after)])
    while every and data.get("next"):
        more = api.request("GET", "/v1/devices", params=[*params, *_after(data["next"])])
        data = {"devices": [*data["devices"], *more["devices"]], "next": more.get("next")}
    emit(data, as_json, _missing_page if missing_security else _device_page)


def _missing_page(data: dict[str, Any]) -> None:
    table(["device", "model", "version", "missing security release", "cves"],
          [[x["device_id"], x["model"], x["current_version"],
            ", ".join(f"{m['name']} {m['version']}" for m in x["missing_security"]),
            ", ".join(c for m in x["missing_security"] for c in m["cves"])]
           for x in data["devices"]])  # fmt: skip
    if data.get("next"):
        click.echo(f"more: --after {data['next']}")


def _after(cursor: str | None) -> list[tuple[str, str]]:
    return [("after", cursor)] if cursor else []


def _device_page(data: dict[str, Any]) -> None:
    _device_rows(data["devices"])
    if data.get("next"):
        click.echo(f"more: --after {data['next']}")


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
        held = d["reports"][0] if d["reports"] else None
        if held is not None and held.get("hold_until") is not None:  # issue 18
            click.echo(f"held on the device (rollout {held['rollout_id']}) until "
                       f"{fmt_time(held['hold_until'])}: {held['hold_reason'] or '-'}")  # fmt: skip
        table(["counter", "rollout", "state", "version", "error", "at"],
              [[r["counter"], r["rollout_id"], r["state"], r["current_version"],
                r["error_code"] or "", fmt_time(r["received_at"])] for r in d["reports"]],
              title="reports")  # fmt: skip
        system_tables(d)
        if d.get("last_output"):
            click.echo("last failure's output (all: fleetpush devices logs):")
            echo_log(d["last_output"])

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


@click.command("audit")
@click.option("--limit", default=50, show_default=True)
@api_command
def audit(api: ApiClient, as_json: bool, limit: int) -> None:
    """The audit log of operator (and engine) actions, newest first."""
    data = api.request("GET", "/v1/audit", params=[("limit", str(limit))])
    emit(data, as_json, lambda d: table(
        ["at", "actor", "action", "subject", "detail"],
        [[fmt_time(e["at"]), e["actor"], e["action"], e["subject"], _detail(e["detail"])]
         for e in d["entries"]]))  # fmt: skip


def _detail(detail: dict[str, Any]) -> str:
    """``key=value`` pairs; nested values as compact JSON (``--json`` shows all of it)."""
    parts = []
    for key, value in detail.items():
        text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
        parts.append(f"{key}={text}")
    line = " ".join(parts)
    return line if len(line) <= 120 else line[:119] + "…"
