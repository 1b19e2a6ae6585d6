"""The post-install health check: a command that must exit 0 within a timeout."""

from __future__ import annotations

from collections.abc import Mapping

from device_client.commands import run_command, substitute
from device_client.config import HealthConfig
from device_client.errors import UpdateError
from fleetpush_protocol.messages import FailureCode

__all__ = ["STEP", "check_health"]

STEP = "health_check"  # the step its output is reported as


async def check_health(
    config: HealthConfig, env: Mapping[str, str], values: Mapping[str, str] | None = None
) -> None:
    """Run the health command; return if healthy.

    ``env`` holds the ``FLEETPUSH_*`` variables of the install steps, and ``{slot}``,
    ``{version}``, ``{payload}`` and ``{previous_version}`` in the command are replaced by
    ``values``, as in the install steps, so one configuration serves agents whose slots
    live in different folders.

    Raises:
        UpdateError: ``health_check_failed`` (non-zero exit) or ``health_check_timeout``.
    """
    if not config.command:
        return
    argv = substitute(config.command, values) if values else config.command
    result = await run_command(argv, timeout_s=config.timeout_s, env=env)
    if result.timed_out:
        raise UpdateError(
            FailureCode.HEALTH_CHECK_TIMEOUT,
            f"health check gave no answer within {config.timeout_s:g} s",
            changed=True,
            output=result.output(STEP),
        )
    if result.returncode != 0:
        raise UpdateError(
            FailureCode.HEALTH_CHECK_FAILED, f"health check {result.describe()}", changed=True,
            output=result.output(STEP),
        )  # fmt: skip
