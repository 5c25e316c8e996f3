"""Idempotency-Key on POST /approvals and on votes: a retried POST gets the first answer, once."""

from __future__ import annotations

from typing import Any

from backend.accounts import service as accounts
from backend.approvals.tables import ApprovalRequest, Vote
from tests.helpers import auth, make_org

POLICY = """
version: "1"
approval_policies:
  - {name: ops, approvers: [alice@acme.test, bob@acme.test], quorum: 2, timeout: 1h}
tools:
  - {name: deploy, action: require_approval, approval_policy: ops}
"""
CALL = {"tool": "deploy", "server": "infra", "arguments": {"env": "prod", "ref": "v1"}}


async def _setup(client: Any) -> Any:
    org = await make_org()
    applied = await client.post("/api/v1/policies", json={"source": POLICY}, headers=auth(org.admin_token))
    assert applied.status_code == 201, applied.text
    return org


def _with_key(token: str, key: str) -> dict[str, str]:
    return {**auth(token), "Idempotency-Key": key}


async def test_a_retried_creation_gets_the_first_answer_and_makes_one_request(client: Any) -> None:
    org = await _setup(client)
    first = await client.post("/api/v1/approvals", json=CALL, headers=_with_key(org.agent_token, "run-41"))
    assert first.status_code == 201, first.text
    # Other spacing and key order are the same body.
    again = await client.post(
        "/api/v1/approvals", content=b'{"server":"infra",  "arguments":{"ref":"v1","env":"prod"},"tool":"deploy"}',
        headers={**_with_key(org.agent_token, "run-41"), "Content-Type": "application/json"},
    )
    assert again.status_code == 201 and again.json() == first.json()
    assert await ApprovalRequest.count() == 1
    # Without the key the same call attaches to the pending request instead (200, attached).
    plain = await client.post("/api/v1/approvals", json=CALL, headers=auth(org.agent_token))
    assert plain.status_code == 200 and plain.json()["attached"] is True
    assert plain.json()["id"] == first.json()["id"]


async def test_the_same_key_with_another_body_is_a_conflict(client: Any) -> None:
    org = await _setup(client)
    first = await client.post("/api/v1/approvals", json=CALL, headers=_with_key(org.agent_token, "k"))
    assert first.status_code == 201
    other = {**CALL, "arguments": {"env": "prod", "ref": "v2"}}
    reused = await client.post("/api/v1/approvals", json=other, headers=_with_key(org.agent_token, "k"))
    assert reused.status_code == 409, reused.text
    assert reused.json()["error"]["code"] == "idempotency_key_reused"
    assert await ApprovalRequest.count() == 1


async def test_keys_belong_to_their_caller(client: Any) -> None:
    org = await _setup(client)
    dev = await accounts.get_user(org.id, "dev@acme.test")
    other_token, _ = await accounts.create_key(org.id, dev["id"], "second-bot", scope="agent")
    mine = await client.post("/api/v1/approvals", json=CALL, headers=_with_key(org.agent_token, "same"))
    call = {**CALL, "arguments": {"env": "prod", "ref": "v9"}}
    theirs = await client.post("/api/v1/approvals", json=call, headers=_with_key(other_token, "same"))
    assert mine.status_code == theirs.status_code == 201, theirs.text
    assert mine.json()["id"] != theirs.json()["id"]


async def test_a_retried_vote_gets_the_first_answer_and_counts_once(client: Any) -> None:
    org = await _setup(client)
    created = (await client.post("/api/v1/approvals", json=CALL, headers=auth(org.agent_token))).json()
    path = f"/api/v1/approvals/{created['id']}/approve"
    alice = _with_key(org.approver_tokens["alice"], "vote-1")
    first = await client.post(path, json={"reason": "looks fine"}, headers=alice)
    assert first.status_code == 200, first.text
    assert first.json()["quorum"]["approvals"] == 1
    again = await client.post(path, json={"reason": "looks fine"}, headers=alice)
    assert again.status_code == 200 and again.json() == first.json()
    assert await Vote.count() == 1
    # Without the key a second vote by the same person is refused, as before.
    twice = await client.post(path, json={"reason": "looks fine"}, headers=auth(org.approver_tokens["alice"]))
    assert twice.status_code == 409, twice.text
    # The same key on another request stands for another vote: a conflict, not a silent replay.
    second = (await client.post(
        "/api/v1/approvals", json={**CALL, "arguments": {"env": "prod", "ref": "v2"}}, headers=auth(org.agent_token)
    )).json()
    reused = await client.post(f"/api/v1/approvals/{second['id']}/approve", json={"reason": "looks fine"},
                               headers=alice)
    assert reused.status_code == 409 and reused.json()["error"]["code"] == "idempotency_key_reused"


async def test_a_malformed_key_is_refused(client: Any) -> None:
    org = await _setup(client)
    long_key = await client.post("/api/v1/approvals", json=CALL, headers=_with_key(org.agent_token, "k" * 201))
    assert long_key.status_code == 400, long_key.text
    assert long_key.json()["error"]["code"] == "invalid_input"
