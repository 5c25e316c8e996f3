"""The active policy read back in the seed's JSON shapes: GET /api/v1/tools and /api/v1/approval-policies."""

from __future__ import annotations

from typing import Any

from tests.helpers import auth, make_org

POLICY = """\
version: "1"
servers:
  - {name: infra, url: "http://127.0.0.1:9/mcp"}
approval_policies:
  - name: prod-deploys
    description: Production Deployments
    approvers: [alice@acme.test]
    teams: [sre]
    channels: [email, push]
    timeout: 10m
    quorum: 2
  - {name: dba, teams: [sre]}
tools:
  - name: deploy_production
    server: infra
    rules:
      - {when: "args.environment == 'production'", action: require_approval, approval_policy: prod-deploys}
      - {action: allow}
  - name: drop_table
    rules:
      - {action: require_approval}
  - name: read_logs
    rules:
      - {action: allow}
"""


async def test_tools_and_approval_policies_in_the_seed_shapes(client: Any) -> None:
    org = await make_org()
    headers = auth(org.approver_tokens["alice"])
    assert (await client.get("/api/v1/tools", headers=headers)).json() == []
    applied = await client.post("/api/v1/policies", json={"source": POLICY}, headers=auth(org.admin_token))
    assert applied.status_code == 201, applied.text

    tools = (await client.get("/api/v1/tools", headers=headers)).json()
    assert [{k: t[k] for k in ("tool_name", "source", "approval_required", "approval_policy_id", "conditions")}
            for t in tools] == [
        {"tool_name": "deploy_production", "source": "infra", "approval_required": True,
         "approval_policy_id": "prod-deploys",
         "conditions": [{"type": "argument", "expression": "args.environment == 'production'", "enabled": True}]},
        # No approval policy named on the rule: the file's default (its first) holds it.
        {"tool_name": "drop_table", "source": "external_mcp_server", "approval_required": True,
         "approval_policy_id": "prod-deploys", "conditions": []},
        {"tool_name": "read_logs", "source": "external_mcp_server", "approval_required": False,
         "approval_policy_id": None, "conditions": []},
    ]
    assert [r["action"] for r in tools[0]["rules"]] == ["require_approval", "allow"]

    policies = (await client.get("/api/v1/approval-policies", headers=headers)).json()
    assert policies[0] == {
        "id": "prod-deploys", "name": "prod-deploys", "description": "Production Deployments",
        "approvers": ["alice@acme.test"], "teams": ["sre"], "notification_channels": ["email", "push"],
        "timeout_seconds": 600, "quorum": 2,
    }
    assert policies[1]["id"] == "dba" and policies[1]["quorum"] == 1 and policies[1]["timeout_seconds"] == 3600

    # The OpenAPI document names the shapes, so integrators can generate clients from it.
    schema = (await client.get("/schema/openapi.json")).json()
    assert {"SeedTool", "SeedApprovalPolicy"} <= set(schema["components"]["schemas"])


async def test_seed_shapes_need_authentication(client: Any) -> None:
    await make_org()
    for path in ("/api/v1/tools", "/api/v1/approval-policies"):
        assert (await client.get(path)).status_code == 401
