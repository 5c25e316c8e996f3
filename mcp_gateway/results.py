"""Builders for the tool results the gateway itself answers with (wire-shaped dicts)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from mcp_gateway.errors import GatewayError

STATUS_TOOL = "preloop_approval_status"

#: `_meta` keys of the gateway's own results (namespaced, so they never clash with an upstream's).
STATUS_KEY = "dev.preloop/status"
DETAIL_KEY = "dev.preloop/detail"


def tool_result(text: str, structured: Mapping[str, Any] | None = None, *, is_error: bool) -> dict[str, Any]:
    """One of the gateway's own results: the status is machine-readable in `_meta` whatever the tool.

    `structuredContent` carries the same detail too, but `for_tool` drops it when the answered tool
    declares an `outputSchema`, which it could not match (clients validate it even on errors).
    """
    result: dict[str, Any] = {"content": [{"type": "text", "text": text}], "isError": is_error}
    if structured is not None:
        detail = dict(structured)
        result["structuredContent"] = detail
        result["_meta"] = {STATUS_KEY: detail.get("status"), DETAIL_KEY: detail}
    return result


def for_tool(result: dict[str, Any], definition: Mapping[str, Any] | None) -> dict[str, Any]:
    """The gateway's own `result`, made valid for the tool it answers (see `tool_result`)."""
    if definition is not None and definition.get("outputSchema") is not None and "structuredContent" in result:
        meta = result.get("_meta")
        if isinstance(meta, Mapping) and STATUS_KEY in meta:
            return {k: v for k, v in result.items() if k != "structuredContent"}
    return result


def error_result(error: GatewayError) -> dict[str, Any]:
    structured: dict[str, Any] = {"status": error.status, "message": error.message}
    structured.update({k: v for k, v in error.detail.items() if isinstance(v, str | int | float | bool | None)})
    return tool_result(error.message, structured, is_error=True)


def denied_result(tool: str, message: str, rule: Mapping[str, Any] | None, reason: str) -> dict[str, Any]:
    text = f"Preloop policy denied {tool}: {message}"
    return tool_result(
        text,
        {"status": "denied_by_policy", "tool": tool, "message": message, "reason": reason, "rule": rule},
        is_error=True,
    )


def pending_result(tool: str, approval_id: str, waited: float) -> dict[str, Any]:
    text = (
        f"{tool} is waiting for human approval (request {approval_id}); it has NOT run yet. "
        f"No decision arrived within {waited:.0f} seconds. To continue, either call "
        f"{STATUS_TOOL} with approval_id={approval_id!r} to check the decision, or repeat exactly the "
        "same call later: it attaches to the same request and runs once it is approved."
    )
    return tool_result(text, {"status": "pending_approval", "approval_id": approval_id, "tool": tool}, is_error=True)


def verdict_result(tool: str, request: Mapping[str, Any]) -> dict[str, Any]:
    """Error result for a request that ended without approval: declined, expired or cancelled."""
    outcome: Mapping[str, Any] = request.get("outcome") or {}
    status = str(outcome.get("kind") or request.get("status") or "declined")
    by: Sequence[Any] = outcome.get("by") or []
    reason = outcome.get("reason")
    who = ", ".join(str(b.get("email") or b.get("name") or b) if isinstance(b, Mapping) else str(b) for b in by)
    verbs = {
        "declined": "was declined",
        "expired": "expired without a decision",
        "cancelled": "was cancelled",
    }
    text = f"{tool} did not run: approval request {request.get('id')} {verbs.get(status, status)}"
    if who:
        text += f" by {who}"
    text += f". Reason: {reason}." if reason else "."
    return tool_result(
        text,
        {"status": status, "approval_id": request.get("id"), "tool": tool, "by": list(by), "reason": reason},
        is_error=True,
    )


STATUS_TOOL_DEFINITION: dict[str, Any] = {
    "name": STATUS_TOOL,
    "description": (
        "Check a Preloop approval request created when a tool call was held for human approval. "
        "Returns pending, approved (repeat the original call to run it), declined, expired, cancelled "
        "or executed, with who decided and why."
    ),
    "inputSchema": {
        "type": "object",
        "properties": {"approval_id": {"type": "string", "description": "The id from the pending_approval result."}},
        "required": ["approval_id"],
    },
    "annotations": {"readOnlyHint": True, "openWorldHint": False},
}
