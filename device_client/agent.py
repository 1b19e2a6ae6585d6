"""The device agent: trust, the job state machine, reports and the MQTT session together.

``DeviceAgent(config).run()`` serves one device until ``stop()``. Many agents can run in
one event loop (``asyncio.gather``) for simulations: each holds its own small state and
one MQTT connection, and opens an HTTP session only while downloading.

Crash safety (docs/device.md, "Crash safety"): the state file is written before each
transition, and on start the persisted job resumes where it was:

===============  ===========================================================
persisted state  on restart
===============  ===========================================================
notified         decide again (policy), then download; only an older agent leaves
                 this: the notice and the first decision are now one write
deferred         wait for the policy again
downloading      resume the download with Range from the partial file
downloaded       install (after the policy allows it)
installing       interrupted: roll back to the previous slot, report
                 ``rolled_back``/``interrupted``
installed        a reboot (or a crash) happened: run the health check
health_check     run the health check again; after ``max_interrupted`` runs that
                 never finished, roll back with ``interrupted``
===============  ===========================================================
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import shutil
import time
from pathlib import Path
from typing import Protocol

from device_client import __version__
from device_client.commands import run_command
from device_client.config import DeviceConfig
from device_client.errors import UpdateError
from device_client.handlers import Handler, InstallRequest, make_handler
from device_client.hooks import NotifyHook
from device_client.jobs.health import check_health
from device_client.jobs.security import update_blocked
from device_client.jobs.states import CANCELABLE, Job, JobState
from device_client.store import AgentState, StateStore
from device_client.support import SupportStatus
from device_client.transport.fetcher import Fetcher, hash_file
from device_client.transport.outbox import Kind
from device_client.transport.session import MqttSession, Publication
from fleetpush_common.atomic import make_private_dir
from fleetpush_common.tasks import cancel_and_wait
from fleetpush_protocol.driver import Accepted, DeviceTrust, Ignored, KeyringAccepted, Rejected
from fleetpush_protocol.envelope import decode_message, encode_message
from fleetpush_protocol.errors import ContentError, TransportError
from fleetpush_protocol.fields import NAME_RE
from fleetpush_protocol.messages import (
    Ack,
    CancelNotice,
    ErrorInfo,
    FailureCode,
    Inventory,
    Presence,
    Progress,
    Report,
    ReportState,
    UpdateNotice,
)
from fleetpush_protocol.verify import DeviceIdentity, TrustedKeyring, VerifyPolicy

__all__ = ["Clock", "DeviceAgent", "ReportHook"]

logger = logging.getLogger(__name__)

MAX_WAIT_S = 60.0  # seconds between policy re-checks while deferred (clocks can jump)
ACK_FLUSH_S = 1.0  # seconds: confirmed reports are dropped from disk at most this late
MAX_ACK_UNKNOWN_BYTES = 1024  # an ack is small: unknown fields beyond this are refused


class Clock(Protocol):
    def __call__(self) -> float:
        """Unix time in seconds."""
        ...


class ReportHook(Protocol):
    def __call__(self, rollout_id: str, state: ReportState, error: ErrorInfo | None) -> None:
        """Told of each state report (not progress) as it is queued for the broker."""
        ...


class DeviceAgent:
    """One device: verifies notices, runs updates, reports every step.

    Args:
        config: the validated configuration.
        clock: Unix time in seconds; injected so tests can move time.
        durable: fsync state writes (False only for simulations of many devices).
        on_report: called with each state report as it is queued; the simulator times
            devices with it, straight from the agent rather than through broker and database.
    """

    def __init__(
        self,
        config: DeviceConfig,
        *,
        clock: Clock = time.time,
        durable: bool = True,
        on_report: ReportHook | None = None,
    ) -> None:
        self.config = config
        self._on_report = on_report
        self.clock = clock
        self.device_id = config.device.id
        self.topics = config.broker.topics
        self.store = StateStore(config.device.state_dir, durable=durable, clock=clock)
        self.downloads = config.device.state_dir / "downloads"
        self.handler: Handler = make_handler(config.install)
        self.notify = NotifyHook(config)  # [security] notify_command, once per notice
        self.support = SupportStatus(config, durable=durable)  # {prefix}/support, verified
        self.fetcher = Fetcher(config.download, user_agent=f"fleetpush-device/{__version__}")
        self.state = AgentState()
        anchor = TrustedKeyring.anchor(config.trust.root_keys, config.trust.root_threshold)
        self._anchor = anchor
        self._verify_policy = VerifyPolicy(max_payload_bytes=config.download.max_payload_bytes)
        self.trust = DeviceTrust(trusted=anchor, policy=self._verify_policy)
        self._notice_topics = frozenset(
            [self.topics.device_notice(self.device_id)]
            + [self.topics.group_notice(g) for g in config.device.groups]
        )
        self._keyring_prefix = self.topics.keyring_filter[:-1]
        self._ack_topic = self.topics.ack(self.device_id)
        self._stop: asyncio.Event | None = None
        self._wake: asyncio.Event | None = None
        self._job_task: asyncio.Task[None] | None = None
        self._last_progress = 0.0
        self._ack_flush: asyncio.TimerHandle | None = None
        self._identity: DeviceIdentity | None = None
        self._verified: str = ""  # notice id whose payload this process verified
        self.session: MqttSession | None = None

    # --- lifecycle -------------------------------------------------------------------------

    async def run(self) -> None:
        """Serve until ``stop()``: connect, verify, update, report. Reconnects forever."""
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()
        self._load()
        self.session = MqttSession(
            self.config.broker,
            client_id=self.device_id,
            subscriptions=[
                self.topics.keyring_filter,
                self.topics.support,
                self._ack_topic,
                *sorted(self._notice_topics),
            ],
            will=Publication(self.topics.presence(self.device_id), self._presence(False), True),
            on_connect=self._on_connect,
            on_message=self._on_message,
            outbox=self.state.outbox,
            ack_timeout_s=self.config.broker.ack_timeout_s,
        )
        session_task = asyncio.create_task(self.session.run(), name=f"{self.device_id}.mqtt")
        self._kick()
        try:
            await self._stop.wait()
        finally:
            await self._cancel_job_task()
            await self._cancel_job_task()  # a notice handled while stopping may have kicked one
            if self._ack_flush is not None:
                self._save()
            if self.session.connected.is_set():
                offline = Publication(
                    self.topics.presence(self.device_id), self._presence(False), True
                )
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self.session.publish(offline), 5)
            await cancel_and_wait(session_task)
            # Acks arrive until the session ends; their flush timer must not outlive run():
            # fired later it would write this agent's stale state over the file a restarted
            # agent is using.
            if self._ack_flush is not None:
                self._save()

    def stop(self) -> None:
        """Ask ``run`` to return (safe from a signal handler)."""
        if self._stop is not None:
            self._stop.set()

    def wake(self) -> None:
        """Re-check the update policy now (tests call it after moving the clock)."""
        if self._wake is not None:
            self._wake.set()

    def _load(self) -> None:
        self.state = self.store.load()
        if self.state.trust:
            self.trust = DeviceTrust.from_state(self.state.trust, self._anchor, self._verify_policy)
        make_private_dir(self.downloads)
        keep = {self.state.job.notice_id} if self.state.job else set()
        for f in self.downloads.iterdir():
            if f.name.split(".", 1)[0] not in keep:
                f.unlink(missing_ok=True)

    def _save(self) -> None:
        if self._ack_flush is not None:
            self._ack_flush.cancel()
            self._ack_flush = None
        self.state.trust = self.trust.to_state()
        self.store.save(self.state)

    # --- identity, presence, inventory -----------------------------------------------------

    @property
    def identity(self) -> DeviceIdentity:
        """Who the device is for targeting; rebuilt only when its version changes."""
        ident = self._identity
        if ident is None or ident.current_version != self.state.current_version:
            c = self.config.device
            ident = DeviceIdentity(c.id, c.model, frozenset(c.groups), self.state.current_version)
            self._identity = ident
        return ident

    def _presence(self, online: bool) -> bytes:
        return encode_message(
            Presence(device_id=self.device_id, online=online, at=int(self.clock()))
        )

    def _inventory(self) -> bytes:
        c = self.config.device
        try:
            free = shutil.disk_usage(c.state_dir).free
        except OSError:
            free = 0
        installed = (self.state.installed,) if self.state.installed else ()
        inv = Inventory(
            device_id=c.id,
            model=c.model,
            groups=c.groups,
            client_version=__version__,
            installed=installed,
            free_bytes=free,
            at=int(self.clock()),
        )
        return encode_message(inv)

    def _on_connect(self) -> list[Publication]:
        return [
            Publication(self.topics.presence(self.device_id), self._presence(True), True),
            Publication(self.topics.inventory(self.device_id), self._inventory(), True),
        ]

    def _on_ack(self, payload: bytes) -> None:
        """The orchestrator stored these reports: they may leave the outbox."""
        try:
            ack = decode_message(payload, max_unknown_bytes=MAX_ACK_UNKNOWN_BYTES)
        except ContentError as e:
            logger.warning("%s: ignored a malformed ack: %s", self.device_id, e)
            return
        if not isinstance(ack, Ack) or ack.device_id != self.device_id:
            logger.warning("%s: ignored an ack that is not for this device", self.device_id)
            return
        # Persisting the removal can wait: if a crash comes first the report is sent again,
        # with the same counter, which the orchestrator ignores. Coalescing saves one fsync
        # per ack.
        if self.state.outbox.confirm(ack) and self._ack_flush is None:
            self._ack_flush = asyncio.get_running_loop().call_later(ACK_FLUSH_S, self._save)

    # --- incoming messages -----------------------------------------------------------------

    async def _on_message(self, topic: str, payload: bytes) -> None:
        if not payload:
            return  # a cleared retained message
        try:
            if topic == self._ack_topic:
                self._on_ack(payload)
            elif topic.startswith(self._keyring_prefix):
                await self._on_keyring(payload)
            elif topic in self._notice_topics:
                await self._on_notice(payload)
            elif topic == self.topics.support:
                self.support.on_message(payload, self.trust, int(self.clock()))
            else:
                logger.debug("%s: message on unexpected topic %s", self.device_id, topic)
        except Exception:
            logger.exception("%s: failed to handle a message on %s", self.device_id, topic)

    async def _on_keyring(self, data: bytes) -> None:
        outcomes = self.trust.on_keyring(data)
        accepted = False
        for o in outcomes:
            if isinstance(o, KeyringAccepted):
                accepted = True
                logger.info("%s: keyring version %d trusted", self.device_id, o.version)
            elif isinstance(o, Rejected):
                level = logging.DEBUG if o.error.code in ("rollback",) else logging.WARNING
                logger.log(level, "%s: keyring rejected: %s", self.device_id, o.error)
        if any(
            isinstance(o, KeyringAccepted) or (isinstance(o, Ignored) and "waits" in o.reason)
            for o in outcomes
        ):
            self._save()
        if accepted:
            self.support.retry(self.trust, int(self.clock()))
            for parked in self.trust.take_parked():
                await self._on_notice(parked)

    async def _on_notice(self, data: bytes) -> None:
        outcome = self.trust.on_notice(data, self.identity, int(self.clock()))
        if isinstance(outcome, Ignored):
            return
        if isinstance(outcome, Rejected):
            self._rejected(outcome, data)
            return
        assert isinstance(outcome, Accepted)  # noqa: S101 - on_notice returns no keyrings
        msg = outcome.verified.message
        if isinstance(msg, UpdateNotice):
            await self._accept_update(msg, data)
        else:
            await self._cancel(msg)

    def _rejected(self, outcome: Rejected, data: bytes) -> None:
        err = outcome.error
        logger.warning("%s: notice rejected (%s): %s", self.device_id, err.code, err)
        reported = self.state.remember_rejected(hashlib.sha256(data).digest())
        if reported:
            nid = outcome.notice_id if NAME_RE.fullmatch(outcome.notice_id) else "unknown"
            rid = outcome.rollout_id if NAME_RE.fullmatch(outcome.rollout_id) else "unknown"
            self._report(
                nid, rid, self.topics.report(self.device_id), ReportState.REJECTED,
                error=ErrorInfo(code=err.code, message=str(err)[:1024]),
            )  # fmt: skip
        if reported or outcome.authentic:  # authentic: sequences recorded for untargeted ones
            self._save()

    async def _accept_update(self, msg: UpdateNotice, data: bytes) -> None:
        job = self.state.job
        if job is not None and job.notice_id == msg.notice_id:
            self._save()
            return
        if job is not None and job.state in CANCELABLE:
            await self._cancel_job_task()
            self._finish(job, JobState.CANCELED, "", f"superseded by notice {msg.notice_id}")
            job = None
        if job is not None:
            # Too late to stop the running install: this one goes next (latest wins).
            self._drop_queued(f"superseded by notice {msg.notice_id}")
            self.state.queued = data
            self._save()
            return
        await self._begin(msg, data)
        self._kick()

    async def _begin(self, msg: UpdateNotice, data: bytes) -> None:
        """Start the job of a verified notice and take it to its first real state."""
        job = self._start_job(msg, data)
        try:
            self._decide(job, msg)
        except Exception as e:  # the job loop's last resort, for this step too
            logger.exception("%s: internal error starting %s", self.device_id, msg.notice_id)
            await self._fail(self.state.job or job, FailureCode.INTERNAL_ERROR,
                             f"{type(e).__name__}: {e}")  # fmt: skip

    def _start_job(self, msg: UpdateNotice, data: bytes) -> Job:
        job = Job(
            notice_id=msg.notice_id,
            rollout_id=msg.rollout_id,
            notice=data,
            state=JobState.NOTIFIED,
            reply_topic=self._reply_topic(msg.reply_topic),
            previous_version=self.state.current_version,
        )
        self.state.job = job
        self._report_job(job, ReportState.NOTIFIED)
        return job

    def _drop_queued(self, why: str) -> None:
        if not self.state.queued:
            return
        old = decode_message(self.state.queued)
        self.state.queued = b""
        if isinstance(old, UpdateNotice):
            self._report(
                old.notice_id, old.rollout_id, self._reply_topic(old.reply_topic),
                ReportState.CANCELED, detail=why,
            )  # fmt: skip

    async def _cancel(self, msg: CancelNotice) -> None:
        job = self.state.job
        queued = decode_message(self.state.queued) if self.state.queued else None
        if job is not None and job.rollout_id == msg.rollout_id and job.state in CANCELABLE:
            await self._cancel_job_task()
            self._finish(job, JobState.CANCELED, "", f"canceled by {msg.notice_id}")
            self._kick()
        elif isinstance(queued, UpdateNotice) and queued.rollout_id == msg.rollout_id:
            self._drop_queued(f"canceled by {msg.notice_id}")
        elif job is not None and job.rollout_id == msg.rollout_id:
            logger.info(
                "%s: cancel of %s arrived while %s: too late, ignored",
                self.device_id, msg.rollout_id, job.state.value,
            )  # fmt: skip
        self._save()

    def _reply_topic(self, template: str) -> str:
        # The broker's ACL lets a device publish reports on its own report topic only, so
        # anything else would be lost: report there whatever the notice says.
        own = self.topics.report(self.device_id)
        if template.replace("{device_id}", self.device_id) != own:
            logger.warning("%s: reply_topic %r ignored; reporting on %s",
                           self.device_id, template[:128], own)  # fmt: skip
        return own

    # --- reports ---------------------------------------------------------------------------

    def _report(
        self,
        notice_id: str,
        rollout_id: str,
        topic: str,
        state: ReportState,
        *,
        error: ErrorInfo | None = None,
        progress: Progress | None = None,
        detail: str = "",
    ) -> None:
        version = self.state.current_version
        at = int(self.clock())
        if detail:
            logger.info("%s: %s %s: %s", self.device_id, notice_id, state.value, detail)

        def build(counter: int) -> bytes:
            report = Report(
                device_id=self.device_id,
                notice_id=notice_id,
                rollout_id=rollout_id,
                state=state,
                current_version=version,
                counter=counter,
                reported_at=at,
                progress=progress,
                error=error,
            )
            return encode_message(report)

        if progress is not None:
            kind = Kind.PROGRESS
        elif state.terminal and state is not ReportState.REJECTED:
            kind = Kind.OUTCOME
        else:
            kind = Kind.STATE
        self.state.outbox.append(topic, build, kind=kind)
        if self._on_report is not None and progress is None:
            self._on_report(rollout_id, state, error)

    def _report_job(
        self,
        job: Job,
        state: ReportState,
        *,
        error: ErrorInfo | None = None,
        progress: Progress | None = None,
        detail: str = "",
    ) -> None:
        self._report(
            job.notice_id, job.rollout_id, job.reply_topic, state,
            error=error, progress=progress, detail=detail,
        )  # fmt: skip

    # --- the state machine -----------------------------------------------------------------

    def _transition(self, job: Job, state: JobState, *, detail: str = "", **changes: object) -> Job:
        """Persist ``job`` in ``state`` together with its report, then return it."""
        job = job.advance(state, **changes)
        logger.debug("%s: %s -> %s", self.device_id, job.notice_id, state.value)
        self.state.job = job
        if (rs := state.report_state) is not None:
            self._report_job(job, rs, detail=detail)
        self._save()
        return job

    def _finish(self, job: Job, state: JobState, code: str, message: str) -> None:
        code = str(code)
        job = job.advance(state, error_code=code, error_message=message[:1024])
        error = ErrorInfo(code=code, message=message[:1024]) if code else None
        self._report_job(job, ReportState(state.value), error=error,
                         detail="" if code else message)  # fmt: skip
        self.state.job = None
        self.state.last_job = job
        self._save()
        for f in self._files(job):
            f.unlink(missing_ok=True)
        logger.info("%s: %s %s %s", self.device_id, job.notice_id, state.value, code)

    def _files(self, job: Job) -> tuple[Path, Path]:
        return (
            self.downloads / f"{job.notice_id}.part",
            self.downloads / f"{job.notice_id}.payload",
        )

    def _kick(self) -> None:
        if self._stop is not None and self._stop.is_set():
            return  # stopping: the persisted job resumes at the next start
        if self._job_task is None or self._job_task.done():
            self._job_task = asyncio.create_task(self._run_jobs(), name=f"{self.device_id}.job")

    async def _cancel_job_task(self) -> None:
        task, self._job_task = self._job_task, None
        await cancel_and_wait(task)

    async def _run_jobs(self) -> None:
        while True:
            job = self.state.job
            if job is None:
                if not self.state.queued:
                    return
                data, self.state.queued = self.state.queued, b""
                msg = decode_message(data)
                assert isinstance(msg, UpdateNotice)  # noqa: S101
                await self._begin(msg, data)
                continue
            try:
                await self._step(job)
            except Exception as e:
                logger.exception("%s: internal error in %s", self.device_id, job.state.value)
                current = self.state.job or job
                await self._fail(current, FailureCode.INTERNAL_ERROR, f"{type(e).__name__}: {e}")

    async def _step(self, job: Job) -> None:
        """Run the persisted ``job`` one state further."""
        s = job.state
        notice = decode_message(job.notice)
        assert isinstance(notice, UpdateNotice)  # noqa: S101 - only verified notices are stored
        if s in (JobState.DEFERRED, JobState.DOWNLOADING, JobState.DOWNLOADED):
            await self.notify.announce(notice)  # before it installs; once per notice
        if s is JobState.NOTIFIED:  # persisted by an agent older than _decide
            self._decide(job, notice)
        elif s is JobState.DEFERRED:
            await self._wait_for_policy(job, notice)
            job = self.state.job or job
            if await self._downloaded(job, notice):
                await self._install(job, notice)
            else:
                self._transition(job, JobState.DOWNLOADING)
        elif s is JobState.DOWNLOADING:
            await self._download(job, notice)
        elif s is JobState.DOWNLOADED:
            blocked = update_blocked(self.config, notice, self.clock())
            if blocked is not None:
                self._transition(job, JobState.DEFERRED, detail=blocked.reason)
            elif await self._downloaded(job, notice):
                await self._install(job, notice)
            else:
                self._transition(job, JobState.DOWNLOADING)
        elif s is JobState.INSTALLING:
            # Only a restart finds a job here: the install was interrupted.
            await self._rollback(job, notice, FailureCode.INTERRUPTED, "install was interrupted")
        elif s is JobState.INSTALLED:
            await self._health(job, notice)
        elif s is JobState.HEALTH_CHECK:
            if job.health_attempts >= self.config.health.max_interrupted:
                await self._rollback(
                    job, notice, FailureCode.INTERRUPTED,
                    f"health check interrupted {job.health_attempts} times",
                )  # fmt: skip
            else:
                await self._health(job, notice)

    def _decide(self, job: Job, notice: UpdateNotice) -> None:
        """Take a just-notified job to its first real state, and persist it.

        Decided at once, with no await in between, so the ``notified`` report and the next
        state reach the disk in one write: one flash write per notice rather than two.
        """
        if notice.handler != self.handler.name:
            self._finish(
                job, JobState.FAILED, FailureCode.PAYLOAD_INVALID,
                f"notice wants handler {notice.handler!r}, device has {self.handler.name!r}",
            )  # fmt: skip
            return
        blocked = update_blocked(self.config, notice, self.clock())
        if blocked is not None and not self.config.policy.download_ahead:
            self._transition(job, JobState.DEFERRED, detail=blocked.reason)
        else:
            self._transition(job, JobState.DOWNLOADING)

    async def _wait_for_policy(self, job: Job, notice: UpdateNotice) -> None:
        reason = ""
        while (blocked := update_blocked(self.config, notice, self.clock())) is not None:
            if blocked.reason != reason:
                if reason:  # the reason changed (hold over, now a window): say so
                    job = self._transition(self.state.job or job, JobState.DEFERRED,
                                           detail=blocked.reason)  # fmt: skip
                reason = blocked.reason
            await self._sleep_until(blocked.until)

    async def _sleep_until(self, until: float) -> None:
        assert self._wake is not None  # noqa: S101
        timeout = max(0.05, min(until - self.clock(), MAX_WAIT_S))
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout)

    async def _downloaded(self, job: Job, notice: UpdateNotice) -> bool:
        dest = self._files(job)[1]
        try:
            if dest.stat().st_size != notice.payload.size:
                return False
        except FileNotFoundError:
            return False
        if self._verified == job.notice_id:
            return True  # verified while downloading, by this very process
        digest = await asyncio.to_thread(hash_file, dest)
        return digest == notice.payload.sha256

    async def _download(self, job: Job, notice: UpdateNotice) -> None:
        part, dest = self._files(job)
        interval = self.config.download.progress_interval_s
        self._last_progress = time.monotonic()

        async def progress(done: int, total: int) -> None:
            now = time.monotonic()
            if now - self._last_progress >= interval and done < total:
                self._last_progress = now
                current = self.state.job or job
                report_progress = Progress(done=done, total=total)
                self._report_job(current, ReportState.DOWNLOADING, progress=report_progress)
                self._save()

        try:
            await self.fetcher.fetch(notice.payload, part, dest, progress)
        except ContentError as e:
            self._finish(job, JobState.FAILED, e.code, str(e))
            return
        except TransportError as e:
            self._finish(job, JobState.FAILED, FailureCode.DOWNLOAD_FAILED, str(e))
            return
        except UpdateError as e:
            self._finish(job, JobState.FAILED, e.failure, str(e))
            return
        self._verified = job.notice_id
        self._transition(job, JobState.DOWNLOADED)

    def _request(self, job: Job, notice: UpdateNotice) -> InstallRequest:
        return InstallRequest(
            payload=self._files(job)[1],
            version=notice.release.version,
            slot=job.new_slot,
            previous_slot=job.previous_slot,
            previous_version=job.previous_version,
            env={
                "FLEETPUSH_DEVICE_ID": self.device_id,
                "FLEETPUSH_NOTICE_ID": job.notice_id,
                "FLEETPUSH_RELEASE": notice.release.name,
                "FLEETPUSH_VERSION": notice.release.version,
                "FLEETPUSH_PREVIOUS_VERSION": job.previous_version,
                "FLEETPUSH_SLOT": str(self.config.install.slots_dir / job.new_slot)
                if job.new_slot and self.config.install.slots_dir
                else "",
            },
        )

    async def _install(self, job: Job, notice: UpdateNotice) -> None:
        slot = f"slot-{job.notice_id}" if self.handler.name == "directory" else None
        job = self._transition(
            job, JobState.INSTALLING, previous_slot=self.handler.current_slot(), new_slot=slot
        )
        request = self._request(job, notice)
        try:
            outcome = await self.handler.install(request)
        except UpdateError as e:
            if e.changed:
                await self._rollback(job, notice, e.failure, str(e))
            else:
                self._finish(job, JobState.FAILED, e.failure, str(e))
            return
        job = self._transition(job, JobState.INSTALLED, reboot_pending=outcome.reboot)
        if outcome.reboot:
            await self._reboot(job)
            return
        await self._health(job, notice)

    async def _reboot(self, job: Job) -> None:
        argv = self.config.install.reboot
        if argv:
            logger.warning("%s: rebooting to finish %s", self.device_id, job.notice_id)
            result = await run_command(argv, timeout_s=60, env={})
            if result.returncode not in (0, None):
                logger.error("%s: reboot command %s", self.device_id, result.describe())
        else:
            logger.warning(
                "%s: %s needs a reboot; waiting for the device to restart",
                self.device_id, job.notice_id,
            )  # fmt: skip
        # Stay here: the next start of the agent runs the health check (state `installed`).
        await asyncio.Event().wait()

    async def _health(self, job: Job, notice: UpdateNotice) -> None:
        job = self._transition(
            job, JobState.HEALTH_CHECK, health_attempts=job.health_attempts + 1,
            reboot_pending=False,
        )  # fmt: skip
        request = self._request(job, notice)
        try:
            await check_health(
                self.config.health, request.env, request.values(request.env["FLEETPUSH_SLOT"])
            )
        except UpdateError as e:
            await self._rollback(job, notice, e.failure, str(e))
            return
        try:
            await self.handler.commit(request)
        except OSError as e:  # cleanup only: the release is installed and healthy
            logger.warning("%s: cleanup after install failed: %s", self.device_id, e)
        self.state.installed = notice.release  # persisted by _finish's write
        self._finish(job, JobState.SUCCEEDED, "", "")
        if self.session is not None:
            inv = Publication(self.topics.inventory(self.device_id), self._inventory(), True)
            await self.session.publish(inv)

    async def _rollback(self, job: Job, notice: UpdateNotice, code: str, why: str) -> None:
        if not self.handler.can_rollback:
            self._finish(job, JobState.FAILED, code, f"{why}; no rollback configured")
            return
        try:
            await self.handler.rollback(self._request(job, notice))
        except UpdateError as e:
            self._finish(job, JobState.FAILED, FailureCode.ROLLBACK_FAILED, f"{why}; {e}")
            return
        self._finish(job, JobState.ROLLED_BACK, code, why)

    async def _fail(self, job: Job, code: str, why: str) -> None:
        """Last resort after an unexpected error: roll back if anything may have changed."""
        notice = decode_message(job.notice)
        assert isinstance(notice, UpdateNotice)  # noqa: S101
        if job.state in (JobState.INSTALLING, JobState.INSTALLED, JobState.HEALTH_CHECK):
            await self._rollback(job, notice, code, why)
        else:
            self._finish(job, JobState.FAILED, code, why)
