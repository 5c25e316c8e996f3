"""Exactly once under concurrency, on PostgreSQL: racing votes, decline and the timeout."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import timedelta
from typing import Any

import pytest

from backend.accounts.service import principal_for_token
from backend.approvals import flows, jobs
from backend.approvals.tables import ApprovalRequest, Vote
from backend.audit.service import verify
from backend.audit.tables import AuditEvent
from backend.errors import Conflict, Forbidden
from backend.notifications import service as notifications
from backend.notifications.tables import NotificationDelivery
from backend.observability import metrics
from tests.conftest import _truncate_postgres
from tests.helpers import auth
from tests.integration.approvals.support import apply_policy, audit_kinds, create


@pytest.fixture
def database_url(_postgres_migrated: str) -> str:
    """Only PostgreSQL: SQLite serializes every writer, so there is no race to show."""
    asyncio.run(_truncate_postgres(_postgres_migrated))
    return _postgres_migrated


def _bus_counter(hub: Any, request_id: str) -> Counter[str]:
    seen: Counter[str] = Counter()
    hub.bus.subscribe(flows.approval_topic(request_id), lambda _t, m: seen.update([m["status"]]))
    return seen


async def test_fifty_concurrent_approvals_on_quorum_two_decide_once(client: Any, org: Any, hub: Any) -> None:
    await apply_policy(client, org)
    rid = (await create(client, org, "drop_table", {"table": "users"}))["id"]
    seen = _bus_counter(hub, rid)
    tokens = [org.approver_tokens["alice"], org.approver_tokens["bob"], org.approver_tokens["carol"]]
    responses = await asyncio.gather(*[
        client.post(f"/api/v1/approvals/{rid}/approve", json={}, headers=auth(tokens[i % 3])) for i in range(50)
    ])
    codes = Counter(r.status_code for r in responses)
    assert codes[200] == 2, codes
    assert codes[409] == 48, codes
    refusals = {r.json()["error"]["code"] for r in responses if r.status_code == 409}
    assert refusals <= {"already_voted", "already_decided"}
    assert await Vote.count().where(Vote.request == rid) == 2
    assert (await flows.load_row(rid))["status"] == "approved"  # type: ignore[index]
    kinds = await audit_kinds(org, rid)
    assert kinds.count("approval.approved") == 1
    assert kinds.count("approval.vote_approve") == 2
    assert seen == Counter({"approved": 1})
    assert (await verify(org.id)).ok


async def test_approve_racing_decline_settles_one_way(client: Any, org: Any, hub: Any) -> None:
    await apply_policy(client, org)
    for n in range(10):
        rid = (await create(client, org, "deploy", {"n": n}))["id"]
        approve, decline = await asyncio.gather(
            client.post(f"/api/v1/approvals/{rid}/approve", json={}, headers=auth(org.approver_tokens["alice"])),
            client.post(f"/api/v1/approvals/{rid}/decline", json={"reason": "no"},
                        headers=auth(org.approver_tokens["bob"])),
        )
        assert sorted([approve.status_code, decline.status_code]) == [200, 409]
        row = await flows.load_row(rid)
        assert row is not None
        winner = "approved" if approve.status_code == 200 else "declined"
        assert row["status"] == winner
        assert row["outcome"]["kind"] == winner
        assert await Vote.count().where(Vote.request == rid) == 1  # the loser's vote was rolled back
        kinds = await audit_kinds(org, rid)
        assert kinds.count("approval.approved") + kinds.count("approval.declined") == 1


async def test_approve_racing_the_timeout_settles_one_way(client: Any, org: Any, hub: Any) -> None:
    await apply_policy(client, org)
    outcomes: Counter[str] = Counter()
    for n in range(10):
        rid = (await create(client, org, "deploy", {"n": n}))["id"]
        await ApprovalRequest.update({ApprovalRequest.expires_at: flows.now() - timedelta(seconds=1)}).where(
            ApprovalRequest.id == rid)
        seen = _bus_counter(hub, rid)
        approve, *fired = await asyncio.gather(
            client.post(f"/api/v1/approvals/{rid}/approve", json={}, headers=auth(org.approver_tokens["carol"])),
            jobs.expire_request({"hub": hub}, rid),
            jobs.expire_request({"hub": hub}, rid),
        )
        row = await flows.load_row(rid)
        assert row is not None
        outcomes[row["status"]] += 1
        if row["status"] == "approved":
            assert approve.status_code == 200
            assert fired == [False, False]
        else:
            assert row["status"] == "expired"
            assert approve.status_code == 409
            assert sorted(fired) == [False, True]
            assert await Vote.count().where(Vote.request == rid) == 0
        kinds = await audit_kinds(org, rid)
        assert kinds.count("approval.approved") + kinds.count("approval.expired") == 1
        assert sum(seen.values()) == 1
    assert sum(outcomes.values()) == 10


async def test_concurrent_identical_creates_make_one_request(client: Any, org: Any) -> None:
    await apply_policy(client, org)
    responses = await asyncio.gather(*[
        client.post("/api/v1/approvals", json={"tool": "deploy", "server": "infra", "arguments": {"v": 1}},
                    headers=auth(org.agent_token))
        for _ in range(20)
    ])
    assert Counter(r.status_code for r in responses) == Counter({201: 1, 200: 19})
    assert len({r.json()["id"] for r in responses}) == 1
    rid = responses[0].json()["id"]
    # The one insert that won the database's one-open-request-per-call index asked people once; every
    # other create attached to it (by the locked path) and was audited as such.
    kinds = await audit_kinds(org, rid)
    assert Counter(kinds) == Counter({"approval.requested": 1, "approval.attached": 19})
    asked = await NotificationDelivery.select(NotificationDelivery.dedupe_key).where(
        NotificationDelivery.request == rid
    )
    assert asked and len({a["dedupe_key"] for a in asked}) == len(asked)
    assert await ApprovalRequest.count().where(ApprovalRequest.tool == "deploy") == 1
    assert (await verify(org.id)).ok


async def test_a_create_is_one_statement_and_falls_back_to_the_lock(client: Any, org: Any, hub: Any) -> None:
    """A new request on PostgreSQL is one statement: the insert (no grant covering the call, none open
    for it), the ask to everyone eligible and its event. The same call again attaches through the locked
    path; after the first is decided and claimed, the call opens a new request in one statement again."""
    from backend.approvals import service

    await apply_policy(client, org)
    agent = await principal_for_token(org.agent_token)
    await service.create_request(hub, agent, tool="deploy", server="infra", arguments={"warm": 1},
                                 hash_hex=None, justification=None)  # the active policy is cached now

    async def counted(**arguments: Any) -> tuple[int, int, dict[str, Any]]:
        before = metrics.DB_QUERIES._value.get()
        status, answer = await service.create_request(
            hub, agent, tool="deploy", server="infra", arguments=arguments, hash_hex=None, justification=None
        )
        return int(metrics.DB_QUERIES._value.get() - before), status, answer

    statements, status, first = await counted(n=1)
    assert (statements, status, first["attached"]) == (1, 201, False)
    statements, status, again = await counted(n=1)
    assert (status, again["attached"], again["id"]) == (200, True, first["id"])
    assert statements > 1  # the one statement inserted nothing; BEGIN, the lock, the read, the event, COMMIT
    approved = await client.post(f"/api/v1/approvals/{first['id']}/approve", json={},
                                 headers=auth(org.approver_tokens["carol"]))
    assert approved.status_code == 200 and approved.json()["status"] == "approved"
    statements, status, still = await counted(n=1)  # approved and not yet run: still open
    assert (status, still["id"]) == (200, first["id"])
    claimed = await client.post(f"/api/v1/approvals/{first['id']}/claim",
                                json={"arguments_hash": first["arguments_hash"]}, headers=auth(org.agent_token))
    assert claimed.status_code == 200, claimed.text
    statements, status, fresh = await counted(n=1)
    assert (statements, status) == (1, 201) and fresh["id"] != first["id"]
    kinds = await audit_kinds(org, first["id"])
    assert kinds.count("approval.requested") == 1 and kinds.count("approval.attached") == 2
    assert (await verify(org.id)).ok


TRICKY = 'naïve "quoted" \\ back\nnew\ttab \x01 \x7f ✓ \u2028 {braces} $1 %s'


async def test_racing_claims_and_reports_run_once_and_the_chain_verifies(client: Any, org: Any, hub: Any) -> None:
    """Claim and report are one statement each on PostgreSQL (the audit append and a report's outcome
    notifications inside it): of racing claims and racing reports exactly one wins each, every winner is
    audited once, and the chain, whose hashes PostgreSQL computed over JSON it built, verifies."""
    await apply_policy(client, org)
    headers = auth(org.agent_token)
    ids: list[tuple[str, str]] = []
    for n in range(6):
        made = await create(client, org, "deploy", {"n": n, "note": TRICKY}, server="infra")
        await client.post(f"/api/v1/approvals/{made['id']}/approve", json={},
                          headers=auth(org.approver_tokens["carol"]))
        ids.append((made["id"], made["arguments_hash"]))
    claims = await asyncio.gather(*[
        client.post(f"/api/v1/approvals/{rid}/claim", json={"arguments_hash": digest}, headers=headers)
        for rid, digest in ids for _ in range(4)
    ])
    assert Counter(r.status_code for r in claims) == Counter({200: 6, 409: 18})
    assert {r.json()["error"]["code"] for r in claims if r.status_code == 409} == {"already_claimed"}
    reports = await asyncio.gather(*[
        client.post(f"/api/v1/approvals/{rid}/outcome",
                    json={"success": n % 2 == 0, "result_summary": TRICKY, "error": None if n % 2 == 0 else TRICKY},
                    headers=headers)
        for n, (rid, _) in enumerate(ids) for _ in range(3)
    ])
    assert Counter(r.status_code for r in reports) == Counter({200: 6, 409: 12})
    for n, (rid, _) in enumerate(ids):
        row = await flows.load_row(rid)
        assert row is not None
        assert row["status"] == ("executed" if n % 2 == 0 else "failed")
        assert row["execution"]["result_summary"] == TRICKY
        kinds = await audit_kinds(org, rid)
        assert kinds.count("approval.executing") == 1
        assert kinds.count("approval.executed") + kinds.count("approval.failed") == 1
        # Everyone told about the request on a channel hears the outcome on it, once.
        told = await NotificationDelivery.select(NotificationDelivery.user, NotificationDelivery.channel).where(
            (NotificationDelivery.request == rid) & (NotificationDelivery.event == "requested")
        )
        for event in ("outcome:approved", f"outcome:{row['status']}"):  # the vote's statement, the report's
            outcome = await NotificationDelivery.select().where(
                (NotificationDelivery.request == rid) & (NotificationDelivery.event == event)
            ).output(load_json=True)
            assert told and len(outcome) == len(told)
            for o in outcome:  # the payload the statement built is the one `_payload_of` builds
                expected = {**notifications._payload_of(row, 0), "email": o["payload"]["email"]}
                assert o["payload"] == expected
                assert o["dedupe_key"] == notifications.dedupe_key(rid, o["user"], o["channel"], o["event"])
    events = await AuditEvent.select().where(
        AuditEvent.subject_id.is_in([rid for rid, _ in ids])
    ).output(load_json=True)
    executions = [e for e in events if e["kind"] in ("approval.executing", "approval.executed", "approval.failed")]
    assert len(executions) == 12
    assert all(e["data"]["execution"]["claimed_by"] for e in executions)
    assert (await verify(org.id)).ok


async def test_racing_voters_reach_quorum_once_in_one_statement_each(client: Any, org: Any, hub: Any) -> None:
    """On PostgreSQL a vote is one statement under the request's lock (the vote, its audit event and, when
    it settles the request, the decision, its outcome rows and its event). Three approvers racing on a
    quorum-2 request: a vote whose lock waited on another's sees the other's vote by checking again,
    so exactly two count, the second decides, the third is refused; the outcome names both, its rows
    are `_payload_of`'s, each decision event directly follows its vote in the chain, and it verifies.
    Racing declines on a `when_quorum_unreachable` policy settle once the same way."""
    await apply_policy(client, org)
    names = ["alice", "bob", "carol"]
    for tool, path, settled in (("drop_table", "approve", "approved"), ("grant_access", "decline", "declined")):
        for n in range(5):
            rid = (await create(client, org, tool, {"n": n, "note": TRICKY}))["id"]
            seen = _bus_counter(hub, rid)
            responses = await asyncio.gather(*[
                client.post(f"/api/v1/approvals/{rid}/{path}", json={"reason": TRICKY} if path == "decline" else {},
                            headers=auth(org.approver_tokens[name]))
                for name in names
            ])
            assert Counter(r.status_code for r in responses) == Counter({200: 2, 409: 1}), [r.json() for r in responses]
            assert [r.json()["error"]["code"] for r in responses if r.status_code == 409] == ["already_decided"]
            row = await flows.load_row(rid)
            assert row is not None and row["status"] == settled
            votes = await Vote.select(Vote.user.email.as_alias("email")).where(Vote.request == rid)
            assert sorted(v["email"] for v in votes) == sorted(b["email"] for b in row["outcome"]["by"])
            assert len(votes) == 2
            decided = [r.json() for r in responses if r.status_code == 200 and r.json()["status"] == settled]
            assert len(decided) == 1 and len(decided[0]["votes"]) == 2
            assert seen == Counter({settled: 1})
            events = await AuditEvent.select().where(AuditEvent.subject_id == rid).order_by(AuditEvent.seq).output(
                load_json=True
            )
            kinds = [e["kind"] for e in events]
            assert kinds.count(f"approval.vote_{path}") == 2 and kinds.count(f"approval.{settled}") == 1
            at = kinds.index(f"approval.{settled}")
            assert kinds[at - 1] == f"approval.vote_{path}"
            assert events[at]["seq"] == events[at - 1]["seq"] + 1
            assert events[at]["actor_label"] == events[at - 1]["actor_label"]
            if path == "decline":
                assert all(e["data"]["reason"] == TRICKY for e in events if e["kind"] == "approval.vote_decline")
            told = await NotificationDelivery.select(NotificationDelivery.user, NotificationDelivery.channel).where(
                (NotificationDelivery.request == rid) & (NotificationDelivery.event == "requested")
            )
            outcome = await NotificationDelivery.select().where(
                (NotificationDelivery.request == rid) & (NotificationDelivery.event == f"outcome:{settled}")
            ).output(load_json=True)
            assert told and len(outcome) == len(told)
            for o in outcome:
                assert o["payload"] == {**notifications._payload_of(row, 0), "email": o["payload"]["email"]}
                assert o["dedupe_key"] == notifications.dedupe_key(rid, o["user"], o["channel"], o["event"])
    assert (await verify(org.id)).ok


async def test_a_vote_is_one_statement(client: Any, org: Any, hub: Any) -> None:
    """Statements a vote sends on PostgreSQL (asyncpg's query log, as `preloop_db_queries_total` counts
    them), given the request as the API reads it (with its votes): one, the vote with the check that the
    voter may vote (team members and named approvers) and everything it settles, no BEGIN or COMMIT; for a
    vote that decides as for one that does not. Given a row read without its votes, the eligibility read
    first and one more read."""
    await apply_policy(client, org)
    carol = await principal_for_token(org.approver_tokens["carol"])
    alice = await principal_for_token(org.approver_tokens["alice"])
    for tool, voters in (("deploy", [carol]), ("drop_table", [alice, carol])):
        rid = (await create(client, org, tool, {"count": True}))["id"]
        for who in voters:
            row = await flows.load_presented(rid)
            assert row is not None
            before = metrics.DB_QUERIES._value.get()
            updated = await flows.record_vote(hub, who, row, "approve")
            assert metrics.DB_QUERIES._value.get() - before == 1
        assert updated["status"] == "approved"
        assert (await flows.load_row(rid))["status"] == "approved"  # type: ignore[index]
    rid = (await create(client, org, "deploy", {"count": "plain row"}))["id"]
    plain = await flows.load_row(rid)
    assert plain is not None
    before = metrics.DB_QUERIES._value.get()
    assert (await flows.record_vote(hub, carol, plain, "approve"))["status"] == "approved"
    assert metrics.DB_QUERIES._value.get() - before == 3
    assert (await verify(org.id)).ok


ELIGIBILITY_POLICY = """
version: "1"
name: eligibility-tests
approval_policies:
  - name: alice-reasoned
    approvers: [alice@acme.test]
    timeout: 1h
    require_decline_reason: true
    escalation:
      - {after: 10m, to: [carol@acme.test]}
tools:
  - name: restart
    action: require_approval
    approval_policy: alice-reasoned
defaults:
  unknown_tools: deny
"""


async def test_a_vote_statement_refuses_who_may_not_vote(client: Any, org: Any, hub: Any) -> None:
    """The vote's own statement is what finds that the voter may not vote (PostgreSQL; SQLite reads the
    eligible first): it writes nothing (no vote, the version unmoved, no event but the audited refusal).
    Someone who may not vote is told only that, also where a later check would refuse too (a decline without
    the reason the policy needs; a request already decided); an escalation's target counts once it fired."""
    await apply_policy(client, org, ELIGIBILITY_POLICY)
    alice, bob, carol = [await principal_for_token(org.approver_tokens[n]) for n in ("alice", "bob", "carol")]
    rid = (await create(client, org, "restart", {"eligibility": 1}))["id"]

    async def refused(who: Any, decision: str = "approve", **extra: Any) -> str:
        row = await flows.load_presented(rid)
        assert row is not None
        with pytest.raises(Forbidden) as caught:
            await flows.record_vote(hub, who, row, decision, **extra)
        return caught.value.code

    before = metrics.DB_QUERIES._value.get()
    assert await refused(bob) == "not_eligible"
    if not flows.is_sqlite():
        # the row's read, the vote's statement (no read of the eligible), the refusal's own audited
        # transaction (BEGIN, append, COMMIT)
        assert metrics.DB_QUERIES._value.get() - before == 5
    assert await refused(bob, "decline") == "not_eligible"  # not "reason_required"
    assert await refused(carol) == "not_eligible"  # named by an escalation level that has not fired
    assert await Vote.count().where(Vote.request == rid) == 0
    row = await flows.load_row(rid)
    assert row is not None and row["status"] == "pending" and int(row["vote_version"]) == 0
    assert (await audit_kinds(org, rid)).count("approval.vote_rejected") == 3

    await ApprovalRequest.update({ApprovalRequest.escalation_level: 1}).where(ApprovalRequest.id == rid)
    row = await flows.load_presented(rid)
    assert row is not None
    assert (await flows.record_vote(hub, carol, row, "approve"))["status"] == "approved"
    assert await refused(bob) == "not_eligible"  # not "already_decided"
    with pytest.raises(Conflict) as decided:
        await flows.record_vote(hub, alice, await flows.load_presented(rid) or {}, "approve")
    assert decided.value.code == "already_decided"
    kinds = await audit_kinds(org, rid)
    assert kinds.count("approval.vote_rejected") == 4 and kinds.count("approval.vote_approve") == 1
    assert (await verify(org.id)).ok


async def test_a_vote_read_before_another_counts_it(client: Any, org: Any, hub: Any) -> None:
    """Two approvers read a quorum-2 request before either votes (as two API requests do); the second
    vote's statement finds the version moved by the first, writes nothing, reads again and decides on
    both votes: approved once, by both, with one decision event right after the second vote's."""
    await apply_policy(client, org)
    carol = await principal_for_token(org.approver_tokens["carol"])
    alice = await principal_for_token(org.approver_tokens["alice"])
    rid = (await create(client, org, "drop_table", {"stale": True}))["id"]
    read_by_alice = await flows.load_presented(rid)
    read_by_carol = await flows.load_presented(rid)
    assert read_by_alice is not None and read_by_carol is not None
    first = await flows.record_vote(hub, alice, read_by_alice, "approve")
    assert first["status"] == "pending" and first["vote_version"] == 1
    before = metrics.DB_QUERIES._value.get()
    seen: list[dict[str, Any]] = []
    second = await flows.record_vote(hub, carol, read_by_carol, "approve", seen_votes=seen)
    # the statement that wrote nothing, the read again, the statement that wrote
    assert metrics.DB_QUERIES._value.get() - before == 3
    assert second["status"] == "approved"
    assert sorted(v["user"]["email"] for v in seen) == ["alice@acme.test", "carol@acme.test"]
    assert sorted(b["email"] for b in second["outcome"]["by"]) == ["alice@acme.test", "carol@acme.test"]
    kinds = await audit_kinds(org, rid)
    assert kinds[-3:] == ["approval.vote_approve", "approval.vote_approve", "approval.approved"]
    assert (await verify(org.id)).ok
