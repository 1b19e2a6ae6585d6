"""The ``fleetpush-device`` command: the device agent."""

from __future__ import annotations

import sys

__all__ = ["main"]


def main() -> None:
    """Entry point; replaced by the agent when the device client lands."""
    sys.stderr.write("fleetpush-device: the device agent is not there yet (issue 3)\n")
    sys.exit(2)
