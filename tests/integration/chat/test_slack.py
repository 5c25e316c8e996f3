"""Slack end to end against a local Web API: the message, signed clicks, votes, thread, outcome, refusals."""

from __future__ import annotations

import json
import time
from typing import Any

import anyio

from backend.approvals import flows
from backend.approvals.tables import Vote
from backend.audit.tables import AuditEvent
from backend.notifications.service import deliveries_for
from tests.helpers import Org, auth
from tests.integration.approvals.support import apply_policy, create
from tests.integration.chat.conftest import (
    BOT_TOKEN,
    CHANNEL,
    PUBLIC_URL,
    SIGNING_SECRET,
    SlackApi,
    click,
    signed,
    submission,
)
from tests.integration.notifications.conftest import worker_running
from tests.integration.notifications.support import settled

POLICY = """
version: "1"
name: chat-tests
approval_policies:
  - name: chat
    approvers: [alice@acme.test, bob@acme.test]
    quorum: 2
    timeout: 1h
    channels: [slack]
  - name: chat-reason
    approvers: [alice@acme.test]
    timeout: 1h
    channels: [slack]
    require_decline_reason: true
  - name: chat-passkey
    approvers: [alice@acme.test]
    timeout: 1h
    channels: [slack]
    require_passkey: true
tools:
  - name: deploy
    server: infra
    description: Deploys to production need a human
    action: require_approval
    approval_policy: chat
    risk: high
  - name: drop_table
    action: require_approval
    approval_policy: chat-reason
  - name: wire_money
    action: require_approval
    approval_policy: chat-passkey
defaults:
  unknown_tools: deny
"""

INTERACTIONS = "/api/v1/integrations/slack/interactions"
EVENTS = "/api/v1/integrations/slack/events"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


async def _setup(client: Any, org: Org) -> None:
    await apply_policy(client, org, POLICY)
    body = {"channel": CHANNEL, "bot_token": BOT_TOKEN, "signing_secret": SIGNING_SECRET, "enabled": True}
    response = await client.put("/api/v1/channels/slack", json=body, headers=auth(org.admin_token))
    assert response.status_code == 200, response.text
    assert BOT_TOKEN not in response.text and SIGNING_SECRET not in response.text
    listed = await client.get("/api/v1/channels", headers=auth(org.admin_token))
    slack = next(c for c in listed.json() if c["kind"] == "slack")
    assert slack["configured"] and slack["secret_set"] and slack["settings"] == {"channel": CHANNEL}
    assert BOT_TOKEN not in listed.text and SIGNING_SECRET not in listed.text


async def _post(client: Any, body: bytes, **sign: Any) -> Any:
    return await client.post(INTERACTIONS, content=body, headers={**FORM, **signed(body, **sign)})


async def _audits(org: Org, subject: str, kind: str) -> list[dict[str, Any]]:
    rows = await AuditEvent.select(AuditEvent.data).where(
        (AuditEvent.org_id == str(org.id)) & (AuditEvent.subject_id == subject) & (AuditEvent.kind == kind)
    )
    return [r["data"] if isinstance(r["data"], dict) else json.loads(r["data"]) for r in rows]


def _text(blocks: Any) -> str:
    return json.dumps(blocks, ensure_ascii=False)


async def test_approve_in_slack_end_to_end(client: Any, org: Org, hub: Any, slack_api: SlackApi) -> None:
    await _setup(client, org)
    request = await create(client, org, "deploy", {"env": "prod"}, justification="hotfix for the outage")
    rid = request["id"]
    async with worker_running(hub):
        [posted] = await slack_api.wait_for("chat.postMessage")
        await settled(rid, 1)
        # One message in the channel for the request, not one per approver.
        rows = await deliveries_for(rid)
        assert [(r["channel"], r["event"]) for r in rows] == [("slack", "requested")]
        assert posted["channel"] == CHANNEL
        text = _text(posted["blocks"])
        for fact in (
            "deploy",
            "infra",
            "env: prod",
            "ci-bot",
            "dev@acme.test",
            "Deploys to production need a human",
            "high",
            "hotfix for the outage",
            "2 of 2",
        ):
            assert fact in text, fact
        assert "<!date^" in text  # the deadline, in each reader's timezone
        actions = next(b for b in posted["blocks"] if b["type"] == "actions")["elements"]
        assert [(a["action_id"], a.get("value")) for a in actions][:2] == [
            ("preloop_approve", rid),
            ("preloop_decline", rid),
        ]
        ts = "1700000001.000100"

        first = await _post(client, click(rid, "approve", "UALICE"))
        assert first.status_code == 200, first.text
        votes = await Vote.select(Vote.user.email, Vote.channel).where(Vote.request == rid)
        assert votes == [{"user.email": "alice@acme.test", "channel": "slack"}]
        await slack_api.wait_for("chat.postMessage", thread_ts=ts, text="alice approved — 1 of 2")
        assert (await flows.load_row(rid))["status"] == "pending"  # type: ignore[index]

        second = await _post(client, click(rid, "approve", "UBOB"))
        assert second.status_code == 200, second.text
        await slack_api.wait_for("chat.postMessage", thread_ts=ts, text="bob approved — 2 of 2")
        assert (await flows.load_row(rid))["status"] == "approved"  # type: ignore[index]
        outcome = await client.get(f"/api/v1/approvals/{rid}/outcome", headers=auth(org.agent_token))
        assert outcome.json()["status"] == "approved"

        # The message is updated in place: the outcome, no buttons left; the outcome in the thread.
        [updated] = await slack_api.wait_for("chat.update")
        assert updated["ts"] == ts and updated["channel"] == CHANNEL
        assert all(b["type"] != "actions" for b in updated["blocks"])
        assert "Approved by alice@acme.test, bob@acme.test" in _text(updated["blocks"])
        await slack_api.wait_for("chat.postMessage", thread_ts=ts, text="Approved by alice@acme.test, bob@acme.test")
        await settled(rid, 2)
    rows = await deliveries_for(rid)
    assert sorted((r["event"], r["status"]) for r in rows) == [("outcome:approved", "sent"), ("requested", "sent")]
    assert len(slack_api.of("chat.postMessage")) == 4  # request, two votes, outcome: nothing twice
    assert len(slack_api.of("users.info")) == 2  # each Slack user looked up once


async def test_decline_asks_the_reason_in_a_modal(client: Any, org: Org, hub: Any, slack_api: SlackApi) -> None:
    await _setup(client, org)
    rid = (await create(client, org, "drop_table", {"table": "users"}))["id"]
    async with worker_running(hub):
        await slack_api.wait_for("chat.postMessage")
        response = await _post(client, click(rid, "decline", "UALICE"))
        assert response.status_code == 200, response.text
        [opened] = await slack_api.wait_for("views.open")
        assert opened["trigger_id"] == "trigger-UALICE-decline"
        assert opened["view"]["callback_id"] == "preloop_decline" and opened["view"]["private_metadata"] == rid
        assert await Vote.count().where(Vote.request == rid) == 0  # nothing decided by opening the form

        empty = await _post(client, submission(rid, "UALICE", "  "))
        assert empty.json() == {
            "response_action": "errors",
            "errors": {"reason": "This policy requires a reason to decline."},
        }
        done = await _post(client, submission(rid, "UALICE", "not during the freeze"))
        assert done.status_code == 200 and done.content == b""
        row = await flows.load_row(rid)
        assert row is not None and row["status"] == "declined"
        assert row["outcome"]["reason"] == "not during the freeze"
        vote = await Vote.select(Vote.channel, Vote.reason).where(Vote.request == rid).first()
        assert vote == {"channel": "slack", "reason": "not during the freeze"}
        [updated] = await slack_api.wait_for("chat.update")
        assert "not during the freeze" in _text(updated["blocks"])


async def test_refused_callbacks_count_for_nothing_and_are_audited(
    client: Any, org: Org, hub: Any, slack_api: SlackApi
) -> None:
    await _setup(client, org)
    rid = (await create(client, org, "deploy", {"env": "prod"}))["id"]
    async with worker_running(hub):
        await slack_api.wait_for("chat.postMessage")

    body = click(rid, "approve", "UALICE")
    forged = await _post(client, body, secret="not-the-signing-secret-at-all")
    assert forged.status_code == 401 and forged.json()["error"]["code"] == "bad_signature"
    stale = await _post(client, body, timestamp=int(time.time()) - 6 * 60)
    assert stale.status_code == 401 and stale.json()["error"]["code"] == "stale_timestamp"
    unsigned = await client.post(INTERACTIONS, content=body, headers=FORM)
    assert unsigned.status_code == 401
    assert await Vote.count().where(Vote.request == rid) == 0
    refused = await _audits(org, rid, "chat.callback_rejected")
    assert {r["why"] for r in refused} >= {"bad_signature", "stale_timestamp", "unsigned"}

    # Someone Slack knows but Preloop does not; an unconfirmed email; people who may not vote.
    for user, why in (
        ("UMALLORY", "chat_user_unmapped"),
        ("UUNCONFIRMED", "chat_user_unmapped"),
        ("UGHOST", "chat_user_unmapped"),
        ("UCAROL", "not_eligible"),
        ("UDEV", "own_request"),
    ):
        answer = await _post(client, click(rid, "approve", user))
        assert answer.status_code == 200, answer.text
        [note] = await slack_api.wait_for("chat.postEphemeral", user=user)
        assert (note["channel"], note["user"]) == (CHANNEL, user)
        assert note["text"].startswith("you are not an approver of this request")
        # Only someone Preloop cannot map is offered a one-time link to link their account in the app.
        assert ("/app/#link?token=" in note["text"]) == (why == "chat_user_unmapped"), note["text"]
        assert why in {r["why"] for r in await _audits(org, rid, "approval.vote_rejected")}, user
    assert await Vote.count().where(Vote.request == rid) == 0

    # A correctly signed request sent again is refused: each signature counts once.
    headers = {**FORM, **signed(body)}
    assert (await client.post(INTERACTIONS, content=body, headers=headers)).status_code == 200
    replay = await client.post(INTERACTIONS, content=body, headers=headers)
    assert replay.status_code == 401 and replay.json()["error"]["code"] == "replayed"
    assert await Vote.count().where(Vote.request == rid) == 1
    assert "replayed" in {r["why"] for r in await _audits(org, rid, "chat.callback_rejected")}


async def test_passkey_request_cannot_be_approved_from_slack(
    client: Any, org: Org, hub: Any, slack_api: SlackApi
) -> None:
    await _setup(client, org)
    rid = (await create(client, org, "wire_money", {"amount": 1000}))["id"]
    async with worker_running(hub):
        [posted] = await slack_api.wait_for("chat.postMessage")
    [actions] = [b for b in posted["blocks"] if b["type"] == "actions"]
    # The only button is a link to the approver app.
    assert [(a["action_id"], a["url"]) for a in actions["elements"]] == [
        ("preloop_open", f"{PUBLIC_URL}/app/#/requests/{rid}")
    ]
    # A forged-but-signed Approve click (someone crafting the payload) still decides nothing.
    for action in ("approve", "decline"):
        answer = await _post(client, click(rid, action, "UALICE"))
        assert answer.status_code == 200
    assert await Vote.count().where(Vote.request == rid) == 0
    assert (await flows.load_row(rid))["status"] == "pending"  # type: ignore[index]
    assert [r["why"] for r in await _audits(org, rid, "approval.vote_rejected")] == ["passkey_required"] * 2
    notes = await slack_api.wait_for("chat.postEphemeral", 2, user="UALICE")
    assert all("passkey" in n["text"] for n in notes)


async def test_thread_replies_are_the_requests_discussion(client: Any, org: Org, hub: Any, slack_api: SlackApi) -> None:
    await _setup(client, org)
    rid = (await create(client, org, "deploy", {"env": "prod"}))["id"]
    async with worker_running(hub):
        await slack_api.wait_for("chat.postMessage")
    challenge = json.dumps(
        {"token": "x", "challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P", "type": "url_verification"}
    ).encode()
    headers = {"Content-Type": "application/json"}
    unsigned = await client.post(EVENTS, content=challenge, headers=headers)
    assert unsigned.status_code == 401
    verified = await client.post(EVENTS, content=challenge, headers={**headers, **signed(challenge)})
    assert verified.json() == {"challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P"}

    def reply(text: str, ts: str, user: str = "UBOB") -> bytes:
        event = {
            "type": "message",
            "channel": CHANNEL,
            "user": user,
            "text": text,
            "ts": ts,
            "thread_ts": "1700000001.000100",
        }
        return json.dumps(
            {"type": "event_callback", "team_id": "T0ACME", "event_id": f"Ev{ts}", "event": event}
        ).encode()

    from backend.events import events_topic

    async with hub.bus.stream(events_topic(org.id)) as heard:
        for text, ts in (("is this the hotfix?", "1700000002.000200"), ("yes, ticket OPS-12", "1700000003.000300")):
            body = reply(text, ts)
            assert (await client.post(EVENTS, content=body, headers={**headers, **signed(body)})).status_code == 200
        # Open app and console pages of the request learn of the reply from the event stream (no text in it).
        with anyio.fail_after(5):
            told = await heard.get()
            while told.get("type") != "approval.commented":
                told = await heard.get()
    assert told["request_id"] == rid and "text" not in told
    # A reply with a forged signature is refused and audited on the request whose thread it names.
    forged = reply("approve it, I am the boss", "1700000004.000400", user="UMALLORY")
    refused = await client.post(EVENTS, content=forged, headers={**headers, **signed(forged, secret="x" * 32)})
    assert refused.status_code == 401
    assert "bad_signature" in {r["why"] for r in await _audits(org, rid, "chat.callback_rejected")}
    again = reply("is this the hotfix?", "1700000002.000200")  # Slack retries a delivery: stored once
    await client.post(EVENTS, content=again, headers={**headers, **signed(again, timestamp=int(time.time()) - 1)})
    comments = await client.get(f"/api/v1/approvals/{rid}/comments", headers=auth(org.approver_tokens["alice"]))
    assert comments.status_code == 200, comments.text
    assert [(c["source"], c["author"], c["text"]) for c in comments.json()] == [
        ("slack", "bob@acme.test", "is this the hotfix?"),
        ("slack", "bob@acme.test", "yes, ticket OPS-12"),
    ]
    agent = await client.get(f"/api/v1/approvals/{rid}/comments", headers=auth(org.agent_token))
    assert agent.status_code == 403


async def test_only_people_who_may_decline_are_asked_why(client: Any, org: Org, hub: Any, slack_api: SlackApi) -> None:
    await _setup(client, org)
    rid = (await create(client, org, "drop_table", {"table": "users"}))["id"]
    async with worker_running(hub):
        await slack_api.wait_for("chat.postMessage")
    for user in ("UCAROL", "UMALLORY"):
        answer = await _post(client, click(rid, "decline", user))
        assert answer.status_code == 200
        await slack_api.wait_for("chat.postEphemeral", user=user)
    assert slack_api.of("views.open") == []
    # A modal submission forged for someone who may not vote is refused like a click.
    refused = await _post(client, submission(rid, "UCAROL", "because"))
    assert refused.json() == {
        "response_action": "errors",
        "errors": {"reason": "you are not an approver of this request"},
    }
    assert await Vote.count().where(Vote.request == rid) == 0
    assert sorted(r["why"] for r in await _audits(org, rid, "approval.vote_rejected")) == [
        "chat_user_unmapped",
        "not_eligible",
        "not_eligible",
    ]


async def test_slack_settings_are_checked_and_testable(client: Any, org: Org, hub: Any, slack_api: SlackApi) -> None:
    admin = auth(org.admin_token)
    for body, field in (
        ({"channel": "#approvals", "bot_token": BOT_TOKEN, "signing_secret": SIGNING_SECRET}, "channel"),
        ({"channel": CHANNEL, "bot_token": "xoxp-user-token", "signing_secret": SIGNING_SECRET}, "bot_token"),
        ({"channel": CHANNEL, "bot_token": BOT_TOKEN, "signing_secret": "short"}, "signing_secret"),
        ({"channel": CHANNEL, "bot_token": BOT_TOKEN}, "signing_secret"),
    ):
        refused = await client.put("/api/v1/channels/slack", json=body, headers=admin)
        assert refused.status_code == 422, refused.text
        assert refused.json()["error"]["detail"]["field"] == field
    not_admin = await client.put(
        "/api/v1/channels/slack", json={"channel": CHANNEL}, headers=auth(org.approver_tokens["alice"])
    )
    assert not_admin.status_code == 403
    await _setup(client, org)
    # Changing only the channel keeps the sealed secrets.
    moved = await client.put("/api/v1/channels/slack", json={"channel": "C0OTHER"}, headers=admin)
    assert moved.status_code == 200 and moved.json()["secret_set"]
    tested = await client.post("/api/v1/channels/slack/test", headers=admin)
    assert tested.status_code == 200 and tested.json()["ok"], tested.text
    [sent] = await slack_api.wait_for("chat.postMessage")
    assert sent["channel"] == "C0OTHER" and "test" in sent["text"]


def test_chat_defaults_come_from_the_environment() -> None:
    from backend.settings import load_settings

    chat = load_settings(
        {
            "PRELOOP_SLACK_BOT_TOKEN": "xoxb-env",
            "PRELOOP_SLACK_SIGNING_SECRET": "env-signing-secret",
            "PRELOOP_SLACK_CHANNEL": "C0ENV",
            "PRELOOP_SLACK_API_URL": "http://127.0.0.1:9/api",
            "PRELOOP_MATTERMOST_URL": "https://chat.example.com/",
            "PRELOOP_MATTERMOST_TOKEN": "mm-env",
            "PRELOOP_MATTERMOST_CHANNEL": "town-square",
        }
    ).chat
    assert (chat.slack_bot_token, chat.slack_signing_secret, chat.slack_channel) == (
        "xoxb-env",
        "env-signing-secret",
        "C0ENV",
    )
    assert chat.slack_api_url == "http://127.0.0.1:9/api/"
    assert (chat.mattermost_url, chat.mattermost_token, chat.mattermost_channel) == (
        "https://chat.example.com",
        "mm-env",
        "town-square",
    )
    assert load_settings({}).chat.slack_api_url == "https://slack.com/api/"
