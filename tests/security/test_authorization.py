"""Least privilege, cell by cell where the matrix only sees a status: who votes, what an agent key
reads, which keys a person may mint, and which channel a vote is recorded under."""

from __future__ import annotations

from typing import Any

from backend.accounts import service as accounts
from backend.audit.tables import AuditEvent
from tests.helpers import auth
from tests.security.support import login, make_cast, pending, session_headers


async def _kinds(subject_id: str) -> list[str]:
    rows = await AuditEvent.select(AuditEvent.kind).where(AuditEvent.subject_id == subject_id)
    return [r["kind"] for r in rows]


async def test_a_viewer_in_the_approving_team_never_decides(client: Any) -> None:
    cast = await make_cast(client)
    viewer = cast.headers["viewer"]
    request = await pending(client, cast)
    for action, body in (("approve", {}), ("decline", {"reason": "no"})):
        refused = await client.post(f"/api/v1/approvals/{request['id']}/{action}", json=body, headers=viewer)
        assert refused.status_code == 403, refused.text
        assert refused.json()["error"]["code"] == "role_cannot_vote"
    batch = await client.post(
        "/api/v1/approvals/batch", json={"ids": [request["id"]], "decision": "approve"}, headers=viewer
    )
    assert batch.status_code == 403
    assert batch.json()["error"]["code"] == "role_cannot_vote"
    fetched = (await client.get(f"/api/v1/approvals/{request['id']}", headers=auth(cast.org.admin_token))).json()
    assert fetched["status"] == "pending"
    assert fetched["votes"] == []
    assert (await _kinds(request["id"])).count("approval.vote_rejected") == 2


async def test_an_agent_key_reads_only_its_own_requests_and_nothing_else_of_the_org(client: Any) -> None:
    cast = await make_cast(client)
    dev = await accounts.get_user(cast.org.id, "dev@acme.test")
    other_agent, _ = await accounts.create_key(cast.org.id, dev["id"], "other-bot", scope="agent")
    mine = await pending(client, cast)
    theirs = await pending(client, cast, token=other_agent)
    me = auth(cast.org.agent_token)

    listed = (await client.get("/api/v1/approvals", headers=me)).json()
    assert [item["id"] for item in listed] == [mine["id"]]
    assert (await client.get(f"/api/v1/approvals/{theirs['id']}", headers=me)).status_code == 404
    assert (await client.get(f"/api/v1/approvals/{theirs['id']}/outcome", headers=me)).status_code == 404
    waited = (
        await client.post("/api/v1/approvals/wait", json={"ids": [mine["id"], theirs["id"]], "timeout": 0}, headers=me)
    ).json()
    assert waited["pending"] == [mine["id"]]
    assert waited["unknown"] == [theirs["id"]]
    cancel = await client.post(f"/api/v1/approvals/{theirs['id']}/cancel", json={}, headers=me)
    assert cancel.status_code == 404
    for path in (
        "/api/v1/approvals/export", "/api/v1/audit/events", "/api/v1/audit/verify", "/api/v1/users",
        "/api/v1/keys", "/api/v1/teams", "/api/v1/grants", "/api/v1/policies/versions", "/api/v1/policies/export",
    ):
        response = await client.get(path, headers=me)
        assert response.status_code == 403, (path, response.text)
        assert response.json()["error"]["code"] == "agent_not_allowed"
    validate = await client.post("/api/v1/policies/validate", json={"source": "version: '1'\n"}, headers=me)
    assert validate.status_code == 403


async def test_people_do_not_file_approval_requests(client: Any) -> None:
    cast = await make_cast(client)
    body = {"tool": "deploy", "server": "infra", "arguments": {"x": 1}}
    for who in ("viewer", "approver", "admin"):
        refused = await client.post("/api/v1/approvals", json=body, headers=cast.headers[who])
        assert refused.status_code == 403, (who, refused.text)
        assert refused.json()["error"]["code"] == "agents_only"
    for key in (cast.org.admin_token, cast.org.approver_tokens["alice"]):
        assert (await client.post("/api/v1/approvals", json=body, headers=auth(key))).status_code == 403


async def test_nobody_mints_a_key_above_their_role(client: Any) -> None:
    cast = await make_cast(client)
    cases = [
        ("viewer", {"name": "v", "scope": "approver"}, 403),
        ("viewer", {"name": "v", "scope": "admin"}, 403),
        ("viewer", {"name": "v", "scope": "agent"}, 201),
        ("approver", {"name": "a", "scope": "admin"}, 403),
        ("approver", {"name": "a", "scope": "approver"}, 201),
        # An admin cannot hand a viewer a key that decides.
        ("admin", {"name": "for-vera", "scope": "approver", "user": "vera@acme.test"}, 403),
        ("admin", {"name": "for-vera", "scope": "agent", "user": "vera@acme.test"}, 201),
        ("admin", {"name": "mine", "scope": "admin"}, 201),
    ]
    for who, body, status in cases:
        response = await client.post("/api/v1/keys", json=body, headers=cast.headers[who])
        assert response.status_code == status, (who, body, response.text)
        if status == 403:
            assert response.json()["error"]["code"] == "scope_above_role"
            assert response.json()["error"]["detail"]["field"] == "scope"


async def test_the_vote_channel_comes_from_how_the_voter_signed_in(client: Any) -> None:
    cast = await make_cast(client)
    by_session = await pending(client, cast)
    voted = await client.post(
        f"/api/v1/approvals/{by_session['id']}/approve", json={"channel": "email"}, headers=cast.headers["approver"]
    )
    assert voted.status_code == 200, voted.text
    assert [v["channel"] for v in voted.json()["votes"]] == ["app"]
    by_key = await pending(client, cast)
    voted = await client.post(
        f"/api/v1/approvals/{by_key['id']}/decline",
        json={"channel": "slack"},
        headers=auth(cast.org.approver_tokens["bob"]),
    )
    assert [v["channel"] for v in voted.json()["votes"]] == ["api"]
    batch = await pending(client, cast)
    decided = await client.post(
        "/api/v1/approvals/batch",
        json={"ids": [batch["id"]], "decision": "approve", "channel": "mattermost"},
        headers=session_headers(await login(client, "bob@acme.test", "pw-bob", "acme")),
    )
    assert [v["channel"] for v in decided.json()["results"][0]["request"]["votes"]] == ["app"]


async def test_an_agent_key_cannot_touch_its_owners_notifications_passkeys_or_totp(client: Any) -> None:
    cast = await make_cast(client)
    agent = auth(cast.org.agent_token)
    subscription = {"endpoint": "https://push.example.test/agent", "keys": {"p256dh": "BNcR", "auth": "tBHI"}}
    for method, path, body in (
        ("GET", "/api/v1/me/notifications", None),
        ("PUT", "/api/v1/me/notifications", {"channels": []}),  # would silence the owner
        ("POST", "/api/v1/push/subscriptions", subscription),  # would receive the owner's pushes
        ("DELETE", "/api/v1/push/subscriptions", {"endpoint": "https://push.example.test/agent"}),
        ("GET", "/api/v1/webauthn/credentials", None),
        ("GET", "/api/v1/totp", None),
    ):
        refused = await client.request(method, path, json=body, headers=agent)
        assert refused.status_code == 403, (method, path, refused.text)
        assert refused.json()["error"]["code"] == "agent_not_allowed"
    dev = await accounts.get_user(cast.org.id, "dev@acme.test")
    prefs = (await client.get("/api/v1/me/notifications", headers=cast.headers["viewer"])).json()
    assert prefs["channels"] is None  # nothing changed for anyone
    assert dev["email"] == "dev@acme.test"


async def test_a_viewer_gets_no_step_up_challenge(client: Any) -> None:
    cast = await make_cast(client)
    request = await pending(client, cast)
    viewer = cast.headers["viewer"]
    for path, body in (
        (f"/api/v1/approvals/{request['id']}/step-up/options", {"decision": "approve"}),
        ("/api/v1/approvals/batch/step-up/options", {"ids": [request["id"]], "decision": "approve"}),
    ):
        refused = await client.post(path, json=body, headers=viewer)
        assert refused.status_code == 403, refused.text
        assert refused.json()["error"]["code"] == "role_cannot_vote"
