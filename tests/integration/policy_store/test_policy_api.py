"""Policy-as-code over the API: immutable versions, diff, rollback, export, evaluate, audit."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import yaml

from backend.audit.tables import AuditEvent
from tests.helpers import auth, make_org

EXAMPLES = Path(__file__).resolve().parents[3] / "policies" / "examples"
SIMPLE = """\
version: "1"
approval_policies:
  - name: sre
    teams: [sre]
    quorum: 2
    timeout: 10m
tools:
  - name: deploy_production
    rules:
      - when: "args.environment == 'production'"
        action: require_approval
        approval_policy: sre
        risk: high
        description: production deploys need two SREs
      - action: allow
defaults:
  unknown_tools: deny
"""


async def test_apply_creates_immutable_versions_with_who_and_when(client: Any) -> None:
    org = await make_org()
    admin = auth(org.admin_token)
    first = await client.post("/api/v1/policies", json={"source": SIMPLE, "message": "first"}, headers=admin)
    assert first.status_code == 201, first.text
    assert first.json()["version"] == 1 and first.json()["created_by"].startswith("admin-cli")
    assert first.json()["warnings"] == []
    second_source = SIMPLE.replace("quorum: 2", "quorum: 1")
    second = await client.post("/api/v1/policies", json={"source": second_source}, headers=admin)
    assert second.json()["version"] == 2

    versions = (await client.get("/api/v1/policies/versions", headers=admin)).json()
    assert [(v["version"], v["is_active"]) for v in versions] == [(2, True), (1, False)]
    assert (await client.get("/api/v1/policies/versions/1", headers=admin)).json()["source"] == SIMPLE
    active = (await client.get("/api/v1/policies/active", headers=auth(org.agent_token))).json()
    assert active["version"] == 2 and active["source"] == second_source

    kinds = [
        row["kind"]
        for row in await AuditEvent.select(AuditEvent.kind)
        .where(AuditEvent.kind.like("policy.%"))
        .order_by(AuditEvent.seq)
    ]
    assert kinds == ["policy.applied", "policy.applied"]


async def test_invalid_policy_is_rejected_whole_with_locations(client: Any) -> None:
    org = await make_org()
    admin = auth(org.admin_token)
    bad = SIMPLE.replace("approval_policy: sre", "approval_policy: nobody").replace(
        "args.environment ==", "args.environment ==="
    )
    response = await client.post("/api/v1/policies", json={"source": bad}, headers=admin)
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "invalid_policy"
    issues = error["detail"]["issues"]
    assert len(issues) >= 2
    assert all(issue["line"] >= 1 and issue["column"] >= 1 and issue["hint"] for issue in issues)
    assert any("nobody" in str(issue["value"]) for issue in issues)
    assert (await client.get("/api/v1/policies/versions", headers=admin)).json() == []  # nothing applied


async def test_quorum_checked_against_real_team_sizes(client: Any) -> None:
    org = await make_org()  # team sre has two members
    too_many = SIMPLE.replace("quorum: 2", "quorum: 3")
    response = await client.post("/api/v1/policies/validate", json={"source": too_many}, headers=auth(org.admin_token))
    assert response.status_code == 422
    assert "larger than the approver pool (2)" in response.text


async def test_unknown_people_and_teams_are_warned_about(client: Any) -> None:
    org = await make_org()
    source = (EXAMPLES / "team_quorum.yaml").read_text()
    response = await client.post("/api/v1/policies/validate", json={"source": source}, headers=auth(org.admin_token))
    assert response.status_code == 200
    warnings = response.json()["warnings"]
    assert "approval policy 'dba-any-one': no team 'database' in this organization" in warnings
    assert any("no user ana@example.com" in w for w in warnings)


async def test_only_admins_apply(client: Any) -> None:
    org = await make_org()
    for token in (org.agent_token, org.approver_tokens["alice"]):
        response = await client.post("/api/v1/policies", json={"source": SIMPLE}, headers=auth(token))
        assert response.status_code == 403


async def test_diff_rollback_and_export(client: Any) -> None:
    org = await make_org()
    admin = auth(org.admin_token)
    await client.post("/api/v1/policies", json={"source": SIMPLE}, headers=admin)
    changed = SIMPLE.replace("timeout: 10m", "timeout: 30m")
    diff = (await client.post("/api/v1/policies/diff", json={"source": changed}, headers=admin)).json()
    assert diff["active_version"] == 1
    assert "-" in diff["diff"] and "+" in diff["diff"] and ("1800" in diff["diff"] or "30m" in diff["diff"])
    await client.post("/api/v1/policies", json={"source": changed}, headers=admin)

    rolled = await client.post("/api/v1/policies/rollback", json={"version": 1}, headers=admin)
    assert rolled.status_code == 201
    assert rolled.json()["version"] == 3 and rolled.json()["rolled_back_from"] == 1
    assert (await client.get("/api/v1/policies/active", headers=admin)).json()["source"] == SIMPLE
    again = await client.post("/api/v1/policies/rollback", json={"version": 3}, headers=admin)
    assert again.status_code == 409
    missing = await client.post("/api/v1/policies/rollback", json={"version": 42}, headers=admin)
    assert missing.status_code == 404

    exported_yaml = await client.get("/api/v1/policies/export?format=yaml", headers=admin)
    assert exported_yaml.text == SIMPLE
    exported_json = (await client.get("/api/v1/policies/export?format=json", headers=admin)).json()
    assert exported_json == yaml.safe_load(SIMPLE)
    bad_format = await client.get("/api/v1/policies/export?format=xml", headers=admin)
    assert bad_format.status_code == 422
    kinds = [r["kind"] for r in await AuditEvent.select(AuditEvent.kind).where(AuditEvent.kind.like("policy.%"))]
    assert sorted(kinds) == ["policy.applied", "policy.applied", "policy.rolled_back"]


async def test_evaluate_returns_decision_and_rule(client: Any) -> None:
    org = await make_org()
    await client.post("/api/v1/policies", json={"source": SIMPLE}, headers=auth(org.admin_token))
    agent = auth(org.agent_token)
    held = (
        await client.post(
            "/api/v1/evaluate", json={"tool": "deploy_production", "args": {"environment": "production"}}, headers=agent
        )
    ).json()
    assert held["decision"] == "require_approval"
    assert held["approval_policy"]["quorum"] == 2 and held["approval_policy"]["teams"] == ["sre"]
    assert held["rule"]["risk"] == "high" and held["policy_version"] == 1
    allowed = (
        await client.post(
            "/api/v1/evaluate", json={"tool": "deploy_production", "args": {"environment": "staging"}}, headers=agent
        )
    ).json()
    assert allowed["decision"] == "allow" and allowed["approval_policy"] is None
    unknown = (await client.post("/api/v1/evaluate", json={"tool": "rm_rf", "args": {}}, headers=agent)).json()
    assert unknown["decision"] == "deny"


async def test_evaluate_without_policy_is_a_clear_404(client: Any) -> None:
    org = await make_org()
    response = await client.post("/api/v1/evaluate", json={"tool": "x"}, headers=auth(org.agent_token))
    assert response.status_code == 404
    assert "preloop policy apply" in response.json()["error"]["detail"]["hint"]


async def test_active_long_poll_wakes_on_apply(client: Any) -> None:
    org = await make_org()
    admin = auth(org.admin_token)
    await client.post("/api/v1/policies", json={"source": SIMPLE}, headers=admin)
    timed_out = await client.get("/api/v1/policies/active?after=1&wait=0.2", headers=admin)
    assert timed_out.status_code == 304

    waiter = asyncio.create_task(client.get("/api/v1/policies/active?after=1&wait=20", headers=admin))
    await asyncio.sleep(0.2)  # let the waiter subscribe before the change it waits for
    assert not waiter.done()
    await client.post("/api/v1/policies", json={"source": SIMPLE.replace("10m", "20m")}, headers=admin)
    response = await asyncio.wait_for(waiter, timeout=5)
    assert response.status_code == 200 and response.json()["version"] == 2


async def test_policies_are_per_org(client: Any) -> None:
    acme = await make_org("acme")
    globex = await make_org("globex")
    await client.post("/api/v1/policies", json={"source": SIMPLE}, headers=auth(acme.admin_token))
    response = await client.get("/api/v1/policies/active", headers=auth(globex.admin_token))
    assert response.status_code == 404


async def test_quorum_counts_distinct_people_not_names(client: Any) -> None:
    org = await make_org()  # alice and bob are the team sre
    overlapping = SIMPLE.replace(
        "    teams: [sre]\n    quorum: 2", "    approvers: [alice@acme.test]\n    teams: [sre]\n    quorum: 3"
    )
    assert overlapping != SIMPLE
    response = await client.post(
        "/api/v1/policies/validate", json={"source": overlapping}, headers=auth(org.admin_token)
    )
    assert response.status_code == 200  # 1 named + 2 in the team passes the document check...
    assert (
        "approval policy 'sre': quorum 3 but only 2 distinct approver(s) exist before escalation, so requests "
        "cannot be approved unless escalation adds people"
    ) in response.json()["warnings"]  # ...but alice is counted twice, and the hub says so
