"""The running hub: database, Redis, the wake-up bus and the job queue (connections only: an in-process
worker is started beside it by `workers.embedded`)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from arq import create_pool
from arq.connections import ArqRedis
from piccolo.engine.base import Engine

from backend import db
from backend.bus import Bus
from backend.redis_conn import RedisHandle, connect_redis
from backend.settings import Settings

logger = logging.getLogger("preloop.hub")


@dataclass
class Hub:
    settings: Settings
    engine: Engine[Any] | None = None
    redis: RedisHandle | None = None
    bus: Bus = field(default_factory=lambda: Bus(None))
    jobs: ArqRedis | None = None
    closing: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when the hub begins shutting down: long-polls answer now and event streams end."""
    _shutdown_callbacks: set[Callable[[], None]] = field(default_factory=set)

    def begin_shutdown(self) -> None:
        """Wake every long-poll and stream so each ends with a proper response (idempotent)."""
        if self.closing.is_set():
            return
        self.closing.set()
        for callback in list(self._shutdown_callbacks):
            try:
                callback()
            except Exception:  # one waiter's failure must not keep the others open
                logger.exception("shutdown callback failed")

    def at_shutdown(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call `callback` when shutdown begins (at once if it has); return the unregister function."""
        if self.closing.is_set():
            callback()
            return lambda: None
        self._shutdown_callbacks.add(callback)
        return lambda: self._shutdown_callbacks.discard(callback)

    async def start(self, *, migrate: bool = True) -> None:
        self.settings.secret_key()  # generated and stored (0600) on first start when not configured
        self.engine = await db.connect(self.settings.database_url)
        if self.settings.database.embedded:
            db_file = Path(self.settings.database_url.removeprefix("sqlite:///"))
            for path in (db_file, *(db_file.with_name(db_file.name + s) for s in ("-wal", "-shm", "-journal"))):
                if path.exists():
                    path.chmod(0o600)  # the database holds password and key hashes
        if migrate:
            await db.migrate()
        await db.check_server(self.engine)
        self.redis = await connect_redis(self.settings.redis.url, embedded_data_dir=self.settings.server.data_dir)
        self.bus = Bus(self.redis.client)
        await self.bus.start()
        self.jobs = await create_pool(self.redis.arq_settings())
        logger.info(
            "hub started",
            extra={
                "database": "postgresql" if db.is_postgres(self.engine) else "sqlite",
                "redis": "embedded" if self.redis.embedded is not None else "external",
            },
        )

    async def stop(self) -> None:
        self.begin_shutdown()
        await self.bus.stop()
        if self.jobs is not None:
            await self.jobs.aclose()
        if self.redis is not None:
            await self.redis.close()
        if self.engine is not None:
            await db.disconnect(self.engine)

    async def enqueue(self, function: str, *args: Any, job_id: str | None = None, defer_until: Any = None) -> None:
        """Queue a job; a failure here is logged, never raised: the sweep is the backstop."""
        if self.jobs is None:
            return
        try:
            await self.jobs.enqueue_job(function, *args, _job_id=job_id, _defer_until=defer_until)
        except Exception:
            logger.exception("could not queue job; the sweep will catch it", extra={"job": function})

    async def health(self) -> dict[str, Any]:
        report: dict[str, Any] = {"status": "ok"}
        try:
            await db.ping(self.engine)
            report["database"] = {"ok": True, "kind": "postgresql" if db.is_postgres(self.engine) else "sqlite"}
        except Exception as exc:  # report, don't raise: this is the health endpoint
            report["database"] = {"ok": False, "error": str(exc).splitlines()[0] if str(exc) else type(exc).__name__}
        try:
            assert self.redis is not None
            await asyncio.wait_for(self.redis.client.ping(), timeout=2)
            beat = await self.redis.client.get("preloop:worker:heartbeat")
            report["redis"] = {"ok": True, "embedded": self.redis.embedded is not None}
            report["worker"] = {"last_heartbeat": beat.decode() if beat else None}
        except Exception as exc:  # report, don't raise
            report["redis"] = {"ok": False, "error": str(exc).splitlines()[0] if str(exc) else type(exc).__name__}
        if not (report["database"]["ok"] and report["redis"]["ok"]):
            report["status"] = "degraded"
        return report
