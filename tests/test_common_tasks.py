"""cancel_and_wait ends tasks that swallow a cancel, as asyncio.wait_for does on Python 3.11."""

from __future__ import annotations

import asyncio

from fleetpush_common.tasks import cancel_and_wait


async def test_a_task_that_swallows_its_cancel_is_cancelled_again() -> None:
    started = asyncio.Event()
    swallowed = asyncio.Event()

    async def stubborn() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            swallowed.set()  # what wait_for does when its operation finished at the cancel
        await asyncio.Event().wait()  # work that never comes

    task = asyncio.create_task(stubborn())
    await started.wait()
    await cancel_and_wait(task, recancel_s=0.01)
    assert swallowed.is_set()
    assert task.cancelled()


async def test_ended_and_missing_tasks_are_fine_and_errors_are_retrieved() -> None:
    async def boom() -> None:
        raise RuntimeError("boom")

    failed = asyncio.create_task(boom())
    await asyncio.wait({failed})
    idle = asyncio.create_task(asyncio.Event().wait())
    await cancel_and_wait(failed, None, idle)
    assert idle.cancelled()
    assert isinstance(failed.exception(), RuntimeError)
