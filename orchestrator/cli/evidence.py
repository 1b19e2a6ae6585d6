"""``fleetpush devices logs``: what a device's failing steps printed (issue 18).

Printed with ``click.echo``, never through rich: rich would read ``[bold]`` in a device's
output as markup. The text is cleaned again before it is printed (it was at ingestion),
so no escape sequence of a device ever reaches the operator's terminal.
"""

from __future__ import annotations

from typing import Any

import click

from fleetpush_protocol.output import clean_text
from orchestrator.cli.common import api_command, emit, fmt_time
from orchestrator.client import ApiClient

__all__ = ["echo_log", "logs_command"]


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    if n < 1 << 20:
        return f"{n / 1024:.1f} KiB"
    return f"{n / (1 << 20):.1f} MiB"


def echo_log(entry: dict[str, Any]) -> None:
    """One failure: where it came from, its error, then each step's stdout and stderr."""
    click.echo(
        f"{entry['state']} at {fmt_time(entry['received_at'])}, release "
        f"{clean_text(entry['release']) or '?'}, rollout {entry['rollout_id']}, "
        f"report {entry['counter']}"
    )
    if entry["error_code"]:
        click.echo(clean_text(f"{entry['error_code']}: {entry['error_message']}"))
    for out in entry["output"]:
        step = clean_text(out["step"])
        click.echo(f"--- step {step} printed {_size(int(out['printed']))}; its end:")
        for stream in ("stdout", "stderr"):
            text = clean_text(out[stream]).rstrip("\n")
            if text:
                click.echo(f"--- {step} {stream}:")
                click.echo(text)


@click.command("logs")
@click.argument("device_id")
@click.option("--rollout", "rollout_id", type=int, help="Only this rollout's failures.")
@click.option("--limit", default=20, show_default=True, help="At most this many, newest first.")
@api_command
def logs_command(
    api: ApiClient, as_json: bool, device_id: str, rollout_id: int | None, limit: int
) -> None:
    """The output tails of a device's failed and rolled-back updates, newest first: the
    end of what the failing step (install step or health check) printed."""
    params = [("limit", str(limit))]
    if rollout_id is not None:
        params.append(("rollout", str(rollout_id)))
    data = api.request("GET", f"/v1/devices/{device_id}/logs", params=params)

    def render(d: dict[str, Any]) -> None:
        if not d["logs"]:
            click.echo(f"{device_id}: no failure output stored")
        for i, entry in enumerate(d["logs"]):
            if i:
                click.echo()
            echo_log(entry)

    emit(data, as_json, render)
