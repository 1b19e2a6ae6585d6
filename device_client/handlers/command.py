"""The ``command`` handler: external programs install the verified payload file.

Steps (argv lists from the configuration, ``{payload}``, ``{version}`` and
``{previous_version}`` substituted): ``pre_install`` (nothing has changed yet if it fails),
``install``, ``post_install``; ``rollback`` is optional and is what a failed health check
or an interrupted install runs.
"""

from __future__ import annotations

from device_client.config import InstallConfig
from device_client.errors import UpdateError
from device_client.handlers.base import InstallOutcome, InstallRequest, StepOptions, run_step
from fleetpush_protocol.messages import FailureCode

__all__ = ["CommandHandler"]


class CommandHandler:
    name = "command"

    def __init__(self, config: InstallConfig) -> None:
        self.config = config

    @property
    def can_rollback(self) -> bool:
        return bool(self.config.rollback)

    def current_slot(self) -> str | None:
        return None

    async def install(self, request: InstallRequest) -> InstallOutcome:
        c = self.config
        values = request.values()
        common = StepOptions(timeout_s=c.step_timeout_s, env=request.env)
        reboot = await run_step(
            c.pre_install, values, failure=FailureCode.PRE_INSTALL_FAILED, step="pre_install",
            changed=False, options=common,
        )  # fmt: skip
        reboot |= await run_step(
            c.install, values, failure=FailureCode.INSTALL_FAILED, step="install",
            changed=True, options=common,
        )  # fmt: skip
        reboot |= await run_step(
            c.post_install, values, failure=FailureCode.POST_INSTALL_FAILED,
            step="post_install", changed=True, options=common,
        )  # fmt: skip
        return InstallOutcome(reboot=reboot)

    async def rollback(self, request: InstallRequest) -> None:
        if not self.config.rollback:
            raise UpdateError(FailureCode.ROLLBACK_FAILED, "no rollback command configured")
        await run_step(
            self.config.rollback, request.values(), failure=FailureCode.ROLLBACK_FAILED,
            step="rollback", changed=True,
            options=StepOptions(timeout_s=self.config.step_timeout_s, env=request.env),
        )  # fmt: skip

    async def commit(self, request: InstallRequest) -> None:
        return None
