"""One gateway, many agents: each HTTP agent's own bearer key is who the policy, approvals and audit see."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from backend.accounts import service
from backend.accounts.tables import ApiKey
from backend.audit.tables import AuditEvent
from mcp_gateway.app import Gateway
from mcp_gateway.config import GatewaySettings
from mcp_gateway.results import STATUS_KEY
from tests.conftest import LiveHub
from tests.helpers import Org, auth, make_org
from tests.integration.gateway.test_own_results import run_ts
from tests.interop.conftest import PROBE, PYTHON, serving_http

pytestmark = pytest.mark.interop

POLICY = f"""
version: "1"
servers:
  - name: probe
    command: [{PYTHON}, {PROBE}]
tools:
  - name: show_args
    rules:
      - {{when: "agent.labels.team == 'web'", action: allow}}
      - {{action: deny, message: "only the web team may call show_args"}}
defaults: {{unknown_tools: deny, justification: none}}
"""


async def ops_key(org: Org) -> str:
    dev = await service.get_user(org.id, "dev@acme.test")
    token, _ = await service.create_key(org.id, dev["id"], "ops-bot", scope="agent", labels={"team": "ops"})
    return token


async def revoke(token: str) -> None:
    await ApiKey.update({ApiKey.revoked_at: datetime.now(UTC)}).where(
        ApiKey.token_hash == service.sha256_hex(token)
    )


@pytest.fixture
def org(live_hub: LiveHub) -> Org:
    org: Org = live_hub.call(make_org())
    response = httpx.post(f"{live_hub.url}/api/v1/policies", json={"source": POLICY},
                          headers=auth(org.admin_token), timeout=10)
    assert response.status_code == 201, response.text
    return org


def call_as(url: str, key: str | None) -> dict[str, Any]:
    spec: dict[str, Any] = {"url": url, "calls": [{"name": "show_args", "arguments": {"value": "x"}}]}
    if key is not None:
        spec["headers"] = {"Authorization": f"Bearer {key}"}
    return spec


async def test_two_agents_through_one_gateway_are_judged_and_audited_as_themselves(
    live_hub: LiveHub, org: Org, tmp_path: Path
) -> None:
    ops = live_hub.call(ops_key(org))
    # The gateway's own key belongs to an approver: any call judged as it would be denied (no 'web' label).
    settings = GatewaySettings(api_url=live_hub.url, api_key=org.approver_tokens["alice"], data_dir=tmp_path / "gw",
                               agent_key_ttl=1.0)
    async with Gateway(settings) as gw, serving_http(gw) as url:
        web_answer = (await run_ts(call_as(url, org.agent_token)))["calls"][0]
        ops_answer = (await run_ts(call_as(url, ops)))["calls"][0]
        assert web_answer["ok"] and not web_answer["result"].get("isError"), web_answer
        assert ops_answer["ok"] and ops_answer["result"]["isError"], ops_answer
        assert ops_answer["result"]["_meta"][STATUS_KEY] == "denied_by_policy"

        # Both records reach the hub under their own keys (before one key is revoked: a revoked key
        # can no longer report its records).
        with anyio.fail_after(30):
            while True:
                rows = live_hub.call(
                    AuditEvent.select(AuditEvent.kind, AuditEvent.actor_label, AuditEvent.data)
                    .where((AuditEvent.org_id == str(org.id)) & AuditEvent.kind.is_in(["call.allow", "call.deny"]))
                    .output(load_json=True)
                    .run()
                )
                if len(rows) >= 2:
                    break
                await anyio.sleep(0.3)
        # Revoked: refused at the next check, i.e. within the cache time (1 s here).
        live_hub.call(revoke(ops))
        await anyio.sleep(1.2)
        refused = (await run_ts(call_as(url, ops)))["calls"][0]
        assert refused["ok"] and refused["result"]["_meta"][STATUS_KEY] == "api_key_refused", refused
        assert "Authorization: Bearer" in refused["result"]["content"][0]["text"]

    by_kind = {r["kind"]: r for r in rows}
    assert len(rows) == 2
    assert by_kind["call.allow"]["data"]["agent"]["name"] == "ci-bot"
    assert by_kind["call.deny"]["data"]["agent"]["name"] == "ops-bot"
    assert "reported_agent" not in by_kind["call.allow"]["data"]
    assert "reported_agent" not in by_kind["call.deny"]["data"]


async def test_require_agent_key_refuses_clients_without_one(live_hub: LiveHub, org: Org, tmp_path: Path) -> None:
    settings = GatewaySettings(api_url=live_hub.url, api_key=org.agent_token, data_dir=tmp_path / "gw",
                               require_agent_key=True)
    async with Gateway(settings) as gw, serving_http(gw) as url, httpx.AsyncClient() as http:
        body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                "params": {"name": "show_args", "arguments": {"value": "x"}}}
        headers = {"accept": "application/json, text/event-stream", "mcp-protocol-version": "2026-07-28",
                   "mcp-method": "tools/call", "mcp-name": "show_args"}
        refused = await http.post(url, content=json.dumps(body), headers=headers)
        assert refused.status_code == 401
        assert "Authorization: Bearer" in refused.json()["message"]
        answer = (await run_ts(call_as(url, org.agent_token)))["calls"][0]
        assert answer["ok"] and not answer["result"].get("isError"), answer
