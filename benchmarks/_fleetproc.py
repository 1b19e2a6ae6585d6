"""A benchmark worker process: runs a share of the simulated fleet (real device agents).

Spoken to over stdin/stdout, one JSON object per line:

    in : {"config": {...}}                 start the agents (first line)
    out: {"ready": n, "rss_kb": k}         every agent connected and trusts keyring >= 1
    in : {"watch": rollout_id, "timeout": s, "until": "succeeded"}
    out: {"watched": rollout_id, "count": n, "first": t, "last": t, "cpu_s": c,
          "until_count": n, "until_last": t}
         perf_counter times of each agent's first report of the rollout, and the CPU seconds
         this process used while watching; with ``until``, it waits until every agent has
         also reported that state and gives the last one's time
    in : {"stop": true}
    out: {"stopped": n}

``time.perf_counter()`` is CLOCK_MONOTONIC, the same clock in every process of the machine,
so the parent compares these times with its own.
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks._verifyproc import cpu_seconds
from fleetpush_sim.fleet import Behaviour, Observer, SimDevice, SimFleet
from fleetpush_sim.limits import freeze_heap, raise_open_files


def _say(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def _ready(fleet: SimFleet) -> int:
    n = 0
    for agent in fleet.agents.values():
        s = agent.session
        if s is not None and s.connected.is_set() and agent.trust.trusted.keyring.version >= 1:
            n += 1
    return n


async def _main() -> None:
    raise_open_files()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 24)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    async def read() -> dict[str, Any]:
        line = await reader.readline()
        if not line:
            raise EOFError
        data: dict[str, Any] = json.loads(line)
        return data

    c = (await read())["config"]
    behaviour = Behaviour(health_check=c.get("health_check", False),
                          hold_updates=c.get("hold_updates", False))  # fmt: skip
    fleet = SimFleet(
        Path(c["state_root"]), broker_url=c["broker_url"], topic_prefix=c["prefix"],
        root_keys=[c["root_key"]], groups=c["groups"], observer=Observer(),
    )  # fmt: skip
    fleet.add(SimDevice(d, pw, behaviour) for d, pw in c["devices"])
    await fleet.start(batch=c.get("batch", 100), pause_s=c.get("pause_s", 0.05))
    deadline = time.monotonic() + c.get("ready_timeout", 120)
    while _ready(fleet) < len(fleet.devices) and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.1)
    freeze_heap()
    _say({"ready": _ready(fleet), "rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss})
    try:
        while True:
            cmd = await read()
            if "watch" in cmd:
                rid, until = str(cmd["watch"]), cmd.get("until")
                cpu = cpu_seconds()
                end = time.monotonic() + float(cmd.get("timeout", 60))
                obs = fleet.observer
                while len(obs.notified(rid)) < len(fleet.devices) or (
                    until and len(obs.times(rid, until)) < len(fleet.devices)
                ):
                    if time.monotonic() > end:
                        break
                    await asyncio.sleep(0.005)
                times = obs.notified(rid).values()
                done = obs.times(rid, until).values() if until else ()
                _say({"watched": rid, "count": len(times), "first": min(times, default=None),
                      "last": max(times, default=None), "cpu_s": cpu_seconds() - cpu,
                      "until_count": len(done), "until_last": max(done, default=None)})  # fmt: skip
            elif cmd.get("stop"):
                break
    except EOFError:
        pass
    n = len(fleet.agents)
    await fleet.stop()
    _say({"stopped": n})


if __name__ == "__main__":
    logging.basicConfig(level=logging.ERROR)
    asyncio.run(_main())
