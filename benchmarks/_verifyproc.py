"""A benchmark worker process: minimal raw MQTT clients, each verifying with the device's
real verifier (``fleetpush_protocol.DeviceTrust``).

This isolates what a fan-out costs a *device*: receive the PUBLISH, then the full notice
verification (decode, signatures, expiry, sequence, targeting), with no MQTT library in
between. One line of JSON per message on stdin/stdout:

    in : {"config": {...}}                      connect every client (first line)
    out: {"ready": n}
    in : {"mark": true}                         start counting this process's CPU time
    out: {"marked": true}
    in : {"wait": k, "timeout": s}              until every client verified k notices
    out: {"count": n, "last": t, "cpu_s": c}    perf_counter of the last k-th verification;
                                                CPU seconds used since the mark
    in : {"stop": true}
"""

from __future__ import annotations

import asyncio
import json
import resource
import sys
import time
from typing import Any

from benchmarks._mqtt_raw import RawSubscriber, connect_all
from fleetpush_protocol.driver import Accepted, DeviceTrust
from fleetpush_protocol.verify import DeviceIdentity, TrustedKeyring
from fleetpush_sim.limits import freeze_heap, raise_open_files


def verifier(device_id: str, group: str, keyring: bytes, root: bytes) -> Any:
    """The (topic, payload) -> verified? callback of one simulated device."""
    trust = DeviceTrust(trusted=TrustedKeyring.anchor([root]))
    trust.on_keyring(keyring)
    identity = DeviceIdentity(device_id, "bench", frozenset({group}), "1.0.0")

    def on_publish(_topic: str, payload: bytes) -> bool:
        return isinstance(trust.on_notice(payload, identity, int(time.time())), Accepted)

    return on_publish


def cpu_seconds() -> float:
    """User plus system CPU time this process has used so far."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _say(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def _main() -> None:
    raise_open_files()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 26)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    c = json.loads(await reader.readline())["config"]
    keyring, root = bytes.fromhex(c["keyring"]), bytes.fromhex(c["root"])
    subs = [
        RawSubscriber(d, d, pw, c["topics"][d], on_publish=verifier(d, c["group"], keyring, root))
        for d, pw in c["devices"]
    ]
    await connect_all(subs, c["host"], c["port"])
    freeze_heap()
    _say({"ready": len(subs)})
    mark = cpu_seconds()
    while line := await reader.readline():
        cmd = json.loads(line)
        if cmd.get("stop"):
            break
        if cmd.get("mark"):
            mark = cpu_seconds()
            _say({"marked": True})
            continue
        k, deadline = cmd["wait"], time.monotonic() + cmd["timeout"]
        while any(len(s.received) < k for s in subs) and time.monotonic() < deadline:  # noqa: ASYNC110 - polling keeps the receive path free of extra bookkeeping
            await asyncio.sleep(0.002)
        done = [s.received[k - 1] for s in subs if len(s.received) >= k]
        _say({"count": len(done), "last": max(done, default=None),
              "cpu_s": cpu_seconds() - mark})  # fmt: skip
    for s in subs:
        await s.close()


if __name__ == "__main__":
    asyncio.run(_main())
