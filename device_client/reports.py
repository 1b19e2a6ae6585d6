"""Reports: each state change becomes a numbered ``Report`` in the outbox.

The outbox (``device_client.transport.outbox``) holds reports until the orchestrator
confirms them; a report is published only after the state write that holds it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Protocol

import msgspec

from device_client.jobs.policy import Blocked
from device_client.jobs.states import Job
from device_client.output_tail import fit_report
from device_client.persisted import Persisted
from device_client.transport.outbox import Kind
from fleetpush_protocol.components import ComponentState
from fleetpush_protocol.envelope import encode_message
from fleetpush_protocol.messages import ErrorInfo, Progress, Report, ReportState, StepOutput
from fleetpush_protocol.output import fit_outputs
from fleetpush_protocol.topics import Topics

__all__ = ["ReportHook", "Reporter"]

logger = logging.getLogger(__name__)

_OUTPUT_STATES = frozenset({ReportState.FAILED, ReportState.ROLLED_BACK})


class ReportHook(Protocol):
    def __call__(self, rollout_id: str, state: ReportState, error: ErrorInfo | None) -> None:
        """Told of each state report (not progress) as it is queued for the broker."""
        ...


class Reporter:
    """Queues the device's reports in the persisted outbox.

    Args:
        device_id: the device's id.
        topics: the topic layout (the device's own report topic).
        persisted: the state whose outbox and current version the reports carry.
        clock: Unix time in seconds.
        on_report: told of each state report; the simulator times devices with it.
        output_tail: bytes of a failing step's output a failure report carries (issue 18).
    """

    def __init__(
        self,
        device_id: str,
        topics: Topics,
        persisted: Persisted,
        clock: Callable[[], float],
        on_report: ReportHook | None = None,
        *,
        output_tail: int = 4096,
    ) -> None:
        self.device_id = device_id
        self.output_tail = output_tail
        self.own_topic = topics.report(device_id)
        self._persisted = persisted
        self._clock = clock
        self._on_report = on_report

    def reply_topic(self, template: str) -> str:
        """Where to report on a notice: always the device's own report topic.

        The broker's ACL lets a device publish reports on its own report topic only, so
        anything else would be lost: report there whatever the notice says.
        """
        if template.replace("{device_id}", self.device_id) != self.own_topic:
            logger.warning("%s: reply_topic %r ignored; reporting on %s",
                           self.device_id, template[:128], self.own_topic)  # fmt: skip
        return self.own_topic

    def report(
        self,
        notice_id: str,
        rollout_id: str,
        topic: str,
        state: ReportState,
        *,
        error: ErrorInfo | None = None,
        progress: Progress | None = None,
        detail: str = "",
        downloaded: int | None = None,
        hold: Blocked | None = None,
        components: tuple[ComponentState, ...] = (),
        output: Sequence[StepOutput] = (),
    ) -> None:
        """Queue one report; it leaves with the next state write (``hold``: an
        application's hold, its reason and end)."""
        st = self._persisted.state
        version = st.current_version
        at = int(self._clock())
        if detail:
            logger.info("%s: %s %s: %s", self.device_id, notice_id, state.value, detail)
        device_id = self.device_id
        budget = self.output_tail if state in _OUTPUT_STATES else 0

        def make(counter: int, budget: int) -> bytes:
            report = Report(
                device_id=device_id,
                notice_id=notice_id,
                rollout_id=rollout_id,
                state=state,
                current_version=version,
                counter=counter,
                reported_at=at,
                progress=progress,
                error=error,
                detail=detail[:1024] if detail else msgspec.UNSET,
                downloaded=msgspec.UNSET if downloaded is None else downloaded,
                hold_reason=msgspec.UNSET if hold is None else hold.reason[:512],
                hold_until=msgspec.UNSET if hold is None else int(hold.until),
                components=components or msgspec.UNSET,
                output=fit_outputs(output, budget) if output and budget else msgspec.UNSET,
            )
            return encode_message(report)

        def build(counter: int) -> bytes:
            return fit_report(lambda budget: make(counter, budget), budget)

        if progress is not None:
            kind = Kind.PROGRESS
        elif state.terminal and state is not ReportState.REJECTED:
            kind = Kind.OUTCOME
        else:
            kind = Kind.STATE
        st.outbox.append(topic, build, kind=kind)
        if self._on_report is not None and progress is None:
            self._on_report(rollout_id, state, error)

    def job(
        self,
        job: Job,
        state: ReportState,
        *,
        error: ErrorInfo | None = None,
        progress: Progress | None = None,
        detail: str = "",
        downloaded: int | None = None,
        hold: Blocked | None = None,
        output: Sequence[StepOutput] = (),
    ) -> None:
        """Queue a report about ``job`` on its reply topic."""
        self.report(
            job.notice_id, job.rollout_id, job.reply_topic, state,
            error=error, progress=progress, detail=detail, downloaded=downloaded, hold=hold,
            components=tuple(ComponentState(name=p.name, state=p.state) for p in job.parts),
            output=output,
        )  # fmt: skip
