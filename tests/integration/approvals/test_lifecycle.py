"""Creating, reading, voting on, cancelling and running approval requests over REST."""

from __future__ import annotations

from typing import Any

from backend.accounts import service as accounts
from backend.accounts.tables import User
from backend.audit.service import verify
from backend.notifications.service import deliveries_for
from policies import arguments_hash
from tests.helpers import auth, make_org
from tests.integration.approvals.support import apply_policy, audit_kinds, create, vote


async def test_create_snapshots_the_call_and_the_policy(client: Any, org: Any) -> None:
    await apply_policy(client, org)
    args = {"env": "prod", "replicas": 3}
    request = await create(client, org, "deploy", args, justification="hotfix for the outage")
    assert request["status"] == "pending"
    assert request["attached"] is False
    assert request["arguments"] == args
    assert request["arguments_hash"] == arguments_hash(args)
    assert request["agent"]["name"] == "ci-bot"
    assert request["requester"]["email"] == "dev@acme.test"
    assert request["justification"] == "hotfix for the outage"
    assert request["risk"] == "high"
    assert request["rule"]["tool"] == "deploy"
    assert request["approval_policy"]["name"] == "one"
    assert request["approval_policy"]["quorum"] == 1
    assert request["policy_version"] == 1
    assert request["expires_at"] > request["created_at"]
    fetched = (await client.get(f"/api/v1/approvals/{request['id']}", headers=auth(org.agent_token))).json()
    assert fetched["id"] == request["id"]
    assert fetched["votes"] == []
    assert await audit_kinds(org, request["id"]) == ["approval.requested"]


async def test_create_records_one_queued_delivery_per_approver_and_channel(client: Any, org: Any) -> None:
    await apply_policy(client, org)
    request = await create(client, org, "deploy")
    rows = await deliveries_for(request["id"])
    # carol by name, alice and bob through team sre; channels web and email; dev (requester) never.
    assert sorted((r["email"], r["channel"]) for r in rows) == [
        (email, channel)
        for email in ("alice@acme.test", "bob@acme.test", "carol@acme.test")
        for channel in ("email", "web")
    ]
    assert {r["status"] for r in rows} == {"queued"}
    assert {r["escalation_level"] for r in rows} == {0}


async def test_same_call_attaches_to_the_open_request(client: Any, org: Any) -> None:
    await apply_policy(client, org)
    first = await create(client, org, "deploy", {"env": "prod"})
    again = await create(client, org, "deploy", {"env": "prod"}, expect=200)
    assert again["attached"] is True
    assert again["id"] == first["id"]
    other = await create(client, org, "deploy", {"env": "stage"})
    assert other["id"] != first["id"]
    await vote(client, org.approver_tokens["alice"], first["id"])
    approved_again = await create(client, org, "deploy", {"env": "prod"}, expect=200)
    assert approved_again["id"] == first["id"]
    assert approved_again["status"] == "approved"


async def test_policy_mismatch_and_bad_input_are_clear_errors(client: Any, org: Any) -> None:
    headers = auth(org.agent_token)
    no_policy = await client.post("/api/v1/approvals", json={"tool": "deploy"}, headers=headers)
    assert no_policy.status_code == 409
    assert no_policy.json()["error"]["code"] == "policy_mismatch"
    await apply_policy(client, org)
    allowed = await client.post("/api/v1/approvals", json={"tool": "read_logs"}, headers=headers)
    assert allowed.status_code == 409
    assert allowed.json()["error"]["code"] == "policy_mismatch"
    assert allowed.json()["error"]["detail"]["action"] == "allow"
    denied = await client.post("/api/v1/approvals", json={"tool": "unknown_tool"}, headers=headers)
    assert denied.json()["error"]["detail"]["action"] == "deny"
    wrong_hash = await client.post(
        "/api/v1/approvals",
        json={"tool": "deploy", "server": "infra", "arguments": {"a": 1}, "arguments_hash": "0" * 64},
        headers=headers,
    )
    assert wrong_hash.status_code == 422
    assert wrong_hash.json()["error"]["code"] == "arguments_hash_mismatch"
    missing = await client.post("/api/v1/approvals", json={"server": "x"}, headers=headers)
    assert missing.status_code == 400
    unknown_field = await client.post("/api/v1/approvals", json={"tool": "deploy", "nope": 1}, headers=headers)
    assert unknown_field.status_code == 400
    bad_id = await client.get("/api/v1/approvals/not-a-uuid", headers=headers)
    assert bad_id.status_code == 404


async def test_ids_from_another_org_are_not_found(client: Any, org: Any) -> None:
    await apply_policy(client, org)
    request = await create(client, org, "deploy")
    other = await make_org("globex")
    token = other.approver_tokens["alice"]
    for method, path in [
        ("GET", f"/api/v1/approvals/{request['id']}"),
        ("POST", f"/api/v1/approvals/{request['id']}/approve"),
        ("POST", f"/api/v1/approvals/{request['id']}/cancel"),
        ("GET", f"/api/v1/approvals/{request['id']}/outcome"),
    ]:
        response = await client.request(method, path, headers=auth(token))
        assert response.status_code == 404, (path, response.text)
        assert response.json()["error"]["code"] == "not_found"
    listed = (await client.get("/api/v1/approvals", headers=auth(token))).json()
    assert listed == []


async def test_only_eligible_people_vote_and_refusals_are_audited(client: Any, org: Any) -> None:
    await apply_policy(client, org)
    request = await create(client, org, "drop_table", {"table": "users"})
    rid = request["id"]
    # The agent's own key can never vote.
    agent = await vote(client, org.agent_token, rid, expect=403)
    assert agent["error"]["code"] == "agent_cannot_vote"
    # dev is named in the policy but owns the requesting key (promoted, so the role is not the reason).
    dev = await accounts.get_user(org.id, "dev@acme.test")
    await User.update({User.role: "approver"}).where(User.id == dev["id"])
    dev_token, _ = await accounts.create_key(org.id, dev["id"], "dev-approver", scope="approver")
    own = await vote(client, dev_token, rid, expect=403)
    assert own["error"]["code"] == "own_request"
    # The admin is named in policy `two` so may vote; in policy `one` the admin is not.
    other = await create(client, org, "deploy")
    admin = await vote(client, org.admin_token, other["id"], expect=403)
    assert admin["error"]["code"] == "not_eligible"
    kinds = await audit_kinds(org, rid)
    assert kinds.count("approval.vote_rejected") == 2
    assert (await audit_kinds(org, other["id"])).count("approval.vote_rejected") == 1
    fetched = (await client.get(f"/api/v1/approvals/{rid}", headers=auth(org.admin_token))).json()
    assert fetched["votes"] == []
    assert fetched["status"] == "pending"


async def test_quorum_counts_one_vote_per_person(client: Any, org: Any) -> None:
    await apply_policy(client, org)
    request = await create(client, org, "drop_table", {"table": "users"})
    rid = request["id"]
    first = await vote(client, org.approver_tokens["alice"], rid)
    assert first["status"] == "pending"
    assert first["quorum"] == {"required": 2, "approvals": 1, "declines": 0}
    again = await vote(client, org.approver_tokens["alice"], rid, expect=409)
    assert again["error"]["code"] == "already_voted"
    second = await vote(client, org.admin_token, rid)
    assert second["status"] == "approved"
    assert second["outcome"]["kind"] == "approved"
    assert sorted(b["email"] for b in second["outcome"]["by"]) == ["admin@acme.test", "alice@acme.test"]
    late = await vote(client, org.approver_tokens["bob"], rid, expect=409)
    assert late["error"]["code"] == "already_decided"
    kinds = await audit_kinds(org, rid)
    assert kinds.count("approval.vote_approve") == 2
    assert kinds.count("approval.approved") == 1


async def test_decline_needs_a_reason_when_the_policy_says_so_and_declines_at_once(client: Any, org: Any) -> None:
    await apply_policy(client, org)
    rid = (await create(client, org, "drop_table", {"table": "t"}))["id"]
    await vote(client, org.approver_tokens["alice"], rid)
    no_reason = await vote(client, org.approver_tokens["bob"], rid, "decline", expect=422)
    assert no_reason["error"]["code"] == "reason_required"
    declined = await vote(client, org.approver_tokens["bob"], rid, "decline", reason="not during the freeze")
    assert declined["status"] == "declined"
    assert declined["outcome"] == {
        "kind": "declined",
        "by": [{"type": "user", "id": declined["votes"][1]["user"]["id"], "email": "bob@acme.test"}],
        "reason": "not during the freeze",
    }
    outcome = (await client.get(f"/api/v1/approvals/{rid}/outcome", headers=auth(org.agent_token))).json()
    assert outcome["outcome"]["kind"] == "declined"


async def test_decline_when_quorum_unreachable_waits_until_it_is(client: Any, org: Any) -> None:
    await apply_policy(client, org)
    rid = (await create(client, org, "grant_access", {"user": "mallory"}))["id"]
    first = await vote(client, org.approver_tokens["alice"], rid, "decline", reason="no")
    assert first["status"] == "pending"  # bob and carol can still make 2
    second = await vote(client, org.approver_tokens["bob"], rid, "decline", reason="also no")
    assert second["status"] == "declined"  # only carol is left: 1 < 2
    assert [b["email"] for b in second["outcome"]["by"]] == ["alice@acme.test", "bob@acme.test"]


async def test_cancel_by_requester_or_admin_only(client: Any, org: Any) -> None:
    await apply_policy(client, org)
    rid = (await create(client, org, "deploy"))["id"]
    refused = await client.post(f"/api/v1/approvals/{rid}/cancel", json={}, headers=auth(org.approver_tokens["bob"]))
    assert refused.status_code == 403
    cancelled = await client.post(
        f"/api/v1/approvals/{rid}/cancel", json={"reason": "not needed"}, headers=auth(org.agent_token)
    )
    assert cancelled.status_code == 200
    body = cancelled.json()
    assert body["status"] == "cancelled"
    assert body["outcome"]["kind"] == "cancelled"
    assert body["outcome"]["reason"] == "not needed"
    assert body["outcome"]["by"][0]["email"] == "dev@acme.test"
    again = await client.post(f"/api/v1/approvals/{rid}/cancel", headers=auth(org.admin_token))
    assert again.status_code == 409
    rid2 = (await create(client, org, "deploy", {"env": "other"}))["id"]
    by_admin = await client.post(f"/api/v1/approvals/{rid2}/cancel", headers=auth(org.admin_token))
    assert by_admin.json()["status"] == "cancelled"


async def test_claim_runs_once_with_the_approved_arguments_then_reports(client: Any, org: Any) -> None:
    await apply_policy(client, org)
    args = {"env": "prod"}
    rid = (await create(client, org, "deploy", args))["id"]
    headers = auth(org.agent_token)
    early = await client.post(f"/api/v1/approvals/{rid}/claim", json={"arguments_hash": arguments_hash(args)},
                              headers=headers)
    assert early.status_code == 409
    assert early.json()["error"]["code"] == "not_approved"
    await vote(client, org.approver_tokens["carol"], rid)
    wrong = await client.post(f"/api/v1/approvals/{rid}/claim", json={"arguments_hash": arguments_hash({"x": 1})},
                              headers=headers)
    assert wrong.status_code == 409
    assert wrong.json()["error"]["code"] == "arguments_hash_mismatch"
    stranger = await client.post(f"/api/v1/approvals/{rid}/claim", json={"arguments_hash": arguments_hash(args)},
                                 headers=auth(org.approver_tokens["carol"]))
    assert stranger.status_code == 403
    claimed = await client.post(f"/api/v1/approvals/{rid}/claim", json={"arguments_hash": arguments_hash(args)},
                                headers=headers)
    assert claimed.status_code == 200
    assert claimed.json()["status"] == "executing"
    twice = await client.post(f"/api/v1/approvals/{rid}/claim", json={"arguments_hash": arguments_hash(args)},
                              headers=headers)
    assert twice.status_code == 409
    assert twice.json()["error"]["code"] == "already_claimed"
    done = await client.post(f"/api/v1/approvals/{rid}/outcome",
                             json={"success": True, "result_summary": "deployed v42"}, headers=headers)
    assert done.status_code == 200
    body = done.json()
    assert body["status"] == "executed"
    assert body["execution"]["result_summary"] == "deployed v42"
    assert body["executed_at"] is not None
    again = await client.post(f"/api/v1/approvals/{rid}/outcome", json={"success": False}, headers=headers)
    assert again.status_code == 409
    # A new identical call is a new request now that the old one ran.
    fresh = await create(client, org, "deploy", args)
    assert fresh["id"] != rid
    assert await audit_kinds(org, rid) == [
        "approval.requested", "approval.vote_approve", "approval.approved", "approval.executing", "approval.executed",
    ]
    assert (await verify(org.id)).ok
