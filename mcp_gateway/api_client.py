"""The gateway's only door to the hub: a thin typed client over the REST API (`/api/v1`)."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import httpx

from mcp_gateway.errors import ApiRequestError, ApiUnavailableError, HubAuthError
from policies import arguments_hash

logger = logging.getLogger(__name__)
# The id of the tool call being handled, sent as X-Request-Id so the hub's log lines name the same call.
REQUEST_ID: ContextVar[str | None] = ContextVar("preloop_gateway_request_id", default=None)

__all__ = ["AgentIdentity", "ApiClient", "ApprovalTicket", "WaitAnswer", "arguments_hash"]


@dataclass(frozen=True, slots=True)
class AgentIdentity:
    """Who the API key belongs to, as the policy and the audit see it."""

    id: str
    name: str
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PolicySnapshotDoc:
    """One applied policy version as the hub serves it."""

    version: int
    source: str
    sha256: str


@dataclass(frozen=True, slots=True)
class ApprovalTicket:
    """The hub's answer to `POST /approvals`: a new, attached or grant-covered request."""

    status: str
    request: dict[str, Any]
    attached: bool = False
    grant: dict[str, Any] | None = None

    @property
    def id(self) -> str:
        return str(self.request.get("id", ""))


@dataclass(frozen=True, slots=True)
class WaitAnswer:
    """One round of the multiplexed long-poll."""

    decided: list[dict[str, Any]]
    pending: list[str]


class ApiClient:
    """Calls the hub's REST API with the agent's key; every failure maps to a `GatewayError`."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        *,
        timeout: float = 10.0,
        pool_timeout: float = 120.0,
        key_source: str = "PRELOOP_API_KEY",
    ) -> None:
        #: Where the key came from, named in errors when the hub refuses it.
        self.key_source = key_source
        self.has_key = bool(api_key)
        headers = {"Accept": "application/json", "User-Agent": "preloop-gateway"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self.base_url = base_url.rstrip("/")
        self._timeout = timeout
        # A burst of held calls queues for a connection instead of failing: waiting for a free
        # connection is bounded separately (and generously) from talking to the hub.
        self._pool_timeout = pool_timeout
        self._http = httpx.AsyncClient(
            base_url=f"{self.base_url}/api/v1",
            headers=headers,
            timeout=httpx.Timeout(timeout, pool=pool_timeout),
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=32),
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        params: Mapping[str, str | int] | None = None,
        request_timeout: float | None = None,
        ok: Sequence[int] = (200, 201),
    ) -> httpx.Response:
        try:
            response = await self._http.request(
                method,
                path,
                json=json_body,
                params=params,
                headers={"X-Request-Id": REQUEST_ID.get() or uuid.uuid4().hex},
                timeout=httpx.Timeout(request_timeout or self._timeout, pool=self._pool_timeout),
            )
        except httpx.HTTPError as exc:
            raise ApiUnavailableError(f"Preloop API at {self.base_url} is unreachable: {exc!r}") from exc
        if response.status_code in ok:
            return response
        if response.status_code >= 500:
            raise ApiUnavailableError(
                f"Preloop API at {self.base_url} failed with HTTP {response.status_code}",
                http_status=response.status_code,
            )
        code, message, detail = "http_error", response.text[:500], None
        try:
            error = response.json().get("error") or {}
            code = str(error.get("code", code))
            message = str(error.get("message", message))
            detail = error.get("detail")
        except (ValueError, AttributeError):
            pass
        if response.status_code in (401, 403):
            fix = (
                f"{self.key_source} must be a valid, unrevoked agent key"
                if self.has_key
                else f"{self.key_source} is not set: set it to an agent key"
            )
            raise HubAuthError(
                f"the Preloop hub at {self.base_url} refused this gateway's API key (HTTP {response.status_code}: "
                f"{message}); {fix} (create one with `preloop key create --name NAME --scope agent`)",
                http_status=response.status_code,
                code=code,
                api_detail=detail,
            )
        raise ApiRequestError(
            f"Preloop API refused {method} {path}: {message}",
            http_status=response.status_code,
            code=code,
            api_detail=detail,
        )

    async def me(self) -> AgentIdentity:
        body = (await self._request("GET", "/me")).json()
        key = body.get("key") or {}
        return AgentIdentity(
            id=str(key.get("id", "")),
            name=str(key.get("name") or (body.get("user") or {}).get("email") or "agent"),
            labels={str(k): str(v) for k, v in (key.get("labels") or {}).items()},
        )

    async def agent_me(self) -> AgentIdentity:
        """The agent behind this client's key (`GET /agents/me`); HubAuthError if revoked or not an agent key."""
        body = (await self._request("GET", "/agents/me")).json()
        return AgentIdentity(
            id=str(body["id"]),
            name=str(body["name"]),
            labels={str(k): str(v) for k, v in (body.get("labels") or {}).items()},
        )

    async def active_policy(self, *, after: int | None = None, wait: float | None = None) -> PolicySnapshotDoc | None:
        """The active snapshot; with `after`/`wait`, a long-poll returning None on 304 (no change)."""
        params: dict[str, str | int] = {}
        request_timeout = None
        if after is not None:
            params["after"] = after
        if wait is not None:
            params["wait"] = int(wait)
            request_timeout = wait + self._timeout
        response = await self._request(
            "GET", "/policies/active", params=params, request_timeout=request_timeout, ok=(200, 304)
        )
        if response.status_code == 304:
            return None
        body = response.json()
        return PolicySnapshotDoc(version=int(body["version"]), source=str(body["source"]), sha256=str(body["sha256"]))

    async def create_approval(
        self,
        *,
        tool: str,
        server: str,
        arguments: Mapping[str, Any],
        justification: str | None,
        input_schema: Mapping[str, Any] | None = None,
    ) -> ApprovalTicket:
        payload = {
            "tool": tool,
            "server": server,
            "arguments": dict(arguments),
            "arguments_hash": arguments_hash(arguments),
            "justification": justification,
        }
        if input_schema:  # lets approvers see the defaults the upstream will apply
            payload["input_schema"] = dict(input_schema)
        body = (await self._request("POST", "/approvals", json_body=payload)).json()
        if body.get("status") == "granted" and "grant" in body:
            return ApprovalTicket(status="granted", request=body, grant=body.get("grant"))
        return ApprovalTicket(
            status=str(body.get("status", "pending")), request=body, attached=bool(body.get("attached"))
        )

    async def get_approval(self, approval_id: str) -> dict[str, Any]:
        body: dict[str, Any] = (await self._request("GET", f"/approvals/{approval_id}")).json()
        return body

    async def wait_for_any(self, ids: Sequence[str], wait_seconds: float) -> WaitAnswer:
        # The POST form carries any number of ids (a thousand held calls would overflow a URL).
        payload = {"ids": list(ids), "timeout": max(1, int(wait_seconds))}
        body = (
            await self._request(
                "POST", "/approvals/wait", json_body=payload, request_timeout=wait_seconds + self._timeout
            )
        ).json()
        return WaitAnswer(
            decided=list(body.get("decided") or []),
            pending=[str(i) for i in body.get("pending") or []],
        )

    async def claim(self, approval_id: str, hash_hex: str) -> dict[str, Any]:
        body: dict[str, Any] = (
            await self._request("POST", f"/approvals/{approval_id}/claim", json_body={"arguments_hash": hash_hex})
        ).json()
        return body

    async def report_outcome(
        self, approval_id: str, *, success: bool, result_summary: str | None = None, error: str | None = None
    ) -> None:
        await self._request(
            "POST",
            f"/approvals/{approval_id}/outcome",
            json_body={"success": success, "result_summary": result_summary, "error": error},
        )

    async def send_audit(self, records: Sequence[Mapping[str, Any]]) -> list[str] | None:
        """Deliver call records; the hub's verdict per record, in order (see `AuditSpool`), None if it gave none."""
        body = {"records": list(records)}
        response = await self._request("POST", "/audit/calls", json_body=body, ok=range(200, 300))
        try:
            results = response.json().get("results")
        except (ValueError, AttributeError):
            return None
        if not isinstance(results, list):
            return None
        verdicts = []
        for item in results:
            status = str(item.get("status")) if isinstance(item, Mapping) else "?"
            if status == "rejected":
                status = f"rejected: {item.get('error') or 'invalid record'}"
            verdicts.append(status)
        return verdicts
