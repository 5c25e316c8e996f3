"""The whole loop: agent -> gateway -> hub -> human decision -> upstream, with real processes.

The hub is the real app served by uvicorn (worker included); the gateway runs in the test's
event loop with the agent's real API key; the upstream is a real MCP stdio server.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import mcp_types as types
import pytest
from mcp import Client

from mcp_gateway.app import Gateway
from mcp_gateway.config import GatewaySettings
from policies import arguments_hash
from tests.conftest import LiveHub
from tests.helpers import Org, auth, make_org, structured
from tests.interop.conftest import PROBE, PYTHON

POLICY = f"""
version: "1"
servers:
  - name: probe
    command: [{PYTHON}, {PROBE}]
approval_policies:
  - name: sre
    teams: [sre]
    quorum: 1
    timeout: 10m
    max_grant: 1h
  - name: quick
    teams: [sre]
    timeout: 2s
tools:
  - name: show_args
    rules:
      - {{when: "args.value == 'expires'", action: require_approval, approval_policy: quick}}
      - {{when: "args.value.startsWith('held')", action: require_approval, approval_policy: sre, risk: high,
          description: "held values need an SRE"}}
      - {{when: "args.value == 'forbidden'", action: deny, message: "forbidden values are never sent"}}
      - {{action: allow}}
  - name: count_calls
    action: allow
defaults: {{unknown_tools: deny, justification: none}}
"""


def text_of(result: types.CallToolResult) -> str:
    return "\n".join(c.text for c in result.content if isinstance(c, types.TextContent))


@pytest.fixture
def org(live_hub: LiveHub) -> Org:
    org = live_hub.call(make_org())
    response = httpx.post(f"{live_hub.url}/api/v1/policies", json={"source": POLICY},
                          headers=auth(org.admin_token), timeout=10)
    assert response.status_code == 201, response.text
    return org


@asynccontextmanager
async def gateway(live_hub: LiveHub, org: Org, tmp_path: Path, hold_window: float = 30) -> AsyncIterator[Gateway]:
    settings = GatewaySettings(api_url=live_hub.url, api_key=org.agent_token, hold_window=hold_window,
                               data_dir=tmp_path / "gw", startup_timeout=10)
    async with Gateway(settings) as gw:
        yield gw


async def pending_ids(hub: LiveHub, org: Org) -> list[str]:
    async with httpx.AsyncClient(base_url=hub.url, headers=auth(org.admin_token)) as http:
        items = (await http.get("/api/v1/approvals", params={"status": "pending", "scope": "all"})).json()
    return [item["id"] for item in items]


async def wait_for_pending(hub: LiveHub, org: Org, count: int = 1) -> list[str]:
    with anyio.fail_after(15):
        while True:
            ids = await pending_ids(hub, org)
            if len(ids) >= count:
                return ids
            await anyio.sleep(0.05)


async def call_while_deciding(
    client: Client, tool: str, args: dict[str, Any], hub: LiveHub, org: Org,
    decide_on: Callable[[str], Awaitable[None]],
) -> tuple[types.CallToolResult, str]:
    """The agent's call is held; once its request is pending, `decide_on(approval_id)` runs."""
    results: list[types.CallToolResult] = []

    async def agent() -> None:
        results.append(await client.call_tool(tool, args))

    async with anyio.create_task_group() as tg:
        tg.start_soon(agent)
        [approval_id] = await wait_for_pending(hub, org)
        await decide_on(approval_id)
    return results[0], approval_id


async def decide(hub: LiveHub, token: str, approval_id: str, action: str, **body: Any) -> httpx.Response:
    async with httpx.AsyncClient(base_url=hub.url, headers=auth(token)) as http:
        return await http.post(f"/api/v1/approvals/{approval_id}/{action}", json=body)


async def test_approved_call_runs_once_with_the_approved_arguments(live_hub: LiveHub, org: Org,
                                                                   tmp_path: Path) -> None:
    async with gateway(live_hub, org, tmp_path) as gw, Client(gw.server.server) as client:
        before = structured(await client.call_tool("count_calls", {}))

        async def approve(approval_id: str) -> None:
            # Nobody but an eligible approver may decide; the agent's own key never can.
            assert (await decide(live_hub, org.agent_token, approval_id, "approve")).status_code == 403
            assert (await decide(live_hub, org.approver_tokens["carol"], approval_id, "approve")).status_code == 403
            approved = await decide(live_hub, org.approver_tokens["alice"], approval_id, "approve")
            assert approved.status_code == 200, approved.text

        result, approval_id = await call_while_deciding(
            client, "show_args", {"value": "held-1", "n": 7}, live_hub, org, approve
        )
        assert not result.is_error, text_of(result)
        assert structured(result)["received"] == {"value": "held-1", "n": 7}  # exactly the approved arguments
        after = structured(await client.call_tool("count_calls", {}))
        assert after["count"] == before["count"] + 2  # the held call ran exactly once

    async with httpx.AsyncClient(base_url=live_hub.url, headers=auth(org.admin_token)) as http:
        record = (await http.get(f"/api/v1/approvals/{approval_id}")).json()
        assert record["status"] == "executed"
        assert record["outcome"]["kind"] == "approved"
        audit = (await http.get("/api/v1/audit/verify")).json()
        assert audit["ok"] is True


async def test_declined_call_names_who_and_why(live_hub: LiveHub, org: Org, tmp_path: Path) -> None:
    async with gateway(live_hub, org, tmp_path) as gw, Client(gw.server.server) as client:
        async def decline(approval_id: str) -> None:
            declined = await decide(live_hub, org.approver_tokens["bob"], approval_id, "decline",
                                    reason="no backup taken")
            assert declined.status_code == 200, declined.text

        result, _ = await call_while_deciding(client, "show_args", {"value": "held-2"}, live_hub, org, decline)
        assert result.is_error
        body = structured(result)
        assert body["status"] == "declined"
        assert "bob@acme.test" in text_of(result) and "no backup taken" in text_of(result)
        assert structured(await client.call_tool("count_calls", {}))["count"] == 1  # never reached the upstream


async def test_timeout_expires_and_says_so(live_hub: LiveHub, org: Org, tmp_path: Path) -> None:
    async with gateway(live_hub, org, tmp_path) as gw, Client(gw.server.server) as client:
        with anyio.fail_after(30):
            result = await client.call_tool("show_args", {"value": "expires"})
    assert result.is_error
    assert structured(result)["status"] == "expired"


async def test_hold_window_returns_pending_then_status_and_attach(live_hub: LiveHub, org: Org,
                                                                  tmp_path: Path) -> None:
    async with gateway(live_hub, org, tmp_path, hold_window=0.5) as gw, Client(gw.server.server) as client:
        first = await client.call_tool("show_args", {"value": "held-3"})
        body = structured(first)
        assert body["status"] == "pending_approval"
        approval_id = body["approval_id"]
        assert approval_id in text_of(first)

        status = structured(await client.call_tool("preloop_approval_status", {"approval_id": approval_id}))
        assert status["status"] == "pending"

        # Repeating the identical call attaches to the same request instead of creating another.
        again = structured(await client.call_tool("show_args", {"value": "held-3"}))
        assert again["approval_id"] == approval_id
        assert await pending_ids(live_hub, org) == [approval_id]

        assert (await decide(live_hub, org.approver_tokens["alice"], approval_id, "approve")).status_code == 200
        with anyio.fail_after(15):
            final = await client.call_tool("show_args", {"value": "held-3"})
        assert not final.is_error, text_of(final)
        assert structured(final)["received"] == {"value": "held-3"}


async def test_deny_and_allow_are_audited_by_the_hub(live_hub: LiveHub, org: Org, tmp_path: Path) -> None:
    async with gateway(live_hub, org, tmp_path) as gw, Client(gw.server.server) as client:
        denied = await client.call_tool("show_args", {"value": "forbidden"})
        assert denied.is_error and structured(denied)["status"] == "denied_by_policy"
        assert "forbidden values are never sent" in text_of(denied)
        allowed = await client.call_tool("show_args", {"value": "fine"})
        assert not allowed.is_error
        async with httpx.AsyncClient(base_url=live_hub.url, headers=auth(org.admin_token)) as http:
            with anyio.fail_after(20):
                while True:
                    events = {e["kind"]: e for e in (await http.get("/api/v1/audit/events?limit=1000")).json()}
                    if {"call.deny", "call.allow"} <= events.keys():
                        break
                    await anyio.sleep(0.2)
        allow = events["call.allow"]
        assert allow["actor_label"] == "ci-bot"  # the key's identity, not what the record claims
        assert allow["data"]["arguments"] == {"value": "fine"}
        assert allow["data"]["arguments_hash"] == arguments_hash({"value": "fine"})  # hashed by the hub


async def test_grant_lets_identical_calls_through(live_hub: LiveHub, org: Org, tmp_path: Path) -> None:
    async with gateway(live_hub, org, tmp_path) as gw, Client(gw.server.server) as client:
        async def approve_with_grant(approval_id: str) -> None:
            approved = await decide(live_hub, org.approver_tokens["alice"], approval_id, "approve",
                                    grant_seconds=600)
            assert approved.status_code == 200, approved.text

        first, _ = await call_while_deciding(
            client, "show_args", {"value": "held-4"}, live_hub, org, approve_with_grant
        )
        assert not first.is_error
        with anyio.fail_after(10):
            repeat = await client.call_tool("show_args", {"value": "held-4"})
        assert not repeat.is_error, text_of(repeat)
        assert structured(repeat)["received"] == {"value": "held-4"}
        assert await pending_ids(live_hub, org) == []  # the grant covered it: no new request


async def test_hub_unreachable_fails_closed(tmp_path: Path) -> None:
    from tests.helpers import free_port

    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    settings = GatewaySettings(api_url=f"http://127.0.0.1:{free_port()}", api_key="pl_x_y", policy_file=policy,
                               hold_window=5, data_dir=tmp_path / "gw", startup_timeout=2)
    async with Gateway(settings) as gw, Client(gw.server.server) as client:
        held = await client.call_tool("show_args", {"value": "held-6"})
        assert held.is_error
        assert "hub" in text_of(held).lower() or "unreachable" in text_of(held).lower()
        assert structured(await client.call_tool("count_calls", {})) is not None
        allowed = await client.call_tool("show_args", {"value": "still-works"})
        assert not allowed.is_error
