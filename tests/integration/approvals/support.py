"""Shared setup for the approval tests: one policy that exercises every rule, and short calls."""

from __future__ import annotations

from typing import Any

from backend.audit.tables import AuditEvent
from tests.helpers import Org, auth

POLICY = """
version: "1"
name: approvals-tests
approval_policies:
  - name: one
    approvers: [carol@acme.test]
    teams: [sre]
    quorum: 1
    timeout: 1h
    channels: [web, email]
    max_grant: 600
  - name: two
    teams: [sre]
    approvers: [carol@acme.test, dev@acme.test, admin@acme.test]
    quorum: 2
    timeout: 1h
    require_decline_reason: true
  - name: two-soft
    approvers: [alice@acme.test, bob@acme.test, carol@acme.test]
    quorum: 2
    timeout: 1h
    decline_mode: when_quorum_unreachable
  - name: alice-only
    approvers: [alice@acme.test]
    timeout: 1h
    channels: [push]
    escalation:
      - {after: 10m, to: [carol@acme.test]}
      - {after: 20m, to: [sre]}
  - name: short
    approvers: [alice@acme.test]
    timeout: 1
  - name: auto
    approvers: [alice@acme.test]
    timeout: 1h
    on_timeout: approve
tools:
  - name: deploy
    server: infra
    action: require_approval
    approval_policy: one
    risk: high
  - name: drop_table
    action: require_approval
    approval_policy: two
  - name: grant_access
    action: require_approval
    approval_policy: two-soft
  - name: restart
    action: require_approval
    approval_policy: alice-only
  - name: ping
    action: require_approval
    approval_policy: short
  - name: scale
    action: require_approval
    approval_policy: auto
  - name: read_logs
    action: allow
defaults:
  unknown_tools: deny
"""


async def apply_policy(client: Any, org: Org, source: str = POLICY) -> None:
    response = await client.post("/api/v1/policies", json={"source": source}, headers=auth(org.admin_token))
    assert response.status_code == 201, response.text


async def create(
    client: Any, org: Org, tool: str = "deploy", arguments: dict[str, Any] | None = None, *,
    server: str = "", token: str | None = None, expect: int = 201, **extra: Any,
) -> dict[str, Any]:
    body = {"tool": tool, "server": server, "arguments": arguments or {"env": "prod"}, **extra}
    if tool == "deploy" and not server:
        body["server"] = "infra"
    response = await client.post("/api/v1/approvals", json=body, headers=auth(token or org.agent_token))
    assert response.status_code == expect, response.text
    return response.json()  # type: ignore[no-any-return]


async def vote(
    client: Any, token: str, request_id: str, decision: str = "approve", *, expect: int = 200, **body: Any
) -> dict[str, Any]:
    response = await client.post(f"/api/v1/approvals/{request_id}/{decision}", json=body, headers=auth(token))
    assert response.status_code == expect, response.text
    return response.json()  # type: ignore[no-any-return]


async def audit_kinds(org: Org, subject_id: str) -> list[str]:
    rows = await AuditEvent.select(AuditEvent.kind).where(
        (AuditEvent.org_id == str(org.id)) & (AuditEvent.subject_id == subject_id)
    ).order_by(AuditEvent.seq)
    return [r["kind"] for r in rows]
