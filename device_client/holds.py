"""Application holds (issue 18): an application on the device puts off an update for a
bounded time, through ``fleetpush-device hold`` (device_client/hold_socket.py) or the gate
hook (device_client/gate.py). docs/device.md, "Application holds".

The bounds: one hold lasts at most ``max_each`` and an update is held at most ``max_total``
counted from its first hold (so gaps between holds count too, and no sequence of short
holds gets past it); the notice's signed ``holds`` may only lower them, and an urgent
release (a limit of 0) is not held at all. A security update is never held past its
install deadline. Past a bound the update proceeds and its next report says why.

The hold and the first-hold time of the current update live in ``<state_dir>/hold.json``,
written atomically before the hold is answered or acted on, so a restart keeps them. All
times come from the injected clock.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import msgspec

from device_client.config import DeviceConfig, HoldsConfig
from device_client.gate import ask_gate
from device_client.hooks import hook_input
from device_client.jobs.policy import Blocked
from device_client.jobs.security import install_deadline
from fleetpush_common.atomic import atomic_write
from fleetpush_protocol.messages import HoldLimits, UpdateNotice

__all__ = ["Hold", "HoldRefusedError", "Holds", "Limits", "hold_end", "limits"]

logger = logging.getLogger(__name__)


class Hold(msgspec.Struct, frozen=True, kw_only=True):
    set_at: float  # Unix seconds (the injected clock)
    for_s: float  # as asked; the bounds cut it when it is applied
    reason: str
    by: str  # "uid 1000 (app)" or "gate"


class _Saved(msgspec.Struct, kw_only=True):
    hold: Hold | None = None
    notice_id: str = ""  # the update the first hold applies to
    first_held: float | None = None


@dataclass(frozen=True, slots=True)
class Limits:
    each: float  # seconds
    total: float

    @property
    def urgent(self) -> bool:
        return self.each <= 0 or self.total <= 0


def limits(config: HoldsConfig, notice: UpdateNotice | None) -> Limits:
    """The device's bounds, lowered by the notice's signed ``holds``."""
    each, total = config.max_each_s, config.max_total_s
    if notice is not None and isinstance(notice.holds, HoldLimits):
        each = min(each, float(notice.holds.max_each_s))
        total = min(total, float(notice.holds.max_total_s))
    return Limits(each, total)


def hold_end(
    hold: Hold, lim: Limits, first_held: float, deadline: float | None
) -> tuple[float, str]:
    """When ``hold`` ends for an update first held at ``first_held``, and what ends it:
    ``asked`` (its own length), ``max_each``, ``max_total`` or ``deadline`` (security)."""
    ends = [
        (hold.set_at + hold.for_s, "asked"),
        (hold.set_at + lim.each, "max_each"),
        (first_held + lim.total, "max_total"),
    ]
    if deadline is not None:
        ends.append((deadline, "deadline"))
    return min(ends, key=lambda e: e[0])  # the first of equals: "asked" wins a tie


def _span(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


_ENDED = {
    "asked": "hold by {by} ended",
    "max_each": "hold by {by} cut at the longest one hold may last ({each})",
    "max_total": "held for the longest allowed ({total}): proceeding despite the hold by {by}",
    "deadline": "security update: its install deadline ends the hold by {by}",
}


class HoldRefusedError(ValueError):
    """A hold request the current update does not allow (urgent, or held to its bound)."""


class Holds:
    """The persisted hold, its bounds against the current update, and the gate hook.

    Args:
        config: the device configuration (``[holds]``, and security deadlines).
        clock: Unix time in seconds.
        current: the notice of the pending job, if any (a hold request is checked
            against it).
        wake: told when a hold is set or released (the job runner re-checks).
    """

    def __init__(
        self,
        config: DeviceConfig,
        clock: Callable[[], float],
        current: Callable[[], UpdateNotice | None],
        wake: Callable[[], None],
    ) -> None:
        self.config = config
        self.clock = clock
        self._current = current
        self._wake = wake
        self._file: Path = config.device.state_dir / "hold.json"
        self._saved: _Saved | None = None
        self.note = ""  # what ended a hold; said by the next report (``take_note``)
        self._note_for = ""  # the notice id the note is about

    # --- the file ----------------------------------------------------------------------------

    @property
    def saved(self) -> _Saved:
        if self._saved is None:
            try:
                self._saved = msgspec.json.decode(self._file.read_bytes(), type=_Saved)
            except FileNotFoundError:
                self._saved = _Saved()
            except (OSError, msgspec.DecodeError) as e:
                logger.warning("%s unreadable (%s): no hold", self._file, e)
                self._saved = _Saved()
        return self._saved

    def _save(self) -> None:
        atomic_write(self._file, msgspec.json.encode(self.saved), mode=0o600)

    # --- requests (the socket) ---------------------------------------------------------------

    def request(self, for_s: float, reason: str, by: str) -> float:
        """Set the hold (it replaces any other); returns until when it holds the pending
        update (or, with none pending, until when it would hold one by the device's bounds).

        Raises:
            HoldRefusedError: the pending update is urgent, or held for the longest allowed.
        """
        now = self.clock()
        notice = self._current()
        lim = limits(self.config.holds, notice)
        if lim.urgent:
            what = f"{notice.release.name} {notice.release.version}" if notice else "update"
            raise HoldRefusedError(f"refused: the pending {what} is urgent; it allows no hold")
        hold = Hold(set_at=now, for_s=for_s, reason=reason, by=by)
        first = self._first(notice.notice_id) if notice is not None else None
        deadline = install_deadline(self.config, notice) if notice is not None else None
        until, _ = hold_end(hold, lim, now if first is None else first, deadline)
        if until <= now:
            raise HoldRefusedError(
                "refused: the pending update has been held for the longest allowed"
            )
        self.saved.hold = hold
        self._save()  # before answering: the hold the caller is told of survives a restart
        logger.info("hold by %s for %gs: %s", by, for_s, reason)
        self._wake()
        return until

    def release(self, by: str) -> bool:
        """End the hold; False when there was none."""
        hold = self.saved.hold
        if hold is None:
            return False
        self.saved.hold = None
        self._save()
        pending = self._current()
        if pending is not None and self._first(pending.notice_id) is not None:
            self.note, self._note_for = f"hold by {hold.by} released by {by}", pending.notice_id
        logger.info("hold released by %s", by)
        self._wake()
        return True

    def status(self) -> Hold | None:
        return self.saved.hold

    def take_note(self, notice_id: str) -> str:
        """What ended the last hold of ``notice_id``'s update, once (its install report's
        ``detail``); a note about another update is dropped."""
        note, self.note = self.note, ""
        return note if self._note_for == notice_id else ""

    # --- the check (the job runner) ----------------------------------------------------------

    def _first(self, notice_id: str) -> float | None:
        s = self.saved
        return s.first_held if s.notice_id == notice_id else None

    async def blocked(self, notice: UpdateNotice) -> Blocked | None:
        """None when no hold (any longer) stops ``notice`` installing now; asks the gate
        hook when no hold is set."""
        now = self.clock()
        lim = limits(self.config.holds, notice)
        hold = self.saved.hold
        if lim.urgent:
            if hold is not None and now < hold.set_at + hold.for_s:
                self._end(notice, f"urgent release: the hold by {hold.by} is not honoured")
            return None
        first = self._first(notice.notice_id)
        deadline = install_deadline(self.config, notice)
        if hold is not None:
            until, why = hold_end(hold, lim, now if first is None else first, deadline)
            if now < until:
                return self._block(notice, hold, until, now)
            if first is None:  # it ended before it held this update: nothing to say
                self._end(notice, "")
            else:
                self._end(notice, _ENDED[why].format(by=hold.by, each=_span(lim.each),
                                             total=_span(lim.total)))  # fmt: skip
        if not self.config.holds.gate_command:
            return None
        if first is not None and now >= first + lim.total:
            return None  # held to the bound already: the gate is not asked again
        held = 0.0 if first is None else now - first
        bounds = {"max_each_s": lim.each, "max_total_s": lim.total, "held_s": held}
        info = {**hook_input(self.config, notice), "holds": bounds}
        answer = await ask_gate(self.config.holds, info)
        if answer.note:
            self._add_note(notice, answer.note)
        if answer.hold_s <= 0:
            return None
        hold = Hold(set_at=now, for_s=answer.hold_s, reason=answer.reason, by="gate")
        self.saved.hold = hold
        self._save()
        until, _ = hold_end(hold, lim, now if first is None else first, deadline)
        if now >= until:  # the total bound leaves nothing
            self._end(notice, _ENDED["max_total"].format(by="gate", total=_span(lim.total)))
            return None
        return self._block(notice, hold, until, now)

    def _block(self, notice: UpdateNotice, hold: Hold, until: float, now: float) -> Blocked:
        self.note = ""  # an earlier hold's end led to this one, not to an install
        s = self.saved
        if s.notice_id != notice.notice_id or s.first_held is None:
            s.notice_id, s.first_held = notice.notice_id, now
            self._save()  # before the deferred report goes out
        reason = f"held by {hold.by}: {hold.reason}" if hold.reason else f"held by {hold.by}"
        return Blocked(until, reason, hold=True)

    def _end(self, notice: UpdateNotice, note: str) -> None:
        self.saved.hold = None
        self._save()
        self._add_note(notice, note)

    def _add_note(self, notice: UpdateNotice, note: str) -> None:
        if self._note_for != notice.notice_id:
            self.note, self._note_for = "", notice.notice_id
        self.note = "; ".join(n for n in (self.note, note) if n)
