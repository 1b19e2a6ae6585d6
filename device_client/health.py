"""The post-install health check: a command that must exit 0 within a timeout."""

from __future__ import annotations

from collections.abc import Mapping

from device_client.commands import run_command
from device_client.config import HealthConfig
from device_client.errors import UpdateError
from fleetpush_protocol.messages import FailureCode

__all__ = ["check_health"]


async def check_health(config: HealthConfig, env: Mapping[str, str]) -> None:
    """Run the health command; return if healthy.

    Raises:
        UpdateError: ``health_check_failed`` (non-zero exit) or ``health_check_timeout``.
    """
    if not config.command:
        return
    result = await run_command(config.command, timeout_s=config.timeout_s, env=env)
    if result.timed_out:
        raise UpdateError(
            FailureCode.HEALTH_CHECK_TIMEOUT,
            f"health check gave no answer within {config.timeout_s:g} s",
            changed=True,
        )
    if result.returncode != 0:
        raise UpdateError(
            FailureCode.HEALTH_CHECK_FAILED, f"health check {result.describe()}", changed=True
        )
