"""The MCP server agents connect to: lists the merged tools and routes every call through the checkpoint."""

from __future__ import annotations

import functools
import logging
import weakref
from collections.abc import Callable, Mapping
from typing import Any

import mcp_types as types
from mcp.server.connection import Connection
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.lowlevel import NotificationOptions, Server
from mcp.server.models import InitializationOptions
from mcp.server.subscriptions import InMemorySubscriptionBus, ListenHandler, ToolsListChanged
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from mcp_gateway.checkpoint import Checkpoint
from mcp_gateway.fastlane import FastPathApp

logger = logging.getLogger(__name__)

INSTRUCTIONS = (
    "Tools here are guarded by Preloop. Some calls run at once, some are denied by policy and some wait "
    "for a human approver. The gateway's own results carry their status in _meta['dev.preloop/status']: "
    "'pending_approval' means the call has not run yet: check it with preloop_approval_status or repeat the "
    "same call later; 'denied_by_policy', 'declined', 'expired' and 'cancelled' mean it did not run."
)


class _GatewayServer(Server[Any]):
    """Advertises `tools.listChanged` on every transport (upstream changes are relayed)."""

    def create_initialization_options(
        self,
        notification_options: NotificationOptions | None = None,
        experimental_capabilities: dict[str, dict[str, Any]] | None = None,
        extensions: dict[str, dict[str, Any]] | None = None,
    ) -> InitializationOptions:
        return super().create_initialization_options(
            notification_options or NotificationOptions(tools_changed=True),
            experimental_capabilities,
            extensions,
        )


class GatewayServer:
    """Wraps the lowlevel `Server`; `tools/call` takes a fast path that skips model validation both ways."""

    def __init__(self, checkpoint: Checkpoint, *, name: str = "preloop-gateway", version: str = "0.1.0") -> None:
        self.checkpoint = checkpoint
        self._bus = InMemorySubscriptionBus()
        # Handshake-era clients get change notifications on their connection's standalone stream.
        self._legacy_connections: weakref.WeakSet[Connection] = weakref.WeakSet()
        self.server = _GatewayServer(
            name,
            version=version,
            instructions=INSTRUCTIONS,
            on_list_tools=self._list_tools,
            on_call_tool=self._call_tool_typed,
            on_subscriptions_listen=ListenHandler(self._bus),
        )
        # Our middleware replaces the default OpenTelemetry one: a span per message costs more than a proxy hop.
        self.server.middleware = [self._intercept_call]

    def _remember(self, ctx: ServerRequestContext[Any, Any]) -> None:
        if ctx.protocol_version not in MODERN_PROTOCOL_VERSIONS:
            # `ServerSession` is per request; the connection it wraps lives as long as the client.
            connection = getattr(ctx.session, "_connection", None)
            if isinstance(connection, Connection):
                self._legacy_connections.add(connection)

    async def _list_tools(
        self, ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        self._remember(ctx)
        return types.ListToolsResult.model_validate({"tools": self.checkpoint.list_tools()}, by_name=False)

    async def _call_tool_typed(
        self, ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        # Only reached if the middleware is removed; kept so the server advertises and serves tools/call.
        raw = params.model_dump(by_alias=True, mode="json", exclude_none=True)
        return types.CallToolResult.model_validate(await self.checkpoint.call(raw), by_name=False)

    async def _intercept_call(self, ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        if ctx.method != "tools/call" or not isinstance(ctx.params, Mapping):
            return await call_next(ctx)
        self._remember(ctx)
        session = ctx.session
        progress = None
        meta = ctx.params.get("_meta")
        if isinstance(meta, Mapping) and meta.get("progressToken") is not None:
            progress = session.report_progress
        result = await self.checkpoint.call(ctx.params, progress=progress)
        if ctx.protocol_version in MODERN_PROTOCOL_VERSIONS:
            if "resultType" not in result:
                result = {**result, "resultType": "complete"}
        elif "resultType" in result:
            result = {k: v for k, v in result.items() if k != "resultType"}
        return result

    def http_app(
        self,
        *,
        host: str = "127.0.0.1",
        path: str = "/mcp",
        health: Callable[[], dict[str, Any]] | None = None,
        fast_path: bool = True,
    ) -> FastPathApp:
        """The streamable-HTTP ASGI app: the SDK's, behind the tools/call fast path (and `/health`)."""
        inner = self.server.streamable_http_app(host=host, streamable_http_path=path)
        local = host in ("127.0.0.1", "localhost", "::1")
        # Settles what needs no waiting; None sends the call to the SDK app, which may hold it.
        settle = functools.partial(self.checkpoint.try_call, progress=None, allow_hold=False)
        return FastPathApp(inner, settle, path=path, local_only=local, health=health, enabled=fast_path)

    async def notify_tools_changed(self) -> None:
        """Tell every connected agent the tool list changed (legacy sessions and modern listen streams)."""
        await self._bus.publish(ToolsListChanged())
        for connection in list(self._legacy_connections):
            try:
                await connection.send_tool_list_changed()
            except Exception:  # a closed agent connection must not stop the others
                logger.debug("dropping list_changed for a closed connection", exc_info=True)
                self._legacy_connections.discard(connection)
