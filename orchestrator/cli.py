"""The ``fleetpush`` command: the operator CLI and the service."""

from __future__ import annotations

import logging

import click

from orchestrator.cli_protocol import protocol

__all__ = ["main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
def main(verbose: int) -> None:
    """fleetpush: push signed updates to fleets of devices over MQTT."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


main.add_command(protocol)
