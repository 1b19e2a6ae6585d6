"""Options and output shared by the operator commands."""

from __future__ import annotations

import datetime as dt
import functools
import json
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.table import Table

from orchestrator.client import ApiClient, ApiClientError

__all__ = [
    "EXIT_API",
    "EXIT_USAGE",
    "api_command",
    "emit",
    "fmt_time",
    "table",
]

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_SERVER = "http://127.0.0.1:8080"
EXIT_API = 1  # the API refused the request (an HTTP error answer)
EXIT_USAGE = 2  # bad usage (click's own code), or the API could not be reached


def api_command(fn: F) -> F:
    """Adds ``--server``, ``--token`` and ``--json``; passes ``api`` and ``as_json``."""

    @click.option("--server", envvar="FLEETPUSH_SERVER", default=DEFAULT_SERVER,
                  show_default=True, help="API URL (env FLEETPUSH_SERVER).")  # fmt: skip
    @click.option("--token", envvar="FLEETPUSH_TOKEN", help="Bearer token (env FLEETPUSH_TOKEN).")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    @functools.wraps(fn)
    def wrapper(server: str, token: str | None, as_json: bool, **kwargs: Any) -> Any:
        if not token:
            raise click.UsageError(
                "no API token: pass --token or set FLEETPUSH_TOKEN "
                "(an admin creates one with `fleetpush tokens create NAME --role operator`)"
            )
        try:
            api = ApiClient(server, token)
            return fn(api=api, as_json=as_json, **kwargs)
        except ApiClientError as e:
            code = EXIT_API if e.status else EXIT_USAGE
            if as_json:
                click.echo(json.dumps({**e.body, "error": e.reason, "status": e.status}))
            else:
                click.echo(f"Error: {e}", err=True)
            sys.exit(code)

    return wrapper  # type: ignore[return-value]


def emit(data: Any, as_json: bool, render: Callable[[Any], None]) -> None:
    """Print ``data`` as JSON, or with ``render``."""
    if as_json:
        click.echo(json.dumps(data, indent=2, default=str))
    else:
        render(data)


def fmt_time(value: float | None) -> str:
    if not value:
        return "-"
    return dt.datetime.fromtimestamp(value, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def table(columns: list[str], rows: list[list[Any]], title: str | None = None) -> None:
    t = Table(*columns, title=title)
    for row in rows:
        t.add_row(*(str(c) for c in row))
    Console().print(t)
