"""The storage interface the service uses, its errors, and the threads that run it.

``Store`` is small on purpose: one class per backend (SQLite, PostgreSQL), both built on the
shared SQL in ``orchestrator.store.sql``. Its methods are blocking; ``Database`` runs them on
worker threads and async code awaits the result: one thread for SQLite (its single writer),
as many as the connection pool holds for PostgreSQL.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from fleetpush_protocol.messages import Inventory, Presence, Report
from orchestrator.rules import PhaseCounts, RolloutSpec
from orchestrator.store.records import (
    AuditEntry,
    DeviceFilter,
    DeviceRecord,
    IngestResult,
    NoticeRecord,
    ReleaseRecord,
    RolloutRecord,
    TargetPreview,
    TargetRecord,
    TargetSelector,
    TokenRecord,
)

__all__ = [
    "ConflictError",
    "Database",
    "NotFoundError",
    "SchemaError",
    "Store",
    "StoreCorruptError",
    "StoreError",
    "StoreUnavailableError",
]

if TYPE_CHECKING:
    from orchestrator.evidence import OutputRecord
    from orchestrator.store.sql.leases import ReplicaRecord

T = TypeVar("T")


class StoreError(Exception):
    """A request the stored state does not allow."""


class NotFoundError(StoreError):
    """No such device, release, rollout or token."""


class ConflictError(StoreError):
    """The request conflicts with stored state (duplicate, in use)."""


class StoreUnavailableError(StoreError):
    """The database cannot be reached now (server down, connection lost, pool exhausted):
    a transport error, worth retrying later."""


class StoreCorruptError(StoreError):
    """The database is unreadable or damaged (not a database file, malformed pages): a
    content error, never retried."""


class SchemaError(StoreError):
    """The database's schema is newer than this fleetpush, or a migration failed."""


class Store(Protocol):
    """Everything the orchestrator persists. All methods block; call them via ``Database``."""

    # how many threads may call this store at once (1: a single connection)
    @property
    def threads(self) -> int: ...

    def migrate(self) -> int: ...
    def close(self) -> None: ...
    def atomic(self, fn: Callable[[Store], T]) -> T: ...
    def counters(self) -> dict[str, int]: ...

    # devices
    def list_devices(self, f: DeviceFilter) -> list[DeviceRecord]: ...
    def get_device(self, device_id: str) -> DeviceRecord: ...
    def ensure_devices(self, device_ids: Iterable[str], now: float) -> None: ...
    def set_device_labels(
        self,
        device_id: str,
        groups: Sequence[str] | None,
        tags: dict[str, str] | None,
        model: str | None = None,
    ) -> DeviceRecord: ...
    def sync_registry(
        self, identities: Sequence[tuple[str, Sequence[str], str]], now: float
    ) -> int: ...
    def claims_mismatch_count(self) -> int: ...
    def device_history(self, device_id: str, limit: int = 50) -> list[dict[str, Any]]: ...
    def device_components(self, device_id: str, limit: int = 5) -> list[dict[str, Any]]: ...
    def online_count(self) -> int: ...
    def version_counts(self) -> dict[str, int]: ...
    def ingest(
        self, batch: Sequence[Report | Presence | Inventory], now: float
    ) -> IngestResult: ...
    def flag_devices(self, dropped: dict[tuple[str, str], int], now: float) -> None: ...
    def prune_reports(
        self, *, keep: int, before: float, after_device: str, limit: int, keep_outputs: int = 20
    ) -> tuple[int, str | None]: ...
    def device_outputs(
        self, device_id: str, rollout_id: int | None = None, limit: int = 20
    ) -> list[OutputRecord]: ...
    def rollout_outputs(
        self, rollout_id: int, device_ids: Sequence[str]
    ) -> dict[str, OutputRecord]: ...

    # releases
    def add_release(self, rec: ReleaseRecord) -> ReleaseRecord: ...
    def get_release(self, release_id: int) -> ReleaseRecord: ...
    def find_release(self, name: str, version: str) -> ReleaseRecord: ...
    def list_releases(self) -> list[ReleaseRecord]: ...
    def delete_release(self, release_id: int, now: float) -> ReleaseRecord: ...
    def put_sbom(
        self, release_id: int, *, format: str, spec_version: str,
        components: list[dict[str, str]], body: str, now: float,
    ) -> None: ...  # fmt: skip
    def get_sbom(self, release_id: int) -> tuple[dict[str, Any], str] | None: ...
    def sha256_in_use(self, sha256: str) -> bool: ...

    # rollouts
    def create_rollout(
        self,
        *,
        release_id: int,
        target: dict[str, Any],
        spec: RolloutSpec,
        assignments: Sequence[tuple[str, int, int]],
        now: float,
        actor: str,
        approval: bool = False,
        hold: bool = False,
    ) -> RolloutRecord: ...
    def create_rollout_for(
        self,
        *,
        release_id: int,
        target: dict[str, Any],
        spec: RolloutSpec,
        selector: TargetSelector,
        key: str,
        now: float,
        actor: str,
        approval: bool = False,
        hold: bool = False,
    ) -> RolloutRecord: ...
    def preview_targets(self, sel: TargetSelector) -> TargetPreview: ...
    def missing_devices(self, device_ids: Sequence[str]) -> list[str]: ...
    def follow_targets(
        self, rollout_id: int, selector: TargetSelector, skip_version: str, phase: int,
        now: float,
    ) -> int: ...  # fmt: skip
    def get_rollout(self, rollout_id: int) -> RolloutRecord: ...
    def list_rollouts(self, states: Sequence[str] = ()) -> list[RolloutRecord]: ...
    def update_rollout(
        self,
        rollout_id: int,
        now: float,
        *,
        expect: tuple[str, int | None] | None = None,
        **fields: Any,
    ) -> RolloutRecord: ...
    def phase_counts(self, rollout_id: int) -> dict[int, PhaseCounts]: ...
    def state_counts(self, rollout_id: int) -> dict[str, int]: ...
    def download_totals(self, rollout_id: int) -> tuple[int, int]: ...
    def rollout_state_counts(self) -> dict[str, int]: ...
    def list_targets(
        self, rollout_id: int, state: str | None = None, limit: int = 1000
    ) -> list[TargetRecord]: ...
    def pending_targets(
        self, rollout_id: int, max_phase: int, limit: int
    ) -> list[tuple[str, bool]]: ...
    def active_target_ids(self) -> set[str]: ...
    def succeeded_releases(self) -> dict[str, dict[str, int]]: ...
    def cancel_device_targets(
        self, rollout_id: int, device_ids: Sequence[str], now: float, reason: str
    ) -> list[str]: ...
    def add_targets(
        self, rollout_id: int, device_ids: Sequence[str], phase: int, now: float
    ) -> int: ...
    def waiting_notices(self, rollout_id: int) -> list[tuple[str, float, float]]: ...
    def replace_notices(self, notices: Sequence[NoticeRecord]) -> set[str]: ...
    def time_out_targets(self, rollout_id: int, cutoff: float, now: float) -> int: ...
    def retry_failed(self, rollout_id: int, now: float) -> int: ...
    def cancel_targets(self, rollout_id: int, now: float, reason: str) -> list[str]: ...

    # notices
    def reserve_seqs(self, scopes: Sequence[str], floor: int) -> dict[str, int]: ...
    def save_notices(self, notices: Sequence[NoticeRecord], delivered: dict[str, bool]) -> None: ...
    def mark_published(self, notice_ids: Sequence[str]) -> None: ...
    def unpublished_notices(self, limit: int = 10_000) -> list[NoticeRecord]: ...
    def sent_notices(self, limit: int = 100_000) -> list[NoticeRecord]: ...

    # replicas (orchestrator.store.sql.leases)
    def claim_rollouts(
        self, holder: str, rollout_ids: Sequence[int], now: float, expires_at: float
    ) -> list[int]: ...
    def release_rollouts(self, holder: str, rollout_ids: Sequence[int] | None = None) -> int: ...
    def rollout_leases(self) -> dict[int, tuple[str, float]]: ...
    def save_notices_leased(
        self,
        holder: str,
        rollout_id: int,
        notices: Sequence[NoticeRecord],
        delivered: dict[str, bool],
        now: float,
    ) -> list[NoticeRecord]: ...
    def notices_by_replica(self, rollout_id: int) -> dict[str, int]: ...
    def register_replica(
        self, replica_id: str, host: str, pid: int, now: float, *, live_after: float,
        url_key_id: str, replacing: int | None = None,
    ) -> ReplicaRecord | None: ...  # fmt: skip
    def beat_replica(self, replica_id: str, now: float) -> None: ...
    def drop_replica(self, replica_id: str, pid: int) -> None: ...
    def list_replicas(self) -> list[ReplicaRecord]: ...

    # audit and tokens
    def add_audit(
        self, *, at: float, actor: str, action: str, subject: str, detail: dict[str, Any]
    ) -> None: ...
    def list_audit(self, limit: int = 100, after_id: int = 0) -> list[AuditEntry]: ...
    def add_token(self, name: str, role: str, sha256: str, now: float) -> None: ...
    def find_token(self, sha256: str) -> TokenRecord | None: ...
    def list_tokens(self) -> list[TokenRecord]: ...
    def revoke_token(self, name: str) -> None: ...


class Database:
    """Runs a ``Store`` on worker threads: SQLite's single writer, or PostgreSQL's pool.

    Args:
        factory: builds the store; called on a database thread (SQLite connections
            belong to the thread that made them). The store's ``threads`` says how many
            workers may call it at once.
    """

    def __init__(self, factory: Callable[[], Store]) -> None:
        first = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="fleetpush-db"
        )
        try:
            self._store: Store = first.submit(factory).result()
        except BaseException:
            first.shutdown(wait=False)
            raise
        if self._store.threads > 1:
            # The store is not bound to the thread that made it: spread calls over as
            # many threads as it has connections.
            first.shutdown(wait=True)
            first = concurrent.futures.ThreadPoolExecutor(
                max_workers=self._store.threads, thread_name_prefix="fleetpush-db"
            )
        self._pool = first

    def submit(self, fn: Callable[[Store], T]) -> concurrent.futures.Future[T]:
        """Queue ``fn(store)`` on the database thread (from any thread)."""
        return self._pool.submit(fn, self._store)

    def call(self, fn: Callable[[Store], T]) -> T:
        """Run ``fn(store)`` on the database thread and wait (from a non-async thread)."""
        return self.submit(fn).result()

    async def run(self, fn: Callable[[Store], T]) -> T:
        """Run ``fn(store)`` on the database thread and await the result."""
        return await asyncio.wrap_future(self.submit(fn))

    def close(self) -> None:
        self._pool.submit(self._store.close).result()
        self._pool.shutdown(wait=True)
