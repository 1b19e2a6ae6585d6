"""The handler interface and the step runner both handlers share."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from device_client.commands import run_command, substitute
from device_client.errors import UpdateError
from fleetpush_protocol.messages import FailureCode

__all__ = ["EXIT_REBOOT", "Handler", "InstallOutcome", "InstallRequest", "StepOptions", "run_step"]

EXIT_REBOOT = 3  # a step's exit code meaning "done, reboot to take effect"


@dataclass(frozen=True, slots=True)
class InstallRequest:
    """What to install: the verified payload file and where the new slot goes."""

    payload: Path
    version: str
    slot: str | None  # directory handler: the new slot's name
    previous_slot: str | None
    previous_version: str
    env: Mapping[str, str]

    def values(self, slot_path: str = "") -> dict[str, str]:
        return {
            "payload": str(self.payload),
            "version": self.version,
            "slot": slot_path,
            "previous_version": self.previous_version,
        }


@dataclass(frozen=True, slots=True)
class InstallOutcome:
    reboot: bool  # the release takes effect only after a reboot


class Handler(Protocol):
    name: str

    @property
    def can_rollback(self) -> bool: ...

    def current_slot(self) -> str | None:
        """The slot in use now (directory handler), recorded before an install."""
        ...

    async def install(self, request: InstallRequest) -> InstallOutcome:
        """Install; raise ``UpdateError`` (``changed`` says whether to roll back)."""
        ...

    async def rollback(self, request: InstallRequest) -> None:
        """Restore the previous release; raise ``UpdateError(rollback_failed)``."""
        ...

    async def commit(self, request: InstallRequest) -> None:
        """The new release is healthy: drop what is no longer needed for a rollback."""
        ...


@dataclass(frozen=True, slots=True)
class StepOptions:
    timeout_s: float  # seconds
    env: Mapping[str, str]


async def run_step(
    argv: Sequence[str],
    values: Mapping[str, str],
    *,
    failure: FailureCode,
    step: str,
    changed: bool,
    options: StepOptions,
) -> bool:
    """Run one optional handler step; True when it asks for a reboot (exit 3).

    Raises:
        UpdateError: the step failed or timed out.
    """
    if not argv:
        return False
    result = await run_command(
        substitute(argv, values), timeout_s=options.timeout_s, env=options.env
    )
    if result.returncode == 0:
        return False
    if result.returncode == EXIT_REBOOT:
        return True
    raise UpdateError(
        failure, f"{step} {result.describe()}", changed=changed, output=result.output(step)
    )
