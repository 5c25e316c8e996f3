"""Waiting for verdicts: one multiplexed long-poll for every call this gateway is holding."""

from __future__ import annotations

import logging
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio

from mcp_gateway.api_client import ApiClient, WaitAnswer
from mcp_gateway.errors import ApiRequestError, GatewayError

logger = logging.getLogger(__name__)

DECIDED_STATUSES = frozenset({"approved", "declined", "expired", "cancelled", "executing", "executed", "failed"})
# Held ids are spread over this many long-polls (by a hash of the id). A decision ends one poll, and
# that poll is restarted with its own ids only: with a thousand calls held, about sixty per restart
# instead of all of them (the restart, its id list and the hub's re-subscription were what a verdict
# waited for). Idle shards hold no connection.
SHARDS = 16


@dataclass
class _Shard:
    ids: set[str] = field(default_factory=set)
    changed: anyio.Event = field(default_factory=anyio.Event)


@dataclass
class _Waiter:
    event: anyio.Event = field(default_factory=anyio.Event)
    request: dict[str, Any] | None = None
    count: int = 0


class VerdictWaiter:
    """Keeps one `POST /approvals/wait` in flight per shard of the held approval ids.

    A new id restarts its shard's poll so it is included; a decision wakes only the calls waiting on
    that id, and re-polls only that id's shard.
    """

    def __init__(self, api: ApiClient, *, poll_seconds: float = 25.0, shards: int = SHARDS) -> None:
        self._api = api
        self._poll_seconds = poll_seconds
        self._waiters: dict[str, _Waiter] = {}
        self._shards = [_Shard() for _ in range(max(1, shards))]
        self.healthy = True

    def _shard(self, approval_id: str) -> _Shard:
        return self._shards[zlib.crc32(approval_id.encode()) % len(self._shards)]

    def _forget(self, approval_id: str) -> _Waiter | None:
        self._shard(approval_id).ids.discard(approval_id)
        return self._waiters.pop(approval_id, None)

    @property
    def holding(self) -> int:
        return len(self._waiters)

    async def wait_for_verdict(
        self,
        approval_id: str,
        within: float,
        *,
        tick: float | None = None,
        on_tick: Callable[[], Awaitable[None]] | None = None,
    ) -> dict[str, Any] | None:
        """The decided request, or None if no verdict arrived `within` seconds.

        The id stays registered for the whole wait (progress ticks included), so the shared
        long-poll is restarted only when a new id arrives, never by a tick.
        """
        waiter = self._waiters.get(approval_id)
        if waiter is None:
            waiter = self._waiters[approval_id] = _Waiter()
            shard = self._shard(approval_id)
            shard.ids.add(approval_id)
            shard.changed.set()
        waiter.count += 1
        try:
            deadline = anyio.current_time() + within
            while True:
                remaining = deadline - anyio.current_time()
                if remaining <= 0:
                    return None
                with anyio.move_on_after(min(tick or remaining, remaining)):
                    await waiter.event.wait()
                if waiter.event.is_set():
                    return waiter.request
                if on_tick is not None:
                    await on_tick()
        finally:
            waiter.count -= 1
            if waiter.count == 0 and self._waiters.get(approval_id) is waiter:
                self._forget(approval_id)

    def _deliver(self, request: dict[str, Any]) -> None:
        waiter = self._forget(str(request.get("id")))
        if waiter is not None:
            waiter.request = request
            waiter.event.set()

    async def run(self) -> None:
        async with anyio.create_task_group() as tg:
            for shard in self._shards:
                tg.start_soon(self._run_shard, shard)

    async def _run_shard(self, shard: _Shard) -> None:
        backoff = 0.5
        while True:
            if not shard.ids:
                await shard.changed.wait()
            shard.changed = anyio.Event()
            ids = sorted(shard.ids)
            if not ids:
                continue
            answer: WaitAnswer | GatewayError | None = None
            async with anyio.create_task_group() as tg:

                async def restart_on_change(scope: anyio.CancelScope = tg.cancel_scope) -> None:
                    await shard.changed.wait()
                    scope.cancel()

                async def poll(scope: anyio.CancelScope = tg.cancel_scope, ids: list[str] = ids) -> None:
                    nonlocal answer
                    try:
                        answer = await self._api.wait_for_any(ids, self._poll_seconds)
                    except ApiRequestError as exc:
                        logger.warning("the hub refused the approval wait: %s", exc.message)
                        answer = exc
                    except GatewayError as exc:
                        answer = exc
                    scope.cancel()

                tg.start_soon(restart_on_change)
                tg.start_soon(poll)
            if isinstance(answer, GatewayError):
                self.healthy = False
                logger.warning("approval wait failed, retrying in %.1fs: %s", backoff, answer.message)
                await anyio.sleep(backoff)
                backoff = min(10.0, backoff * 2)
                shard.changed.set()
                continue
            backoff = 0.5
            self.healthy = True
            if answer is not None:
                for request in answer.decided:
                    if str(request.get("status")) in DECIDED_STATUSES:
                        self._deliver(request)
