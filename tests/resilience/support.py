"""Helpers of the fault tests: polling, reading audit events, calling a tool through a gateway."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from mcp import Client

from tests.resilience.conftest import Cluster


async def until(check: Callable[[], Awaitable[Any]], timeout: float, what: str) -> Any:
    """Poll `check` until it returns something truthy; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        found = await check()
        if found:
            return found
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.2)


async def audit_events(cluster: Cluster, kind: str, subject_id: str | None = None) -> list[dict[str, Any]]:
    from backend.audit.tables import AuditEvent

    condition = AuditEvent.kind == kind
    if subject_id is not None:
        condition &= AuditEvent.subject_id == subject_id
    async with cluster.database():
        rows = await AuditEvent.select().where(condition).order_by(AuditEvent.seq).output(load_json=True)
    return list(rows)


async def call_tool(url: str, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    """One agent session calling one tool through a gateway (the gateway's own key)."""
    async with Client(url) as client:
        result = await client.call_tool(name, arguments)
    return dict(result.model_dump(by_alias=True, mode="json"))
