"""The service functions the console added: key listing and revoking, audit paging, draft check and explain."""

from __future__ import annotations

from typing import Any

import pytest

from backend.accounts import lifecycle
from backend.accounts import service as accounts
from backend.audit import service as audit
from backend.errors import Forbidden, NotFound
from backend.policy_store import service as policies
from tests.helpers import auth, make_org

POLICY = """\
version: "1"
approval_policies:
  - {name: sre, teams: [sre], approvers: [carol@acme.test], quorum: 1}
tools:
  - name: drop_table
    rules:
      - {action: require_approval, approval_policy: sre, description: dropping loses data}
tests:
  - {tool: drop_table, args: {}, expect: require_approval}
  - {tool: read, args: {}, expect: deny}
"""


async def _principal(org_id: Any, email: str) -> accounts.Principal:
    user = await accounts.get_user(org_id, email)
    return accounts.Principal(org_id=org_id, user_id=user["id"], email=email, role=user["role"], via="session")


async def test_keys_are_listed_by_owner_and_revoked_once(client: Any) -> None:
    org = await make_org()
    admin, alice = await _principal(org.id, "admin@acme.test"), await _principal(org.id, "alice@acme.test")
    assert {k["name"] for k in await accounts.list_keys(alice)} == {"alice-approver"}
    assert {k["name"] for k in await accounts.list_keys(admin)} >= {"alice-approver", "ci-bot", "admin-cli"}
    assert all("token_hash" not in k for k in await accounts.list_keys(admin))
    bot = next(k for k in await accounts.list_keys(admin) if k["name"] == "ci-bot")

    with pytest.raises(NotFound):  # someone else's key does not exist for a non-admin
        await lifecycle.revoke_key_for(alice, bot["id"])
    with pytest.raises(NotFound):
        await lifecycle.revoke_key_for(admin, "not-a-uuid")
    assert (await client.get("/api/v1/agents/me", headers=auth(org.agent_token))).status_code == 200
    await lifecycle.revoke_key_for(admin, bot["id"])
    await lifecycle.revoke_key_for(admin, bot["id"])  # idempotent
    assert (await client.get("/api/v1/agents/me", headers=auth(org.agent_token))).status_code == 401
    revoked = await audit.list_events(org.id, kind="key.revoked")
    assert len(revoked) == 1 and revoked[0]["actor_label"] == "admin@acme.test"


async def test_the_console_mints_keys_by_the_rule_the_api_uses(client: Any) -> None:
    """One rule for the console's form and POST /keys (mint_key): no key above the owner's role."""
    org = await make_org()
    admin, alice = await _principal(org.id, "admin@acme.test"), await _principal(org.id, "alice@acme.test")
    assert accounts.mintable_scopes(alice) == ["agent", "approver"]
    assert accounts.mintable_scopes(admin) == ["agent", "approver", "admin"]
    _, meta = await accounts.mint_key(alice, "alice-cli", scope="approver")
    assert meta["scope"] == "approver"
    with pytest.raises(Forbidden) as refused:
        await accounts.mint_key(alice, "too-much", scope="admin")
    assert refused.value.code == "scope_above_role"


async def test_audit_events_by_family_actor_and_order(client: Any) -> None:
    org = await make_org()
    applied = await client.post("/api/v1/policies", json={"source": POLICY}, headers=auth(org.admin_token))
    assert applied.status_code == 201, applied.text
    family = await audit.list_events(org.id, kind="team.")
    assert family and {e["kind"] for e in family} == {"team.created", "team.member_added"}
    assert await audit.list_events(org.id, kind="team") == []  # without the dot: exact
    newest = await audit.list_events(org.id, newest_first=True, limit=3)
    assert [e["seq"] for e in newest] == sorted((e["seq"] for e in newest), reverse=True)
    assert newest[0]["kind"] == "policy.applied"
    by_admin = await audit.list_events(org.id, actor="admin-cli")
    assert [e["kind"] for e in by_admin] == ["policy.applied"]


async def test_draft_check_reports_issues_tests_and_explains(client: Any) -> None:
    org = await make_org()
    typo = POLICY.replace("require_approval, approval", "require_aproval, approval")
    check = await policies.check_source(org.id, typo)
    assert not check["ok"] and check["issues"][0]["line"] == 7 and check["issues"][0]["column"] == 18
    check = await policies.check_source(org.id, POLICY)
    assert [t["passed"] for t in check["tests"]] == [True, False] and not check["ok"]
    assert "no user carol@acme.test" not in " ".join(check["warnings"])  # carol exists in make_org
    assert check["diff"] and check["active_version"] is None

    admin = await _principal(org.id, "admin@acme.test")
    explained = await policies.explain_source(admin, POLICY, tool="drop_table", server="", args={}, agent=None)
    assert explained["decision"] == "require_approval" and explained["draft"]
    assert explained["approvers"] == ["alice@acme.test", "bob@acme.test", "carol@acme.test"]
    assert explained["rule"]["description"] == "dropping loses data"
    with pytest.raises(NotFound):  # nothing active yet, and no draft given
        await policies.explain_source(admin, "", tool="drop_table", server="", args={}, agent=None)
