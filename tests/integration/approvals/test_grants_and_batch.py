"""Time-boxed grants and batch decisions."""

from __future__ import annotations

from typing import Any

from backend.approvals.tables import Grant
from tests.helpers import auth
from tests.integration.approvals.support import apply_policy, audit_kinds, create, vote


async def test_grant_lets_identical_calls_through_until_revoked(client: Any, org: Any) -> None:
    await apply_policy(client, org)
    args = {"env": "prod"}
    rid = (await create(client, org, "deploy", args))["id"]
    approved = await vote(client, org.approver_tokens["alice"], rid, grant_seconds=7200)
    assert approved["status"] == "approved"
    assert approved["grant_seconds"] == 600  # capped by the policy's max_grant
    covered = await create(client, org, "deploy", args, expect=200)
    assert covered["status"] == "granted"
    grant = covered["grant"]
    assert grant["request_id"] == rid
    assert grant["active"] is True
    assert grant["uses"] == 1
    # Different arguments or another agent key are not covered.
    other_args = await create(client, org, "deploy", {"env": "stage"})
    assert other_args["status"] == "pending"
    listed = (await client.get("/api/v1/grants?active=true", headers=auth(org.admin_token))).json()
    assert [g["id"] for g in listed] == [grant["id"]]
    # Only an admin or the granter may revoke.
    refused = await client.post(f"/api/v1/grants/{grant['id']}/revoke", headers=auth(org.approver_tokens["bob"]))
    assert refused.status_code == 403
    revoked = await client.post(f"/api/v1/grants/{grant['id']}/revoke", json={"reason": "done"},
                                headers=auth(org.approver_tokens["alice"]))
    assert revoked.status_code == 200
    assert revoked.json()["active"] is False
    assert (await client.get("/api/v1/grants?active=true", headers=auth(org.admin_token))).json() == []
    # The original approval is unexecuted, so the same call attaches to it rather than being granted.
    after = await create(client, org, "deploy", args, expect=200)
    assert after["id"] == rid
    assert after.get("attached") is True
    assert (await audit_kinds(org, grant["id"])) == ["grant.created", "grant.used", "grant.revoked"]


async def test_grants_need_every_approver_and_a_policy_that_allows_them(client: Any, org: Any) -> None:
    await apply_policy(client, org)
    rid = (await create(client, org, "drop_table", {"table": "t"}))["id"]
    refused = await vote(client, org.approver_tokens["alice"], rid, grant_seconds=60, expect=422)
    assert refused["error"]["code"] == "grants_disabled"
    negative = await vote(client, org.approver_tokens["alice"], rid, grant_seconds=-1, expect=422)
    assert negative["error"]["detail"]["field"] == "grant_seconds"
    # Policy `one` allows grants; quorum 1, so the deciding approver alone decides the window.
    rid2 = (await create(client, org, "deploy", {"n": 1}))["id"]
    await vote(client, org.approver_tokens["bob"], rid2)
    assert await Grant.count().where(Grant.request == rid2) == 0


async def test_batch_decisions_check_and_record_each_vote(client: Any, org: Any) -> None:
    await apply_policy(client, org)
    ids = [(await create(client, org, "deploy", {"n": n}))["id"] for n in range(3)]
    restart = (await create(client, org, "restart", {"svc": "api"}))["id"]  # bob is not eligible here
    response = await client.post(
        "/api/v1/approvals/batch",
        json={"ids": [*ids, restart, "00000000-0000-0000-0000-000000000000"], "decision": "approve"},
        headers=auth(org.approver_tokens["bob"]),
    )
    assert response.status_code == 200
    body = response.json()
    assert body["ok"] == 3
    assert body["failed"] == 2
    by_id = {r["id"]: r for r in body["results"]}
    assert all(by_id[i]["status"] == "approved" for i in ids)
    assert by_id[restart]["error"]["code"] == "not_eligible"
    assert by_id["00000000-0000-0000-0000-000000000000"]["error"]["code"] == "not_found"
    for rid in ids:
        assert (await audit_kinds(org, rid)).count("approval.vote_approve") == 1
    declined = await client.post(
        "/api/v1/approvals/batch",
        json={"ids": [ids[0]], "decision": "decline", "reason": "x"},
        headers=auth(org.approver_tokens["alice"]),
    )
    assert declined.json()["results"][0]["error"]["code"] == "already_decided"
    empty = await client.post("/api/v1/approvals/batch", json={"ids": [], "decision": "approve"},
                              headers=auth(org.approver_tokens["alice"]))
    assert empty.status_code == 422
    bad = await client.post("/api/v1/approvals/batch", json={"ids": ids, "decision": "maybe"},
                            headers=auth(org.approver_tokens["alice"]))
    assert bad.status_code == 400
