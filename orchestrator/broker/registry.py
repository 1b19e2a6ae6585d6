"""The registry of broker identities: who may connect, how, and to which groups they belong.

Kept as one JSON file (``identities.json``) next to the files generated from it (``passwd``,
``acl``, ``ca/crl.pem``), written atomically so a crash never leaves half a registry. The
password file and ACL are derived data: they are regenerated from the registry on every
change, so the registry is the only thing to back up (with the CA).

It also holds *transient* password-only entries that exist for one step (a reload canary, a
revoke's one-time takeover password), so that another process regenerating the files in
between keeps them; each carries an expiry, after which the next write drops it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from fleetpush_common.atomic import atomic_write, make_private_dir
from orchestrator.broker.credentials import DEVICE_ROLE, BrokerUser

__all__ = ["FORMAT", "Identity", "IdentityRegistry", "Transient"]

FORMAT = 1


@dataclass(frozen=True)
class Identity:
    """One broker identity.

    ``cert_serials`` are the serial numbers of this identity's valid client certificates;
    ``password_hash`` is the ``$7$`` hash when it may log in with a password.
    """

    username: str
    role: str = DEVICE_ROLE
    groups: tuple[str, ...] = ()
    password_hash: str | None = field(default=None, repr=False)
    cert_serials: tuple[int, ...] = ()
    model: str | None = None
    created_at: int = 0

    def __post_init__(self) -> None:
        # BrokerUser validates the username, groups and role.
        self.user()

    def user(self) -> BrokerUser:
        """The view the password file and ACL renderers need."""
        return BrokerUser(self.username, self.role, self.groups, self.password_hash)

    def to_json(self) -> dict[str, Any]:
        return {
            "username": self.username,
            "role": self.role,
            "groups": list(self.groups),
            "password_hash": self.password_hash,
            "cert_serials": [f"{s:x}" for s in self.cert_serials],
            "model": self.model,
            "created_at": self.created_at,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Identity:
        return cls(
            username=d["username"],
            role=d.get("role", DEVICE_ROLE),
            groups=tuple(d.get("groups", ())),
            password_hash=d.get("password_hash"),
            cert_serials=tuple(int(s, 16) for s in d.get("cert_serials", ())),
            model=d.get("model"),
            created_at=int(d.get("created_at", 0)),
        )


@dataclass(frozen=True)
class Transient:
    """A password-only broker entry with no ACL lines, kept until ``expires_at`` (Unix s)."""

    password_hash: str = field(repr=False)
    expires_at: float

    def to_json(self, username: str) -> dict[str, Any]:
        return {"username": username, "password_hash": self.password_hash,
                "expires_at": self.expires_at}  # fmt: skip


class IdentityRegistry:
    """Identities and revoked certificate serials, persisted in ``path`` (JSON).

    Several processes may share one registry (``fleetpush broker run`` and ``fleetpush
    devices provision``): mutate it inside ``locked()``, which takes an exclusive ``flock``
    and re-reads the file first, so no process overwrites another's change.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.identities: dict[str, Identity] = {}
        self.revoked_serials: set[int] = set()
        self.transient: dict[str, Transient] = {}
        self.load()

    def load(self) -> None:
        """(Re)read the file; a missing file is an empty registry."""
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            self.identities, self.revoked_serials, self.transient = {}, set(), {}
            return
        if data.get("format") != FORMAT:
            raise ValueError(f"{self.path}: unknown registry format {data.get('format')!r}")
        self.identities = {
            i.username: i for i in (Identity.from_json(d) for d in data["identities"])
        }
        self.revoked_serials = {int(s, 16) for s in data.get("revoked_serials", ())}
        self.transient = {
            d["username"]: Transient(d["password_hash"], float(d["expires_at"]))
            for d in data.get("transient", ())
        }

    def save(self) -> None:
        """Write the registry atomically (mode 0600: it holds password hashes)."""
        data = {
            "format": FORMAT,
            "identities": [self.identities[k].to_json() for k in sorted(self.identities, key=str)],
            "revoked_serials": [f"{s:x}" for s in sorted(self.revoked_serials)],
            "transient": [self.transient[k].to_json(k) for k in sorted(self.transient)],
        }
        make_private_dir(self.path.parent)
        atomic_write(self.path, (json.dumps(data, indent=1) + "\n").encode(), mode=0o600)

    @contextlib.contextmanager
    def locked(self) -> Iterator[IdentityRegistry]:
        """Exclusive access: re-read, let the caller mutate, save."""
        make_private_dir(self.path.parent)
        fd = os.open(self.path.parent / ".identities.lock", os.O_RDWR | os.O_CREAT, 0o600)
        with os.fdopen(fd, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                self.load()
                yield self
                self.save()
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def get(self, username: str) -> Identity | None:
        return self.identities.get(username)

    def put(self, identity: Identity) -> Identity:
        """Add or replace an identity, keeping the original creation time."""
        old = self.identities.get(identity.username)
        created = old.created_at if old and old.created_at else int(time.time())
        identity = replace(identity, created_at=identity.created_at or created)
        self.identities[identity.username] = identity
        return identity

    def pop(self, username: str) -> Identity | None:
        return self.identities.pop(username, None)

    def users(self) -> list[BrokerUser]:
        return [i.user() for i in self.identities.values()]

    def transient_hashes(self, now: float) -> dict[str, str]:
        """Unexpired transient entries (username -> hash) whose name is no identity's.

        Expired ones are forgotten here, so an entry left behind by a process that died
        mid-step does not outlive its expiry.
        """
        self.transient = {k: t for k, t in self.transient.items() if t.expires_at > now}
        return {k: t.password_hash for k, t in self.transient.items() if k not in self.identities}
