"""Incoming messages: acks, keyrings and notices, through the trust driver, in order.

The MQTT session hands each message to ``MessageRouter.submit``, which returns at once: acks
are handled there (a dictionary update), keyrings and notices wait in one ordered lane that
a worker task drains. So the receive loop never waits for a job to be canceled or a state
file to be written, and notices and keyrings are still handled one at a time in the order
they arrived (a notice parked for a newer keyring, and tests that publish a later notice as
a barrier for an earlier one, rely on that order). The lane is bounded: when it is full the
receive loop waits, rather than the agent dropping a message the broker already delivered.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable

from device_client.config import DeviceConfig
from device_client.jobs.runner import JobRunner
from device_client.jobs.states import CANCELABLE, JobState
from device_client.persisted import Persisted
from device_client.reports import Reporter
from device_client.support import SupportStatus
from fleetpush_protocol.driver import Accepted, Ignored, KeyringAccepted, Rejected
from fleetpush_protocol.envelope import decode_message
from fleetpush_protocol.errors import ContentError
from fleetpush_protocol.fields import NAME_RE
from fleetpush_protocol.messages import Ack, CancelNotice, ErrorInfo, ReportState, UpdateNotice
from fleetpush_protocol.verify import DeviceIdentity

__all__ = ["LANE_SIZE", "MAX_ACK_UNKNOWN_BYTES", "MessageRouter"]

logger = logging.getLogger(__name__)

MAX_ACK_UNKNOWN_BYTES = 1024  # an ack is small: unknown fields beyond this are refused
LANE_SIZE = 256  # keyrings and notices waiting to be handled before the receive loop waits

_Handle = Callable[[bytes], Awaitable[None]]


class MessageRouter:
    """Routes each message by topic and applies what the trust driver accepts.

    Args:
        config: the device configuration (identity, topics).
        persisted: the state and trust driver.
        reporter: queues rejection and cancel reports.
        runner: the job runner notices start, queue behind, or cancel.
        clock: Unix time in seconds (notice expiry).
    """

    def __init__(
        self,
        config: DeviceConfig,
        persisted: Persisted,
        reporter: Reporter,
        runner: JobRunner,
        clock: Callable[[], float],
    ) -> None:
        self.config = config
        self.device_id = config.device.id
        topics = config.broker.topics
        self.notice_topics = frozenset(
            [topics.device_notice(self.device_id)]
            + [topics.group_notice(g) for g in config.device.groups]
        )
        self.keyring_filter = topics.keyring_filter
        self.keyring_latest = topics.keyring_latest
        self._keyring_prefix = topics.keyring_filter[:-1]
        self.ack_topic = topics.ack(self.device_id)
        self.support_topic = topics.support
        self.support = SupportStatus(config)  # the support periods, verified (issue 17)
        self._persisted = persisted
        self._reporter = reporter
        self._runner = runner
        self._clock = clock
        self._identity: DeviceIdentity | None = None
        self._lane: asyncio.Queue[tuple[_Handle, str, bytes]] = asyncio.Queue(LANE_SIZE)

    @property
    def subscriptions(self) -> list[str]:
        """Every topic filter the device listens on."""
        # keyring/latest too, though keyring/+ covers it: a broker that sends retained
        # messages to exact subscriptions only (RabbitMQ 3.10) sends it there.
        return [self.keyring_filter, self.keyring_latest, self.support_topic, self.ack_topic,
                *sorted(self.notice_topics)]  # fmt: skip

    @property
    def identity(self) -> DeviceIdentity:
        """Who the device is for targeting; rebuilt only when its version changes."""
        ident = self._identity
        version = self._persisted.state.current_version
        if ident is None or ident.current_version != version:
            c = self.config.device
            ident = DeviceIdentity(c.id, c.model, frozenset(c.groups), version)
            self._identity = ident
        return ident

    # --- the lane --------------------------------------------------------------------------

    async def submit(self, topic: str, payload: bytes) -> None:
        """Take one message from the session; waits only while the lane is full."""
        if not payload:
            return  # a cleared retained message
        if topic == self.ack_topic:
            try:
                self._on_ack(payload)
            except Exception:
                logger.exception("%s: failed to handle an ack", self.device_id)
        elif topic.startswith(self._keyring_prefix):
            await self._lane.put((self._on_keyring, topic, payload))
        elif topic in self.notice_topics:
            await self._lane.put((self._on_notice, topic, payload))
        elif topic == self.support_topic:
            await self._lane.put((self._on_support, topic, payload))
        else:
            logger.debug("%s: message on unexpected topic %s", self.device_id, topic)

    async def run(self) -> None:
        """Handle the lane's messages one at a time, in order, until cancelled."""
        while True:
            handle, topic, payload = await self._lane.get()
            try:
                await handle(payload)
            except Exception:
                logger.exception("%s: failed to handle a message on %s", self.device_id, topic)
            finally:
                self._lane.task_done()

    async def drained(self) -> None:
        """Return once every message submitted so far has been handled (tests)."""
        await self._lane.join()

    # --- acks, keyrings, notices -------------------------------------------------------------

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
        if self._persisted.state.outbox.confirm(ack):
            self._persisted.save_soon()

    async def _on_keyring(self, data: bytes) -> None:
        trust = self._persisted.trust
        outcomes = trust.on_keyring(data)
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
            self._persisted.save()
        if accepted:
            self.support.retry(trust, int(self._clock()))
            for parked in trust.take_parked():
                await self._on_notice(parked)

    async def _on_support(self, data: bytes) -> None:
        self.support.on_message(data, self._persisted.trust, int(self._clock()))

    async def _on_notice(self, data: bytes) -> None:
        outcome = self._persisted.trust.on_notice(data, self.identity, int(self._clock()))
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
        reported = self._persisted.state.remember_rejected(hashlib.sha256(data).digest())
        if reported:
            nid = outcome.notice_id if NAME_RE.fullmatch(outcome.notice_id) else "unknown"
            rid = outcome.rollout_id if NAME_RE.fullmatch(outcome.rollout_id) else "unknown"
            self._reporter.report(
                nid, rid, self._reporter.own_topic, ReportState.REJECTED,
                error=ErrorInfo(code=err.code, message=str(err)[:1024]),
            )  # fmt: skip
        if reported or outcome.authentic:  # authentic: sequences recorded for untargeted ones
            self._persisted.save()

    async def _accept_update(self, msg: UpdateNotice, data: bytes) -> None:
        st = self._persisted.state
        job = st.job
        if job is not None and job.notice_id == msg.notice_id:
            self._persisted.save()
            return
        if job is not None and job.state in CANCELABLE:
            await self._runner.cancel()
            self._runner.finish(job, JobState.CANCELED, "",
                                f"superseded by notice {msg.notice_id}")  # fmt: skip
            job = None
        if job is not None:
            # Too late to stop the running install: this one goes next (latest wins).
            self._drop_queued(f"superseded by notice {msg.notice_id}")
            st.queued = data
            self._persisted.save()
            return
        await self._runner.begin(msg, data)
        self._runner.kick()

    def _drop_queued(self, why: str) -> None:
        st = self._persisted.state
        if not st.queued:
            return
        old = decode_message(st.queued)
        st.queued = b""
        if isinstance(old, UpdateNotice):
            self._reporter.report(
                old.notice_id, old.rollout_id, self._reporter.reply_topic(old.reply_topic),
                ReportState.CANCELED, detail=why,
            )  # fmt: skip

    async def _cancel(self, msg: CancelNotice) -> None:
        st = self._persisted.state
        job = st.job
        queued = decode_message(st.queued) if st.queued else None
        if job is not None and job.rollout_id == msg.rollout_id and job.state in CANCELABLE:
            await self._runner.cancel()
            self._runner.finish(job, JobState.CANCELED, "", f"canceled by {msg.notice_id}")
            self._runner.kick()
        elif isinstance(queued, UpdateNotice) and queued.rollout_id == msg.rollout_id:
            self._drop_queued(f"canceled by {msg.notice_id}")
        elif job is not None and job.rollout_id == msg.rollout_id:
            logger.info(
                "%s: cancel of %s arrived while %s: too late, ignored",
                self.device_id, msg.rollout_id, job.state.value,
            )  # fmt: skip
        self._persisted.save()
