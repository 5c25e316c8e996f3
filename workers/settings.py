"""arq worker: deadline jobs, sweeps and (later) notification delivery."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import Any

from arq import cron
from arq.connections import RedisSettings
from arq.worker import Worker

from workers.registry import cron_jobs, functions

logger = logging.getLogger("preloop.worker")


async def heartbeat(ctx: dict[str, Any]) -> str:
    """Tell /health the worker is alive."""
    stamp = datetime.now(UTC).isoformat()
    await ctx["redis"].set("preloop:worker:heartbeat", stamp, ex=300)
    return stamp


async def _startup(ctx: dict[str, Any]) -> None:
    hub = ctx.get("hub")
    if hub is None:  # standalone `preloop worker`: bring up our own hub without a worker inside
        from backend.hub import Hub
        from backend.settings import load_settings

        hub = Hub(load_settings())
        await hub.start(migrate=False)
        ctx["hub"] = hub
        ctx["own_hub"] = True
    from backend.notifications.channels import get_channel, known_kinds
    from backend.notifications.render import warm

    for kind in known_kinds():  # import them now, not inside the first fan-out
        get_channel(kind)
    warm("email.txt", "email.html")
    await heartbeat(ctx)


async def _shutdown(ctx: dict[str, Any]) -> None:
    from backend.notifications.channels.email import close_pools
    from backend.notifications.channels.webpush import close_clients

    close_pools()
    await close_clients()
    if ctx.get("own_hub"):
        await ctx["hub"].stop()


def build_worker(redis_settings: RedisSettings, *, hub: Any = None, burst: bool = False) -> Worker:
    return Worker(
        functions=[heartbeat, *functions()],
        cron_jobs=[cron(heartbeat, second={0, 30}, run_at_startup=False), *cron_jobs()],
        redis_settings=redis_settings,
        on_startup=_startup,
        on_shutdown=_shutdown,
        ctx={"hub": hub} if hub is not None else {},
        burst=burst,
        handle_signals=hub is None,
        max_jobs=50,
        keep_result=60,
        poll_delay=0.2,
    )


async def close_worker(worker: Worker, *, grace: float = 3.0) -> None:
    """`Worker.close()` for a worker that has stopped polling, after the jobs in flight had `grace` seconds
    to finish: arq's close cancels them at once, so a notification being sent was cut off (its row stays
    `sending` until its lease ends and the sweep sends it again) and a job waiting on a shared statement
    (`notifications.batching`) left that statement running on its own while the hub closed. A job still
    running after the grace is cancelled and awaited here."""
    running = [task for task in worker.tasks.values() if not task.done()]
    if running:
        await asyncio.wait(running, timeout=grace)
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
    for job_id, task in list(worker.tasks.items()):  # done: what arq's own poll loop drops
        if task.done():
            del worker.tasks[job_id]
    await worker.close()
