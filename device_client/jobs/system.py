"""Whole-system updates (issue 18): every component fetched, then installed in order,
health-checked as one, and rolled back together, in reverse order, if anything fails.

The job moves through the same persisted states as a single-payload job (``JobRunner``
calls in here from its download, install, health and rollback steps); within a state, the
job's ``parts`` say how far each component got, and are written (with a report carrying
them) before each component's handler acts. So whatever stops the agent between or during
two components, the next start finds the job in ``installing`` (or later) with exactly the
components that may have changed marked ``installing`` or ``installed``, and rolls those
back, last first.

Every component must be configured on the device (``[components.NAME]``, with the handler
the notice names) and able to roll back, or the notice is refused before any download:
half a system cannot be undone otherwise.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from device_client.errors import UpdateError
from device_client.handlers import Handler, InstallRequest, make_handler
from device_client.jobs.health import check_health
from device_client.jobs.parts import Part, PartState
from device_client.jobs.states import Job, JobState
from device_client.transport.base import ProgressCallback
from device_client.transport.fetcher import hash_file
from fleetpush_protocol.components import SYSTEM_HANDLER, Component, notice_bytes
from fleetpush_protocol.errors import ContentError, TransportError
from fleetpush_protocol.messages import FailureCode, Payload, ReportState, StepOutput, UpdateNotice

if TYPE_CHECKING:
    from device_client.jobs.runner import JobRunner

__all__ = ["SystemUpdates", "components_of", "is_system"]

logger = logging.getLogger(__name__)


def is_system(notice: UpdateNotice) -> bool:
    return notice.handler == SYSTEM_HANDLER


def components_of(notice: UpdateNotice) -> tuple[Component, ...]:
    found = notice.components
    return () if isinstance(found, msgspec.UnsetType) else found


class SystemUpdates:
    """The system steps of one runner.

    Args:
        runner: the job runner whose transitions, reports and files these steps use.
        on_succeeded: awaited after a system update succeeded.
    """

    def __init__(self, runner: JobRunner, on_succeeded: Callable[[], Awaitable[None]]) -> None:
        self._runner = runner
        self._on_succeeded = on_succeeded
        self._handlers: dict[str, Handler] = {}
        self._verified: set[Path] = set()  # files this process hashed while downloading

    def handler(self, name: str) -> Handler:
        if name not in self._handlers:
            self._handlers[name] = make_handler(self._runner.config.components[name])
        return self._handlers[name]

    # --- before anything: can this device install the whole system? -------------------------

    def unsupported(self, notice: UpdateNotice) -> str | None:
        """Why this device cannot install every component of ``notice``, or None."""
        configured = self._runner.config.components
        for c in components_of(notice):
            cfg = configured.get(c.name)
            if cfg is None:
                return f"component {c.name!r} is not configured here ([components.{c.name}])"
            if cfg.handler != c.handler:
                return (f"component {c.name!r} wants handler {c.handler!r}, "
                        f"[components.{c.name}] has {cfg.handler!r}")  # fmt: skip
            if not self.handler(c.name).can_rollback:
                return (f"component {c.name!r} has no rollback configured: a system update "
                        "rolls back all of its components together")  # fmt: skip
        return None

    def start(self, job: Job, notice: UpdateNotice) -> Job:
        """``job`` with one pending part per component, in the notice's order."""
        return replace(job, parts=tuple(Part(name=c.name) for c in components_of(notice)))

    # --- download ----------------------------------------------------------------------------

    def files(self, job: Job, name: str) -> tuple[Path, Path]:
        """A component's partial and verified payload files (removed with the job's)."""
        d = self._runner.persisted.downloads
        return d / f"{job.notice_id}.{name}.part", d / f"{job.notice_id}.{name}.payload"

    async def _present(self, job: Job, c: Component) -> bool:
        dest = self.files(job, c.name)[1]
        try:
            if dest.stat().st_size != c.size:
                return False
        except FileNotFoundError:
            return False
        if dest in self._verified:
            return True
        return await asyncio.to_thread(hash_file, dest) == c.sha256

    async def fetched(self, job: Job, notice: UpdateNotice) -> bool:
        """Every component's verified payload is on disk."""
        for c in components_of(notice):
            if not await self._present(job, c):
                return False
        return True

    async def download(self, job: Job, notice: UpdateNotice) -> None:
        """Fetch every component, each through the fetcher's checks (the signed size stops
        the read, the hash is checked), before anything is installed."""
        r = self._runner
        total = notice_bytes(notice)
        offset = 0
        for i, c in enumerate(components_of(notice)):
            part, dest = self.files(job, c.name)
            if not await self._present(job, c):
                progress = _shifted(r.progress_callback(job), offset, total)
                payload = Payload(sha256=c.sha256, size=c.size, urls=c.urls)
                why = f"component {c.name!r}: "
                try:
                    await r.fetcher.fetch(payload, part, dest, progress)
                except ContentError as e:
                    r.finish(job, JobState.FAILED, e.code, why + str(e))
                    return
                except TransportError as e:
                    r.finish(job, JobState.FAILED, FailureCode.DOWNLOAD_FAILED, why + str(e))
                    return
                except UpdateError as e:
                    r.finish(job, JobState.FAILED, e.failure, why + str(e))
                    return
                self._verified.add(dest)
            offset += c.size
            job = _moved(job, i, PartState.DOWNLOADED)
        r.transition(job, JobState.DOWNLOADED, downloaded=total, parts=job.parts)

    # --- install, health, rollback -----------------------------------------------------------

    def _save(self, job: Job, i: int, state: str, **changes: object) -> Job:
        """Persist part ``i`` in ``state``, with a report carrying every part's state."""
        r = self._runner
        job = _moved(job, i, state, **changes)
        r.persisted.state.job = job
        # health_check is local only: a rollback after it reports as `installed` does
        r.reporter.job(job, job.state.report_state or ReportState.INSTALLED)
        r.persisted.save()
        return job

    def request(self, job: Job, notice: UpdateNotice, i: int) -> InstallRequest:
        r = self._runner
        p = job.parts[i]
        cfg = r.config.components[p.name]
        slots_dir = cfg.slots_dir
        return InstallRequest(
            payload=self.files(job, p.name)[1],
            version=notice.release.version,
            slot=p.new_slot,
            previous_slot=p.previous_slot,
            previous_version=job.previous_version,
            env={
                **self._env(job, notice),
                "FLEETPUSH_COMPONENT": p.name,
                "FLEETPUSH_SLOT": str(slots_dir / p.new_slot) if p.new_slot and slots_dir else "",
            },
        )

    def _env(self, job: Job, notice: UpdateNotice) -> dict[str, str]:
        return {
            "FLEETPUSH_DEVICE_ID": self._runner.device_id,
            "FLEETPUSH_NOTICE_ID": job.notice_id,
            "FLEETPUSH_RELEASE": notice.release.name,
            "FLEETPUSH_VERSION": notice.release.version,
            "FLEETPUSH_PREVIOUS_VERSION": job.previous_version,
            "FLEETPUSH_COMPONENTS": " ".join(p.name for p in job.parts),
            "FLEETPUSH_SLOT": "",
        }

    async def install(self, job: Job, notice: UpdateNotice, *, detail: str = "") -> None:
        r = self._runner
        job = r.transition(job, JobState.INSTALLING, detail=detail)  # detail: a hold's end
        reboot = False
        for i, p in enumerate(job.parts):
            handler = self.handler(p.name)
            slot = f"slot-{job.notice_id}" if handler.name == "directory" else None
            job = self._save(job, i, PartState.INSTALLING,
                             previous_slot=handler.current_slot(), new_slot=slot)  # fmt: skip
            try:
                outcome = await handler.install(self.request(job, notice, i))
            except UpdateError as e:
                if not e.changed:  # its pre_install failed: nothing of it to undo
                    job = self._save(job, i, PartState.FAILED)
                await self.rollback(job, notice, e.failure, f"component {p.name!r}: {e}",
                                    _named(e.output, p.name))  # fmt: skip
                return
            reboot |= outcome.reboot
            job = self._save(job, i, PartState.INSTALLED)
        job = r.transition(job, JobState.INSTALLED, reboot_pending=reboot)
        if reboot:
            await r.installer.wait_for_reboot(job)
            return
        await self.health(job, notice)

    async def health(self, job: Job, notice: UpdateNotice) -> None:
        """The one health check of the whole system, then each component's cleanup."""
        r = self._runner
        if job.error_code:
            # A rollback began (its cause persisted first) before the agent stopped: some
            # components may be rolled back already, so a health check passing now would
            # commit half a system. The rollback goes on instead.
            await self.rollback(job, notice, job.error_code, job.error_message)
            return
        job = r.transition(
            job, JobState.HEALTH_CHECK, health_attempts=job.health_attempts + 1,
            reboot_pending=False,
        )  # fmt: skip
        env = self._env(job, notice)
        values = {"payload": "", "slot": "", "version": notice.release.version,
                  "previous_version": job.previous_version}  # fmt: skip
        try:
            await check_health(r.config.health, env, values)
        except UpdateError as e:
            await self.rollback(job, notice, e.failure, str(e), e.output)
            return
        for i, p in enumerate(job.parts):
            try:
                await self.handler(p.name).commit(self.request(job, notice, i))
            except OSError as e:  # cleanup only: the system is installed and healthy
                logger.warning("%s: cleanup of %s failed: %s", r.device_id, p.name, e)
        r.persisted.state.installed = notice.release  # persisted by finish's write
        r.finish(job, JobState.SUCCEEDED, "", "")
        await self._on_succeeded()

    async def rollback(
        self, job: Job, notice: UpdateNotice, code: str, why: str,
        output: Sequence[StepOutput] = (),
    ) -> None:  # fmt: skip
        """Roll back every component that may have changed, last installed first; each
        one's end is persisted, so a restart mid-rollback goes on with the rest, and
        reports the cause that started it (with ``output``, what the failing step printed,
        and what each failed rollback printed)."""
        r = self._runner
        changed = [i for i, p in enumerate(job.parts) if p.state in PartState.CHANGED]
        if not changed:
            r.finish(job, JobState.FAILED, code, why, output=output)
            return
        if job.error_code:  # a rollback began before the agent restarted: its cause stands
            code, why = job.error_code, f"{job.error_message}; rollback resumed after a restart"
        else:
            job = replace(job, error_code=str(code), error_message=why[:1024])
            r.persisted.state.job = job
            r.persisted.save()
        broken = []
        outputs = list(output)
        for i in reversed(changed):
            name = job.parts[i].name
            try:
                await self.handler(name).rollback(self.request(job, notice, i))
            except UpdateError as e:
                broken.append(f"component {name!r}: {e}")
                outputs += _named(e.output, name)
                job = self._save(job, i, PartState.FAILED)
                continue
            job = self._save(job, i, PartState.ROLLED_BACK)
        if broken:
            r.finish(job, JobState.FAILED, FailureCode.ROLLBACK_FAILED,
                     f"{why}; {'; '.join(broken)}", output=outputs)  # fmt: skip
        else:
            r.finish(job, JobState.ROLLED_BACK, code, why, output=outputs)


def _named(outputs: Sequence[StepOutput], component: str) -> tuple[StepOutput, ...]:
    """A component's step outputs, their steps named ``component:step`` (``app:install``)."""
    return tuple(msgspec.structs.replace(o, step=f"{component}:{o.step}") for o in outputs)


def _moved(job: Job, i: int, state: str, **changes: object) -> Job:
    parts = list(job.parts)
    parts[i] = parts[i].moved(state, **changes)
    return replace(job, parts=tuple(parts))


def _shifted(report: ProgressCallback, offset: int, total: int) -> ProgressCallback:
    """A component's progress as the whole system's: ``offset`` bytes came before it."""

    async def progress(done: int, _size: int) -> None:
        await report(offset + done, total)

    return progress
