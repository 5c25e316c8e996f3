"""Stopping a worker with jobs in flight: they get a grace period to finish (arq's own `Worker.close()`
cancels them at once, a notification half sent included), then are cancelled, and the close runs to its
end (on_shutdown, the Redis pool) before the hub closes its database."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from arq import create_pool
from arq.connections import RedisSettings
from arq.worker import Worker, func

from workers.settings import close_worker


def _worker(redis_url: str, events: list[str]) -> Worker:
    async def quick(ctx: dict[str, Any]) -> None:
        events.append("quick started")
        await asyncio.sleep(0.3)
        events.append("quick finished")

    async def stuck(ctx: dict[str, Any]) -> None:
        events.append("stuck started")
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            events.append("stuck cancelled")
            raise

    async def on_shutdown(ctx: dict[str, Any]) -> None:
        events.append("on_shutdown")

    return Worker(functions=[func(quick, name="quick"), func(stuck, name="stuck")],
                  redis_settings=RedisSettings.from_dsn(redis_url), on_shutdown=on_shutdown,
                  handle_signals=False, poll_delay=0.05, queue_name=f"close-test-{id(events)}")


async def _run_until_started(redis_url: str, worker: Worker, events: list[str], *jobs: str) -> asyncio.Task[None]:
    pool = await create_pool(RedisSettings.from_dsn(redis_url))
    try:
        for job in jobs:
            await pool.enqueue_job(job, _queue_name=worker.queue_name)
    finally:
        await pool.aclose()
    task = asyncio.create_task(worker.async_run())
    for _ in range(200):
        if all(f"{job} started" in events for job in jobs):
            return task
        await asyncio.sleep(0.02)
    raise AssertionError(f"jobs did not start: {events}")


async def _stop_polling(task: asyncio.Task[None]) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_job_in_flight_finishes_within_the_grace_and_a_stuck_one_is_cancelled(redis_url: str) -> None:
    events: list[str] = []
    worker = _worker(redis_url, events)
    task = await _run_until_started(redis_url, worker, events, "quick", "stuck")
    await _stop_polling(task)
    await close_worker(worker, grace=1.0)
    assert events.index("quick finished") < events.index("stuck cancelled") < events.index("on_shutdown")
    assert worker._pool is None  # the close ran to its end


async def test_arq_close_alone_cuts_off_a_job_in_flight(redis_url: str) -> None:
    """What the grace period is for; if arq ever waits for jobs itself, `close_worker` can become `close()`."""
    events: list[str] = []
    worker = _worker(redis_url, events)
    task = await _run_until_started(redis_url, worker, events, "quick")
    await _stop_polling(task)
    await worker.close()
    await asyncio.sleep(0.5)
    assert "quick finished" not in events and "on_shutdown" in events
