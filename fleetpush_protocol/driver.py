"""The device-side driver: feeds received bytes to the verifier and decides what is normal.

The verifier raises on everything; this class turns that into outcomes:

* a duplicate (QoS 1 redelivery, a retained copy after reconnect) is *ignored*;
* an authentic notice that is not for this device is *rejected* once, and its sequence is
  recorded so that redeliveries become duplicates;
* a notice signed by a key the device does not know yet is kept and retried after the
  next keyring update, since keyrings and notices may arrive in either order;
* keyrings that arrive ahead of their predecessor wait (bounded) until the gap closes.

Still sans-IO: it holds state in memory; the caller persists ``to_state()`` atomically
*before* acting on an outcome.
"""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass, field
from typing import Any

import msgspec

from fleetpush_protocol.envelope import decode_envelope, encode_body
from fleetpush_protocol.errors import (
    ContentError,
    DuplicateMessageError,
    KeyNotValidError,
    KeyringGapError,
    TargetingError,
    UnknownKeyError,
)
from fleetpush_protocol.messages import CancelNotice, Keyring, UpdateNotice
from fleetpush_protocol.verify import (
    DeviceIdentity,
    SeenSequence,
    TrustedKeyring,
    Verified,
    VerifyPolicy,
    verify_keyring,
    verify_notice,
)

__all__ = ["Accepted", "DeviceTrust", "Ignored", "KeyringAccepted", "Outcome", "Rejected"]

MAX_PARKED = 16


@dataclass(frozen=True, slots=True)
class Accepted:
    verified: Verified[UpdateNotice | CancelNotice]


@dataclass(frozen=True, slots=True)
class KeyringAccepted:
    version: int


@dataclass(frozen=True, slots=True)
class Ignored:
    reason: str


@dataclass(frozen=True, slots=True)
class Rejected:
    """A message refused for ``error``; ids are the *claimed* ones when it was not authentic."""

    error: ContentError
    notice_id: str
    rollout_id: str
    authentic: bool


Outcome = Accepted | KeyringAccepted | Ignored | Rejected


def _claimed_ids(data: bytes) -> tuple[str, str]:
    # Best effort, for the rejection report only; never trusted for anything else.
    with contextlib.suppress(ContentError):
        fields = decode_envelope(data).fields
        nid, rid = fields.get("notice_id"), fields.get("rollout_id")
        if isinstance(nid, str) and isinstance(rid, str):
            return nid[:128], rid[:128]
    return "unknown", "unknown"


@dataclass
class DeviceTrust:
    """Everything a device must remember to verify what comes next."""

    trusted: TrustedKeyring
    policy: VerifyPolicy = field(default_factory=VerifyPolicy)
    seen: dict[str, SeenSequence] = field(default_factory=dict)
    trusted_time: int = 0  # highest issued_at trusted so far (Unix seconds)
    pending_keyrings: dict[int, bytes] = field(default_factory=dict)
    parked_notices: dict[str, bytes] = field(default_factory=dict)  # digest hex -> bytes

    # --- notices -------------------------------------------------------------------------

    def on_notice(self, data: bytes, device: DeviceIdentity, now: int) -> Outcome:
        """Verify a notice or cancel; update sequences and trusted time on acceptance."""
        try:
            verified = verify_notice(
                data,
                keyring=self.trusted,
                device=device,
                seen=self.seen,
                trusted_time=self.trusted_time,
                now=now,
                policy=self.policy,
            )
        except DuplicateMessageError:
            return Ignored("duplicate")
        except TargetingError as e:
            msg = e.message
            if isinstance(msg, UpdateNotice | CancelNotice):
                self._record(msg.scope, msg.seq, e.digest)
                self.trusted_time = max(self.trusted_time, msg.issued_at)
                return Rejected(e, msg.notice_id, msg.rollout_id, authentic=True)
            return Rejected(e, *_claimed_ids(data), authentic=False)
        except (UnknownKeyError, KeyNotValidError) as e:
            # Maybe signed by a key from a keyring still on its way: retry after the next one.
            if len(self.parked_notices) < MAX_PARKED:
                self.parked_notices[hashlib.sha256(data).hexdigest()] = data
            return Rejected(e, *_claimed_ids(data), authentic=False)
        except ContentError as e:
            return Rejected(e, *_claimed_ids(data), authentic=False)
        msg = verified.message
        self._record(msg.scope, msg.seq, verified.digest)
        self.trusted_time = max(self.trusted_time, msg.issued_at)
        return Accepted(verified)

    def _record(self, scope: str, seq: int, digest: bytes) -> None:
        self.seen[scope] = SeenSequence(seq=seq, digest=digest)

    # --- keyrings ------------------------------------------------------------------------

    def on_keyring(self, data: bytes) -> list[Outcome]:
        """Apply a keyring, and any that were waiting for it; return what happened."""
        outcomes: list[Outcome] = []
        try:
            verified = verify_keyring(data, trusted=self.trusted, policy=self.policy)
        except DuplicateMessageError:
            return [Ignored("duplicate")]
        except KeyringGapError as e:
            if len(self.pending_keyrings) >= self.policy.max_rotations:
                return [Rejected(e, "keyring", "keyring", authentic=False)]
            with contextlib.suppress(ContentError):
                version = decode_envelope(data).fields.get("version")
                if isinstance(version, int):
                    self.pending_keyrings[version] = data
            return [Ignored("keyring waits for its predecessor")]
        except ContentError as e:
            return [Rejected(e, "keyring", "keyring", authentic=False)]
        self._accept_keyring(verified)
        outcomes.append(KeyringAccepted(verified.message.version))
        # Close any gap that this one filled.
        while (
            nxt := self.pending_keyrings.pop(self.trusted.keyring.version + 1, None)
        ) is not None:
            try:
                verified = verify_keyring(nxt, trusted=self.trusted, policy=self.policy)
            except ContentError as e:
                outcomes.append(Rejected(e, "keyring", "keyring", authentic=False))
                break
            self._accept_keyring(verified)
            outcomes.append(KeyringAccepted(verified.message.version))
        self.pending_keyrings = {
            v: d for v, d in self.pending_keyrings.items() if v > self.trusted.keyring.version
        }
        return outcomes

    def _accept_keyring(self, verified: Verified[Keyring]) -> None:
        self.trusted = self.trusted.then(verified)
        self.trusted_time = max(self.trusted_time, verified.message.issued_at)

    def take_parked(self) -> list[bytes]:
        """Notices that failed for an unknown key, to be fed to ``on_notice`` again."""
        parked = list(self.parked_notices.values())
        self.parked_notices.clear()
        return parked

    # --- persistence ---------------------------------------------------------------------

    def to_state(self) -> dict[str, Any]:
        """A canonical-msgpack-encodable snapshot (no private data: public keys only)."""
        ring = self.trusted.keyring
        return {
            "keyring": encode_body(ring) if ring.version else b"",
            "keyring_digest": self.trusted.digest,
            # Every key ever seen revoked, not only the current keyring's list (issue 12).
            "revoked_keys": sorted(self.trusted.revoked),
            "seen": {s: {"seq": v.seq, "digest": v.digest} for s, v in self.seen.items()},
            "trusted_time": self.trusted_time,
            "pending_keyrings": {str(v): d for v, d in self.pending_keyrings.items()},
        }

    @classmethod
    def from_state(
        cls, state: dict[str, Any], anchor: TrustedKeyring, policy: VerifyPolicy
    ) -> DeviceTrust:
        """Restore a snapshot written by ``to_state``.

        A saved keyring was verified before it was saved and may have rotated the root away
        from the configured one; the configured ``anchor`` is only the chain's start. A
        snapshot from before ``revoked_keys`` existed starts from the saved keyring's list.
        """
        trusted = anchor
        if state.get("keyring"):
            ring = msgspec.msgpack.decode(state["keyring"], type=Keyring)
            revoked = frozenset(bytes(k) for k in state.get("revoked_keys", ()))
            trusted = TrustedKeyring(ring, bytes(state["keyring_digest"]), revoked)
        return cls(
            trusted=trusted,
            policy=policy,
            seen={
                s: SeenSequence(seq=int(v["seq"]), digest=bytes(v["digest"]))
                for s, v in state.get("seen", {}).items()
            },
            trusted_time=int(state.get("trusted_time", 0)),
            pending_keyrings={
                int(v): bytes(d) for v, d in state.get("pending_keyrings", {}).items()
            },
        )
