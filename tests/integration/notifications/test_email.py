"""Email with real SMTP: what the mail says, links that never decide on GET, votes by the confirm form."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from backend.approvals import flows
from backend.approvals.tables import Vote
from backend.audit.tables import AuditEvent
from backend.notifications import service
from backend.notifications.tables import EmailActionToken
from tests.helpers import auth
from tests.integration.approvals.support import apply_policy, create
from tests.integration.notifications.conftest import worker_running
from tests.integration.notifications.support import POLICY, html_link_of, link_of, settled


def _path(url: str) -> str:
    assert url.startswith("http://hub.test/"), url
    return urlsplit(url).path


async def test_request_mail_says_what_to_check_and_its_link_decides_only_on_post(
    client: Any, org: Any, hub: Any, mailbox: Any
) -> None:
    await apply_policy(client, org, POLICY)
    long_value = "x" * 500
    request = await create(
        client, org, "deploy", {"env": "prod", "manifest": long_value}, justification="hotfix for the outage"
    )
    rid = request["id"]
    async with worker_running(hub):
        mails = await mailbox.wait_for(3)
        await settled(rid, 3)
    assert sorted(m["To"] for m in mails) == ["alice@acme.test", "bob@acme.test", "carol@acme.test"]
    mail = mailbox.to("alice@acme.test")[0]
    assert mail["From"] == "Preloop <preloop@hub.test>"
    assert mail["Subject"] == "Approve deploy on infra?"
    text = mail.get_body(preferencelist=("plain",)).get_content()
    html = mail.get_body(preferencelist=("html",)).get_content()
    for body in (text, html):
        assert "deploy" in body and "infra" in body  # tool and server
        assert "ci-bot" in body and "dev@acme.test" in body  # agent and its owner
        assert "Deploys to production need a human" in body and "high" in body  # why: rule and risk
        assert "hotfix for the outage" in body  # justification
        assert "prod" in body and "x" * 200 + "… (300 more characters)" in body  # arguments, long ones folded
        assert "x" * 201 not in body
        assert "1 of 1" in body  # votes still needed
        assert f"http://hub.test/app/#/requests/{rid}" in body  # link to the request
    row = await flows.load_row(rid)
    assert row is not None and str(row["expires_at"].year) in text  # deadline
    assert html_link_of(mail, "Approve") == link_of(mail, "approve")

    # Tokens are stored hashed: the link's secret appears nowhere in the database.
    approve_url = link_of(mail, "approve")
    token = approve_url.rsplit("/", 1)[1]
    stored = await EmailActionToken.select(EmailActionToken.token_hash)
    assert stored and all(token not in r["token_hash"] for r in stored)

    # A mail scanner fetching the link decides nothing.
    for _ in range(2):
        page = await client.get(_path(approve_url))
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        assert '<form method="post"' in page.text and "deploy" in page.text
    assert await Vote.count().where(Vote.request == rid) == 0
    assert (await flows.load_row(rid))["status"] == "pending"  # type: ignore[index]

    # The confirmation page's POST records the vote through record_vote, channel "email".
    async with worker_running(hub):
        voted = await client.post(_path(approve_url), data={})
        assert voted.status_code == 200, voted.text
        assert "recorded" in voted.text and "approved" in voted.text
        votes = await Vote.select(Vote.user.email, Vote.channel, Vote.decision).where(Vote.request == rid)
        assert votes == [{"user.email": "alice@acme.test", "channel": "email", "decision": "approve"}]
        # The outcome goes to everyone who was mailed.
        await mailbox.wait_for(6)
        await settled(rid, 6)
    outcomes = [m for m in mailbox.messages if m["X-Preloop-Event"] == "outcome"]
    assert sorted(m["To"] for m in outcomes) == ["alice@acme.test", "bob@acme.test", "carol@acme.test"]
    assert all("Approved by alice@acme.test" in m.get_body(preferencelist=("plain",)).get_content() for m in outcomes)
    assert all("Approve:" not in m.get_body(preferencelist=("plain",)).get_content() for m in outcomes)

    # Single use: the same link, or its Decline sibling, no longer decides.
    again = await client.post(_path(approve_url), data={})
    assert again.status_code == 409 and "already used" in again.text
    sibling = await client.post(_path(link_of(mail, "decline")), data={"reason": "no"})
    assert sibling.status_code == 409
    assert await Vote.count().where(Vote.request == rid) == 1

    # Every accepted delivery is an audit event and shows on the deliveries endpoint.
    listed = await client.get(f"/api/v1/approvals/{rid}/deliveries", headers=auth(org.admin_token))
    assert listed.status_code == 200, listed.text
    items = listed.json()
    assert len(items) == 6 and {i["status"] for i in items} == {"sent"}
    assert {i["event"] for i in items} == {"requested", "outcome:approved"}
    assert all(i["sent_at"] and i["history"][0]["status"] == "sent" for i in items)
    delivered = (
        await AuditEvent.select(AuditEvent.data)
        .where((AuditEvent.kind == "notification.delivered") & (AuditEvent.org_id == str(org.id)))
        .output(load_json=True)
    )
    assert len(delivered) == 6
    assert {(d["data"]["email"], d["data"]["channel"]) for d in delivered} >= {("alice@acme.test", "email")}
    agent = await client.get(f"/api/v1/approvals/{rid}/deliveries", headers=auth(org.agent_token))
    assert agent.status_code == 403


async def test_decline_link_asks_for_a_reason_and_a_missing_one_loses_nothing(
    client: Any, org: Any, hub: Any, mailbox: Any
) -> None:
    await apply_policy(client, org, POLICY)
    rid = (await create(client, org, "drop_table", {"table": "users"}))["id"]
    async with worker_running(hub):
        await mailbox.wait_for(2)
        await settled(rid, 2)
    decline = link_of(mailbox.to("bob@acme.test")[0], "decline")
    page = await client.get(_path(decline))
    assert 'name="reason"' in page.text and "required" in page.text
    refused = await client.post(_path(decline), data={"reason": "  "})
    assert refused.status_code == 422 and "reason" in refused.text
    # The token was not spent by the refused attempt.
    accepted = await client.post(_path(decline), data={"reason": "wrong table"})
    assert accepted.status_code == 200, accepted.text
    row = await flows.load_row(rid)
    assert row is not None and row["status"] == "declined"
    assert row["outcome"]["reason"] == "wrong table"
    vote = await Vote.select(Vote.channel, Vote.reason).where(Vote.request == rid).first()
    assert vote == {"channel": "email", "reason": "wrong table"}


async def test_passkey_policies_send_the_approver_app_instead_of_deciding_links(
    client: Any, org: Any, hub: Any, mailbox: Any
) -> None:
    await apply_policy(client, org, POLICY)
    rid = (await create(client, org, "wire_money", {"amount": 10}))["id"]
    async with worker_running(hub):
        (mail,) = await mailbox.wait_for(1)
        await settled(rid, 1)
    text = mail.get_body(preferencelist=("plain",)).get_content()
    assert "Approve:" not in text and "needs a passkey" in text
    assert html_link_of(mail, "Open in the approver app") == f"http://hub.test/app/#/requests/{rid}"
    assert await EmailActionToken.count() == 0


async def test_a_redelivered_job_never_mails_twice(client: Any, org: Any, hub: Any, mailbox: Any) -> None:
    await apply_policy(client, org, POLICY)
    rid = (await create(client, org, "wire_money", {"amount": 1}))["id"]
    (row,) = await service.deliveries_for(rid)
    assert await service.deliver(hub, row["id"]) is None
    assert await service.deliver(hub, row["id"]) is None  # the same job again (at-least-once)
    await mailbox.wait_for(1)
    assert len(mailbox.messages) == 1
    (after,) = await service.deliveries_for(rid, with_attempts=True)
    assert after["status"] == "sent" and after["attempts"] == 1 and len(after["history"]) == 1
