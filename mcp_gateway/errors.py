"""The gateway's error hierarchy; each error becomes an MCP error result for the agent."""

from __future__ import annotations

from typing import Any


class GatewayError(Exception):
    """Base of every error the gateway turns into an `isError` tool result."""

    status = "gateway_error"

    def __init__(self, message: str, **detail: Any) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail


class ApiUnavailableError(GatewayError):
    """The hub's API could not be reached or answered with a server error."""

    status = "api_unavailable"


class ApiRequestError(GatewayError):
    """The hub answered with a client error (4xx) the gateway cannot recover from."""

    status = "api_error"

    def __init__(self, message: str, *, http_status: int, code: str, **detail: Any) -> None:
        super().__init__(message, http_status=http_status, code=code, **detail)
        self.http_status = http_status
        self.code = code


class HubAuthError(ApiRequestError):
    """The hub refused the gateway's (or the agent's) API key: 401 or 403. Never retried silently."""

    status = "api_key_refused"


class NoPolicyError(GatewayError):
    """No policy snapshot has been loaded yet, so no call can be judged."""

    status = "no_policy"


class UpstreamError(GatewayError):
    """An upstream MCP server is unreachable or failed while serving a call."""

    status = "upstream_unavailable"


class UnknownToolError(GatewayError):
    """The agent named a tool no upstream offers."""

    status = "unknown_tool"


class JustificationError(GatewayError):
    """The tool needs a justification and the call did not carry one."""

    status = "justification_required"


class HashMismatchError(GatewayError):
    """The approved arguments do not match the hash the gateway asked approval for."""

    status = "arguments_mismatch"


class ResourceRefusedError(GatewayError):
    """A `resources/read` the policy denied, or held without an approval (detail carries the status)."""

    status = "resource_refused"
