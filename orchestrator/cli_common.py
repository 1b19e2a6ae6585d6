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

__all__ = ["api_command", "emit", "fmt_time", "table"]

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_SERVER = "http://127.0.0.1:8080"


def api_command(fn: F) -> F:
    """Adds ``--server``, ``--token`` and ``--json``; passes ``api`` and ``as_json``."""

    @click.option("--server", envvar="FLEETPUSH_SERVER", default=DEFAULT_SERVER,
                  show_default=True, help="API URL (env FLEETPUSH_SERVER).")  # fmt: skip
    @click.option("--token", envvar="FLEETPUSH_TOKEN", help="Bearer token (env FLEETPUSH_TOKEN).")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    @functools.wraps(fn)
    def wrapper(server: str, token: str | None, as_json: bool, **kwargs: Any) -> Any:
        try:
            api = ApiClient(server, token)
            return fn(api=api, as_json=as_json, **kwargs)
        except ApiClientError as e:
            if as_json:
                click.echo(json.dumps({"error": e.reason, "status": e.status}))
                sys.exit(1)
            raise click.ClickException(str(e)) from None

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
