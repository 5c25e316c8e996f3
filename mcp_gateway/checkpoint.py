"""The policy checkpoint: every tools/call is allowed, denied or held here before it reaches an upstream."""

from __future__ import annotations

import asyncio
import copy
import logging
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import anyio
from mcp.shared.dispatcher import ProgressFnT
from mcp.shared.exceptions import MCPError

from mcp_gateway.agents import CURRENT_CALLER, Caller
from mcp_gateway.api_client import AgentIdentity, ApiClient, ApprovalTicket, arguments_hash
from mcp_gateway.errors import (
    ApiRequestError,
    ApiUnavailableError,
    GatewayError,
    HashMismatchError,
    JustificationError,
    ResourceRefusedError,
    UnknownToolError,
    UpstreamError,
)
from mcp_gateway.hold import VerdictWaiter
from mcp_gateway.results import (
    DETAIL_KEY,
    STATUS_KEY,
    STATUS_TOOL,
    STATUS_TOOL_DEFINITION,
    denied_result,
    error_result,
    for_tool,
    pending_result,
    tool_result,
    verdict_result,
)
from mcp_gateway.snapshot import PolicySnapshot
from mcp_gateway.spool import AuditSpool, PreparedRecord
from mcp_gateway.upstreams import ToolRoute, UpstreamPool
from policies import AgentInfo, CallContext, Policy
from policies.engine import RESOURCE_READ

logger = logging.getLogger(__name__)

JUSTIFICATION = "justification"

Progress = ProgressFnT


def with_justification(definition: Mapping[str, Any], mode: str) -> dict[str, Any]:
    """The tool definition agents see: a `justification` string added (and required) when the policy asks."""
    if mode not in ("required", "optional"):
        return dict(definition)
    tool = copy.deepcopy(dict(definition))
    schema = tool.setdefault("inputSchema", {"type": "object"})
    properties = schema.setdefault("properties", {})
    if JUSTIFICATION in properties:
        return dict(definition)  # the upstream has its own `justification`; leave it alone
    properties[JUSTIFICATION] = {
        "type": "string",
        "description": "Why this call is needed. Shown to the human approvers and kept in the audit log.",
    }
    if mode == "required":
        schema["required"] = [*schema.get("required", []), JUSTIFICATION]
        tool["description"] = (tool.get("description") or "").rstrip() + (
            "\n\nPreloop: this tool requires a `justification` argument explaining why the call is needed."
        )
    return tool


@dataclass(frozen=True, slots=True)
class _Judged:
    route: ToolRoute
    arguments: dict[str, Any]
    justification: str | None


class Checkpoint:
    """Judges and executes tool calls; all results are wire-shaped `CallToolResult` dicts."""

    def __init__(
        self,
        *,
        pool: UpstreamPool,
        snapshot: PolicySnapshot,
        spool: AuditSpool,
        api: ApiClient | None,
        agent: AgentIdentity,
        hold_window: float = 50.0,
        progress_interval: float = 5.0,
        background: Callable[[Callable[[], Coroutine[Any, Any, None]]], None] | None = None,
    ) -> None:
        self.pool = pool
        self.snapshot = snapshot
        self.spool = spool
        self.api = api
        self.agent = agent
        self.hold_window = hold_window
        self.progress_interval = progress_interval
        # Where follow-up work (outcome reports) runs, so the agent gets its result first.
        self._background = background
        self.waiter = VerdictWaiter(api) if api is not None else None
        self._agent_info = AgentInfo(name=agent.name, id=agent.id, labels=dict(agent.labels))
        self._default_caller = Caller(agent, api)
        self._infos: dict[str, AgentInfo] = {}

    # -- tools/list -------------------------------------------------------------------------------

    def list_tools(self) -> list[dict[str, Any]]:
        policy = self.snapshot.policy if self.snapshot.has_policy else None
        tools = []
        for route in self.pool.routes.values():
            mode = policy.justification_for(route.tool_name, route.server) if policy is not None else "none"
            tools.append(with_justification(route.definition, mode))
        tools.append(STATUS_TOOL_DEFINITION)
        return tools

    # -- tools/call -------------------------------------------------------------------------------

    async def call(self, params: Mapping[str, Any], *, progress: Progress | None = None) -> dict[str, Any]:
        """Handle one raw `tools/call` params dict and return the raw result dict."""
        result = await self.try_call(params, progress=progress, allow_hold=True)
        assert result is not None
        return result

    async def try_call(
        self, params: Mapping[str, Any], *, progress: Progress | None, allow_hold: bool
    ) -> dict[str, Any] | None:
        """Judge and run one call; with `allow_hold=False`, None when it must be held (the slow path's job)."""
        name = str(params.get("name", ""))
        arguments = dict(params.get("arguments") or {})
        # The answered tool's definition: the gateway's own results must be valid for it.
        definition: Mapping[str, Any] | None = None
        try:
            if name == STATUS_TOOL:
                return await self.approval_status(str(arguments.get("approval_id", "")))
            policy = self.snapshot.policy
            judged = self._prepare(policy, name, arguments)
            definition = judged.route.definition
            decision = policy.evaluate(
                CallContext(
                    tool=judged.route.tool_name,
                    server=judged.route.server,
                    args=judged.arguments,
                    agent=self._info(),
                    justification=judged.justification,
                    now=datetime.now(UTC),
                )
            )
            action = decision.action
            if action == "allow":
                return await self._forward_allowed(judged, params, decision, progress)
            if action == "deny":
                rule = decision.rule
                message = (getattr(rule, "message", None) if rule is not None else None) or decision.reason
                self.spool.commit(self.spool.prepare(self._audit_record(judged, "deny", decision)), is_error=True)
                return for_tool(denied_result(name, str(message), _rule_dict(rule), decision.reason), definition)
            if action == "require_approval":
                return for_tool(await self._hold(judged, progress), definition) if allow_hold else None
        except GatewayError as exc:
            return for_tool(error_result(exc), definition)
        unknown = GatewayError(f"the policy returned an unknown verdict {action!r}; the call was not run")
        return for_tool(error_result(unknown), definition)

    def _prepare(self, policy: Policy, name: str, arguments: dict[str, Any]) -> _Judged:
        route = self.pool.route(name)
        if route is None:
            broken = self.pool.broken_upstreams()
            why = ("; " + "; ".join(broken)) if broken else ""
            raise UnknownToolError(f"no upstream server offers a tool named {name!r}{why}", tool=name)
        justification: str | None = None
        mode = policy.justification_for(route.tool_name, route.server)
        own = JUSTIFICATION in (route.definition.get("inputSchema") or {}).get("properties", {})
        if mode in ("required", "optional") and not own:
            raw = arguments.pop(JUSTIFICATION, None)
            justification = raw.strip() if isinstance(raw, str) and raw.strip() else None
            if mode == "required" and justification is None:
                raise JustificationError(
                    f"{name} requires a `justification` argument: one or two sentences on why this call is "
                    "needed. Call it again with that argument.",
                    tool=name,
                )
        return _Judged(route, arguments, justification)

    async def _forward_allowed(
        self, judged: _Judged, params: Mapping[str, Any], decision: Any, progress: Progress | None
    ) -> dict[str, Any]:
        started = time.perf_counter()
        # The audit record is built and encoded while the upstream works: the request to the upstream is
        # written before this task first suspends, and the loop runs this callback before it can resume.
        drafts: list[PreparedRecord] = []

        def draft() -> PreparedRecord:
            return self.spool.prepare(self._audit_record(judged, "allow", decision))

        def commit(is_error: bool) -> None:
            duration = round((time.perf_counter() - started) * 1000, 3)
            self.spool.commit(drafts[0] if drafts else draft(), is_error=is_error, duration_ms=duration)

        asyncio.get_running_loop().call_soon(lambda: drafts.append(draft()))
        try:
            result = await self._run_upstream(judged.route, judged.arguments, params, progress)
        except BaseException:
            commit(is_error=True)
            raise
        commit(is_error=bool(result.get("isError")))
        return result

    async def _run_upstream(
        self,
        route: ToolRoute,
        arguments: Mapping[str, Any],
        params: Mapping[str, Any] | None,
        progress: Progress | None,
    ) -> dict[str, Any]:
        upstream = self.pool.upstreams.get(route.server)
        if upstream is None:
            raise UpstreamError(f"upstream server {route.server!r} is not configured any more")
        if route.tool_name == RESOURCE_READ:  # a held read, approved
            return await upstream.request("resources/read", {"uri": arguments["uri"]})
        forwarded: dict[str, Any] = {"name": route.tool_name, "arguments": dict(arguments)}
        meta = (params or {}).get("_meta")
        if isinstance(meta, Mapping):
            kept = {k: v for k, v in meta.items() if k != "progressToken" and not k.startswith("io.modelcontext")}
            if kept:
                forwarded["_meta"] = kept
        try:
            return await upstream.request("tools/call", forwarded, on_progress=progress)
        except MCPError as exc:
            # A protocol error from the upstream (unknown tool, invalid params) reaches the agent as-is.
            raise UpstreamError(f"{route.server} rejected the call: {exc.error.message}", code=exc.code) from exc

    def _audit_record(self, judged: _Judged, verdict: str, decision: Any) -> dict[str, Any]:
        return {
            "kind": "tool_call",
            "decision": verdict,
            "tool": judged.route.tool_name,
            "exposed_tool": judged.route.exposed_name,
            "server": judged.route.server,
            "arguments": judged.arguments,
            # No hash here: the hub computes it from `arguments` when the record arrives.
            "justification": judged.justification,
            "agent": self._agent_field(),
            "rule": _rule_dict(decision.rule),
            "reason": decision.reason,
            "policy_version": self.snapshot.version,
            "policy_hash": self.snapshot.policy.version_hash,
        }

    # -- resources/read ---------------------------------------------------------------------------

    async def read_resource(self, params: Mapping[str, Any], *, progress: Progress | None = None) -> dict[str, Any]:
        """Route one `resources/read` to its upstream, judged by the policy's `resources:` rules.

        Returns the upstream's raw result; a read that does not happen raises `ResourceRefusedError`
        (a JSON-RPC error: `resources/read` has no error result) carrying the same status as a tool's.
        """
        uri = str(params.get("uri", ""))
        server = await self.pool.resolve_uri(uri)
        if server is None or server not in self.pool.upstreams:
            raise UpstreamError(f"no upstream server offers the resource {uri!r}", uri=uri)
        policy = self.snapshot.policy
        if not policy.resources:
            return await self.pool.upstreams[server].request("resources/read", dict(params))
        judged = _Judged(ToolRoute(uri, server, RESOURCE_READ, {}), {"uri": uri}, None)
        decision = policy.evaluate(
            CallContext(
                tool=RESOURCE_READ,
                server=server,
                args={"uri": uri},
                agent=self._info(),
                justification=None,
                now=datetime.now(UTC),
            )
        )
        if decision.action == "allow":
            return await self.pool.upstreams[server].request("resources/read", dict(params))
        if decision.action == "deny":
            self.spool.commit(self.spool.prepare(self._audit_record(judged, "deny", decision)), is_error=True)
            message = decision.message or decision.reason
            result = denied_result(f"reading {uri}", str(message), _rule_dict(decision.rule), decision.reason)
        else:
            result = await self._hold(judged, progress)
        meta = result.get("_meta")
        if isinstance(meta, Mapping) and STATUS_KEY in meta:
            detail = {k: v for k, v in meta[DETAIL_KEY].items() if k != "message"}
            raise ResourceRefusedError(_summary(result) or "the read was not allowed", **detail)
        return result

    # -- holding ----------------------------------------------------------------------------------

    async def _hold(self, judged: _Judged, progress: Progress | None) -> dict[str, Any]:
        name = judged.route.exposed_name
        api = self._who().api
        if api is None or self.waiter is None:
            raise GatewayError(f"{name} needs human approval, but this gateway has no Preloop API to ask; not run")
        try:
            ticket = await api.create_approval(
                tool=judged.route.tool_name,
                server=judged.route.server,
                arguments=judged.arguments,
                justification=judged.justification,
                input_schema=judged.route.definition.get("inputSchema"),
            )
        except ApiUnavailableError as exc:
            raise ApiUnavailableError(
                f"{name} needs human approval, but the Preloop API is unreachable, so the call was NOT run "
                f"(the gateway fails closed). Try again once the hub is back. ({exc.message})",
                tool=name,
            ) from exc
        except ApiRequestError as exc:
            if exc.code == "policy_mismatch":
                raise GatewayError(
                    f"{name} was not run: the gateway's policy snapshot disagrees with the hub's; the snapshot "
                    "is being refreshed, try again in a moment.",
                ) from exc
            raise
        if ticket.status == "granted":
            return await self._run_granted(judged, ticket, progress)
        request = ticket.request if ticket.status in ("approved", "declined", "expired", "cancelled") else None
        if request is None and ticket.status in ("executing", "executed", "failed"):
            request = ticket.request
        if request is None:
            request = await self._wait(ticket.id, name, progress)
            if request is None:
                return pending_result(name, ticket.id, self.hold_window)
        return await self._conclude(judged, request, progress)

    async def _wait(self, approval_id: str, name: str, progress: Progress | None) -> dict[str, Any] | None:
        assert self.waiter is not None
        started = anyio.current_time()

        async def tick() -> None:
            if progress is not None:
                waited = anyio.current_time() - started
                await progress(waited, self.hold_window, f"{name}: waiting for human approval ({approval_id})")

        return await self.waiter.wait_for_verdict(
            approval_id, self.hold_window, tick=self.progress_interval, on_tick=tick
        )

    async def _conclude(self, judged: _Judged, request: Mapping[str, Any], progress: Progress | None) -> dict[str, Any]:
        name = judged.route.exposed_name
        status = str(request.get("status"))
        approval_id = str(request.get("id"))
        if status in ("declined", "expired", "cancelled"):
            return verdict_result(name, request)
        if status in ("executing", "executed", "failed"):
            return tool_result(
                f"{name} was already run once under approval {approval_id} (status {status}); an approval "
                "runs exactly once. Make a new call to ask again.",
                {"status": "already_executed", "approval_id": approval_id, "request_status": status},
                is_error=True,
            )
        if status != "approved":
            raise GatewayError(f"approval {approval_id} has an unknown status {status!r}; {name} was not run")
        approved = request.get("arguments")
        approved_args = dict(approved) if isinstance(approved, Mapping) else dict(judged.arguments)
        digest = arguments_hash(approved_args)
        if digest != request.get("arguments_hash", digest) or digest != arguments_hash(judged.arguments):
            raise HashMismatchError(
                f"the arguments approved under {approval_id} do not match this call's; {name} was not run",
                approval_id=approval_id,
            )
        try:
            await self.api_required.claim(approval_id, digest)
        except ApiRequestError as exc:
            if exc.http_status == 409:
                return tool_result(
                    f"{name} under approval {approval_id} is already being run by another call; it runs once.",
                    {"status": "already_executed", "approval_id": approval_id},
                    is_error=True,
                )
            raise
        try:
            result = await self._run_upstream(judged.route, approved_args, None, progress)
        except GatewayError as exc:
            await self._report(approval_id, success=False, error=exc.message)
            raise

        caller_api = self.api_required  # the background task may not see this request's caller

        async def report() -> None:
            await self._report(
                approval_id,
                api=caller_api,
                success=not result.get("isError"),
                summary=_summary(result),
                error=_summary(result) if result.get("isError") else None,
            )

        if self._background is not None:
            self._background(report)
        else:
            await report()
        return result

    async def _run_granted(self, judged: _Judged, ticket: ApprovalTicket, progress: Progress | None) -> dict[str, Any]:
        started = time.perf_counter()
        result = await self._run_upstream(judged.route, judged.arguments, None, progress)
        grant = ticket.grant or {}
        self.spool.append(
            {
                "kind": "tool_call",
                "decision": "granted",
                "grant_id": grant.get("id"),
                "tool": judged.route.tool_name,
                "server": judged.route.server,
                "arguments": judged.arguments,
                "arguments_hash": arguments_hash(judged.arguments),
                "justification": judged.justification,
                "agent": self._agent_field(),
                "is_error": bool(result.get("isError")),
                "duration_ms": round((time.perf_counter() - started) * 1000, 3),
            }
        )
        return result

    @property
    def api_required(self) -> ApiClient:
        api = self._who().api
        if api is None:
            raise GatewayError("this gateway has no Preloop API configured")
        return api

    # -- who is calling ---------------------------------------------------------------------------

    def _who(self) -> Caller:
        """The agent of the request being served: its own key on HTTP, else the gateway's."""
        return CURRENT_CALLER.get() or self._default_caller

    def _info(self) -> AgentInfo:
        caller = CURRENT_CALLER.get()
        if caller is None:
            return self._agent_info
        info = self._infos.get(caller.agent.id)
        if info is None or info.name != caller.agent.name or info.labels != caller.agent.labels:
            info = AgentInfo(name=caller.agent.name, id=caller.agent.id, labels=dict(caller.agent.labels))
            self._infos[caller.agent.id] = info
        return info

    def _agent_field(self) -> dict[str, str]:
        agent = self._who().agent
        return {"id": agent.id, "name": agent.name}

    async def _report(
        self,
        approval_id: str,
        *,
        success: bool,
        summary: str | None = None,
        error: str | None = None,
        api: ApiClient | None = None,
    ) -> None:
        try:
            client = api or self.api_required
            await client.report_outcome(approval_id, success=success, result_summary=summary, error=error)
        except GatewayError as exc:
            logger.warning("could not report the outcome of approval %s: %s", approval_id, exc.message)

    async def approval_status(self, approval_id: str) -> dict[str, Any]:
        if not approval_id:
            return tool_result("approval_id is required", {"status": "invalid"}, is_error=True)
        request = await self.api_required.get_approval(approval_id)
        status = str(request.get("status"))
        tool = str(request.get("tool", "the tool"))
        if status in ("declined", "expired", "cancelled"):
            return verdict_result(tool, request)
        hints = {
            "pending": "Still waiting for the approvers. Check again later.",
            "approved": "Approved. Repeat the original call with the same arguments to run it.",
            "executing": "Approved and running now.",
            "executed": "Approved and already executed.",
            "failed": "Approved, but the tool failed when it ran.",
        }
        text = f"Approval {approval_id} for {tool}: {status}. {hints.get(status, '')}".strip()
        structured = {
            "status": status,
            "approval_id": approval_id,
            "tool": tool,
            "outcome": request.get("outcome"),
        }
        return tool_result(text, structured, is_error=False)


def _rule_dict(rule: Any) -> dict[str, Any] | None:
    if rule is None:
        return None
    to_dict = getattr(rule, "to_dict", None)
    if callable(to_dict):
        value = to_dict()
        if isinstance(value, dict):
            return value
    fields = ("tool", "index", "when", "description", "risk", "message")
    return {f: getattr(rule, f, None) for f in fields}


def _summary(result: Mapping[str, Any]) -> str | None:
    for item in result.get("content") or []:
        if isinstance(item, Mapping) and item.get("type") == "text":
            return str(item.get("text", ""))[:500]
    return None
