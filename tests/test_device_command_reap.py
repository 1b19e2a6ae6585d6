"""A step cancelled or timed out mid-run leaves no process and no open pipe behind.

Found by the soak (the whole suite under two CPU hogs): an agent stopped while a health
check's output was unread ended the loop with the child's stdout transport open.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from orch_helpers import wait_until

from device_client.commands import run_command
from fleetpush_common.tasks import cancel_and_wait


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_a_cancelled_step_closes_its_pipes(tmp_path: Path) -> None:
    started = tmp_path / "started"
    # More output than the stream reader buffers, so its reading pauses: the case where
    # waiting for the exit alone never reaches EOF.
    script = f"head -c 300000 /dev/zero; touch {started}; sleep 30"
    before = _open_fds()
    task = asyncio.create_task(run_command(["sh", "-c", script], timeout_s=60))

    async def child_started() -> bool:
        return started.exists()

    await wait_until(child_started, what="the child to write its output")
    await cancel_and_wait(task)
    assert task.cancelled()
    assert _open_fds() == before


async def test_a_timed_out_step_closes_its_pipes() -> None:
    before = _open_fds()
    result = await run_command(["sh", "-c", "head -c 300000 /dev/zero; sleep 30"], timeout_s=0.5)
    assert result.timed_out
    assert _open_fds() == before
