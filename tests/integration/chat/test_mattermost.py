"""Mattermost end to end against a local REST API v4: the post, token-bound buttons, votes, outcome, refusals."""

from __future__ import annotations

import json
from typing import Any

import pytest

from backend.approvals import flows
from backend.approvals.tables import Vote
from backend.audit.tables import AuditEvent
from backend.notifications.channels import ChannelError
from backend.notifications.channels.mattermost import callback_url
from backend.notifications.chat_tables import ChatActionToken
from backend.notifications.service import deliveries_for
from tests.helpers import Org, auth
from tests.integration.approvals.support import apply_policy, create
from tests.integration.chat.conftest import MM_TOKEN, PUBLIC_URL, MattermostApi
from tests.integration.notifications.conftest import worker_running
from tests.integration.notifications.support import settled

POLICY = """
version: "1"
name: mattermost-tests
approval_policies:
  - name: mm
    approvers: [alice@acme.test, bob@acme.test]
    quorum: 2
    timeout: 1h
    channels: [mattermost]
  - name: mm-passkey
    approvers: [alice@acme.test]
    timeout: 1h
    channels: [mattermost]
    require_passkey: true
tools:
  - name: deploy
    server: infra
    description: Deploys to production need a human
    action: require_approval
    approval_policy: mm
  - name: wire_money
    action: require_approval
    approval_policy: mm-passkey
defaults:
  unknown_tools: deny
"""
ACTIONS = "/api/v1/integrations/mattermost/actions"
CHANNEL = "mmchannel0001"


def test_callbacks_must_be_https_unless_the_hub_is_on_loopback() -> None:
    assert callback_url("https://hub.example.com") == "https://hub.example.com/api/v1/integrations/mattermost/actions"
    assert callback_url("http://127.0.0.1:8000").startswith("http://127.0.0.1:8000/")
    assert callback_url("http://localhost:8000").startswith("http://localhost:8000/")
    with pytest.raises(ChannelError, match="https") as refused:
        callback_url("http://hub.example.com")
    assert refused.value.permanent


def _tokens(post: dict[str, Any]) -> dict[str, str]:
    actions = post["props"]["attachments"][0].get("actions") or []
    return {a["id"]: a["integration"]["context"]["token"] for a in actions}


def _click(token: str, post_id: str, user: str) -> dict[str, Any]:
    """The JSON Mattermost posts to an action's integration URL."""
    return {
        "user_id": user,
        "user_name": user,
        "channel_id": CHANNEL,
        "channel_name": "approvals",
        "team_id": "team0001",
        "team_domain": "acme",
        "post_id": post_id,
        "trigger_id": "trigger0001",
        "type": "",
        "data_source": "",
        "context": {"token": token},
    }


async def _whys(org: Org, subject: str, kind: str) -> list[str]:
    rows = await AuditEvent.select(AuditEvent.data).where(
        (AuditEvent.org_id == str(org.id)) & (AuditEvent.subject_id == subject) & (AuditEvent.kind == kind)
    )
    return [(r["data"] if isinstance(r["data"], dict) else json.loads(r["data"]))["why"] for r in rows]


async def test_approve_in_mattermost_end_to_end(client: Any, org: Org, hub: Any, mattermost_api: MattermostApi) -> None:
    await apply_policy(client, org, POLICY)
    body = {"url": mattermost_api.url, "token": MM_TOKEN, "channel": CHANNEL}
    saved = await client.put("/api/v1/channels/mattermost", json=body, headers=auth(org.admin_token))
    assert saved.status_code == 200, saved.text
    assert MM_TOKEN not in saved.text and saved.json()["secret_set"]

    rid = (await create(client, org, "deploy", {"env": "prod"}, justification="hotfix"))["id"]
    other = (await create(client, org, "deploy", {"env": "staging"}))["id"]
    async with worker_running(hub):
        posts = await mattermost_api.wait_for("POST", "/api/v4/posts", 2)
        await settled(rid, 1)
        assert [(r["channel"], r["event"]) for r in await deliveries_for(rid)] == [("mattermost", "requested")]
        post = next(p for p in posts if "env: prod" in p["message"])
        post_id = f"post{posts.index(post) + 1:04d}"
        other_post_id = f"post{2 - posts.index(post):04d}"
        assert post["channel_id"] == CHANNEL
        for fact in (
            "deploy",
            "infra",
            "ci-bot",
            "dev@acme.test",
            "Deploys to production need a human",
            "hotfix",
            "2 of 2",
            f"{PUBLIC_URL}/app/#/requests/{rid}",
        ):
            assert fact in post["message"], fact
        tokens = _tokens(post)
        assert set(tokens) == {"approve", "decline"}
        stored = await ChatActionToken.select(ChatActionToken.token_hash)
        assert stored and not any(t in r["token_hash"] for t in tokens.values() for r in stored)

        # Unknown to Preloop, then not an approver: refused, audited, and the buttons still work.
        for user, why in (("mmghost", "chat_user_unmapped"), ("mmcarol", "not_eligible")):
            answer = await client.post(ACTIONS, json=_click(tokens["approve"], post_id, user))
            assert answer.status_code == 200, answer.text
            text = answer.json()["ephemeral_text"]
            assert text.startswith("you are not an approver of this request")
            assert ("/app/#link?token=" in text) == (why == "chat_user_unmapped"), text
            assert why in await _whys(org, rid, "approval.vote_rejected")
        # A token carried to another request's post decides nothing there.
        moved = await client.post(ACTIONS, json=_click(tokens["approve"], other_post_id, "mmalice"))
        assert moved.status_code == 401 and moved.json()["error"]["code"] == "token_wrong_post"
        assert "token_wrong_post" in await _whys(org, rid, "chat.callback_rejected")
        assert await Vote.count() == 0
        assert (await flows.load_row(other))["status"] == "pending"  # type: ignore[index]

        first = await client.post(ACTIONS, json=_click(tokens["approve"], post_id, "mmalice"))
        assert first.status_code == 200, first.text
        assert first.json()["ephemeral_text"] == "alice approved — 1 of 2"
        fresh = _tokens(first.json()["update"])  # the post gets new single-use buttons
        assert set(fresh) == {"approve", "decline"} and not set(fresh.values()) & set(tokens.values())
        votes = await Vote.select(Vote.user.email, Vote.channel).where(Vote.request == rid)
        assert votes == [{"user.email": "alice@acme.test", "channel": "mattermost"}]

        reused = await client.post(ACTIONS, json=_click(tokens["decline"], post_id, "mmbob"))
        assert reused.status_code == 401 and reused.json()["error"]["code"] == "token_used"
        assert "token_used" in await _whys(org, rid, "chat.callback_rejected")
        forged = await client.post(ACTIONS, json=_click("made-up-token", post_id, "mmbob"))
        assert forged.status_code == 401

        second = await client.post(ACTIONS, json=_click(fresh["approve"], post_id, "mmbob"))
        assert second.status_code == 200, second.text
        assert "actions" not in second.json()["update"]["props"]["attachments"][0]
        row = await flows.load_row(rid)
        assert row is not None and row["status"] == "approved"
        # The worker updates the post in place and writes the outcome in its thread.
        [updated] = await mattermost_api.wait_for("PUT", f"/api/v4/posts/{post_id}")
        assert "Approved by alice@acme.test, bob@acme.test" in json.dumps(updated["props"])
        assert "actions" not in updated["props"]["attachments"][0]
        await settled(rid, 2)
    thread = [p for p in mattermost_api.of("POST", "/api/v4/posts") if p.get("root_id") == post_id]
    # Thread replies come from the click (votes) and the worker (outcome): their order may vary.
    assert sorted(p["message"] for p in thread) == [
        "Approved by alice@acme.test, bob@acme.test",
        "alice approved — 1 of 2",
        "bob approved — 2 of 2",
    ]


async def test_passkey_request_has_no_buttons_in_mattermost(
    client: Any, org: Org, hub: Any, mattermost_api: MattermostApi
) -> None:
    await apply_policy(client, org, POLICY)
    body = {"url": mattermost_api.url, "token": MM_TOKEN, "channel": CHANNEL}
    assert (
        await client.put("/api/v1/channels/mattermost", json=body, headers=auth(org.admin_token))
    ).status_code == 200
    rid = (await create(client, org, "wire_money", {"amount": 5}))["id"]
    async with worker_running(hub):
        [post] = await mattermost_api.wait_for("POST", "/api/v4/posts")
    assert _tokens(post) == {}
    assert f"{PUBLIC_URL}/app/#/requests/{rid}" in json.dumps(post["props"])
    assert await ChatActionToken.count().where(ChatActionToken.request == rid) == 0
