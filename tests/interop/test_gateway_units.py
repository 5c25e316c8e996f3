"""Pure pieces of the gateway: schema rewriting, env expansion, verdict results, hash checks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mcp_gateway.api_client import AgentIdentity
from mcp_gateway.checkpoint import Checkpoint, _Judged, with_justification
from mcp_gateway.errors import HashMismatchError, UpstreamError
from mcp_gateway.results import pending_result, verdict_result
from mcp_gateway.snapshot import PolicySnapshot
from mcp_gateway.spool import AuditSpool
from mcp_gateway.upstreams import ToolRoute, UpstreamPool, expand_env, exposed_name
from policies import ServerConfig, arguments_hash

TOOL = {
    "name": "refund",
    "description": "Refund a charge.",
    "inputSchema": {"type": "object", "properties": {"amount": {"type": "number"}}, "required": ["amount"]},
}


def test_required_justification_is_added_to_the_schema_without_touching_the_original() -> None:
    tool = with_justification(TOOL, "required")
    assert tool["inputSchema"]["required"] == ["amount", "justification"]
    assert tool["inputSchema"]["properties"]["justification"]["type"] == "string"
    assert "justification" not in TOOL["inputSchema"]["properties"]  # type: ignore[operator]
    optional = with_justification(TOOL, "optional")
    assert optional["inputSchema"]["required"] == ["amount"]
    assert with_justification(TOOL, "none") == TOOL


def test_env_references_expand_and_missing_ones_fail() -> None:
    assert expand_env("Bearer ${TOKEN}", {"TOKEN": "abc"}) == "Bearer abc"
    with pytest.raises(UpstreamError, match="GITHUB_TOKEN"):
        expand_env("Bearer ${GITHUB_TOKEN}", {})


def test_prefix_renames_exposed_tools() -> None:
    assert exposed_name(ServerConfig(name="gh", url="http://x", prefix="gh"), "search") == "gh_search"
    assert exposed_name(ServerConfig(name="gh", url="http://x"), "search") == "search"


@pytest.mark.parametrize("kind", ["declined", "expired", "cancelled"])
def test_verdict_results_tell_outcomes_apart_and_name_who(kind: str) -> None:
    request = {"id": "ap_1", "status": kind, "outcome": {"kind": kind, "by": ["alice@example.com"], "reason": "no"}}
    result = verdict_result("drop_table", request)
    assert result["isError"] is True
    assert result["structuredContent"]["status"] == kind
    assert "alice@example.com" in result["content"][0]["text"]
    assert "no" in result["content"][0]["text"]


def test_pending_result_carries_the_id_and_instructions() -> None:
    result = pending_result("deploy_production", "ap_9", 50)
    assert result["structuredContent"] == {
        "status": "pending_approval",
        "approval_id": "ap_9",
        "tool": "deploy_production",
    }
    assert "preloop_approval_status" in result["content"][0]["text"]
    assert "NOT run" in result["content"][0]["text"]


def _checkpoint(tmp_path: Path) -> Checkpoint:
    return Checkpoint(
        pool=UpstreamPool(),
        snapshot=PolicySnapshot(),
        spool=AuditSpool(tmp_path),
        api=None,
        agent=AgentIdentity(id="k", name="agent"),
    )


async def test_approved_arguments_with_a_wrong_hash_never_run(tmp_path: Path) -> None:
    checkpoint = _checkpoint(tmp_path)
    judged = _Judged(ToolRoute("refund", "pay", "refund", TOOL), {"amount": 10}, None)
    tampered: dict[str, Any] = {
        "id": "ap_2",
        "status": "approved",
        "arguments": {"amount": 10_000},
        "arguments_hash": arguments_hash({"amount": 10}),
    }
    with pytest.raises(HashMismatchError):
        await checkpoint._conclude(judged, tampered, None)
    declined = await checkpoint._conclude(judged, {"id": "ap_3", "status": "declined"}, None)
    assert declined["structuredContent"]["status"] == "declined"
    used = await checkpoint._conclude(judged, {"id": "ap_4", "status": "executed"}, None)
    assert used["structuredContent"]["status"] == "already_executed"


def test_a_torn_spool_line_from_a_crash_does_not_swallow_later_records(tmp_path: Path) -> None:
    spool = AuditSpool(tmp_path)
    first = spool.append({"tool": "a"})
    spool.close()
    with (tmp_path / "audit-spool.jsonl").open("a") as handle:
        handle.write('{"tool": "b", "event_id": "par')  # a crash mid-write
    reopened = AuditSpool(tmp_path)
    assert [r["event_id"] for r in reopened.pending()] == [first]
    second = reopened.append({"tool": "c"})  # the fragment is sealed off; new records stay whole
    assert [r["event_id"] for r in reopened.pending()] == [first, second]
    assert second != first  # ids stay unique across spool reopenings (a new random prefix each time)
    reopened.close()


class _FailingUpstream:
    """An upstream whose every request fails the way a dead HTTP server does."""

    fast_lane = None

    async def request(self, method: str, params: Any, **_: Any) -> dict[str, Any]:
        raise UpstreamError("upstream pay failed: the upstream closed the connection")


class _EchoUpstream:
    fast_lane = None

    async def request(self, method: str, params: Any, **_: Any) -> dict[str, Any]:
        return {"content": [{"type": "text", "text": "ok"}], "structuredContent": params["arguments"]}


ALLOW_REFUND = """
version: "1"
tools:
  - {name: refund, action: allow}
defaults: {unknown_tools: deny}
"""


@pytest.mark.parametrize(("upstream", "is_error"), [(_EchoUpstream(), False), (_FailingUpstream(), True)])
async def test_allowed_calls_are_audited_whether_the_upstream_answers_or_fails(
    tmp_path: Path, upstream: Any, is_error: bool
) -> None:
    from policies import load_policy

    checkpoint = _checkpoint(tmp_path)
    await checkpoint.snapshot.install(load_policy(ALLOW_REFUND), version=7, source_name="test")
    checkpoint.pool.upstreams["pay"] = upstream
    checkpoint.pool.routes["refund"] = ToolRoute("refund", "pay", "refund", TOOL)
    result = await checkpoint.call({"name": "refund", "arguments": {"amount": 10}})
    assert bool(result.get("isError")) is is_error
    [record] = checkpoint.spool.pending()
    assert record["decision"] == "allow"
    assert record["tool"] == "refund"
    assert record["arguments"] == {"amount": 10}
    assert record["policy_version"] == 7
    assert record["is_error"] is is_error
    assert record["duration_ms"] >= 0
    assert record["recorded_at"] and record["event_id"]
