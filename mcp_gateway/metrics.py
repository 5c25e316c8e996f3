"""The gateway's Prometheus metrics: calls by decision with their latency, served at GET /metrics."""

from __future__ import annotations

import functools
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

from mcp_gateway.api_client import REQUEST_ID
from mcp_gateway.results import STATUS_TOOL

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Receive, Scope, Send

    from mcp_gateway.checkpoint import Checkpoint

# Its own registry: an embedded gateway shares a process with the hub, whose /metrics stays the hub's.
REGISTRY = CollectorRegistry()
CALLS = Counter(
    "preloop_gateway_calls_total",
    "tools/call answered, by decision: allow, deny, approved (held, then run), pending, declined, expired, "
    "cancelled, error, status (calls of the approval-status tool).",
    ["decision"],
    registry=REGISTRY,
)
LATENCY = Histogram(
    "preloop_gateway_call_duration_seconds",
    "From receiving a tools/call to its result (a held call includes the human's time), by decision.",
    ["decision"],
    registry=REGISTRY,
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10, 30, 60),
)
_HELD: ContextVar[list[bool] | None] = ContextVar("preloop_gateway_held", default=None)
_VERDICTS = {"denied_by_policy": "deny", "pending_approval": "pending", "declined": "declined",
             "expired": "expired", "cancelled": "cancelled"}


def decision_of(result: Mapping[str, Any], *, held: bool) -> str:
    structured = result.get("structuredContent")
    status = structured.get("status") if isinstance(structured, Mapping) else None
    if isinstance(status, str) and status in _VERDICTS:
        return _VERDICTS[status]
    if result.get("isError") and isinstance(status, str):
        return "error"  # the gateway's own error results (hub unreachable, unknown tool, ...)
    return "approved" if held else "allow"


def install(checkpoint: Checkpoint) -> None:
    """Meter every settled call and give it a request id the hub sees (wraps the checkpoint's entry points)."""
    try_call = checkpoint.try_call

    @functools.wraps(try_call)
    async def metered(params: Mapping[str, Any], *, progress: Any, allow_hold: bool) -> dict[str, Any] | None:
        started = time.perf_counter()
        held: list[bool] = []
        rid_token = REQUEST_ID.set(uuid.uuid4().hex)
        held_token = _HELD.set(held)
        try:
            result = await try_call(params, progress=progress, allow_hold=allow_hold)
        finally:
            _HELD.reset(held_token)
            REQUEST_ID.reset(rid_token)
        if result is not None:  # None: handed to the slow path, which counts it
            decision = "status" if params.get("name") == STATUS_TOOL else decision_of(result, held=bool(held))
            CALLS.labels(decision).inc()
            LATENCY.labels(decision).observe(time.perf_counter() - started)
        return result

    checkpoint.try_call = metered  # type: ignore[method-assign]
    if checkpoint.api is not None:
        create = checkpoint.api.create_approval

        @functools.wraps(create)
        async def mark_held(*args: Any, **kwargs: Any) -> Any:
            held = _HELD.get()
            if held is not None:
                held.append(True)
            return await create(*args, **kwargs)

        checkpoint.api.create_approval = mark_held  # type: ignore[method-assign]


def serve_metrics(app: ASGIApp) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    """`app` with GET /metrics answered in front of it."""

    async def with_metrics(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/metrics" and scope["method"] in ("GET", "HEAD"):
            body = generate_latest(REGISTRY)
            headers = [(b"content-type", CONTENT_TYPE_LATEST.encode()), (b"content-length", str(len(body)).encode())]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": body if scope["method"] == "GET" else b""})
            return
        await app(scope, receive, send)

    return with_metrics
