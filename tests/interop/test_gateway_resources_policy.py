"""The policy governs `resources/read` by URI glob: allow, deny, require_approval; no rule allows."""

from __future__ import annotations

from pathlib import Path

import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError

from mcp_gateway.results import STATUS_KEY
from tests.interop.conftest import running_gateway, serving_http

pytestmark = pytest.mark.interop

STATIC = "demo://resource/static/document/architecture.md"
DYNAMIC = "demo://resource/dynamic/text/1"


def policy(everything_js: Path) -> str:
    return f"""
version: "1"
servers:
  - name: everything
    command: [node, {everything_js}, stdio]
approval_policies:
  - name: sre
    approvers: [alice@example.test]
tools: []
resources:
  - uri: "demo://resource/static/document/architecture.md"
    action: deny
    message: architecture notes stay inside
  - uri: "demo://resource/dynamic/text/*"
    action: require_approval
    approval_policy: sre
defaults: {{unknown_tools: allow, justification: none}}
"""


async def test_reads_are_denied_held_or_allowed_by_uri_glob(tmp_path: Path, everything_js: Path) -> None:
    async with running_gateway(tmp_path, policy(everything_js)) as gw, serving_http(gw) as url:
        for target in (gw.server.server, url):
            async with Client(target) as agent:
                with pytest.raises(MCPError) as denied:
                    await agent.read_resource(STATIC)
                assert "architecture notes stay inside" in denied.value.error.message
                assert denied.value.error.data[STATUS_KEY] == "denied_by_policy"
                # Held for approval, but this gateway's hub is unreachable: it fails closed, saying so.
                with pytest.raises(MCPError) as held:
                    await agent.read_resource(DYNAMIC)
                assert "NOT run" in held.value.error.message and "unreachable" in held.value.error.message
                # No rule matches: reading is allowed by default.
                other = await agent.read_resource("demo://resource/static/document/features.md")
                assert other.contents
        records = [r for r in gw.spool.pending() if r["tool"] == "resources/read"]
        assert {r["decision"] for r in records} == {"deny"} and len(records) == 2
