"""``fleetpush release upload --component NAME=HANDLER:FILE ...``: a system release (issue
18), and how releases and devices show their components."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import click

from fleetpush_protocol.components import COMPONENT_NAME_PATTERN, MAX_COMPONENTS
from orchestrator.cli.common import table
from orchestrator.client import ApiClient

__all__ = ["component_lines", "parse_component", "system_tables", "upload_system"]

HANDLERS = ("directory", "command")


def parse_component(text: str) -> tuple[str, str, Path]:
    """``NAME=HANDLER:FILE`` as ``(name, handler, path)``.

    Raises:
        click.UsageError: not of that form, a bad name or handler, or no such file.
    """
    name, sep, rest = text.partition("=")
    handler, sep2, file = rest.partition(":")
    if not (sep and sep2 and file):
        raise click.UsageError(f"--component {text!r}: expected NAME=HANDLER:FILE")
    if not re.match(COMPONENT_NAME_PATTERN, name):
        raise click.UsageError(f"--component {text!r}: name must be [a-z0-9_-], 1-32, "
                               "starting with a letter or digit")  # fmt: skip
    if handler not in HANDLERS:
        raise click.UsageError(f"--component {text!r}: handler must be one of "
                               f"{', '.join(HANDLERS)}")  # fmt: skip
    path = Path(file)
    if not path.is_file():
        raise click.UsageError(f"--component {text!r}: no file {file!r}")
    return name, handler, path


def upload_system(
    api: ApiClient, *, name: str, version: str, models: tuple[str, ...],
    meta: tuple[str, ...], components: tuple[str, ...],
) -> Any:  # fmt: skip
    """Upload each component's file, then make the system release of them, in order."""
    parsed = [parse_component(c) for c in components]  # every one checked before sending
    names = [p[0] for p in parsed]
    if len(set(names)) != len(names):
        raise click.UsageError("--component: each name once")
    if len(parsed) > MAX_COMPONENTS:
        raise click.UsageError(f"--component: at most {MAX_COMPONENTS}")
    pinned = []
    for cname, handler, path in parsed:
        stored = api.request("POST", "/v1/payloads", params=[("handler", handler)], upload=path)
        pinned.append({"name": cname, "handler": handler, "sha256": stored["sha256"]})
    pairs = [m.partition("=") for m in meta]
    if any(not sep for _, sep, _ in pairs):
        raise click.UsageError("--meta: expected key=value")
    body = {"name": name, "version": version, "models": list(models),
            "meta": {k: v for k, _, v in pairs}, "components": pinned}  # fmt: skip
    return api.request("POST", "/v1/systems", body=body)


def component_lines(d: dict[str, Any]) -> None:
    """A system release's components, in installation order."""
    if d.get("components"):
        table(["#", "component", "handler", "size", "sha256"],
              [[i + 1, c["name"], c["handler"], c["size"], c["sha256"][:16]]
               for i, c in enumerate(d["components"])], title="components")  # fmt: skip


def system_tables(d: dict[str, Any]) -> None:
    """A device's latest system updates, each with its components' states."""
    for s in d.get("systems", []):
        # a heading of its own: a table title wraps at the table's (narrow) width
        click.echo(f"system update of rollout {s['rollout_id']}: {s['state']}")
        table(["component", "state"], [[c["name"], c["state"]] for c in s["components"]])
