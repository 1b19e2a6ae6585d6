"""A rollout on a three-node nats-server cluster that loses the devices' node (issue 14.4).

``fleetpush demo --broker-cluster 3`` in rounds: each round runs the same rollout twice on
a fresh cluster, once with node a (every device's) SIGKILLed when the first device has
verified its notice, once without, alternating which goes first. Recorded per run: the
rollout's completion time, and with the kill, the time from the SIGKILL until every device
was connected to another node. The ratio is the kill run's completion time to the same
round's run without. docs/performance.md has the figures.
"""

from __future__ import annotations

import os
import statistics
from typing import Any

from fleetpush_sim.demo import DemoOptions, run_demo


def _one(devices: int, kill: bool) -> dict[str, Any]:
    s = run_demo(DemoOptions(devices=devices, broker_cluster=3, kill_broker_node=kill))
    return {
        "kill": kill,
        "rollout_state": s["rollout_state"],
        "devices_succeeded": s["devices_succeeded"],
        "time_to_complete_s": s["time_to_complete_s"],
        "time_to_reconnect_s": s["time_to_reconnect_s"],
        "devices_by_node": s["devices_by_node"],
        "load": os.getloadavg()[0],
    }


def run(quick: bool = False) -> dict[str, Any]:
    devices, rounds = (10, 1) if quick else (20, 4)
    out: dict[str, Any] = {"devices": devices, "load_before": os.getloadavg(), "rounds": []}
    for r in range(rounds):
        order = (True, False) if r % 2 else (False, True)
        runs = {kill: _one(devices, kill) for kill in order}
        killed, calm = runs[True], runs[False]
        ratio = None
        if killed["time_to_complete_s"] and calm["time_to_complete_s"]:
            ratio = round(killed["time_to_complete_s"] / calm["time_to_complete_s"], 2)
        out["rounds"].append({"with_kill": killed, "without": calm, "ratio": ratio})
    ratios = [r["ratio"] for r in out["rounds"] if r["ratio"]]
    moves = [r["with_kill"]["time_to_reconnect_s"] for r in out["rounds"]]
    out["median_ratio"] = statistics.median(ratios) if ratios else None
    out["reconnect_s"] = moves
    out["load_after"] = os.getloadavg()
    return out
