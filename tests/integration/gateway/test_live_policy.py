"""The gateway follows the hub: hot policy reload, the key's identity in CEL, justification on requests."""

from __future__ import annotations

from pathlib import Path

import anyio
import httpx
from mcp import Client

from tests.conftest import LiveHub
from tests.helpers import Org, auth, make_org, structured
from tests.integration.gateway.test_held_calls import gateway, text_of, wait_for_pending
from tests.interop.conftest import PROBE, PYTHON

BASE = f"""
version: "1"
servers:
  - name: probe
    command: [{PYTHON}, {PROBE}]
approval_policies:
  - name: sre
    teams: [sre]
tools:
  - name: show_args
    justification: required
    rules:
      - {{when: "agent.name == 'ci-bot' && agent.labels.team == 'web' && args.value == 'who'", action: deny,
          message: "web bots may not ask who"}}
      - {{when: "args.value == 'held'", action: require_approval, approval_policy: sre}}
      - {{action: __ACTION__}}
  - name: count_calls
    action: allow
defaults: {{unknown_tools: deny}}
"""


def apply(hub: LiveHub, org: Org, action: str) -> int:
    response = httpx.post(f"{hub.url}/api/v1/policies", json={"source": BASE.replace("__ACTION__", action)},
                          headers=auth(org.admin_token), timeout=10)
    assert response.status_code == 201, response.text
    return int(response.json()["version"])


async def test_new_policy_version_applies_without_restart(live_hub: LiveHub, tmp_path: Path) -> None:
    org = live_hub.call(make_org())
    apply(live_hub, org, "deny")
    async with gateway(live_hub, org, tmp_path) as gw, Client(gw.server.server) as client:
        denied = await client.call_tool("show_args", {"value": "x", "justification": "testing"})
        assert structured(denied)["status"] == "denied_by_policy"
        version = apply(live_hub, org, "allow")
        with anyio.fail_after(15):
            while gw.snapshot.version != version:
                await anyio.sleep(0.05)
        allowed = await client.call_tool("show_args", {"value": "x", "justification": "testing"})
        assert not allowed.is_error, text_of(allowed)
        # The justification is enforced by the gateway and never reaches the upstream.
        assert structured(allowed)["received"] == {"value": "x"}


async def test_the_keys_agent_identity_feeds_the_policy(live_hub: LiveHub, tmp_path: Path) -> None:
    org = live_hub.call(make_org())
    apply(live_hub, org, "allow")
    async with gateway(live_hub, org, tmp_path) as gw, Client(gw.server.server) as client:
        result = await client.call_tool("show_args", {"value": "who", "justification": "curious"})
        assert result.is_error and "web bots may not ask who" in text_of(result)


async def test_justification_is_required_and_stored_on_the_request(live_hub: LiveHub, tmp_path: Path) -> None:
    org = live_hub.call(make_org())
    apply(live_hub, org, "allow")
    async with gateway(live_hub, org, tmp_path, hold_window=0.3) as gw, Client(gw.server.server) as client:
        missing = await client.call_tool("show_args", {"value": "held"})
        assert missing.is_error and "justification" in text_of(missing).lower()
        held = await client.call_tool("show_args", {"value": "held", "justification": "rotate the cache"})
        assert structured(held)["status"] == "pending_approval"
        [approval_id] = await wait_for_pending(live_hub, org)
    async with httpx.AsyncClient(base_url=live_hub.url, headers=auth(org.admin_token)) as http:
        request = (await http.get(f"/api/v1/approvals/{approval_id}")).json()
    assert request["justification"] == "rotate the cache"
    assert request["arguments"] == {"value": "held"}
    assert request["agent"]["name"] == "ci-bot"
    assert request["requester"]["email"] == "dev@acme.test"
