"""Signing, storing and publishing the engine's notices (a part of ``RolloutEngine``).

Sequences are reserved in the database before anything is signed; update notices are
stored under the rollout's lease and only for targets still pending, then published; what
the broker did not acknowledge is published again by the replica holding the lease.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from fleetpush_protocol.topics import device_scope
from orchestrator.notices import NoticeFactory
from orchestrator.security.keystore import SigningSet
from orchestrator.store import Database, NoticeRecord, RolloutRecord
from orchestrator.supersede import CancelSigner, start

__all__ = ["NoticeSending", "Publisher"]

logger = logging.getLogger(__name__)

MAX_NOTICES_PER_PASS = 5000  # devices notified per rollout per pass, at most
REFRESH_EVERY_S = 60.0  # seconds between two looks for notices about to go stale
REFRESH_AT = 0.75  # share of a notice's usable life after which an offline device gets anew


class Publisher(Protocol):
    async def publish_many(
        self,
        items: Sequence[tuple[str, bytes, bool]],
        timeout: float = 30.0,  # noqa: ASYNC109
        *,
        expiry_s: int = 0,
    ) -> None: ...


class NoticeSending:
    """The notice half of ``RolloutEngine``; it sets these attributes."""

    db: Database
    notices: NoticeFactory
    publisher: Publisher
    signing: Callable[[float], SigningSet]
    holder: str
    lease_s: float
    held: set[int]
    broker_expires: bool

    async def _sign(
        self,
        device_ids: Sequence[str],
        now: float,
        build: Callable[[SigningSet, dict[str, int]], list[NoticeRecord]],
    ) -> list[NoticeRecord]:
        """Reserve a sequence per device scope, then sign off the event loop."""
        signing = self.signing(now)
        scopes = [device_scope(d) for d in device_ids]
        seqs = await self.db.run(lambda s: s.reserve_seqs(scopes, int(now * 1000)))
        return await asyncio.to_thread(build, signing, seqs)

    async def _sign_updates(
        self, r: RolloutRecord, device_ids: Sequence[str], now: float
    ) -> list[NoticeRecord]:
        """One signed update notice per device."""
        release = await self.db.run(lambda s: s.get_release(r.release_id))
        return await self._sign(
            device_ids, now,
            lambda signing, seqs: self.notices.updates(
                signing, release, rollout_id=r.id, device_ids=device_ids, seqs=seqs, now=int(now)
            ),
        )  # fmt: skip

    async def start_rollout(
        self, r: RolloutRecord, now: float, fields: Mapping[str, Any], *, actor: str
    ) -> tuple[RolloutRecord, dict[int, list[str]]]:
        """Compare-and-set ``r`` to ``fields`` (``supersede.start``): a security rollout
        that becomes running takes its devices from feature rollouts in the same
        transaction, whose cancels are then published. Returns the rollout and what it
        took (feature rollout id -> devices).

        Raises:
            ConflictError: ``r`` changed since it was read (another replica started it).
        """
        release = await self.db.run(lambda s: s.get_release(r.release_id))
        sign: CancelSigner | None = None
        if release.security:
            signing = self.signing(now)  # read before the transaction; in it, only signing

            def sign(
                rollout_id: int, devices: list[str], seqs: dict[str, int]
            ) -> list[NoticeRecord]:
                return self.notices.cancels(signing, rollout_id=rollout_id, device_ids=devices,
                                            seqs=seqs, now=int(now))  # fmt: skip

        started, taken, cancels = await self.db.run(
            lambda s: s.atomic(lambda s: start(s, r, now, fields, sign=sign, actor=actor))
        )
        await self._publish(cancels, now)
        return started, taken

    async def send_updates(
        self, r: RolloutRecord, device_ids: Sequence[str], online: set[str], now: float
    ) -> int:
        """Reserve sequences, sign, store, then publish update notices."""
        records = await self._sign_updates(r, device_ids, now)
        delivered = {d: d in online for d in device_ids}
        # Stored only under our lease and for targets still pending: a replica that lost
        # the lease, or targets another replica notified meanwhile, send nothing.
        records = await self.db.run(
            lambda s: s.save_notices_leased(self.holder, r.id, records, delivered, now)
        )
        await self._publish(records, now)
        logger.info("rollout %d: notified %d device(s)", r.id, len(records))
        return len(records)

    async def _refresh(self, r: RolloutRecord, now: float) -> None:
        """Give devices still offline a new notice once theirs is 3/4 through its usable
        time (until it, or its payload URL, expires); the broker drops the old copy when
        it expires. Not when the new one would not live longer (the signing key's end)."""
        waiting = await self.db.run(lambda s: s.waiting_notices(r.id))
        if not waiting:
            return
        fresh_until = self.notices.update_usable_until(
            now, self.notices.expiry(self.signing(now), int(now))
        )
        usable = self.notices.update_usable_until
        due = [
            d for d, issued, expires in waiting
            if now >= issued + REFRESH_AT * (usable(issued, expires) - issued)
            and fresh_until > usable(issued, expires) + REFRESH_EVERY_S
        ][:MAX_NOTICES_PER_PASS]  # fmt: skip
        if not due:
            return
        records = await self._sign_updates(r, due, now)
        replaced = await self.db.run(lambda s: s.replace_notices(records))
        # A device that came online meanwhile keeps the notice it is working on.
        await self._publish([n for n in records if n.device_id in replaced], now)
        logger.info("rollout %d: renewed the notice of %d offline device(s)", r.id, len(replaced))

    async def _publish(self, records: Sequence[NoticeRecord], now: float) -> None:
        if not self.broker_expires:
            records = await self._skip_expired(records, now)
        by_expiry: dict[int, list[NoticeRecord]] = {}
        for n in records:
            left = max(1, int(self.notices.usable_until(n) - now))
            by_expiry.setdefault(left, []).append(n)
        published: list[str] = []
        try:
            for expiry_s, group in sorted(by_expiry.items()):
                items = [(n.topic, n.envelope, True) for n in group]
                await self.publisher.publish_many(items, expiry_s=expiry_s)
                published += [n.notice_id for n in group]
        except (TimeoutError, ConnectionError) as e:
            left = len(records) - len(published)
            logger.warning("%d notice(s) not acknowledged yet (%s); will retry", left, e)
        if published:
            await self.db.run(lambda s: s.mark_published(published))

    async def _skip_expired(
        self, records: Sequence[NoticeRecord], now: float
    ) -> Sequence[NoticeRecord]:
        """The notices still usable. In MQTT 3.1.1 the broker cannot expire a message, so
        one published (retained, or queued for an offline device) after its usable end
        would stay there for good, to be refused by every device (its signed expiry): the
        notice is not published again, and counts as done with."""
        usable = self.notices.usable_until
        dead = [n.notice_id for n in records if usable(n) <= now]
        if not dead:
            return records
        logger.info("%d expired notice(s) not published again (MQTT 3.1.1)", len(dead))
        await self.db.run(lambda s: s.mark_published(dead))
        return [n for n in records if usable(n) > now]

    async def resend_sent(self, now: float) -> None:
        """Publish again the notices whose devices have not answered (``broker_connected``).

        Every replica does so after its own reconnect: a device ignores the duplicates.
        """
        records = await self.db.run(lambda s: s.sent_notices())
        if records:
            logger.info("publishing %d notice(s) no device answered yet again", len(records))
            await self._publish(records, now)

    async def republish(self, now: float) -> None:
        """Publish notices stored but never acknowledged (e.g. killed before the PUBACK)."""
        records = await self.db.run(lambda s: s.unpublished_notices())
        if not records:
            return
        # One replica republishes a rollout's notices: the one holding (or now taking) its
        # lease. Leases taken only for this, of rollouts no longer active, are given back.
        ids = sorted({n.rollout_id for n in records})
        until = now + self.lease_s
        got = set(await self.db.run(lambda s: s.claim_rollouts(self.holder, ids, now, until)))
        mine = [n for n in records if n.rollout_id in got]
        if mine:
            logger.info("publishing %d stored notice(s) again", len(mine))
            await self._publish(mine, now)
        extra = sorted(got - self.held)
        if extra:
            await self.db.run(lambda s: s.release_rollouts(self.holder, extra))
