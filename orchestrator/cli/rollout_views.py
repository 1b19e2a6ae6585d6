"""How the CLI shows a rollout: per-phase bars, its success gate, a dry-run plan."""

from __future__ import annotations

from typing import Any

from rich.console import Group
from rich.progress import BarColumn, Progress, TextColumn
from rich.text import Text

__all__ = ["approval_line", "gate_lines", "plan_lines", "render_status"]


def gate_lines(gate: dict[str, Any]) -> list[str]:
    """Nothing when the gate is met; else what it needs, has, and what lets it go on."""
    if gate["met"]:
        return []
    lines = [f"phase {gate['phase']} gate not met: needs {gate['needed']}; has {gate['have']}"]
    if gate["next"]:
        lines.append(gate["next"])
    return lines


def render_status(d: dict[str, Any]) -> Group:
    """Per-phase progress bars and per-state counts (rich renderable)."""
    head = Text(
        f"rollout {d['id']}: {d['release']['name']} {d['release']['version']} - {d['state']}"
        f" - phase {d['current_phase']}/{len(d['phases'])} - {d['devices']} device(s)"
        + (f"\n{d['reason']}" if d["reason"] else ""),
        style="bold",
    )
    # Fits 80 columns: a short bar, and only the counts that are not zero.
    bars = Progress(TextColumn("{task.description}"), BarColumn(bar_width=20),
                    TextColumn("{task.completed}/{task.total}"), TextColumn("{task.fields[info]}"),
                    auto_refresh=False)  # fmt: skip
    for p in d["phases"]:
        if p["devices"]:
            counts = (("failed", p["failed"]), ("in flight", p["in_flight"]),
                      ("pending", p["pending"]), ("offline", p["waiting_offline"]),
                      ("canceled", p["canceled"]))  # fmt: skip
            info = "  ".join(f"{name} {n}" for name, n in counts if n)
        else:
            info = "no devices (phase too small)"
        # An empty phase is 0/0, not 0/1: rich draws a bar of total 0 as empty.
        bars.add_task(f"phase {p['index']} {p['percent']:g}% {p.get('status', '')}",
                      total=p["devices"], completed=p["succeeded"], info=info)  # fmt: skip
    states = Text("  ".join(f"{k}: {v}" for k, v in sorted(d["states"].items())) or "no devices")
    parts: list[Any] = [head, bars, states]
    line = approval_line(d)
    if line:
        parts.append(Text(line))
    gate = d.get("gate")
    if gate and d["state"] in ("running", "paused"):
        parts += [Text(line) for line in gate_lines(gate)]
    return Group(*parts)


def approval_line(d: dict[str, Any]) -> str:
    """Who created the rollout and where its four-eyes approval stands ("" when it needs
    none)."""
    a = d.get("approval") or {}
    if not a.get("required"):
        return ""
    if a["state"] == "pending":
        return (
            f"awaiting approval: created by {d['created_by']}; another operator or an admin "
            f"approves it (fleetpush rollout approve {d['id']}) or rejects it"
        )
    return f"{a['state']} by {a['decided_by']} (created by {d['created_by']})"


def plan_lines(plan: dict[str, Any]) -> list[str]:
    """A dry run: the devices of each phase, then the ones something holds back."""
    lines = [f"dry run: {plan['total']} device(s); nothing was created"]
    for p in plan["phases"]:
        shown = ", ".join(p["devices"][:20])
        more = f" (+{len(p['devices']) - 20} more)" if len(p["devices"]) > 20 else ""
        lines.append(f"phase {p['phase']} ({p['percent']:g}%): {len(p['devices'])} device(s)"
                     f"{': ' + shown + more if shown else ''}")  # fmt: skip
    if plan.get("requires_approval"):
        lines.append("needs approval: another operator or an admin must approve it")
    for h in plan["held"]:
        where = f"phase {h['phase']}" if h["phase"] is not None else "left out"
        why = ", ".join(
            f"other_rollout (rollout {h['rollout_id']}"
            + (", a feature rollout: taken from it" if h.get("superseded") else "")
            + ")"
            if r == "other_rollout"
            else r
            for r in h["reasons"]
        )
        lines.append(f"held: {h['device']} ({where}): {why}")
    return lines
