"""The job runner: one step per persisted state, in a table, each persisting before it acts.

``JobRunner.STEPS`` maps every non-final ``JobState`` to the method that takes a job in that
state one step further. A step moves on only through ``transition`` (``Job.advance`` checks
the edge, then the job and its report are written together) or ``finish`` (the final report,
written with the job cleared), so whatever a crash interrupts, the state file says where to
resume (see device_client/agent.py for the table of what each persisted state does on a
restart). The install, health and rollback steps are in ``device_client.jobs.install``.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import ClassVar

from device_client.config import DeviceConfig
from device_client.errors import UpdateError
from device_client.handlers import Handler
from device_client.holds import Holds
from device_client.hooks import NotifyHook
from device_client.jobs.install import Installer
from device_client.jobs.policy import Blocked
from device_client.jobs.security import update_blocked
from device_client.jobs.states import Job, JobState
from device_client.jobs.system import SystemUpdates, is_system
from device_client.persisted import Persisted
from device_client.reports import Reporter
from device_client.transport.base import PayloadFetcher, ProgressCallback
from device_client.transport.delta_fetch import DeltaFetcher, FetchOutcome
from device_client.transport.fetcher import hash_file
from fleetpush_common.tasks import cancel_and_wait
from fleetpush_protocol.envelope import decode_message
from fleetpush_protocol.errors import ContentError, TransportError
from fleetpush_protocol.messages import ErrorInfo, FailureCode, Progress, ReportState, StepOutput
from fleetpush_protocol.messages import UpdateNotice as Notice

__all__ = ["MAX_WAIT_S", "JobRunner"]

logger = logging.getLogger(__name__)

MAX_WAIT_S = 60.0  # seconds between policy re-checks while deferred (clocks can jump)
DEFERRED_RESAY_S = 600.0  # seconds: a deferred job reports again at least this often


Step = Callable[["JobRunner", Job, Notice], Awaitable[None]]


class JobRunner:
    """Runs the persisted job, then the queued notice, until there is nothing to do.

    Args:
        config: the device configuration (policy, download, install and health settings).
        persisted: the state holding the job; ``persisted.save`` writes it.
        reporter: queues the reports.
        fetcher: downloads payloads.
        handler: installs them.
        clock: Unix time in seconds (the policy's time).
        on_succeeded: awaited after a job succeeded (the agent publishes its inventory).
        deltas: fetches through deltas and holds full downloads on a metered link
            (device_client/transport/delta_fetch.py); None: the fetcher alone.
    """

    def __init__(
        self,
        config: DeviceConfig,
        *,
        persisted: Persisted,
        reporter: Reporter,
        fetcher: PayloadFetcher,
        handler: Handler,
        clock: Callable[[], float],
        on_succeeded: Callable[[], Awaitable[None]],
        deltas: DeltaFetcher | None = None,
    ) -> None:
        self.config = config
        self.device_id = config.device.id
        self.persisted = persisted
        self.reporter = reporter
        self.fetcher = fetcher
        self.deltas = deltas  # None: full payloads only (no base kept, no metered link)
        self.handler = handler
        self.clock = clock
        self.installer = Installer(self, on_succeeded)
        self.system = SystemUpdates(self, on_succeeded)  # issue 18: several components
        self.notify = NotifyHook(config)  # [security] notify_command, once per notice
        self.holds = Holds(config, clock, self._pending_notice, self.wake)  # [holds]
        self.stopping = False  # set when the agent stops: no new job task starts
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._last_progress = 0.0
        self._verified = ""  # notice id whose payload this process verified

    # --- the table -------------------------------------------------------------------------

    async def _notified(self, job: Job, notice: Notice) -> None:
        self.decide(job, notice)  # persisted by an agent older than decide()

    async def _deferred(self, job: Job, notice: Notice) -> None:
        await self.wait_for_policy(job, notice)
        job = self.persisted.state.job or job
        if await self._downloaded_ok(job, notice):
            await self.installer.install(job, notice, detail=self.holds.take_note(job.notice_id))
        else:
            self.transition(job, JobState.DOWNLOADING)

    async def _downloading(self, job: Job, notice: Notice) -> None:
        await self.download(job, notice)

    async def _downloaded(self, job: Job, notice: Notice) -> None:
        blocked = await self._blocked(job, notice)
        if blocked is not None:
            self.transition(job, JobState.DEFERRED, detail=blocked.reason, hold=blocked)
        elif await self._downloaded_ok(job, notice):
            await self.installer.install(job, notice, detail=self.holds.take_note(job.notice_id))
        else:
            self.transition(job, JobState.DOWNLOADING)

    async def _installing(self, job: Job, notice: Notice) -> None:
        # Only a restart finds a job here: the install was interrupted.
        await self.installer.rollback(job, notice, FailureCode.INTERRUPTED,
                                      "install was interrupted")  # fmt: skip

    async def _installed(self, job: Job, notice: Notice) -> None:
        await self.installer.health(job, notice)  # after a reboot, or a crash

    async def _health_check(self, job: Job, notice: Notice) -> None:
        if job.health_attempts >= self.config.health.max_interrupted:
            await self.installer.rollback(
                job, notice, FailureCode.INTERRUPTED,
                f"health check interrupted {job.health_attempts} times",
            )  # fmt: skip
        else:
            await self.installer.health(job, notice)

    STEPS: ClassVar[dict[JobState, Step]] = {
        JobState.NOTIFIED: _notified,
        JobState.DEFERRED: _deferred,
        JobState.DOWNLOADING: _downloading,
        JobState.DOWNLOADED: _downloaded,
        JobState.INSTALLING: _installing,
        JobState.INSTALLED: _installed,
        JobState.HEALTH_CHECK: _health_check,
    }

    # --- the loop --------------------------------------------------------------------------

    def kick(self) -> None:
        """Run the persisted job (or the queued notice) unless a run is in progress."""
        if self.stopping:
            return  # the persisted job resumes at the next start
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name=f"{self.device_id}.job")

    async def cancel(self) -> None:
        """Stop the running step (at an await: the state file says where it was)."""
        task, self._task = self._task, None
        await cancel_and_wait(task)

    @property
    def busy(self) -> bool:
        """A job step runs or waits now."""
        return self._task is not None and not self._task.done()

    async def idle(self) -> None:
        """Return once no job step runs or waits (the fast tests' barrier)."""
        while self._task is not None and not self._task.done():
            await asyncio.wait({self._task})

    def wake(self) -> None:
        """Re-check the update policy now."""
        self._wake.set()

    async def _run(self) -> None:
        while True:
            st = self.persisted.state
            job = st.job
            if job is None:
                if not st.queued:
                    return
                data, st.queued = st.queued, b""
                msg = decode_message(data)
                assert isinstance(msg, Notice)  # noqa: S101 - only verified notices queue
                await self.begin(msg, data)
                continue
            try:
                notice = decode_message(job.notice)
                assert isinstance(notice, Notice)  # noqa: S101 - only verified notices stored
                if job.state in (JobState.DEFERRED, JobState.DOWNLOADING, JobState.DOWNLOADED):
                    await self.notify.announce(notice)  # before it installs; once per notice
                await self.STEPS[job.state](self, job, notice)
            except Exception as e:
                logger.exception("%s: internal error in %s", self.device_id, job.state.value)
                current = self.persisted.state.job or job
                await self.fail(current, FailureCode.INTERNAL_ERROR, f"{type(e).__name__}: {e}")

    # --- moving a job ----------------------------------------------------------------------

    def transition(
        self, job: Job, state: JobState, *, detail: str = "", downloaded: int | None = None,
        hold: Blocked | None = None, **changes: object,
    ) -> Job:  # fmt: skip
        """Persist ``job`` in ``state`` together with its report, then return it; ``hold``:
        an application's hold, whose reason and end the report carries."""
        job = job.advance(state, **changes)
        logger.debug("%s: %s -> %s", self.device_id, job.notice_id, state.value)
        self.persisted.state.job = job
        if (rs := state.report_state) is not None:
            held = hold if hold is not None and hold.hold else None
            self.reporter.job(job, rs, detail=detail, downloaded=downloaded, hold=held)
        self.persisted.save()
        return job

    def finish(
        self, job: Job, state: JobState, code: str, message: str, *,
        output: Sequence[StepOutput] = (),
    ) -> None:  # fmt: skip
        """Persist the job's end with its final report (with ``output``, what the failing
        step printed, on a failure), and remove its files."""
        code = str(code)
        job = job.advance(state, error_code=code, error_message=message[:1024])
        error = ErrorInfo(code=code, message=message[:1024]) if code else None
        self.reporter.job(job, ReportState(state.value), error=error,
                          detail="" if code else message, output=output)  # fmt: skip
        st = self.persisted.state
        st.job = None
        st.last_job = job
        self.persisted.save()
        # Every file of the job: the payload's, and a delta's (.delta, .delta.part,
        # .rebuild, .nodelta), which would otherwise wait for the next start.
        for f in self.persisted.downloads.glob(f"{glob.escape(job.notice_id)}.*"):
            if f.is_file():
                f.unlink(missing_ok=True)
        logger.info("%s: %s %s %s", self.device_id, job.notice_id, state.value, code)

    def files(self, job: Job) -> tuple[Path, Path]:
        """The job's partial and verified payload files."""
        d = self.persisted.downloads
        return d / f"{job.notice_id}.part", d / f"{job.notice_id}.payload"

    async def begin(self, msg: Notice, data: bytes) -> None:
        """Start the job of a verified notice and take it to its first real state."""
        job = Job(
            notice_id=msg.notice_id,
            rollout_id=msg.rollout_id,
            notice=data,
            state=JobState.NOTIFIED,
            reply_topic=self.reporter.reply_topic(msg.reply_topic),
            previous_version=self.persisted.state.current_version,
        )
        self.persisted.state.job = job
        self.reporter.job(job, ReportState.NOTIFIED)
        try:
            self.decide(job, msg)
        except Exception as e:  # the job loop's last resort, for this step too
            logger.exception("%s: internal error starting %s", self.device_id, msg.notice_id)
            await self.fail(self.persisted.state.job or job, FailureCode.INTERNAL_ERROR,
                            f"{type(e).__name__}: {e}")  # fmt: skip

    def decide(self, job: Job, notice: Notice) -> None:
        """Take a just-notified job to its first real state, and persist it.

        Decided at once, with no await in between, so the ``notified`` report and the next
        state reach the disk in one write: one flash write per notice rather than two.
        """
        if is_system(notice):
            if (problem := self.system.unsupported(notice)) is not None:
                self.finish(job, JobState.FAILED, FailureCode.PAYLOAD_INVALID, problem)
                return
            job = self.system.start(job, notice)
        elif notice.handler != self.handler.name:
            self.finish(
                job, JobState.FAILED, FailureCode.PAYLOAD_INVALID,
                f"notice wants handler {notice.handler!r}, device has {self.handler.name!r}",
            )  # fmt: skip
            return
        blocked = update_blocked(self.config, notice, self.clock())
        if blocked is not None and not self.config.policy.download_ahead:
            self.transition(job, JobState.DEFERRED, detail=blocked.reason)
        else:
            self.transition(job, JobState.DOWNLOADING)

    async def fail(self, job: Job, code: str, why: str) -> None:
        """Last resort after an unexpected error: roll back if anything may have changed."""
        notice = decode_message(job.notice)
        assert isinstance(notice, Notice)  # noqa: S101
        if job.state in (JobState.INSTALLING, JobState.INSTALLED, JobState.HEALTH_CHECK):
            await self.installer.rollback(job, notice, code, why)
        else:
            self.finish(job, JobState.FAILED, code, why)

    # --- the policy wait and the download ----------------------------------------------------

    async def wait_for_policy(self, job: Job, notice: Notice) -> None:
        """Return when the update policy allows installing (the one place that waits); a
        security update's own rules in ``device_client.jobs.security``."""
        said: tuple[str, float] | None = None
        said_at = self.clock()  # the caller reported the first deferral
        while True:
            # Cleared before the check, not after it: a wake() that comes while the check
            # runs (a metered-link command, a gate hook) must end the next sleep at once.
            self._wake.clear()
            if (blocked := await self._blocked(job, notice)) is None:
                return
            # An application's hold is said again when its end moves (a new hold), and every
            # DEFERRED_RESAY_S while it lasts: the orchestrator times out a device silent for
            # the rollout's device_timeout, and a hold or a window may be longer than that.
            now = (blocked.reason, blocked.until if blocked.hold else 0.0)
            if now != said or self.clock() - said_at >= DEFERRED_RESAY_S:
                if said is not None:
                    job = self.transition(self.persisted.state.job or job, JobState.DEFERRED,
                                          detail=blocked.reason, hold=blocked)  # fmt: skip
                    said_at = self.clock()
                said = now
            await self._sleep_until(min(blocked.until, said_at + DEFERRED_RESAY_S))

    async def _blocked(self, job: Job, notice: Notice) -> Blocked | None:
        if (blocked := update_blocked(self.config, notice, self.clock())) is not None:
            return blocked
        part, dest = self.files(job)
        # Downloaded: a metered link no longer matters, a hold now does.
        if dest.exists() or (is_system(notice) and await self.system.fetched(job, notice)):
            return await self.holds.blocked(notice)
        if self.deltas is None:
            return None
        return await self.deltas.metered_block(notice, part)

    def _pending_notice(self) -> Notice | None:
        job = self.persisted.state.job
        if job is None:
            return None
        notice = decode_message(job.notice)
        return notice if isinstance(notice, Notice) else None

    def keep_base(self, job: Job, notice: Notice) -> None:
        """The installed payload becomes the base of the next delta (docs/device.md)."""
        if self.deltas is not None:
            self.deltas.keep_base(self.files(job)[1], notice.payload.sha256)

    async def _sleep_until(self, until: float) -> None:
        timeout = max(0.05, min(until - self.clock(), MAX_WAIT_S))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout)

    async def _downloaded_ok(self, job: Job, notice: Notice) -> bool:
        if is_system(notice):
            return await self.system.fetched(job, notice)
        dest = self.files(job)[1]
        try:
            if dest.stat().st_size != notice.payload.size:
                return False
        except FileNotFoundError:
            return False
        if self._verified == job.notice_id:
            return True  # verified while downloading, by this very process
        digest = await asyncio.to_thread(hash_file, dest)
        return digest == notice.payload.sha256

    def progress_callback(self, job: Job) -> ProgressCallback:
        """Reports download progress of ``job`` at most every ``progress_interval``."""
        interval = self.config.download.progress_interval_s
        self._last_progress = time.monotonic()

        async def progress(done: int, total: int) -> None:
            now = time.monotonic()
            if now - self._last_progress >= interval and done < total:
                self._last_progress = now
                current = self.persisted.state.job or job
                report_progress = Progress(done=done, total=total)
                self.reporter.job(current, ReportState.DOWNLOADING, progress=report_progress)
                self.persisted.save()

        return progress

    async def download(self, job: Job, notice: Notice) -> None:
        """Fetch the payload to the job's file, verified (the one place that downloads)."""
        part, dest = self.files(job)
        deltas = self.deltas
        if deltas is not None and (metered := await deltas.metered_block(notice, part)):
            self.transition(job, JobState.DEFERRED, detail=metered.reason)
            return
        if is_system(notice):
            await self.system.download(job, notice)
            return
        progress = self.progress_callback(job)
        try:
            if deltas is not None:
                got = await deltas.fetch(notice, part, dest, progress)
            else:
                await self.fetcher.fetch(notice.payload, part, dest, progress)
                got = FetchOutcome(notice.payload.size, False, "")
        except ContentError as e:
            self.finish(job, JobState.FAILED, e.code, str(e))
            return
        except TransportError as e:
            self.finish(job, JobState.FAILED, FailureCode.DOWNLOAD_FAILED, str(e))
            return
        except UpdateError as e:
            self.finish(job, JobState.FAILED, e.failure, str(e))
            return
        if got.deferred is not None:  # a delta failed; a metered link holds the full one
            self.transition(job, JobState.DEFERRED, detail=got.detail)
            return
        self._verified = job.notice_id
        self.transition(job, JobState.DOWNLOADED, detail=got.detail, downloaded=got.downloaded)
