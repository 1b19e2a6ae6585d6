"""Bearer tokens with roles: viewer < operator < admin. Only SHA-256s are stored."""

from __future__ import annotations

import hashlib
import secrets
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal, get_args

import msgspec
from msgspec import Meta

from fleetpush_common.config import decode
from orchestrator.store import Database

__all__ = ["ROLES", "Principal", "Role", "TokenAuth", "hash_token", "new_token", "role_allows"]

Role = Literal["viewer", "operator", "admin"]  # lowest first
ROLES: tuple[str, ...] = get_args(Role)


def role_allows(role: str, needed: str) -> bool:
    """True when ``role`` is at least ``needed``."""
    return role in ROLES and ROLES.index(role) >= ROLES.index(needed)


def new_token() -> str:
    return "fp_" + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Principal:
    name: str
    role: str


class _FileToken(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    name: Annotated[str, Meta(min_length=1, max_length=64)]
    role: Role
    sha256: Annotated[str, Meta(pattern="^[0-9a-fA-F]{64}$")]  # of the token


class _TokensFile(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    token: tuple[_FileToken, ...] = ()


def load_tokens_file(path: Path) -> dict[str, Principal]:
    """``[[token]]`` tables with ``name``, ``role`` and ``sha256`` (of the token).

    Raises:
        ValueError: unreadable or invalid; the message names the entry and key.
    """
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ValueError(f"{path}: cannot read tokens ({e})") from None
    tokens = decode(_TokensFile, data, str(path)).token
    return {t.sha256.lower(): Principal(t.name, t.role) for t in tokens}


class TokenAuth:
    """Looks tokens up in the tokens file, then in the database.

    Args:
        db: the database (``tokens`` table).
        file_tokens: from the configured tokens file.
    """

    def __init__(self, db: Database, file_tokens: dict[str, Principal] | None = None) -> None:
        self.db = db
        self.file_tokens = file_tokens or {}

    async def check(self, token: str) -> Principal | None:
        digest = hash_token(token)
        found = self.file_tokens.get(digest)
        if found is not None:
            return found
        rec = await self.db.run(lambda s: s.find_token(digest))
        if rec is None or rec.revoked:
            return None
        return Principal(rec.name, rec.role)
