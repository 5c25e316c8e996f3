"""The gateway's own results (deny, decline, expiry, pending) are valid for the tool they answer.

The TypeScript SDK client validates `structuredContent` against a tool's `outputSchema` even on
errors and throws instead of returning the result; Claude Code, Cursor and the Inspector are built on
it. Each client here (TypeScript SDK and Python SDK, stdio and streamable HTTP) calls `lookup`, a tool
with an output schema, behind a gateway following a live hub, and must see each status in `_meta`.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters

from mcp_gateway.app import Gateway
from mcp_gateway.config import GatewaySettings
from mcp_gateway.results import DETAIL_KEY, STATUS_KEY
from tests.conftest import LiveHub
from tests.helpers import Org, auth, make_org
from tests.interop.conftest import HERE, PROBE, PYTHON, serving_http

pytestmark = pytest.mark.interop

TS_CLIENT = HERE / "ts_client.mjs"
HOLD_WINDOW = 5

POLICY = f"""
version: "1"
servers:
  - name: probe
    command: [{PYTHON}, {PROBE}]
approval_policies:
  - name: sre
    teams: [sre]
    timeout: 10m
  - name: quick
    teams: [sre]
    timeout: 1s
tools:
  - name: lookup
    rules:
      - {{when: "args.value == 'forbidden'", action: deny, message: "forbidden values are never looked up"}}
      - {{when: "args.value.startsWith('expires')", action: require_approval, approval_policy: quick}}
      - {{when: "args.value.startsWith('held')", action: require_approval, approval_policy: sre}}
      - {{action: allow}}
defaults: {{unknown_tools: deny, justification: none}}
"""

# (argument, the status the agent must be able to read, whether an approver declines it)
CASES = [
    ("forbidden", "denied_by_policy", False),
    ("expires", "expired", False),
    ("held-decline", "declined", True),
    ("held-pending", "pending_approval", False),
]


@pytest.fixture
def org(live_hub: LiveHub) -> Org:
    org = live_hub.call(make_org())
    response = httpx.post(f"{live_hub.url}/api/v1/policies", json={"source": POLICY},
                          headers=auth(org.admin_token), timeout=10)
    assert response.status_code == 201, response.text
    return org


def gateway_command(live_hub: LiveHub, org: Org, data_dir: Path) -> tuple[str, list[str], dict[str, str]]:
    args = ["-m", "mcp_gateway.cli", "--stdio", "--hold-window", str(HOLD_WINDOW)]
    env = {"PRELOOP_API_URL": live_hub.url, "PRELOOP_API_KEY": org.agent_token,
           "PRELOOP_GATEWAY_DATA_DIR": str(data_dir)}
    return PYTHON, args, env


@asynccontextmanager
async def http_gateway(live_hub: LiveHub, org: Org, data_dir: Path) -> AsyncIterator[str]:
    settings = GatewaySettings(api_url=live_hub.url, api_key=org.agent_token, hold_window=HOLD_WINDOW,
                               data_dir=data_dir, startup_timeout=10)
    async with Gateway(settings) as gw, serving_http(gw) as url:
        yield url


async def decline_when_pending(live_hub: LiveHub, org: Org, value: str) -> None:
    """Decline the request whose arguments carry `value` as soon as it is pending."""
    async with httpx.AsyncClient(base_url=live_hub.url, headers=auth(org.admin_token)) as http:
        with anyio.fail_after(60):
            while True:
                items = (await http.get("/api/v1/approvals", params={"status": "pending", "scope": "all"})).json()
                found = [i for i in items if (i.get("arguments") or {}).get("value") == value]
                if found:
                    break
                await anyio.sleep(0.1)
        response = await http.post(f"/api/v1/approvals/{found[0]['id']}/decline",
                                   headers=auth(org.approver_tokens["bob"]), json={"reason": "not today"})
        assert response.status_code == 200, response.text


def check(result: dict[str, Any], value: str, status: str) -> None:
    """A wire-shaped result: an error the agent can read, its status in `_meta`, nothing invalid."""
    assert result["isError"] is True, result
    assert "structuredContent" not in result, result
    assert result["_meta"][STATUS_KEY] == status, result
    assert result["_meta"][DETAIL_KEY]["status"] == status
    assert result["content"][0]["text"], result


def node() -> str:
    found = shutil.which("node")
    if found is None:
        pytest.fail("node is not installed; the TypeScript SDK interop test needs Node.js 18+")
    if not (HERE / "node_modules" / "@modelcontextprotocol" / "sdk").exists():
        pytest.fail("run `npm ci --prefix tests/interop` to install @modelcontextprotocol/sdk")
    return found


async def run_ts(spec: dict[str, Any]) -> dict[str, Any]:
    done = await anyio.run_process([node(), str(TS_CLIENT), json.dumps(spec)], check=False,
                                   env={**os.environ}, stderr=sys.stderr.fileno())
    assert done.returncode == 0, done.stdout
    answer: dict[str, Any] = json.loads(done.stdout.decode().strip().splitlines()[-1])
    return answer


@pytest.mark.parametrize("transport", ["stdio", "http"])
async def test_typescript_client_reads_every_status_of_a_tool_with_an_output_schema(
    live_hub: LiveHub, org: Org, tmp_path: Path, transport: str
) -> None:
    calls = [{"name": "lookup", "arguments": {"value": "plain"}}]
    calls += [{"name": "lookup", "arguments": {"value": value}} for value, _, _ in CASES]
    async with anyio.create_task_group() as tg:
        if transport == "http":
            gateway = http_gateway(live_hub, org, tmp_path / "gw")
            url = await gateway.__aenter__()
            spec: dict[str, Any] = {"url": url, "calls": calls}
        else:
            command, args, env = gateway_command(live_hub, org, tmp_path / "gw")
            spec = {"command": command, "args": args, "env": env, "calls": calls}
        try:
            tg.start_soon(decline_when_pending, live_hub, org, "held-decline")
            answer = await run_ts(spec)
        finally:
            if transport == "http":
                await gateway.__aexit__(None, None, None)
    assert "lookup" in answer["tools"]
    allowed, *rest = answer["calls"]
    # Without the fix the SDK throws -32602 "Structured content does not match the tool's output schema".
    assert allowed["ok"] and allowed["result"]["structuredContent"] == {"value": "plain"}, allowed
    for (value, status, _), outcome in zip(CASES, rest, strict=True):
        assert outcome["ok"], (value, outcome)
        check(outcome["result"], value, status)


@pytest.mark.parametrize("transport", ["stdio", "http"])
async def test_python_client_reads_every_status_of_a_tool_with_an_output_schema(
    live_hub: LiveHub, org: Org, tmp_path: Path, transport: str
) -> None:
    async with anyio.create_task_group() as tg:
        if transport == "http":
            gateway = http_gateway(live_hub, org, tmp_path / "gw")
            target: Any = await gateway.__aenter__()
        else:
            command, args, env = gateway_command(live_hub, org, tmp_path / "gw")
            target = StdioServerParameters(command=command, args=args, env={**os.environ, **env})
        try:
            tg.start_soon(decline_when_pending, live_hub, org, "held-decline")
            async with Client(target) as client:
                await client.list_tools()
                plain = await client.call_tool("lookup", {"value": "plain"})
                assert plain.structured_content == {"value": "plain"}
                for value, status, _ in CASES:
                    result = await client.call_tool("lookup", {"value": value})
                    check(result.model_dump(by_alias=True, exclude_none=True, mode="json"), value, status)
        finally:
            if transport == "http":
                await gateway.__aexit__(None, None, None)
