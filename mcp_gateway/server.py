"""The MCP server agents connect to: lists the merged tools and routes every call through the checkpoint."""

from __future__ import annotations

import functools
import logging
import warnings
import weakref
from collections.abc import Callable, Mapping
from typing import Any

import mcp_types as types
from mcp.server.connection import Connection
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.lowlevel import NotificationOptions, Server
from mcp.server.models import InitializationOptions
from mcp.server.subscriptions import (
    InMemorySubscriptionBus,
    ListenHandler,
    PromptsListChanged,
    ResourcesListChanged,
    ToolsListChanged,
)
from mcp.shared.exceptions import MCPDeprecationWarning, MCPError
from mcp_types.methods import CACHEABLE_METHODS
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from mcp_gateway._inbound_lane import FastPathApp
from mcp_gateway.agents import CURRENT_CALLER, AgentDirectory
from mcp_gateway.checkpoint import Checkpoint
from mcp_gateway.errors import GatewayError, ResourceRefusedError
from mcp_gateway.results import DETAIL_KEY, STATUS_KEY, error_result

logger = logging.getLogger(__name__)

INSTRUCTIONS = (
    "Tools here are guarded by Preloop. Some calls run at once, some are denied by policy and some wait "
    "for a human approver. The gateway's own results carry their status in _meta['dev.preloop/status']: "
    "'pending_approval' means the call has not run yet: check it with preloop_approval_status or repeat the "
    "same call later; 'denied_by_policy', 'declined', 'expired' and 'cancelled' mean it did not run."
)


INVALID_REQUEST = -32600
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
#: JSON-RPC error code of a `resources/read` the policy refused or held (status in `data`).
REFUSED = -32001


async def _unreachable(ctx: Any, params: Any) -> Any:
    raise MCPError(INTERNAL_ERROR, "handled by the gateway's middleware")


def _bearer(request: Any) -> str | None:
    """The `Authorization: Bearer` token of an HTTP request (None for stdio and in-process agents)."""
    headers = getattr(request, "headers", None)
    if headers is None:
        return None
    value = str(headers.get("authorization") or "")
    scheme, _, token = value.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def _plain(detail: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in detail.items() if isinstance(v, str | int | float | bool | dict | list | None)}


class _GatewayServer(Server[Any]):
    """Advertises `tools.listChanged` on every transport (upstream changes are relayed)."""

    def create_initialization_options(
        self,
        notification_options: NotificationOptions | None = None,
        experimental_capabilities: dict[str, dict[str, Any]] | None = None,
        extensions: dict[str, dict[str, Any]] | None = None,
    ) -> InitializationOptions:
        return super().create_initialization_options(
            notification_options
            or NotificationOptions(tools_changed=True, resources_changed=True, prompts_changed=True),
            experimental_capabilities,
            extensions,
        )


class GatewayServer:
    """Wraps the lowlevel `Server`; `tools/call` takes a fast path that skips model validation both ways."""

    def __init__(
        self,
        checkpoint: Checkpoint,
        *,
        name: str = "preloop-gateway",
        version: str = "0.1.0",
        directory: AgentDirectory | None = None,
        require_agent_key: bool = False,
    ) -> None:
        self.checkpoint = checkpoint
        #: Checks the agent keys HTTP clients send; None: every caller is the gateway's own key.
        self.directory = directory
        self.require_agent_key = require_agent_key
        self._bus = InMemorySubscriptionBus()
        # Handshake-era clients get change notifications on their connection's standalone stream.
        self._legacy_connections: weakref.WeakSet[Connection] = weakref.WeakSet()
        # Logging is deprecated from protocol 2026-07-28 on, but older clients still use it and the gateway
        # relays it faithfully: declaring it is deliberate, so its warning would only be noise at start.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=MCPDeprecationWarning)
            self.server = _GatewayServer(
                name,
                version=version,
                instructions=INSTRUCTIONS,
                on_list_tools=self._list_tools,
                on_call_tool=self._call_tool_typed,
                on_subscriptions_listen=ListenHandler(self._bus),
                # Declared so the server advertises these capabilities; `_intercept` answers them raw.
                on_list_resources=_unreachable,
                on_list_resource_templates=_unreachable,
                on_read_resource=_unreachable,
                on_list_prompts=_unreachable,
                on_get_prompt=_unreachable,
                on_completion=_unreachable,
                on_set_logging_level=_unreachable,
            )
        # Our middleware replaces the default OpenTelemetry one: a span per message costs more than a proxy hop.
        self.server.middleware = [self._intercept_call]
        self._proxied = {
            "resources/list": self._resources_list,
            "resources/templates/list": self._templates_list,
            "resources/read": self._resources_read,
            "prompts/list": self._prompts_list,
            "prompts/get": self._prompts_get,
            "completion/complete": self._complete,
            "logging/setLevel": self._set_level,
        }

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
        key = _bearer(ctx.request) if self.directory is not None else None
        if key is None:
            return await self._serve(ctx, call_next)
        assert self.directory is not None
        try:
            caller = await self.directory.caller_for(key)
        except GatewayError as exc:
            if ctx.method == "tools/call":
                return self._for_version(ctx, error_result(exc))
            if ctx.method in self._proxied:
                raise MCPError(INVALID_REQUEST, exc.message, {STATUS_KEY: exc.status}) from exc
            return await call_next(ctx)  # initialize, tools/list, ping: no identity needed
        token = CURRENT_CALLER.set(caller)
        try:
            return await self._serve(ctx, call_next)
        finally:
            CURRENT_CALLER.reset(token)

    async def _serve(self, ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        proxied = self._proxied.get(ctx.method)
        if proxied is not None:
            self._remember(ctx)
            params = ctx.params if isinstance(ctx.params, Mapping) else {}
            try:
                result = await proxied(ctx, params)
            except GatewayError as exc:
                data = {STATUS_KEY: exc.detail.get("status", exc.status), DETAIL_KEY: _plain(exc.detail)}
                raise MCPError(REFUSED if isinstance(exc, ResourceRefusedError) else INTERNAL_ERROR, exc.message,
                               data) from exc
            return self._for_version(ctx, result)
        if ctx.method != "tools/call" or not isinstance(ctx.params, Mapping):
            return await call_next(ctx)
        self._remember(ctx)
        session = ctx.session
        progress = None
        meta = ctx.params.get("_meta")
        if isinstance(meta, Mapping) and meta.get("progressToken") is not None:
            progress = session.report_progress
        result = await self.checkpoint.call(ctx.params, progress=progress)
        return self._for_version(ctx, result)

    def _for_version(self, ctx: ServerRequestContext[Any, Any], result: dict[str, Any]) -> dict[str, Any]:
        if ctx.protocol_version in MODERN_PROTOCOL_VERSIONS:
            if "resultType" not in result:
                result = {**result, "resultType": "complete"}
            if ctx.method in CACHEABLE_METHODS:
                # Merged and policy-filtered answers: immediately stale, never shared across agents.
                result = {"ttlMs": 0, "cacheScope": "private", **result}
        elif "resultType" in result or "ttlMs" in result:
            result = {k: v for k, v in result.items() if k not in ("resultType", "ttlMs", "cacheScope")}
        return result

    # -- resources, prompts, completion, logging (raw pass-through, routed by the pool) -------------

    async def _resources_list(self, ctx: Any, params: Mapping[str, Any]) -> dict[str, Any]:
        return {"resources": await self.checkpoint.pool.list_resources()}

    async def _templates_list(self, ctx: Any, params: Mapping[str, Any]) -> dict[str, Any]:
        return {"resourceTemplates": await self.checkpoint.pool.list_resource_templates()}

    async def _resources_read(self, ctx: Any, params: Mapping[str, Any]) -> dict[str, Any]:
        return await self.checkpoint.read_resource(params)

    async def _prompts_list(self, ctx: Any, params: Mapping[str, Any]) -> dict[str, Any]:
        return {"prompts": await self.checkpoint.pool.list_prompts()}

    async def _prompts_get(self, ctx: Any, params: Mapping[str, Any]) -> dict[str, Any]:
        pool = self.checkpoint.pool
        route = await pool.route_prompt(str(params.get("name", "")))
        if route is None:
            raise MCPError(INVALID_PARAMS, f"no upstream server offers a prompt named {params.get('name')!r}")
        server, name = route
        return await pool.upstreams[server].request("prompts/get", {**params, "name": name})

    async def _complete(self, ctx: Any, params: Mapping[str, Any]) -> dict[str, Any]:
        pool = self.checkpoint.pool
        ref = params.get("ref")
        ref = ref if isinstance(ref, Mapping) else {}
        if ref.get("type") == "ref/prompt":
            route = await pool.route_prompt(str(ref.get("name", "")))
            if route is None:
                raise MCPError(INVALID_PARAMS, f"no upstream server offers a prompt named {ref.get('name')!r}")
            server, name = route
            forwarded = {**params, "ref": {**ref, "name": name}}
        else:
            found = await pool.resolve_uri(str(ref.get("uri", "")))
            if found is None:
                raise MCPError(INVALID_PARAMS, f"no upstream server offers the resource {ref.get('uri')!r}")
            server, forwarded = found, dict(params)
        upstream = pool.upstreams[server]
        if not upstream.offers("completions"):
            return {"completion": {"values": [], "hasMore": False}}
        return await upstream.request("completion/complete", forwarded)

    async def _set_level(self, ctx: Any, params: Mapping[str, Any]) -> dict[str, Any]:
        await self.checkpoint.pool.set_logging_level(params)
        return {}

    async def relay_upstream_event(self, kind: str, server: str, payload: Any) -> None:
        """An upstream's list change or log message, passed on to every connected agent."""
        if kind == "resources_changed":
            await self._bus.publish(ResourcesListChanged())
        elif kind == "prompts_changed":
            await self._bus.publish(PromptsListChanged())
        for connection in list(self._legacy_connections):
            try:
                if kind == "resources_changed":
                    await connection.send_resource_list_changed()
                elif kind == "prompts_changed":
                    await connection.send_prompt_list_changed()
                elif kind == "log" and payload is not None:
                    params = payload.model_dump(by_alias=True, exclude_none=True, mode="json")
                    await connection.notify("notifications/message", params)
            except Exception:  # a closed agent connection must not stop the others
                logger.debug("dropping %s for a closed connection", kind, exc_info=True)
                self._legacy_connections.discard(connection)

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
        return FastPathApp(
            inner,
            settle,
            path=path,
            local_only=local,
            health=health,
            enabled=fast_path,
            require_agent_key=self.require_agent_key,
        )

    async def notify_tools_changed(self) -> None:
        """Tell every connected agent the tool list changed (legacy sessions and modern listen streams)."""
        await self._bus.publish(ToolsListChanged())
        for connection in list(self._legacy_connections):
            try:
                await connection.send_tool_list_changed()
            except Exception:  # a closed agent connection must not stop the others
                logger.debug("dropping list_changed for a closed connection", exc_info=True)
                self._legacy_connections.discard(connection)
