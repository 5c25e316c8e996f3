"""Accounts that can be lived with: passwords, invite links, deactivation, key revocation, team changes."""

from __future__ import annotations

import hashlib
from typing import Any

from backend.accounts import lifecycle
from backend.accounts.tables import UserInvite
from backend.audit.service import Actor, verify
from backend.audit.tables import AuditEvent
from tests.helpers import Org, auth


async def _login(client: Any, email: str, password: str) -> Any:
    client.headers["Origin"] = "http://hub.test"  # as a browser sends it: the CSRF check needs it for sessions
    return await client.post("/api/v1/auth/login", json={"email": email, "password": password})


async def _kinds(org: Org) -> list[str]:
    rows = await AuditEvent.select(AuditEvent.kind).where(AuditEvent.org_id == str(org.id)).order_by(AuditEvent.seq)
    return [row["kind"] for row in rows]


async def test_change_own_password(client: Any, org: Org) -> None:
    assert (await _login(client, "alice@acme.test", "pw-alice")).status_code == 201
    wrong = await client.post("/api/v1/me/password", json={"current_password": "nope", "new_password": "new-pass-1"})
    assert wrong.status_code == 401 and wrong.json()["error"]["detail"]["field"] == "current_password"
    short = await client.post("/api/v1/me/password", json={"current_password": "pw-alice", "new_password": "x"})
    assert short.status_code == 422 and "at least 8" in short.json()["error"]["message"]
    ok = await client.post("/api/v1/me/password", json={"current_password": "pw-alice", "new_password": "new-pass-1"})
    assert ok.status_code == 204, ok.text
    client.cookies.clear()
    assert (await _login(client, "alice@acme.test", "pw-alice")).status_code == 401
    assert (await _login(client, "alice@acme.test", "new-pass-1")).status_code == 201
    client.cookies.clear()
    by_key = await client.post("/api/v1/me/password", headers=auth(org.approver_tokens["alice"]),
                               json={"current_password": "new-pass-1", "new_password": "other-pass"})
    assert by_key.status_code == 403
    assert "user.password_changed" in await _kinds(org)


async def test_invite_link_is_single_use_hashed_and_expires(client: Any, org: Org) -> None:
    invited = await client.post("/api/v1/users/dev@acme.test/invite", headers=auth(org.admin_token))
    assert invited.status_code == 200, invited.text
    body = invited.json()
    assert body["valid_hours"] == 24 and "/app/#invite=" in body["link"]
    token = body["link"].split("#invite=")[1]
    stored = await UserInvite.select(UserInvite.token_hash)
    assert [row["token_hash"] for row in stored] == [hashlib.sha256(token.encode()).hexdigest()]

    assert (await client.post("/api/v1/auth/invite", json={"token": token, "password": "short"})).status_code == 422
    accepted = await client.post("/api/v1/auth/invite", json={"token": token, "password": "dev-password"})
    assert accepted.status_code == 200 and accepted.json() == {"email": "dev@acme.test"}
    again = await client.post("/api/v1/auth/invite", json={"token": token, "password": "other-password"})
    assert again.status_code == 401 and "already used" in again.json()["error"]["message"]
    assert (await _login(client, "dev@acme.test", "dev-password")).status_code == 201

    expired = await lifecycle.create_invite(org.id, "carol@acme.test", actor=Actor.system(), hours=0)
    late = await client.post("/api/v1/auth/invite", json={"token": expired, "password": "carol-password"})
    assert late.status_code == 401 and "expired" in late.json()["error"]["message"]
    kinds = await _kinds(org)
    assert kinds.count("user.invited") == 2 and kinds.count("user.invite_accepted") == 1


async def test_deactivated_user_stops_at_once_and_comes_back(client: Any, org: Org) -> None:
    key = auth(org.approver_tokens["alice"])
    assert (await _login(client, "alice@acme.test", "pw-alice")).status_code == 201
    session_cookies = dict(client.cookies)
    assert (await client.get("/api/v1/approvals")).status_code == 200
    client.cookies.clear()

    off = await client.post("/api/v1/users/alice@acme.test/deactivate", headers=auth(org.admin_token))
    assert off.status_code == 200 and off.json() == {"email": "alice@acme.test", "active": False, "changed": True}
    assert (await client.get("/api/v1/approvals", headers=key)).status_code == 401
    client.cookies.update(session_cookies)
    assert (await client.get("/api/v1/approvals")).status_code == 401  # the session ended with her
    client.cookies.clear()
    assert (await _login(client, "alice@acme.test", "pw-alice")).status_code == 401
    teams = (await client.get("/api/v1/teams", headers=auth(org.admin_token))).json()
    assert {"name": "sre", "members": ["bob@acme.test"]} in teams  # no longer counted as an approver

    on = await client.post("/api/v1/users/alice@acme.test/reactivate", headers=auth(org.admin_token))
    assert on.json()["active"] is True
    assert (await client.get("/api/v1/approvals", headers=key)).status_code == 200
    assert (await _login(client, "alice@acme.test", "pw-alice")).status_code == 201
    client.cookies.clear()

    self_off = await client.post("/api/v1/users/admin@acme.test/deactivate", headers=auth(org.admin_token))
    assert self_off.status_code == 409
    by_approver = await client.post("/api/v1/users/bob@acme.test/deactivate", headers=key)
    assert by_approver.status_code == 403
    kinds = await _kinds(org)
    assert "user.deactivated" in kinds and "user.reactivated" in kinds


async def test_keys_show_last_use_and_revoke_at_once(client: Any, org: Org) -> None:
    bob = auth(org.approver_tokens["bob"])
    assert (await client.get("/api/v1/approvals", headers=bob)).status_code == 200
    keys = {k["name"]: k for k in (await client.get("/api/v1/keys", headers=auth(org.admin_token))).json()}
    assert keys["bob-approver"]["last_used_at"] is not None
    assert keys["carol-approver"]["last_used_at"] is None

    # Bob may not revoke Alice's key; he may revoke his own, by prefix.
    alice_prefix = keys["alice-approver"]["prefix"]
    assert (await client.post(f"/api/v1/keys/{alice_prefix}/revoke", headers=bob)).status_code == 403
    revoked = await client.post(f"/api/v1/keys/{keys['carol-approver']['id']}/revoke", headers=auth(org.admin_token))
    assert revoked.status_code == 200 and revoked.json()["revoked"] is True
    assert (await client.get("/api/v1/approvals", headers=auth(org.approver_tokens["carol"]))).status_code == 401
    listed = {k["name"]: k for k in (await client.get("/api/v1/keys", headers=auth(org.admin_token))).json()}
    assert listed["carol-approver"]["revoked_at"] is not None
    assert (await client.post("/api/v1/keys/ffffffff/revoke", headers=auth(org.admin_token))).status_code == 404
    assert "key.revoked" in await _kinds(org)


async def test_team_members_rename_and_delete(client: Any, org: Org) -> None:
    admin = auth(org.admin_token)
    added = await client.post("/api/v1/teams/sre/members", headers=admin, json={"email": "carol@acme.test"})
    assert added.status_code == 200
    assert (await client.delete("/api/v1/teams/sre/members/bob@acme.test", headers=admin)).status_code == 204
    renamed = await client.patch("/api/v1/teams/sre", headers=admin, json={"name": "oncall"})
    assert renamed.status_code == 200 and renamed.json()["name"] == "oncall"
    teams = (await client.get("/api/v1/teams", headers=admin)).json()
    assert teams == [{"name": "oncall", "members": ["alice@acme.test", "carol@acme.test"]}]
    assert (await client.patch("/api/v1/teams/oncall", headers=admin, json={"name": "bad name"})).status_code == 422
    assert (await client.delete("/api/v1/teams/oncall", headers=admin)).status_code == 204
    assert (await client.get("/api/v1/teams", headers=admin)).json() == []
    assert (await client.delete("/api/v1/teams/oncall", headers=admin)).status_code == 404
    kinds = await _kinds(org)
    for kind in ("team.member_added", "team.member_removed", "team.renamed", "team.deleted"):
        assert kind in kinds
    assert (await verify(org.id)).ok
