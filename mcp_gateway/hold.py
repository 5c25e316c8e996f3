"""Waiting for verdicts: one multiplexed long-poll for every call this gateway is holding."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio

from mcp_gateway.api_client import ApiClient, WaitAnswer
from mcp_gateway.errors import ApiRequestError, GatewayError

logger = logging.getLogger(__name__)

DECIDED_STATUSES = frozenset({"approved", "declined", "expired", "cancelled", "executing", "executed", "failed"})


@dataclass
class _Waiter:
    event: anyio.Event = field(default_factory=anyio.Event)
    request: dict[str, Any] | None = None
    count: int = 0


class VerdictWaiter:
    """Keeps exactly one `GET /approvals/wait` in flight covering every held approval id.

    A new id restarts the poll so it is included; a decision wakes only the calls waiting on that id.
    """

    def __init__(self, api: ApiClient, *, poll_seconds: float = 25.0) -> None:
        self._api = api
        self._poll_seconds = poll_seconds
        self._waiters: dict[str, _Waiter] = {}
        self._changed = anyio.Event()
        self.healthy = True

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
            self._changed.set()
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
                del self._waiters[approval_id]

    def _deliver(self, request: dict[str, Any]) -> None:
        waiter = self._waiters.pop(str(request.get("id")), None)
        if waiter is not None:
            waiter.request = request
            waiter.event.set()

    async def run(self) -> None:
        backoff = 0.5
        while True:
            if not self._waiters:
                await self._changed.wait()
            self._changed = anyio.Event()
            ids = sorted(self._waiters)
            if not ids:
                continue
            answer: WaitAnswer | GatewayError | None = None
            async with anyio.create_task_group() as tg:

                async def restart_on_change(scope: anyio.CancelScope = tg.cancel_scope) -> None:
                    await self._changed.wait()
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
                self._changed.set()
                continue
            backoff = 0.5
            self.healthy = True
            if answer is not None:
                for request in answer.decided:
                    if str(request.get("status")) in DECIDED_STATUSES:
                        self._deliver(request)
