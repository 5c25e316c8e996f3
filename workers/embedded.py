"""The arq worker inside an API process (`preloop serve` without `--no-worker`, and the test hub).

It shares the running hub's database and Redis; the hub itself only holds connections and knows
nothing of workers, so importing the hub never imports the job registry (and through it the flows).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from arq.worker import Worker

from workers.settings import build_worker, close_worker

if TYPE_CHECKING:
    from backend.hub import Hub

logger = logging.getLogger("preloop.worker")


class EmbeddedWorker:
    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.worker: Worker | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> EmbeddedWorker:
        assert self.hub.redis is not None, "start the hub first"
        self.worker = build_worker(self.hub.redis.arq_settings(), hub=self.hub)
        self._task = asyncio.create_task(self.worker.async_run(), name="preloop-worker")
        logger.info("in-process worker started")
        return self

    async def stop(self) -> None:
        """Stop before the hub closes its connections (jobs in flight end on a live database): stop
        taking jobs, give those in flight a few seconds, then close."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self.worker is not None:
            await close_worker(self.worker, grace=1.0)  # `preloop serve` stops within two seconds
