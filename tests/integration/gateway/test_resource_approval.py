"""A `resources/read` held by the policy's `resources:` rules goes through the hub like a tool call."""

from __future__ import annotations

from pathlib import Path

import anyio
import httpx
import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError

from mcp_gateway.app import Gateway
from mcp_gateway.config import GatewaySettings
from mcp_gateway.results import STATUS_KEY
from tests.conftest import LiveHub
from tests.helpers import Org, auth, make_org
from tests.interop.conftest import EVERYTHING

pytestmark = pytest.mark.interop

URI = "demo://resource/dynamic/text/1"


@pytest.fixture
def org(live_hub: LiveHub) -> Org:
    org: Org = live_hub.call(make_org())
    policy = f"""
version: "1"
servers:
  - name: everything
    command: [node, {EVERYTHING}, stdio]
approval_policies:
  - {{name: sre, teams: [sre], timeout: 10m}}
tools: []
resources:
  - {{uri: "demo://resource/dynamic/text/*", action: require_approval, approval_policy: sre}}
defaults: {{unknown_tools: allow, justification: none}}
"""
    response = httpx.post(f"{live_hub.url}/api/v1/policies", json={"source": policy},
                          headers=auth(org.admin_token), timeout=10)
    assert response.status_code == 201, response.text
    return org


async def decide_when_pending(hub: LiveHub, org: Org, action: str) -> None:
    async with httpx.AsyncClient(base_url=hub.url, headers=auth(org.admin_token)) as http:
        with anyio.fail_after(30):
            every_pending = {"status": "pending", "scope": "all"}
            while not (items := (await http.get("/api/v1/approvals", params=every_pending)).json()):
                await anyio.sleep(0.1)
        assert items[0]["tool"] == "resources/read" and items[0]["arguments"] == {"uri": URI}
        body = {"reason": "not now"} if action == "decline" else {}
        response = await http.post(f"/api/v1/approvals/{items[0]['id']}/{action}", json=body,
                                   headers=auth(org.approver_tokens["alice"]))
        assert response.status_code == 200, response.text


@pytest.mark.parametrize("action", ["approve", "decline"])
async def test_a_held_read_runs_once_approved_and_not_when_declined(
    live_hub: LiveHub, org: Org, tmp_path: Path, action: str
) -> None:
    settings = GatewaySettings(api_url=live_hub.url, api_key=org.agent_token, hold_window=20,
                               data_dir=tmp_path / "gw", startup_timeout=10)
    async with Gateway(settings) as gw, Client(gw.server.server) as agent, anyio.create_task_group() as tg:
        tg.start_soon(decide_when_pending, live_hub, org, action)
        if action == "approve":
            result = await agent.read_resource(URI)
            assert result.contents and str(result.contents[0].uri) == URI
        else:
            with pytest.raises(MCPError) as refused:
                await agent.read_resource(URI)
            assert refused.value.error.data[STATUS_KEY] == "declined"
            assert "not now" in refused.value.error.message
