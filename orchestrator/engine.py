"""The rollout engine: one pass per tick over every active rollout.

Each pass, per rollout: start it when its time comes; for a continuous rollout, take in
devices that have come to match its target; time out silent devices; pause or abort on
the failure threshold; advance a phase once its success gate held for the soak time;
then, inside a maintenance window, notify the next devices of the open phases at the
rollout's rate. Everything it decides is written to the database before it acts, so
a restarted orchestrator continues where it stopped.

Several replicas may run an engine on one database: each pass first claims the lease of
every active rollout that is free, expired or its own (``orchestrator.store.sql.leases``)
and steps only those. State changes are compare-and-set on the state and phase it read,
notices are stored under the lease, so a replica that stalled past its lease writes
nothing (docs/scaling.md). The rate limiter lives with the lease holder: a replica taking
over starts a fresh bucket (one tick's burst at most).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence

from fleetpush_common.clock import Clock
from fleetpush_common.windows import in_windows
from orchestrator.approval import follow
from orchestrator.engine_notices import (
    MAX_NOTICES_PER_PASS,
    REFRESH_EVERY_S,
    NoticeSending,
    Publisher,
)
from orchestrator.notices import NoticeFactory
from orchestrator.rollouts import TargetSpec, selector
from orchestrator.rules import (
    ACTIVE_ROLLOUT_STATES,
    AWAITING_APPROVAL,
    PhaseCounts,
    RateLimiter,
    failure_tripped,
    gate_met,
    rate_per_minute,
)
from orchestrator.security.keystore import SigningSet
from orchestrator.store import (
    ConflictError,
    Database,
    LeaseLostError,
    RolloutRecord,
    Store,
)

__all__ = ["Publisher", "RolloutEngine"]

logger = logging.getLogger(__name__)

REPUBLISH_EVERY_S = 30.0  # seconds between retries of unacknowledged notices
_MOVING = ("running", "paused")  # started: a continuous one takes in new devices


def _totals(counts: dict[int, PhaseCounts]) -> PhaseCounts:
    total = PhaseCounts()
    for c in counts.values():
        for name in ("total", "pending", "waiting", "in_flight", "succeeded", "failed",
                     "canceled"):  # fmt: skip
            setattr(total, name, getattr(total, name) + getattr(c, name))
    return total


class RolloutEngine(NoticeSending):
    """Drives rollouts from the database.

    Args:
        db: the database.
        notices: builds and signs notices.
        publisher: the MQTT link.
        signing: returns the signing set valid at a time (raises if there is none).
        clock: the injected clock.
        tick_s: seconds between passes.
        follow_every_s: seconds between two target checks of a continuous rollout (each
            reads the device registry).
        refresh_registry: brings the provisioned groups and models up to date before such
            a check (``RegistrySync.refresh``).
        holder: this replica's id, the holder name of its rollout leases.
        lease_s: seconds a claimed rollout stays this replica's without a renewal; another
            replica takes over a dead one's rollouts after it.
    """

    def __init__(
        self,
        db: Database,
        *,
        notices: NoticeFactory,
        publisher: Publisher,
        signing: Callable[[float], SigningSet],
        clock: Clock,
        tick_s: float = 1.0,
        follow_every_s: float = 30.0,
        refresh_registry: Callable[[], Awaitable[object]] | None = None,
        holder: str = "engine",
        lease_s: float = 15.0,
        broker_expires: bool = True,
    ) -> None:
        self.db = db
        self.broker_expires = broker_expires  # False in MQTT 3.1.1: no message expiry
        self.holder = holder
        self.lease_s = lease_s
        self.held: set[int] = set()  # rollouts whose lease this replica holds now
        self.refresh_registry = refresh_registry
        self.follow_every_s = follow_every_s
        self.notices = notices
        self.publisher = publisher
        self.signing = signing
        self.clock = clock
        self.tick_s = tick_s
        self._limiters: dict[int, RateLimiter] = {}
        self._last_follow = -1e18
        self._refreshed: dict[int, float] = {}  # rollout id -> when it last looked
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._last_republish = -1e18
        self._resend_sent = False  # the broker (re)connected: its retained notices may be gone

    # --- loop ----------------------------------------------------------------------------

    def wake(self) -> None:
        """Run the next pass now (thread-safe only via ``loop.call_soon_threadsafe``)."""
        self._wake.set()

    def broker_connected(self) -> None:
        """The link (re)connected: next pass, publish again every notice no device answered.

        A PUBACK is not a save: a broker killed before its next autosave comes back without
        notices it acknowledged, and a device that had not taken its notice would wait until
        the device timeout. Devices ignore a notice they already have.
        """
        self._resend_sent = True
        self._wake.set()

    async def run(self) -> None:
        """Pass after pass until cancelled; a failing pass is logged, never fatal."""
        while True:
            # Cleared before the pass: a wake() during it (a report, an operator's action)
            # then starts the next pass at once instead of being lost for tick_s.
            self._wake.clear()
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("rollout engine pass failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.tick_s)

    async def tick(self) -> None:
        """One pass over every active rollout."""
        async with self._lock:
            now = self.clock.now()
            if now - self._last_republish >= REPUBLISH_EVERY_S:
                self._last_republish = now
                await self.republish(now)
            if self._resend_sent:
                self._resend_sent = False
                await self.resend_sent(now)
            active = await self.db.run(lambda s: s.list_rollouts(ACTIVE_ROLLOUT_STATES))
            rollouts = await self._claim(active, now)
            if now - self._last_follow >= self.follow_every_s:
                self._last_follow = now
                # All together, newest first: a device that matches several continuous
                # rollouts joins the newest only (each leaves out devices another active
                # rollout targets).
                following = [r for r in rollouts if r.spec.continuous and r.state in _MOVING]
                if following:
                    if self.refresh_registry is not None:
                        await self.refresh_registry()
                    for r in sorted(following, key=lambda r: r.id, reverse=True):
                        try:
                            await self._follow(r, now)
                        except (ConflictError, LeaseLostError) as e:
                            logger.info("rollout %d: follow given up (%s)", r.id, e)
            for r in rollouts:
                try:
                    await self._step(r, now)
                except (ConflictError, LeaseLostError) as e:
                    # Another replica or an operator moved it: the next pass reads it anew.
                    logger.info("rollout %d: step given up (%s)", r.id, e)

    async def _claim(self, active: Sequence[RolloutRecord], now: float) -> list[RolloutRecord]:
        """Take or renew the leases of ``active``; return the rollouts this replica holds."""
        ids = [r.id for r in active]
        until = now + self.lease_s
        got = set(await self.db.run(lambda s: s.claim_rollouts(self.holder, ids, now, until)))
        for rid in sorted(got - self.held):
            logger.info("rollout %d: this replica (%s) drives it now", rid, self.holder)
        for rid in sorted(self.held - got):
            self._limiters.pop(rid, None)
            if rid in ids:
                logger.info("rollout %d: driven by another replica now", rid)
        self.held = got
        return [r for r in active if r.id in got]

    async def release(self) -> None:
        """Give up every lease (at a clean stop), so other replicas take over at once."""
        await self.db.run(lambda s: s.release_rollouts(self.holder))
        self.held = set()

    # --- one rollout ---------------------------------------------------------------------

    async def _update(self, r: RolloutRecord, now: float, **fields: object) -> RolloutRecord:
        """Compare-and-set from the state and phase ``r`` has (``ConflictError`` when they
        changed since it was read)."""
        expect = (r.state, r.phase)
        return await self.db.run(lambda s: s.update_rollout(r.id, now, expect=expect, **fields))

    async def _audit(self, r: RolloutRecord, now: float, action: str, reason: str) -> None:
        await self.db.run(
            lambda s: s.add_audit(
                at=now, actor="engine", action=action, subject=f"rollout/{r.id}",
                detail={"reason": reason},
            )
        )  # fmt: skip

    async def _step(self, r: RolloutRecord, now: float) -> None:
        spec = r.spec
        if r.state == AWAITING_APPROVAL:  # nothing moves until someone approves it
            return
        if r.state == "scheduled":
            if spec.start_at is not None and now < spec.start_at:
                return
            # A security rollout takes its devices from feature rollouts when it starts,
            # not when it is created or approved for a later time: in this transaction.
            fields = {"state": "running", "phase_started_at": now}
            r, _ = await self.start_rollout(r, now, fields, actor="engine")
            await self._audit(r, now, "rollout.start", "scheduled start reached")
        timed_out = await self.db.run(
            lambda s: s.time_out_targets(r.id, now - spec.device_timeout_s, now)
        )
        if timed_out:
            logger.info("rollout %d: %d device(s) timed out", r.id, timed_out)
        counts = await self.db.run(lambda s: s.phase_counts(r.id))
        total = _totals(counts)
        failures = total.failed - r.failure_base
        attempts = total.failed + total.succeeded - r.attempt_base
        if r.state == "running" and failure_tripped(failures, attempts, spec):
            reason = (
                f"failure threshold: {failures} of {attempts} finished devices failed "
                f"(> {spec.failure_pct:g}%)"
            )
            if spec.on_failure == "abort":
                await self.cancel(r, now, state="aborted", reason=reason)
            else:
                await self._update(r, now, state="paused", reason=reason)
            await self._audit(r, now, f"rollout.{spec.on_failure}", reason)
            logger.warning("rollout %d: %s", r.id, reason)
            return
        if now - self._refreshed.get(r.id, float("-inf")) >= REFRESH_EVERY_S:
            self._refreshed[r.id] = now
            await self._refresh(r, now)
        if r.state != "running":
            return
        r = await self._gate(r, counts, total, now)
        if r.state != "running":
            return
        if in_windows(spec.windows, now):
            await self._notify(r, now, total.succeeded)

    async def _gate(
        self, r: RolloutRecord, counts: dict[int, PhaseCounts], total: PhaseCounts, now: float
    ) -> RolloutRecord:
        spec = r.spec
        # A phase is judged with the ones before it (cumulative %).
        phase_counts = _totals({p: c for p, c in counts.items() if p <= r.phase})
        last = r.phase + 1 >= len(spec.phases)
        if not gate_met(phase_counts, spec.success_pct):
            if r.gate_met_at is not None:
                r = await self._update(r, now, gate_met_at=None)
            if phase_counts.done and phase_counts.total:
                reason = (
                    f"phase {r.phase + 1} finished below its success gate "
                    f"({phase_counts.succeeded}/{phase_counts.reachable} < "
                    f"{spec.success_pct:g}%)"
                )
                r = await self._update(r, now, state="paused", reason=reason)
                await self._audit(r, now, "rollout.pause", reason)
            return r
        if r.gate_met_at is None:
            r = await self._update(r, now, gate_met_at=now)
        assert r.gate_met_at is not None  # noqa: S101 - set just above
        if now - r.gate_met_at < spec.soak_s:
            return r
        if not last:
            r = await self._update(
                r, now, phase=r.phase + 1, phase_started_at=now, gate_met_at=None, reason=""
            )
            logger.info("rollout %d: phase %d opened", r.id, r.phase + 1)
            await self._audit(r, now, "rollout.advance", f"phase {r.phase + 1} opened")
        elif total.done and not spec.continuous:
            r = await self._update(r, now, state="completed", reason="")
            await self._audit(r, now, "rollout.complete", "every device finished")
        return r

    async def _follow(self, r: RolloutRecord, now: float) -> None:
        """Add the devices that match a continuous rollout's target now but are not in it
        (registered since, or moved into a targeted group), to its last phase. Devices
        already running the release, or targeted by an active rollout (one followed just
        before included), are left out. The database resolves the target: the fleet is
        never read into memory."""
        if r.approval == "approved" and r.state != "running":
            return  # joining would ask for a new approval: once it runs again
        release = await self.db.run(lambda s: s.get_release(r.release_id))
        sel = selector(TargetSpec.from_json(r.target), release)
        last_phase = len(r.spec.phases) - 1
        added = await self.db.run(
            lambda s: s.atomic(
                lambda s: follow(s, r, sel, release.version, phase=last_phase, now=now)
            )
        )
        if not added:
            return
        logger.info("rollout %d: %d device(s) joined its target", r.id, added)
        reason = f"{added} device(s) joined the target"
        if r.approval == "approved":
            reason += "; it waits for a new approval"
        await self._audit(r, now, "rollout.follow", reason)

    async def _notify(self, r: RolloutRecord, now: float, succeeded: int) -> None:
        candidates = await self.db.run(
            lambda s: s.pending_targets(r.id, r.phase, MAX_NOTICES_PER_PASS)
        )
        if not candidates:
            return
        limiter = self._limiters.setdefault(r.id, RateLimiter(burst_s=max(1.0, 2 * self.tick_s)))
        online = [d for d, up in candidates if up]
        offline = [d for d, up in candidates if not up]
        granted = limiter.take(rate_per_minute(r.spec, succeeded), now, len(online))
        # Offline devices cost no budget: their retained notice waits for them.
        chosen = online[:granted] + offline
        if not chosen:
            return
        await self.send_updates(r, chosen, set(online[:granted]), now)

    async def cancel(self, r: RolloutRecord, now: float, *, state: str, reason: str) -> int:
        """Cancel the rollout: pending devices are dropped, notified ones get a cancel."""
        # The state first, compare-and-set: a lease holder elsewhere stops notifying (its
        # notices are fenced on the state), and what it did notify is canceled below.
        await self._update(r, now, state=state, reason=reason)
        devices = await self.db.run(lambda s: s.cancel_targets(r.id, now, reason))
        return await self.send_cancels(r.id, devices, now)

    async def send_cancels(self, rollout_id: int, devices: Sequence[str], now: float) -> int:
        """Sign, store and publish a cancel of ``rollout_id`` for each of ``devices`` (under
        ``lock``); returns how many were sent."""
        if not devices:
            return 0
        records = await self._sign(
            devices, now,
            lambda signing, seqs: self.notices.cancels(
                signing, rollout_id=rollout_id, device_ids=devices, seqs=seqs, now=int(now)
            ),
        )  # fmt: skip
        await self.db.run(lambda s: s.save_notices(records, {}))
        await self._publish(records, now)
        return len(records)

    @property
    def lock(self) -> asyncio.Lock:
        """Held for each pass; an operator action that changes rollouts holds it too."""
        return self._lock

    # --- operator actions ----------------------------------------------------------------

    async def pause(self, r: RolloutRecord, reason: str) -> RolloutRecord:
        async with self._lock:
            return await self._update(r, self.clock.now(), state="paused", reason=reason)

    async def resume(self, r: RolloutRecord) -> RolloutRecord:
        """Resume; failures so far no longer count against the threshold."""
        async with self._lock:
            now = self.clock.now()
            r = await self.db.run(lambda s: s.atomic(lambda s: rebase(s, r, now)))
        self.wake()
        return r

    async def retry_failed(self, r: RolloutRecord) -> int:
        """Failed, rolled back, rejected and timed-out devices get a new notice."""
        async with self._lock:
            now = self.clock.now()

            # One transaction: a crash or a replica moving the rollout between the two
            # would leave the retried devices pending under the old bases.
            def retry(s: Store) -> int:
                n = s.retry_failed(r.id, now)
                rebase(s, r, now)
                return n

            n = await self.db.run(lambda s: s.atomic(retry))
        self.wake()
        return n

    async def cancel_by_operator(self, r: RolloutRecord, reason: str) -> int:
        async with self._lock:
            return await self.cancel(r, self.clock.now(), state="canceled", reason=reason)


def rebase(s: Store, r: RolloutRecord, now: float) -> RolloutRecord:
    """Running again (or scheduled again, while its start time is ahead: a pause and
    resume, or a retry, never starts a rollout before the time it was approved for);
    failures so far no longer count against the threshold. Compare-and-set on ``r``."""
    total = _totals(s.phase_counts(r.id))
    return s.update_rollout(
        r.id, now, expect=(r.state, r.phase), state=r.spec.start_state(now), reason="",
        gate_met_at=None, failure_base=total.failed, attempt_base=total.failed + total.succeeded,
    )  # fmt: skip
