"""The JSON request bodies of the API, as typed structs: decoded and checked by msgspec
(fleetpush_common.config), so a bad body is a 400 naming the field."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, TypeVar

import msgspec
from msgspec import Meta

from fleetpush_common.config import ConfigError, Name, decode
from fleetpush_protocol.messages import NAME_PATTERN
from orchestrator.api.context import ApiError
from orchestrator.rollouts import TargetSpec
from orchestrator.rules import RolloutSpec
from orchestrator.security.auth import Role

__all__ = [
    "CreateRollout",
    "LabelDevice",
    "NewToken",
    "Reason",
    "RevertRollout",
    "decode_body",
    "spec_of",
]

T = TypeVar("T")


def decode_body(tp: type[T], body: dict[str, Any]) -> T:
    """``body`` (from ``json_body``) as ``tp``.

    Raises:
        ApiError: 400 naming the field that is unknown, missing or invalid.
    """
    try:
        return decode(tp, body, "")
    except ConfigError as e:
        raise ApiError(400, str(e)) from None


class RevertRollout(RolloutSpec, frozen=True, kw_only=True):
    """``POST /v1/rollouts/{id}/revert``: the settings of the new rollouts."""

    dry_run: bool = False  # validate, create nothing, answer the plan
    force: bool = False  # create even when other active rollouts hold some devices
    require_approval: bool | None = None  # none: the installation's [rollouts] setting


class CreateRollout(RevertRollout, frozen=True, kw_only=True):
    """``POST /v1/rollouts``."""

    missing_hints: ClassVar[dict[str, str]] = {
        "release": "an id or name@version",
        "target": "an object with devices, groups or all=true",
    }

    release: int | Annotated[str, Meta(min_length=1, max_length=300)]  # id or name@version
    target: TargetSpec


def spec_of(request: RevertRollout) -> RolloutSpec:
    """The rollout settings of a request (everything but what it asks of the call)."""
    return RolloutSpec(**{f: getattr(request, f) for f in RolloutSpec.__struct_fields__})


class Reason(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """``pause`` and ``cancel``."""

    reason: Annotated[str, Meta(max_length=500)] = ""


class LabelDevice(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """``PATCH /v1/devices/{id}``: operator groups, model (``""``: the provisioned one) and
    tags; a field left out is left as it is."""

    groups: Annotated[tuple[Name, ...], Meta(max_length=64)] | None = None
    model: Annotated[str, Meta(pattern=f"{NAME_PATTERN}|\\A\\Z", max_length=128)] | None = None
    tags: Annotated[dict[str, str], Meta(max_length=64)] | None = None


class NewToken(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """``POST /v1/tokens``."""

    name: Annotated[str, Meta(min_length=1, max_length=64)]
    role: Role
