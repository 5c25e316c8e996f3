"""The gateway runtime: wires the API client, policy snapshot, audit spool, upstreams and the MCP server."""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable, Coroutine, Mapping, Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from types import TracebackType
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
from mcp.server.stdio import stdio_server

from mcp_gateway import metrics
from mcp_gateway.agents import AgentDirectory
from mcp_gateway.api_client import AgentIdentity, ApiClient
from mcp_gateway.checkpoint import Checkpoint
from mcp_gateway.config import GatewaySettings
from mcp_gateway.errors import GatewayError, HubAuthError
from mcp_gateway.server import GatewayServer
from mcp_gateway.snapshot import PolicySnapshot
from mcp_gateway.spool import KEY_REFUSED, AuditSpool
from mcp_gateway.upstreams import UpstreamPool
from policies import Policy, PolicyError, load_policy

logger = logging.getLogger(__name__)

LOCAL_AGENT = AgentIdentity(id="local", name="local-agent")


class Gateway:
    """`async with Gateway(settings) as gw:` starts everything; then `gw.serve_stdio()` or `gw.serve_http()`."""

    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.api = ApiClient(settings.api_url, settings.api_key)
        self.snapshot = PolicySnapshot()
        self.spool = AuditSpool(settings.data_dir)
        self.pool = UpstreamPool(on_tools_changed=self._tools_changed)
        self.checkpoint: Checkpoint | None = None
        self.directory: AgentDirectory | None = None
        self.mcp: GatewayServer | None = None
        self._stack = AsyncExitStack()
        self._tg: anyio.abc.TaskGroup | None = None
        self._cache = settings.data_dir / "last-policy.json"

    @property
    def server(self) -> GatewayServer:
        assert self.mcp is not None, "enter the Gateway first"
        return self.mcp

    async def __aenter__(self) -> Gateway:
        try:
            self._tg = await self._stack.enter_async_context(anyio.create_task_group())
            self._stack.push_async_callback(self.api.aclose)
            self._stack.callback(self.spool.close)
            agent = await self._identity()
            self.checkpoint = Checkpoint(
                pool=self.pool,
                snapshot=self.snapshot,
                spool=self.spool,
                api=self.api,
                agent=agent,
                hold_window=self.settings.hold_window,
                background=self._spawn,
            )
            metrics.install(self.checkpoint)
            if self.settings.policy_file is None or self.settings.require_agent_key:
                self.directory = AgentDirectory(self.settings.api_url, ttl=self.settings.agent_key_ttl)
                self._stack.push_async_callback(self.directory.aclose)
            self.mcp = GatewayServer(
                self.checkpoint, directory=self.directory, require_agent_key=self.settings.require_agent_key
            )
            self.pool.on_upstream_event = self.mcp.relay_upstream_event
            await self._tg.start(self.pool.run, [])
            self.snapshot.on_change(self._policy_changed)
            if self.settings.policy_file is not None:
                await self.snapshot.load_file(self.settings.policy_file)
            else:
                # The hub first: a cached snapshot may be older and laxer than the active policy.
                fetched = await self.snapshot.fetch_first(self.api, within=self.settings.startup_timeout)
                if not fetched and self.snapshot.hub_unreachable:
                    await self._load_cached()
                self._tg.start_soon(self._follow_api)
            self._tg.start_soon(self.spool.run, self._send_audit)
            if self.checkpoint.waiter is not None:
                self._tg.start_soon(self.checkpoint.waiter.run)
        except BaseException:
            await self.aclose()
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._tg is not None:
            self._tg.cancel_scope.cancel()
        await self._stack.aclose()

    def _spawn(self, work: Callable[[], Coroutine[Any, Any, None]]) -> None:
        assert self._tg is not None
        self._tg.start_soon(work)

    async def _identity(self) -> AgentIdentity:
        if not self.settings.api_key:
            if self.settings.policy_file is None:
                logger.warning("PRELOOP_API_KEY is not set; the hub will refuse this gateway's requests")
            return LOCAL_AGENT
        cache = self.settings.data_dir / "identity.json"
        try:
            agent = await self.api.me()
        except HubAuthError as exc:
            # Not "unreachable": the hub answered and said no. Tool calls will say so too.
            self.snapshot.hub_failed(exc)  # logs it
            return LOCAL_AGENT
        except GatewayError as exc:
            if cache.exists():
                data = json.loads(cache.read_text())
                logger.warning("hub unreachable (%s); using the cached agent identity", exc.message)
                return AgentIdentity(id=data["id"], name=data["name"], labels=data.get("labels", {}))
            logger.warning("hub unreachable (%s); identity unknown until it answers", exc.message)
            return LOCAL_AGENT
        cache.write_text(json.dumps({"id": agent.id, "name": agent.name, "labels": agent.labels}))
        return agent

    async def _load_cached(self) -> None:
        """Serve the last good snapshot on disk while the hub is unreachable (and only then)."""
        reason = self.snapshot.problem.message if self.snapshot.problem is not None else "no answer"
        if not self._cache.exists():
            logger.warning("hub unreachable (%s) and no cached policy: calls fail closed until it answers", reason)
            return
        try:
            data = json.loads(self._cache.read_text())
            policy = load_policy(data["source"], source=f"cached policy v{data['version']}")
        except (ValueError, KeyError, PolicyError):
            logger.warning("ignoring an unreadable cached policy at %s", self._cache)
            return
        version = int(data["version"])
        logger.warning(
            "hub unreachable (%s): serving the CACHED policy version %s from %s until the hub answers",
            reason,
            version,
            self._cache,
        )
        await self.snapshot.install(
            policy,
            version=version,
            source_name=f"cached policy v{version}",
            source_text=data["source"],
            origin="cache",
        )

    async def _send_audit(self, records: Sequence[Mapping[str, Any]]) -> list[str] | None:
        """Deliver records under the key of the agent that made each call, so the hub stamps the right agent.

        Records of an agent whose key this process has not seen (e.g. after a restart) go out under
        PRELOOP_API_KEY; the hub then keeps the claimed agent as `reported_agent`.
        """
        verdicts: list[str] = []
        start = 0
        while start < len(records):
            agent_id = _agent_id(records[start])
            end = start + 1
            while end < len(records) and _agent_id(records[end]) == agent_id:
                end += 1
            client = self.directory.client_for_agent(agent_id) if self.directory is not None else None
            try:
                answer = await (client or self.api).send_audit(records[start:end])
            except HubAuthError as exc:
                if client is None:
                    raise  # this gateway's own key: kept until the operator fixes PRELOOP_API_KEY
                # The calling agent's key was revoked since: its records can never go out under it.
                answer = [f"{KEY_REFUSED}: {exc.message}"] * (end - start)
            verdicts += answer if answer is not None else ["accepted"] * (end - start)
            start = end
        return verdicts

    def health(self) -> dict[str, Any]:
        """What `/health` reports: where the policy in force came from and whether the hub answers."""
        snap = self.snapshot
        problem = snap.problem
        hub_state = "reachable"
        if isinstance(problem, HubAuthError):
            hub_state = "key_refused"
        elif problem is not None:
            hub_state = "unreachable"
        if self.settings.policy_file is not None:
            hub_state = "not_used"
        ok = snap.has_policy and snap.origin in ("hub", "file") and problem is None
        return {
            "status": "ok" if ok else "degraded",
            "policy": {
                "source": snap.origin,
                "version": snap.version,
                "hash": snap.policy.version_hash if snap.has_policy else None,
                "name": snap.source_name,
            },
            "hub": {"url": self.settings.api_url, "state": hub_state, "error": problem.message if problem else None},
        }

    async def _follow_api(self) -> None:
        # A gateway closed right after starting cancels this before it first runs: notice it before
        # touching the (by then closed) API client.
        await anyio.lowlevel.checkpoint()
        await self.snapshot.follow_api(self.api, wait=self.settings.policy_wait)

    async def _policy_changed(self, policy: Policy) -> None:
        if self.snapshot.version is not None and self.settings.policy_file is None:
            cached = {"version": self.snapshot.version, "source": self.snapshot.source_text}
            self._cache.write_text(json.dumps(cached))
        await self.pool.apply(policy.servers)
        await self._tools_changed()

    async def _tools_changed(self) -> None:
        if self.mcp is not None:
            await self.mcp.notify_tools_changed()

    async def serve_stdio(self) -> None:
        async with stdio_server() as (read, write):
            await self.server.server.run(read, write, self.server.server.create_initialization_options())

    def http_app(self, host: str = "127.0.0.1") -> Any:
        app = self.server.http_app(host=host, health=self.health, fast_path=self.fast_path)
        app.inner = metrics.serve_metrics(app.inner)  # GET /metrics; tools/call keeps its fast path
        return app

    @functools.cached_property
    def fast_path(self) -> bool:
        """Whether the hand-written front and fast lane serve HTTP (off by setting, or if uvicorn moved)."""
        if not self.settings.fast_path:
            logger.info("PRELOOP_GATEWAY_FAST_PATH=0: serving through uvicorn and the SDK's ASGI app only")
            return False
        from mcp_gateway._inbound import hook_problems

        problems = hook_problems()
        if problems:
            logger.error(
                "the installed uvicorn changed the private hooks the gateway's HTTP front uses (%s); serving "
                "through the plain ASGI app instead (slower, same answers)",
                "; ".join(problems),
            )
            return False
        return True

    async def serve_http(self, host: str, port: int, *, started: anyio.Event | None = None) -> None:
        import uvicorn

        from mcp_gateway._inbound import protocol_for

        app = self.http_app(host)
        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            log_level="warning",
            lifespan="on",
            access_log=False,
            # Agents talk to the gateway directly; no proxy headers to trust, no per-response extras.
            proxy_headers=False,
            server_header=False,
            date_header=False,
            http=protocol_for(app) if self.fast_path else "httptools",
        )
        server = uvicorn.Server(config)
        if started is None:
            await server.serve()
            return
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.serve)
            while not server.started:  # noqa: ASYNC110 - uvicorn offers no started event
                await anyio.sleep(0.01)
            started.set()


def _agent_id(record: Mapping[str, Any]) -> str:
    agent = record.get("agent")
    return str(agent.get("id", "")) if isinstance(agent, Mapping) else ""


def data_dir_for(path: str | Path | None) -> Path:
    return Path(path) if path else GatewaySettings().data_dir
