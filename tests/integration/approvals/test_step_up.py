"""require_passkey: a vote counts only with a fresh passkey assertion for this request, decision and arguments."""

from __future__ import annotations

from typing import Any

from backend.approvals.tables import Vote
from backend.audit.tables import AuditEvent
from tests.helpers import auth
from tests.integration.accounts.passkey_support import enrol, held, session, setup_policy, step_up
from tests.integration.approvals.support import create


async def _rejections(request_id: str) -> list[str]:
    rows = await AuditEvent.select(AuditEvent.data).where(
        (AuditEvent.kind == "approval.vote_rejected") & (AuditEvent.subject_id == request_id)
    ).order_by(AuditEvent.seq).output(load_json=True)
    return [r["data"]["why"] for r in rows]


def _code(response: Any) -> str:
    return str(response.json()["error"]["code"])


async def test_a_passkey_policy_counts_only_a_step_up_vote_for_this_call(client: Any, org: Any) -> None:
    await setup_policy(client, org)
    rid = await held(client, org)
    other = await held(client, org, arguments={"env": "staging"})
    async with session(client.hub, "alice@acme.test", "pw-alice") as alice:
        key = await enrol(alice)
        # No assertion: refused, whatever the channel says.
        for channel in ("app", "email", "api"):
            bare = await alice.post(f"/api/v1/approvals/{rid}/approve", json={"channel": channel})
            assert bare.status_code == 403 and _code(bare) == "passkey_required", bare.text
        # An approver API key cannot cast it even with a valid assertion for the request.
        assertion = await step_up(alice, key, rid)
        by_key = await client.post(f"/api/v1/approvals/{rid}/approve",
                                   json={"channel": "app", "assertion": assertion},
                                   headers=auth(org.approver_tokens["alice"]))
        assert by_key.status_code == 403 and _code(by_key) == "passkey_required"
        # An assertion made for declining does not approve.
        for_decline = await step_up(alice, key, rid, "decline")
        wrong_decision = await alice.post(f"/api/v1/approvals/{rid}/approve",
                                          json={"channel": "app", "assertion": for_decline})
        assert wrong_decision.status_code == 403 and _code(wrong_decision) == "passkey_wrong_decision"
        # An assertion made for another request does not approve this one.
        for_other = await step_up(alice, key, other)
        wrong_request = await alice.post(f"/api/v1/approvals/{rid}/approve",
                                         json={"channel": "app", "assertion": for_other})
        assert wrong_request.status_code == 403 and _code(wrong_request) == "passkey_wrong_request"
        # The real thing. Its challenge is kept server-side, for two minutes at most.
        good = await step_up(alice, key, rid)
        redis = client.hub.redis.client
        pending = [k async for k in redis.scan_iter(match="preloop:webauthn:stepup:*")]
        ttls = [await redis.ttl(k) for k in pending]
        assert ttls and all(0 < ttl <= 120 for ttl in ttls)
        approved = await alice.post(f"/api/v1/approvals/{rid}/approve", json={"channel": "app", "assertion": good})
        assert approved.status_code == 200, approved.text
        assert approved.json()["status"] == "approved"
        assert [v["passkey_confirmed"] for v in approved.json()["votes"]] == [True]
        # Replaying the used assertion on the other request is refused.
        replay = await alice.post(f"/api/v1/approvals/{other}/approve", json={"channel": "app", "assertion": good})
        assert replay.status_code == 403 and _code(replay) == "passkey_replayed"
    assert await _rejections(rid) == [
        "passkey_required", "passkey_required", "passkey_required", "passkey_required",
        "passkey_wrong_decision", "passkey_wrong_request",
    ]
    assert await _rejections(other) == ["passkey_replayed"]
    vote = await Vote.select().where(Vote.request == rid).output(load_json=True).first()
    assert vote is not None and vote["channel"] == "app"
    stored = vote["assertion"]
    assert stored["signature"] == good["response"]["signature"]
    assert stored["authenticator_data"] == good["response"]["authenticatorData"]
    assert stored["client_data_json"] == good["response"]["clientDataJSON"]
    assert stored["credential_id"] == key.id
    event = await AuditEvent.select(AuditEvent.data).where(
        (AuditEvent.kind == "approval.vote_approve") & (AuditEvent.subject_id == rid)
    ).output(load_json=True).first()
    assert event is not None and event["data"]["step_up"] == stored
    assert stored["requests"] == [[rid, event["data"]["arguments_hash"]]]


async def test_step_up_needs_a_session_with_a_passkey_and_a_pending_request(client: Any, org: Any) -> None:
    await setup_policy(client, org)
    rid = await held(client, org)
    async with session(client.hub, "bob@acme.test", "pw-bob") as bob:
        none_yet = await bob.post(f"/api/v1/approvals/{rid}/step-up/options", json={"decision": "approve"})
        assert none_yet.status_code == 422 and _code(none_yet) == "no_passkey"
        bad = await bob.post(f"/api/v1/approvals/{rid}/step-up/options", json={"decision": "maybe"})
        assert bad.status_code == 400
    by_key = await client.post(f"/api/v1/approvals/{rid}/step-up/options", json={"decision": "approve"},
                               headers=auth(org.approver_tokens["bob"]))
    assert by_key.status_code == 403 and _code(by_key) == "session_required"
    # Decline works the same way, and then the request is no longer open for a step-up.
    async with session(client.hub, "bob@acme.test", "pw-bob") as bob:
        key = await enrol(bob)
        assertion = await step_up(bob, key, rid, "decline")
        declined = await bob.post(f"/api/v1/approvals/{rid}/decline",
                                  json={"channel": "app", "assertion": assertion, "reason": "not now"})
        assert declined.status_code == 200 and declined.json()["status"] == "declined"
        closed = await bob.post(f"/api/v1/approvals/{rid}/step-up/options", json={"decision": "approve"})
        assert closed.status_code == 409 and _code(closed) == "already_decided"


async def test_policies_without_require_passkey_vote_as_before(client: Any, org: Any) -> None:
    await setup_policy(client, org)
    rid = str((await create(client, org, "restart", {"svc": "web"}))["id"])
    plain = await client.post(f"/api/v1/approvals/{rid}/approve", json={},
                              headers=auth(org.approver_tokens["alice"]))
    assert plain.status_code == 200 and plain.json()["status"] == "approved"
    assert [v["passkey_confirmed"] for v in plain.json()["votes"]] == [False]


async def test_batch_step_up_covers_the_listed_ids_and_their_arguments(client: Any, org: Any) -> None:
    await setup_policy(client, org)
    ids = [await held(client, org, arguments={"n": n}) for n in range(3)]
    extra = await held(client, org, arguments={"n": 99})
    async with session(client.hub, "alice@acme.test", "pw-alice") as alice:
        key = await enrol(alice)
        options = await alice.post("/api/v1/approvals/batch/step-up/options", json={"ids": ids, "decision": "approve"})
        assert options.status_code == 200, options.text
        body = options.json()
        assert sorted(r["id"] for r in body["requests"]) == sorted(ids)
        assertion = key.get(body["public_key"])
        # The assertion does not stretch to a request it did not name: the whole batch is refused.
        stretched = await alice.post("/api/v1/approvals/batch", json={
            "ids": [*ids, extra], "decision": "approve", "channel": "app", "assertion": assertion})
        assert stretched.status_code == 403 and _code(stretched) == "passkey_wrong_request"
        assert await _rejections(extra) == ["passkey_wrong_request"]
        # A fresh one for exactly the three.
        options = await alice.post("/api/v1/approvals/batch/step-up/options", json={"ids": ids, "decision": "approve"})
        assertion = key.get(options.json()["public_key"])
        batch = await alice.post("/api/v1/approvals/batch", json={
            "ids": ids, "decision": "approve", "channel": "app", "assertion": assertion})
        assert batch.status_code == 200, batch.text
        assert batch.json()["ok"] == 3
        assert {r["status"] for r in batch.json()["results"]} == {"approved"}
        # Without an assertion, a batch on passkey requests counts nothing.
        left = await alice.post("/api/v1/approvals/batch", json={"ids": [extra], "decision": "approve",
                                                                  "channel": "app"})
        assert left.json()["failed"] == 1
        assert left.json()["results"][0]["error"]["code"] == "passkey_required"
    votes = await Vote.select(Vote.assertion).where(Vote.request.is_in(ids)).output(load_json=True)
    assert len(votes) == 3 and len({v["assertion"]["signature"] for v in votes}) == 1
