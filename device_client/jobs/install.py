"""The steps that change the device: install, reboot, health check, commit and rollback.

Each moves the job through ``JobRunner.transition`` (persisted before the handler acts) and
ends it through ``JobRunner.finish``; the runner's state table calls them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from device_client.commands import run_command
from device_client.errors import UpdateError
from device_client.handlers import InstallRequest
from device_client.jobs.health import check_health
from device_client.jobs.states import Job, JobState
from device_client.jobs.system import is_system
from fleetpush_protocol.messages import FailureCode, StepOutput, UpdateNotice

if TYPE_CHECKING:
    from device_client.jobs.runner import JobRunner

__all__ = ["Installer"]

logger = logging.getLogger(__name__)


class Installer:
    """Installs a downloaded job's payload with the runner's handler, checks, rolls back.

    Args:
        runner: the job runner whose transitions these steps make.
        on_succeeded: awaited after a job succeeded (the agent publishes its inventory).
    """

    def __init__(self, runner: JobRunner, on_succeeded: Callable[[], Awaitable[None]]) -> None:
        self._runner = runner
        self._on_succeeded = on_succeeded

    def request(self, job: Job, notice: UpdateNotice) -> InstallRequest:
        r = self._runner
        slots_dir = r.config.install.slots_dir
        return InstallRequest(
            payload=r.files(job)[1],
            version=notice.release.version,
            slot=job.new_slot,
            previous_slot=job.previous_slot,
            previous_version=job.previous_version,
            env={
                "FLEETPUSH_DEVICE_ID": r.device_id,
                "FLEETPUSH_NOTICE_ID": job.notice_id,
                "FLEETPUSH_RELEASE": notice.release.name,
                "FLEETPUSH_VERSION": notice.release.version,
                "FLEETPUSH_PREVIOUS_VERSION": job.previous_version,
                "FLEETPUSH_SLOT": str(slots_dir / job.new_slot)
                if job.new_slot and slots_dir
                else "",
            },
        )

    async def install(self, job: Job, notice: UpdateNotice, *, detail: str = "") -> None:
        """``detail``: what the ``installing`` report says (a hold that ended, and how)."""
        r = self._runner
        if is_system(notice):
            await r.system.install(job, notice, detail=detail)
            return
        handler = r.handler
        slot = f"slot-{job.notice_id}" if handler.name == "directory" else None
        job = r.transition(
            job, JobState.INSTALLING, detail=detail, previous_slot=handler.current_slot(),
            new_slot=slot,
        )  # fmt: skip
        try:
            outcome = await handler.install(self.request(job, notice))
        except UpdateError as e:
            if e.changed:
                await self.rollback(job, notice, e.failure, str(e), e.output)
            else:
                r.finish(job, JobState.FAILED, e.failure, str(e), output=e.output)
            return
        job = r.transition(job, JobState.INSTALLED, reboot_pending=outcome.reboot)
        if outcome.reboot:
            await self.wait_for_reboot(job)
            return
        await self.health(job, notice)

    async def wait_for_reboot(self, job: Job) -> None:
        r = self._runner
        argv = r.config.install.reboot
        if argv:
            logger.warning("%s: rebooting to finish %s", r.device_id, job.notice_id)
            result = await run_command(argv, timeout_s=60, env={})
            if result.returncode not in (0, None):
                logger.error("%s: reboot command %s", r.device_id, result.describe())
        else:
            logger.warning(
                "%s: %s needs a reboot; waiting for the device to restart",
                r.device_id, job.notice_id,
            )  # fmt: skip
        # Stay here: the next start of the agent runs the health check (state `installed`).
        await asyncio.Event().wait()

    async def health(self, job: Job, notice: UpdateNotice) -> None:
        r = self._runner
        if is_system(notice):
            await r.system.health(job, notice)
            return
        if job.error_code:
            # A rollback began (its cause persisted first) before the agent stopped: the
            # handler may have put the old slot back already, so a check passing now would
            # commit and report a release that is no longer running. The rollback goes on.
            await self.rollback(job, notice, job.error_code, job.error_message)
            return
        job = r.transition(
            job, JobState.HEALTH_CHECK, health_attempts=job.health_attempts + 1,
            reboot_pending=False,
        )  # fmt: skip
        request = self.request(job, notice)
        try:
            await check_health(
                r.config.health, request.env, request.values(request.env["FLEETPUSH_SLOT"])
            )
        except UpdateError as e:
            await self.rollback(job, notice, e.failure, str(e), e.output)
            return
        try:
            await r.handler.commit(request)
        except OSError as e:  # cleanup only: the release is installed and healthy
            logger.warning("%s: cleanup after install failed: %s", r.device_id, e)
        r.persisted.state.installed = notice.release  # persisted by finish's write
        r.keep_base(job, notice)
        r.finish(job, JobState.SUCCEEDED, "", "")
        await self._on_succeeded()

    async def rollback(
        self, job: Job, notice: UpdateNotice, code: str, why: str,
        output: Sequence[StepOutput] = (),
    ) -> None:  # fmt: skip
        """Roll back, and report the failure with what its step printed (``output``) and,
        if the rollback fails too, what the rollback printed."""
        r = self._runner
        if is_system(notice):
            await r.system.rollback(job, notice, code, why, output)
            return
        if not r.handler.can_rollback:
            r.finish(job, JobState.FAILED, code, f"{why}; no rollback configured", output=output)
            return
        if job.error_code:  # a rollback began before the agent restarted: its cause stands
            code, why = job.error_code, f"{job.error_message}; rollback resumed after a restart"
        else:
            job = replace(job, error_code=str(code), error_message=why[:1024])
            r.persisted.state.job = job
            r.persisted.save()
        try:
            await r.handler.rollback(self.request(job, notice))
        except UpdateError as e:
            r.finish(job, JobState.FAILED, FailureCode.ROLLBACK_FAILED, f"{why}; {e}",
                     output=(*output, *e.output))  # fmt: skip
            return
        r.finish(job, JobState.ROLLED_BACK, code, why, output=output)
