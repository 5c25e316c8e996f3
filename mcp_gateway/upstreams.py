"""Upstream MCP servers: one long-lived session each, restarted when it dies, spoken to in raw JSON-RPC."""

from __future__ import annotations

import logging
import os
import re
import shutil
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.abc
import httpx2
import mcp_types as types
from mcp.client.session import ClientSession, IncomingMessage
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.dispatcher import CallOptions, ProgressFnT
from mcp.shared.exceptions import MCPError
from mcp.shared.jsonrpc_dispatcher import JSONRPCDispatcher
from mcp_types import CONNECTION_CLOSED

from mcp_gateway._outbound_lane import HttpFastLane
from mcp_gateway.errors import UpstreamError
from policies import ServerConfig

logger = logging.getLogger(__name__)

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")

ToolsChanged = Callable[[], Awaitable[None]]
UpstreamEvent = Callable[[str, Any], Awaitable[None]]


def expand_env(value: str, environ: Mapping[str, str] | None = None) -> str:
    """Replace `${NAME}` with the environment variable; a missing variable is an error, not an empty string."""
    env = os.environ if environ is None else environ

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in env:
            raise UpstreamError(f"environment variable {name} is referenced by the policy but not set")
        return env[name]

    return _ENV_REF.sub(substitute, value)


class CommandNotFoundError(UpstreamError):
    """A stdio upstream's command does not exist: retrying cannot help, so calls fail at once."""


def resolve_command(server: str, command: Sequence[str]) -> list[str]:
    """The argv to spawn. `preloop` is this installation's CLI, run with the gateway's own interpreter,
    so the bundled demo works without the virtualenv on PATH."""
    argv = list(command)
    if not argv:
        raise UpstreamError(f"upstream {server!r} has neither a command nor a url", server=server)
    if argv[0] == "preloop":
        return [sys.executable, "-m", "backend.cli", *argv[1:]]
    if shutil.which(argv[0]) is None:
        raise CommandNotFoundError(
            f"upstream server {server!r}: command {argv[0]!r} not found "
            f"({'no such file' if os.sep in argv[0] else 'not on PATH'}); fix `command` of server "
            f"{server!r} in the policy or install it",
            server=server,
            command=argv[0],
        )
    return argv


class _WatchedDispatcher(JSONRPCDispatcher[Any]):
    """A JSON-RPC dispatcher that signals when its connection ends (EOF, process exit, HTTP failure)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.ended = anyio.Event()

    async def run(self, *args: Any, **kwargs: Any) -> None:
        try:
            await super().run(*args, **kwargs)
        finally:
            self.ended.set()


@dataclass(slots=True)
class _Live:
    session: ClientSession
    dispatcher: _WatchedDispatcher
    protocol_version: str


class Upstream:
    """One upstream server. `run()` supervises its session; calls wait for it and reuse it."""

    def __init__(self, config: ServerConfig, *, on_tools_changed: ToolsChanged | None = None) -> None:
        self.config = config
        self.name: str = config.name
        self._on_tools_changed = on_tools_changed
        self._live: _Live | None = None
        self._ready = anyio.Event()
        self.generation = 0
        self._generation_changed = anyio.Event()
        self.last_error: str | None = None
        self.broken: CommandNotFoundError | None = None  # set when retrying cannot help
        self._stop = anyio.Event()
        self.stop_reason = "stopped"
        self.fast_lane: HttpFastLane | None = None
        #: What the server declared at initialize (wire names: resources, prompts, completions, logging).
        self.capabilities: dict[str, Any] = {}
        #: Told of upstream resource/prompt list changes and log messages.
        self.on_event: UpstreamEvent | None = None

    def describe(self) -> str:
        if self.config.url:
            return str(self.config.url)
        return " ".join(self.config.command or [])

    def _transport(self) -> Any:
        if self.config.url:
            headers = {k: expand_env(str(v)) for k, v in (self.config.headers or {}).items()}
            client = httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30.0, read=300.0))
            return streamable_http_client(expand_env(str(self.config.url)), http_client=client)
        command = resolve_command(self.name, self.config.command or [])
        env = {k: expand_env(str(v)) for k, v in (self.config.env or {}).items()}
        return stdio_client(StdioServerParameters(command=command[0], args=command[1:], env=env or None))

    async def _on_message(self, message: IncomingMessage) -> None:
        if isinstance(message, types.ToolListChangedNotification) and self._on_tools_changed is not None:
            await self._on_tools_changed()
        elif self.on_event is not None:
            if isinstance(message, types.ResourceListChangedNotification):
                await self.on_event("resources_changed", None)
            elif isinstance(message, types.PromptListChangedNotification):
                await self.on_event("prompts_changed", None)
            elif isinstance(message, types.LoggingMessageNotification):
                await self.on_event("log", message.params)

    def offers(self, capability: str) -> bool:
        """Whether the connected server declared `capability` (resources, prompts, completions, logging)."""
        return self.capabilities.get(capability) is not None

    async def list_all(self, method: str, key: str) -> list[dict[str, Any]]:
        """Every page of a `*/list` method, merged."""
        items: list[dict[str, Any]] = []
        cursor: str | None = None
        while True:
            page = await self.request(method, {"cursor": cursor} if cursor else None, retry_safe=True)
            items.extend(page.get(key) or [])
            cursor = page.get("nextCursor")
            if not cursor:
                return items

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Keep a session open until `stop()`; reconnect with backoff whenever it ends."""
        started = False
        backoff = 0.2
        while not self._stop.is_set():
            try:
                async with AsyncExitStack() as stack:
                    read, write = await stack.enter_async_context(self._transport())
                    dispatcher = _WatchedDispatcher(read, write)
                    session = ClientSession(dispatcher=dispatcher, message_handler=self._on_message)
                    await stack.enter_async_context(session)
                    with anyio.fail_after(30):
                        init = await session.initialize()
                    self._live = _Live(session, dispatcher, str(init.protocol_version))
                    self.capabilities = init.capabilities.model_dump(by_alias=True, exclude_none=True)
                    if self.config.url and self.fast_lane is None:
                        await self._open_fast_lane()
                    self.generation += 1
                    self.last_error = None
                    self._ready.set()
                    self._generation_changed.set()
                    self._generation_changed = anyio.Event()
                    if not started:
                        started = True
                        task_status.started()
                    elif self._on_tools_changed is not None:
                        # A restarted server may offer different tools.
                        await self._on_tools_changed()
                    backoff = 0.2
                    async with anyio.create_task_group() as tg:

                        async def stop_on_end(ended: anyio.Event = dispatcher.ended) -> None:
                            await ended.wait()
                            tg.cancel_scope.cancel()

                        async def stop_on_request() -> None:
                            await self._stop.wait()
                            tg.cancel_scope.cancel()

                        tg.start_soon(stop_on_end)
                        tg.start_soon(stop_on_request)
                    if self._stop.is_set():
                        logger.info("upstream %s (%s) stopped: %s", self.name, self.describe(), self.stop_reason)
                    else:
                        logger.warning("upstream %s (%s) disconnected; restarting", self.name, self.describe())
            except CommandNotFoundError as exc:
                self.broken = exc
                self.last_error = exc.message
                logger.error("%s", exc.message)  # noqa: TRY400 - the message is the whole story
                self._stop.set()
            except Exception as exc:  # supervisor boundary: any failure means reconnect
                self.last_error = f"{type(exc).__name__}: {exc}"
                logger.warning("upstream %s (%s) failed: %s", self.name, self.describe(), self.last_error)
            finally:
                self._live = None
                self._ready = anyio.Event()
            if not started:
                started = True
                task_status.started()
            if self._stop.is_set():
                break
            await anyio.sleep(backoff)
            backoff = min(5.0, backoff * 2)
        if self.fast_lane is not None:
            lane, self.fast_lane = self.fast_lane, None
            await lane.aclose()

    async def _open_fast_lane(self) -> None:
        """Modern HTTP upstreams take allowed calls as stateless POSTs, skipping the session's layers."""
        assert self.config.url is not None
        headers = {k: expand_env(str(v)) for k, v in (self.config.headers or {}).items()}
        lane = HttpFastLane(expand_env(str(self.config.url)), headers)
        if await lane.probe():
            self.fast_lane = lane
            logger.info("upstream %s speaks %s; allowed calls use the fast lane", self.name, lane.version)
        else:
            await lane.aclose()

    def stop(self, reason: str = "stopped") -> None:
        self.stop_reason = reason
        self._stop.set()

    async def wait_for_generation(self, generation: int) -> None:
        """Wait until the session has (re)connected at least `generation` times."""
        while self.generation < generation:
            await self._generation_changed.wait()

    async def _session(self, connect_within: float) -> _Live:
        live = self._live
        if live is not None and not live.dispatcher.ended.is_set():
            return live
        if self.broken is not None:
            raise self.broken
        with anyio.move_on_after(connect_within):
            while True:
                await self._ready.wait()
                live = self._live
                if live is not None and not live.dispatcher.ended.is_set():
                    return live
                await anyio.sleep(0.01)
        detail = f": {self.last_error}" if self.last_error else ""
        raise UpstreamError(f"upstream server {self.name!r} is not available{detail}", server=self.name)

    async def request(
        self,
        method: str,
        params: Mapping[str, Any] | None,
        *,
        on_progress: ProgressFnT | None = None,
        retry_safe: bool = False,
        connect_timeout: float = 30.0,
    ) -> dict[str, Any]:
        """Send one JSON-RPC request as-is and return the raw result dict.

        A request that failed because the connection was already gone never reached the server,
        so it is resent once on the new session; `retry_safe` extends that to any closed connection.
        """
        lane = self.fast_lane
        if lane is not None and method == "tools/call" and on_progress is None and params is not None:
            return await lane.call_tool(params)
        for attempt in range(2):
            live = await self._session(connect_timeout)
            opts: CallOptions = {"headers": {"mcp-protocol-version": live.protocol_version}}
            if on_progress is not None:
                opts["on_progress"] = on_progress
            dead_before = live.dispatcher.ended.is_set()
            try:
                return await live.dispatcher.send_raw_request(method, params, opts)
            except MCPError as exc:
                if exc.code != CONNECTION_CLOSED or attempt == 1 or not (dead_before or retry_safe):
                    if exc.code == CONNECTION_CLOSED:
                        raise UpstreamError(
                            f"upstream server {self.name!r} closed the connection during {method}",
                            server=self.name,
                        ) from exc
                    raise
                logger.info("upstream %s was gone; resending %s on the new session", self.name, method)
                with anyio.move_on_after(connect_timeout):
                    await live.dispatcher.ended.wait()
        raise AssertionError("unreachable")

    async def list_tools(self) -> list[dict[str, Any]]:
        tools: list[dict[str, Any]] = []
        cursor: str | None = None
        while True:
            params = {"cursor": cursor} if cursor else None
            page = await self.request("tools/list", params, retry_safe=True)
            tools.extend(page.get("tools") or [])
            cursor = page.get("nextCursor")
            if not cursor:
                if self.fast_lane is not None:
                    self.fast_lane.absorb_tools(tools)
                return tools


@dataclass(frozen=True, slots=True)
class ToolRoute:
    """Where an exposed tool name leads: which upstream, under which name, with which wire definition."""

    exposed_name: str
    server: str
    tool_name: str
    definition: dict[str, Any]


def exposed_name(config: ServerConfig, tool_name: str) -> str:
    """The name agents see: the upstream's own, or `<prefix>_<name>` when the server sets a prefix."""
    prefix = getattr(config, "prefix", None)
    if prefix is True:
        prefix = config.name
    if isinstance(prefix, str) and prefix:
        return f"{prefix}_{tool_name}"
    return tool_name


class UpstreamPool:
    """All configured upstreams and the merged tool table agents see.

    Resources, resource templates and prompts are merged on each list request (prompts renamed like
    tools); reads, prompt gets and completions are routed back to the server that offered them.
    """

    def __init__(self, *, on_tools_changed: ToolsChanged | None = None) -> None:
        self.upstreams: dict[str, Upstream] = {}
        self.routes: dict[str, ToolRoute] = {}
        self._on_tools_changed = on_tools_changed
        #: Told of every upstream's resource/prompt list changes and log messages: (kind, server, payload).
        self.on_upstream_event: Callable[[str, str, Any], Awaitable[None]] | None = None
        self._resource_routes: dict[str, str] = {}
        self._template_routes: list[tuple[str, str]] = []
        self._prompt_routes: dict[str, tuple[str, str]] = {}
        self._tg: anyio.abc.TaskGroup | None = None
        self._refresh_lock = anyio.Lock()
        self.tools_refreshed = anyio.Event()

    async def run(self, configs: Sequence[ServerConfig], *, task_status: anyio.abc.TaskStatus[None]) -> None:
        async with anyio.create_task_group() as tg:
            self._tg = tg
            await self.apply(configs)
            task_status.started()
            await anyio.sleep_forever()

    async def apply(self, configs: Sequence[ServerConfig]) -> None:
        """Start new upstreams, stop removed or changed ones (a new policy version may change servers)."""
        assert self._tg is not None, "UpstreamPool.run must be started first"
        wanted = {c.name: c for c in configs}
        for name, upstream in list(self.upstreams.items()):
            if name not in wanted or wanted[name] != upstream.config:
                reason = "removed by the new policy" if name not in wanted else "its configuration changed"
                logger.info("upstream %s: %s", name, reason)
                upstream.stop(reason)
                del self.upstreams[name]
        started: list[Upstream] = []
        for name, config in wanted.items():
            if name not in self.upstreams:
                upstream = Upstream(config, on_tools_changed=self._make_tools_changed(name))
                upstream.on_event = self._make_event(name)
                self.upstreams[name] = upstream
                started.append(upstream)
        for upstream in started:
            await self._tg.start(upstream.run)
        await self.refresh_tools()

    def _make_event(self, name: str) -> UpstreamEvent:
        async def event(kind: str, payload: Any) -> None:
            if self.on_upstream_event is not None:
                await self.on_upstream_event(kind, name, payload)

        return event

    # -- resources, prompts, completion, logging ----------------------------------------------------

    def _offering(self, capability: str) -> list[Upstream]:
        return [u for u in self.upstreams.values() if u.offers(capability)]

    async def _merged(self, capability: str, method: str, key: str) -> list[tuple[Upstream, dict[str, Any]]]:
        out: list[tuple[Upstream, dict[str, Any]]] = []
        for upstream in self._offering(capability):
            try:
                items = await upstream.list_all(method, key)
            except (UpstreamError, MCPError) as exc:
                logger.warning("cannot list %s of upstream %s: %s", key, upstream.name, exc)
                continue
            out.extend((upstream, item) for item in items)
        return out

    async def list_resources(self) -> list[dict[str, Any]]:
        merged = await self._merged("resources", "resources/list", "resources")
        self._resource_routes = {str(item.get("uri")): u.name for u, item in merged}
        return [item for _, item in merged]

    async def list_resource_templates(self) -> list[dict[str, Any]]:
        merged = await self._merged("resources", "resources/templates/list", "resourceTemplates")
        self._template_routes = [(str(item.get("uriTemplate", "")).split("{", 1)[0], u.name) for u, item in merged]
        return [item for _, item in merged]

    async def list_prompts(self) -> list[dict[str, Any]]:
        merged = await self._merged("prompts", "prompts/list", "prompts")
        prompts = []
        self._prompt_routes = {}
        for upstream, item in merged:
            exposed = exposed_name(upstream.config, str(item.get("name")))
            self._prompt_routes[exposed] = (upstream.name, str(item.get("name")))
            prompts.append({**item, "name": exposed})
        return prompts

    def server_for_uri(self, uri: str) -> str | None:
        """Which upstream serves `uri`: listed there, under one of its templates, or the only one with resources."""
        if uri in self._resource_routes:
            return self._resource_routes[uri]
        routes = self._template_routes
        matches = [(len(prefix), server) for prefix, server in routes if prefix and uri.startswith(prefix)]
        if matches:
            return max(matches)[1]
        offering = self._offering("resources")
        return offering[0].name if len(offering) == 1 else None

    async def route_prompt(self, exposed: str) -> tuple[str, str] | None:
        if exposed not in self._prompt_routes:
            await self.list_prompts()
        return self._prompt_routes.get(exposed)

    async def resolve_uri(self, uri: str) -> str | None:
        server = self.server_for_uri(uri)
        if server is None:
            await self.list_resources()
            await self.list_resource_templates()
            server = self.server_for_uri(uri)
        return server

    async def set_logging_level(self, params: Mapping[str, Any]) -> None:
        for upstream in self._offering("logging"):
            try:
                await upstream.request("logging/setLevel", dict(params))
            except (UpstreamError, MCPError) as exc:
                logger.warning("upstream %s refused logging/setLevel: %s", upstream.name, exc)

    def _make_tools_changed(self, name: str) -> ToolsChanged:
        async def changed() -> None:
            logger.info("upstream %s changed its tools", name)
            assert self._tg is not None
            self._tg.start_soon(self._refresh_and_notify)

        return changed

    async def _refresh_and_notify(self) -> None:
        await self.refresh_tools()
        if self._on_tools_changed is not None:
            await self._on_tools_changed()

    async def refresh_tools(self) -> None:
        async with self._refresh_lock:
            routes: dict[str, ToolRoute] = {}
            for name, upstream in self.upstreams.items():
                try:
                    tools = await upstream.list_tools()
                except (UpstreamError, MCPError) as exc:
                    logger.warning("cannot list tools of upstream %s (keeping its last list): %s", name, exc)
                    for kept in self.routes.values():
                        if kept.server == name:
                            routes.setdefault(kept.exposed_name, kept)
                    continue
                for tool in tools:
                    exposed = exposed_name(upstream.config, str(tool["name"]))
                    if exposed in routes:
                        logger.warning(
                            "tool %r of upstream %s collides with upstream %s; set `prefix` on one of them",
                            exposed,
                            name,
                            routes[exposed].server,
                        )
                        continue
                    routes[exposed] = ToolRoute(exposed, name, str(tool["name"]), {**tool, "name": exposed})
            self.routes = routes
            self.tools_refreshed.set()
            self.tools_refreshed = anyio.Event()

    def route(self, exposed: str) -> ToolRoute | None:
        return self.routes.get(exposed)

    def broken_upstreams(self) -> list[str]:
        """Why configured upstreams cannot run at all (e.g. a missing command), one message each."""
        return [u.broken.message for u in self.upstreams.values() if u.broken is not None]
