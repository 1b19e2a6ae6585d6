"""Building and signing per-device update and cancel notices."""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from typing import Any

import msgspec

from fleetpush_protocol.envelope import sign_message
from fleetpush_protocol.messages import (
    MAX_DELTAS,
    SECURITY,
    CancelNotice,
    Delta,
    Payload,
    Release,
    Target,
    UpdateNotice,
)
from fleetpush_protocol.topics import Topics, device_scope
from orchestrator.advisories import to_advisory
from orchestrator.config import HttpConfig
from orchestrator.deltas import DeltaIndex
from orchestrator.hold_limits import to_hold_limits
from orchestrator.payloads import UrlSigner
from orchestrator.security.keystore import SigningSet
from orchestrator.store import NoticeRecord, ReleaseRecord
from orchestrator.systems import notice_components

__all__ = ["NoticeFactory", "new_notice_id"]


def new_notice_id() -> str:
    return "n-" + secrets.token_hex(10)


class NoticeFactory:
    """Signs notices with the current signing set.

    Args:
        topics: topic layout (notice and reply topics).
        http: where payload URLs point (signed orchestrator URLs, or an external base).
        urls: signs orchestrator payload URLs.
        notice_ttl_s: how long a notice stays valid, capped by the signing key's window.
        deltas: the stored deltas each notice lists; None lists none.
    """

    def __init__(
        self,
        topics: Topics,
        http: HttpConfig,
        urls: UrlSigner,
        notice_ttl_s: float,
        deltas: DeltaIndex | None = None,
    ) -> None:
        self.topics = topics
        self.http = http
        self.urls = urls
        self.notice_ttl_s = notice_ttl_s
        self.deltas = deltas

    def usable_until(self, notice: NoticeRecord) -> float:
        """When ``notice`` (or its payload URL) stops being usable, in Unix seconds."""
        if notice.kind != "notice":
            return notice.expires_at
        return self.update_usable_until(notice.issued_at, notice.expires_at)

    def update_usable_until(self, issued_at: float, expires_at: float) -> float:
        """When an update notice issued and expiring then, or its payload URL, stops being
        usable (the URL is signed with the same cap, see ``payload_urls``)."""
        if self.http.payload_base_url:
            return expires_at
        return min(expires_at, issued_at + self.http.url_ttl_s)

    def expiry(self, signing: SigningSet, now: int) -> int:
        """``now + ttl``, but never past the signing keys' ``not_after``."""
        return max(now, min(now + int(self.notice_ttl_s), signing.not_after))

    def payload_urls(self, release: ReleaseRecord, expires_at: int, now: int) -> tuple[str, ...]:
        return self._urls(release.sha256, expires_at, now)

    def _urls(self, sha256_hex: str, expires_at: int, now: int) -> tuple[str, ...]:
        if self.http.payload_base_url:
            return (f"{self.http.payload_base_url.rstrip('/')}/{sha256_hex}",)
        url_expiry = min(expires_at, now + int(self.http.url_ttl_s))
        return (self.urls.sign(self.http.base_url, sha256_hex, url_expiry),)

    def delta_list(
        self, release: ReleaseRecord, expires_at: int, now: int
    ) -> tuple[Delta, ...] | msgspec.UnsetType:
        """The release's stored deltas as notice entries (served like payloads)."""
        if self.deltas is None:
            return msgspec.UNSET
        entries = tuple(
            Delta(
                base_sha256=bytes.fromhex(d.base_sha256),
                method=d.method,
                sha256=bytes.fromhex(d.sha256),
                size=d.size,
                urls=self._urls(d.sha256, expires_at, now),
            )
            for d in self.deltas.records(release.sha256)[:MAX_DELTAS]
        )
        return entries or msgspec.UNSET

    def updates(
        self,
        signing: SigningSet,
        release: ReleaseRecord,
        *,
        rollout_id: int,
        device_ids: Sequence[str],
        seqs: Mapping[str, int],
        now: int,
    ) -> list[NoticeRecord]:
        """One signed ``UpdateNotice`` per device, on its own scope and retained topic."""
        expires = self.expiry(signing, now)
        payload = Payload(
            urls=self.payload_urls(release, expires, now),
            size=release.size,
            sha256=bytes.fromhex(release.sha256),
        )
        rel = Release(name=release.name, version=release.version)
        deltas = self.delta_list(release, expires, now)
        # A security release's notices carry its class and advisory (issue 17); a feature
        # release's leave both out, so their bytes are what they were before the fields.
        extra: dict[str, Any] = {}
        if release.security and release.advisory is not None:
            extra = {"update_class": SECURITY, "advisory": to_advisory(release.advisory)}
        if release.components:  # a system: each component on its own URLs, no deltas
            extra["components"] = notice_components(release, lambda sha: self._urls(
                sha, expires, now))  # fmt: skip
            deltas = msgspec.UNSET
        if release.holds is not None:  # issue 18; absent otherwise, as deltas are
            extra["holds"] = to_hold_limits(release.holds)
        out = []
        for device_id in device_ids:
            scope = device_scope(device_id)
            notice = UpdateNotice(
                notice_id=new_notice_id(),
                rollout_id=str(rollout_id),
                release=rel,
                payload=payload,
                deltas=deltas,
                handler=release.handler,
                handler_args=dict(release.handler_args),
                target=Target(devices=(device_id,), models=release.models),
                issued_at=now,
                expires_at=expires,
                scope=scope,
                seq=seqs[scope],
                reply_topic=self.topics.report(device_id),
                **extra,
            )
            out.append(self._record(notice, device_id, rollout_id, "notice", signing))
        return out

    def cancels(
        self,
        signing: SigningSet,
        *,
        rollout_id: int,
        device_ids: Sequence[str],
        seqs: Mapping[str, int],
        now: int,
    ) -> list[NoticeRecord]:
        """One signed ``CancelNotice`` per device; it replaces the retained update notice."""
        expires = self.expiry(signing, now)
        out = []
        for device_id in device_ids:
            scope = device_scope(device_id)
            notice = CancelNotice(
                notice_id=new_notice_id(),
                rollout_id=str(rollout_id),
                target=Target(devices=(device_id,)),
                issued_at=now,
                expires_at=expires,
                scope=scope,
                seq=seqs[scope],
                reply_topic=self.topics.report(device_id),
            )
            out.append(self._record(notice, device_id, rollout_id, "cancel", signing))
        return out

    def _record(
        self,
        notice: UpdateNotice | CancelNotice,
        device_id: str,
        rollout_id: int,
        kind: str,
        signing: SigningSet,
    ) -> NoticeRecord:
        return NoticeRecord(
            notice_id=notice.notice_id,
            device_id=device_id,
            rollout_id=rollout_id,
            kind=kind,
            scope=notice.scope,
            seq=notice.seq,
            topic=self.topics.device_notice(device_id),
            issued_at=notice.issued_at,
            expires_at=notice.expires_at,
            envelope=sign_message(notice, signing.keys),
        )
