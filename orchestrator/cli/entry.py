"""The ``fleetpush`` command's entry point: the service's CLI, or how to install it.

The base install of the ``fleetpush`` distribution is the device agent alone; the service's
dependencies come with the ``orchestrator`` extra (docs/device.md, "Installing on a
device"). Without them the command says so in one line rather than with a traceback.
"""

from __future__ import annotations

import sys

__all__ = ["main"]

# Imported by the service and not by the device agent: the ``orchestrator`` extra.
SERVICE_ONLY = frozenset({"click", "rich", "cryptography", "psycopg", "psycopg_pool"})
EXIT_NOT_INSTALLED = 2


def main() -> None:
    """Run the service's CLI; exit 2 with a hint when the orchestrator extra is missing."""
    try:
        from orchestrator.cli.main import main as cli  # noqa: PLC0415 - the check is the point
    except ModuleNotFoundError as e:
        if (e.name or "").split(".", 1)[0] not in SERVICE_ONLY:
            raise
        print(
            f"fleetpush: the orchestrator is not installed here ({e.name} is missing); this "
            "is a device-only install. Install the service with: "
            "pip install 'fleetpush[orchestrator]'",
            file=sys.stderr,
        )
        sys.exit(EXIT_NOT_INSTALLED)
    cli()
