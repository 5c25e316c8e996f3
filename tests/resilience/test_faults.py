"""Faults across real processes: a worker killed before an escalation deadline, a gateway restarted while
a call is held, an agent key revoked with records still spooled, a refused email-link vote whose
transaction rolls back. Behaviour checks only; no timing assertions."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from aiosmtpd.controller import Controller

from tests.helpers import free_port
from tests.resilience.conftest import ESCALATE_AFTER, Cluster, GatewayProcess
from tests.resilience.support import audit_events, call_tool, until

MCP_HEADERS = {"accept": "application/json, text/event-stream", "content-type": "application/json",
               "mcp-protocol-version": "2026-07-28", "mcp-method": "tools/call"}


async def post_call(gateway: GatewayProcess, name: str, arguments: dict[str, Any], key: str | None) -> dict[str, Any]:
    """A stateless tools/call POST, as the agent holding `key` (its `Authorization: Bearer`)."""
    envelope = {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                "io.modelcontextprotocol/clientCapabilities": {}}
    params = {"name": name, "arguments": arguments, "_meta": envelope}
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": params}
    headers = {**MCP_HEADERS, "mcp-name": name}
    if key is not None:
        headers["authorization"] = f"Bearer {key}"
    async with httpx.AsyncClient(timeout=30) as http:
        response = await http.post(gateway.url, content=json.dumps(body), headers=headers)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert not answer["result"].get("isError"), answer
    return dict(answer["result"])


# -- 1. a worker killed before an escalation deadline ----------------------------------------------


class Mailbox:
    """What a real SMTP server (aiosmtpd) accepted: recipient per message."""

    def __init__(self) -> None:
        self.recipients: list[str] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.recipients.extend(envelope.rcpt_tos)
        return "250 OK"


async def test_a_worker_killed_before_an_escalation_deadline_escalates_exactly_once_after_restart(
    cluster: Cluster,
) -> None:
    from backend.approvals import flows
    from backend.notifications import service as notifications

    box = Mailbox()
    smtp = Controller(box, hostname="127.0.0.1", port=free_port())
    smtp.start()
    try:
        a = await cluster.api()
        first = await cluster.worker(smtp.port)
        async with cluster.client(a, "agent") as agent:
            created = await agent.post("/api/v1/approvals", json={"tool": "page", "arguments": {"n": 1}})
        assert created.status_code == 201, created.text
        rid = created.json()["id"]
        deadline = time.monotonic() + ESCALATE_AFTER
        # The worker is alive: alice's level-0 mail goes out. Then it dies before the deadline.

        async def alice_sent() -> bool:  # mailed and recorded, so the kill cannot fall between the two
            async with cluster.database():
                rows = await notifications.deliveries_for(rid)
            return [(r["email"], r["status"]) for r in rows] == [("alice@res.test", "sent")]

        await until(alice_sent, ESCALATE_AFTER - 2, "alice's mail")
        assert box.recipients == ["alice@res.test"]
        first.kill9()
        await asyncio.sleep(max(0.0, deadline - time.monotonic()) + 1.5)
        async with cluster.database():
            row = await flows.load_row(rid)
        assert row is not None and row["escalation_level"] == 0, "escalated with no worker running"
        assert "carol@res.test" not in box.recipients

        # Restarted (two workers, as after a redeploy): the deferred job and both sweeps race; one fires.
        await cluster.worker(smtp.port, ready=False)
        await cluster.worker(smtp.port, ready=False)
        await until(lambda: asyncio.sleep(0, "carol@res.test" in box.recipients), 30, "carol's escalation mail")
        await asyncio.sleep(3)  # several sweeps later: nothing fires or sends again
        async with cluster.database():
            row = await flows.load_row(rid)
            deliveries = await notifications.deliveries_for(rid, with_attempts=True)
    finally:
        smtp.stop()
    assert row is not None and row["status"] == "pending" and row["escalation_level"] == 1
    escalated = await audit_events(cluster, "approval.escalated", rid)
    assert [e["data"]["level"] for e in escalated] == [1]
    level_1 = [d for d in deliveries if d["escalation_level"] == 1]
    assert [(d["email"], d["channel"], d["status"]) for d in level_1] == [("carol@res.test", "email", "sent")]
    assert sum(h["status"] == "sent" for h in level_1[0]["history"]) == 1
    assert Counter(box.recipients) == {"alice@res.test": 1, "carol@res.test": 1}


# -- 3. a gateway restarted while a call is held ---------------------------------------------------


async def test_a_gateway_restarted_while_a_call_is_held_attaches_the_repeat_and_runs_it_once(
    cluster: Cluster,
) -> None:
    a = await cluster.api()
    gateway = await cluster.gateway(a, hold_window=40)
    held = asyncio.create_task(call_tool(gateway.url, "deploy", {"n": 7}))
    created = await until(lambda: audit_events(cluster, "approval.requested"), 20, "the held call's request")
    assert len(created) == 1
    rid = created[0]["subject_id"]
    gateway.kill9()
    with pytest.raises(Exception):  # noqa: B017 - the agent's connection broke; what it raises is the SDK's
        await asyncio.wait_for(held, 20)

    # Same port and data directory: the agent's repeat of the same call reaches the restarted gateway.
    restarted = await cluster.gateway(a, hold_window=40, port=gateway.port)
    repeat = asyncio.create_task(call_tool(restarted.url, "deploy", {"n": 7}))
    attached = await until(lambda: audit_events(cluster, "approval.attached", rid), 20, "the repeat to attach")
    assert len(attached) == 1
    assert len(await audit_events(cluster, "approval.requested")) == 1  # no second request
    assert cluster.deploy_runs() == []
    async with cluster.client(a, "approver") as alice:
        approved = await alice.post(f"/api/v1/approvals/{rid}/approve", json={})
    assert approved.status_code == 200, approved.text
    result = await asyncio.wait_for(repeat, 30)
    assert not result.get("isError"), result
    assert cluster.deploy_runs() == [{"n": 7}]

    async def executed() -> bool:
        async with cluster.client(a, "agent") as agent:
            return (await agent.get(f"/api/v1/approvals/{rid}")).json()["status"] == "executed"

    await until(executed, 20, "the outcome report")
    assert len(await audit_events(cluster, "approval.requested")) == 1
    assert cluster.deploy_runs() == [{"n": 7}]


# -- 5. an agent key revoked while its records are spooled -----------------------------------------


async def test_a_revoked_agent_keys_spooled_records_are_dead_lettered_and_the_rest_still_flow(
    cluster: Cluster,
) -> None:
    from backend.accounts import service as accounts
    from backend.accounts.tables import ApiKey

    a = await cluster.api()
    gateway = await cluster.gateway(a)
    second = cluster.tokens["agent2"]

    async def reported(n: int) -> list[dict[str, Any]]:
        return [e for e in await audit_events(cluster, "call.allow") if e["data"]["arguments"] == {"n": n}]

    await post_call(gateway, "read_logs", {"n": 1}, second)
    first = await until(lambda: reported(1), 20, "agent-two's first record")
    assert first[0]["data"]["agent"]["name"] == "agent-two"
    async with cluster.database():
        await ApiKey.update({ApiKey.revoked_at: datetime.now(UTC)}).where(
            ApiKey.token_hash == accounts.sha256_hex(second)
        )
    # Still inside the gateway's key cache: the call runs, but its record can no longer be reported under it.
    await post_call(gateway, "read_logs", {"n": 2}, second)
    await post_call(gateway, "read_logs", {"n": 3}, None)  # the gateway's own key, spooled behind it

    dead_letters = gateway.data_dir / "audit-dead-letter.jsonl"
    await until(lambda: reported(3), 20, "the record behind the revoked key's record")
    await until(lambda: asyncio.sleep(0, dead_letters.exists()), 20, "the dead letter")
    [dead] = [json.loads(line) for line in dead_letters.read_text().splitlines()]
    assert dead["record"]["arguments"] == {"n": 2}
    assert dead["reason"].startswith("key refused:") and "401" in dead["reason"]
    assert await reported(2) == []
    log = gateway.log_text()
    line = next(ln for ln in log.splitlines() if dead["record"]["event_id"] in ln)
    assert "agent agent-two" in line and "can never be reported" in line  # what and why
    assert str(dead_letters) in line and "/api/v1/audit/calls" in line  # where, and how to recover
    assert log.count(dead["record"]["event_id"]) == 1  # not retried
    spool = gateway.data_dir / "audit-spool.jsonl"
    assert spool.stat().st_size == 0  # everything delivered or dead-lettered: nothing left to retry


# -- 6. a refused email-link vote ------------------------------------------------------------------


async def test_a_refused_email_link_vote_is_audited_though_the_links_transaction_rolls_back(
    cluster: Cluster,
) -> None:
    from backend.accounts.tables import User
    from backend.approvals import flows
    from backend.approvals.tables import Vote
    from backend.notifications import links
    from backend.notifications.tables import EmailActionToken

    a = await cluster.api()
    async with cluster.client(a, "agent") as agent:
        created = await agent.post("/api/v1/approvals", json={"tool": "deploy", "arguments": {"n": 1}})
    assert created.status_code == 201, created.text
    rid = created.json()["id"]
    async with cluster.database():
        row = await flows.load_row(rid)
        assert row is not None
        alice = await User.select(User.id).where(User.email == "alice@res.test").first()
        urls = await links.issue(row, alice["id"], a.url)
        # Alice was mailed, then demoted: her link's vote is refused inside the transaction that
        # spends the link, which the refusal rolls back.
        await User.update({User.role: "viewer"}).where(User.id == alice["id"])
    async with httpx.AsyncClient(base_url=a.url, timeout=30) as browser:
        refused = await browser.post(urlsplit(urls["approve"]).path, data={})
    assert refused.status_code == 403, refused.text
    assert "only approvers and admins" in refused.text
    audited = await audit_events(cluster, "approval.vote_rejected", rid)
    assert [(e["data"]["why"], e["data"]["via"], e["data"]["email"]) for e in audited] == [
        ("role_cannot_vote", "email", "alice@res.test")
    ]
    async with cluster.database():
        assert await Vote.count().where(Vote.request == rid) == 0
        # The rollback is real: the link was not spent by the refused attempt.
        spent = await EmailActionToken.count().where(
            (EmailActionToken.request == rid) & EmailActionToken.used_at.is_not_null()
        )
        assert spent == 0


async def test_a_refused_email_link_vote_is_audited_on_both_databases(client: Any, org: Any, hub: Any) -> None:
    """The same refusal in-process, on SQLite too (one writer: the audit cannot be a second transaction
    opened while the link's is still open; it is written once that one has ended)."""
    from backend.accounts.tables import User
    from backend.approvals import flows
    from backend.audit.tables import AuditEvent
    from backend.notifications import links
    from tests.integration.approvals.support import apply_policy, create

    await apply_policy(client, org)
    rid = (await create(client, org, "restart", {"svc": "api"}))["id"]
    row = await flows.load_row(rid)
    assert row is not None
    carol = await User.select(User.id).where(User.email == "carol@acme.test").first()
    urls = await links.issue(row, carol["id"], "http://hub.test")  # carol is not (yet) an approver of it
    refused = await client.post(urlsplit(urls["approve"]).path, data={})
    assert refused.status_code == 403, refused.text
    audited = await AuditEvent.select(AuditEvent.data).where(
        (AuditEvent.kind == "approval.vote_rejected") & (AuditEvent.subject_id == rid)
    ).output(load_json=True)
    assert [(a["data"]["why"], a["data"]["via"]) for a in audited] == [("not_eligible", "email")]
