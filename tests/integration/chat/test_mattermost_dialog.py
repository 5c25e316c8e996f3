"""Mattermost's decline-reason dialog and every refused callback: each one audited, none counted."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from backend.approvals import flows
from backend.approvals.tables import Vote
from backend.notifications.chat_tables import ChatActionToken
from tests.helpers import Org, auth
from tests.integration.approvals.support import apply_policy, create
from tests.integration.chat.conftest import MM_TOKEN, MattermostApi
from tests.integration.chat.test_mattermost import CHANNEL, _click, _tokens, _whys
from tests.integration.notifications.conftest import worker_running
from tests.integration.notifications.support import settled

POLICY = """
version: "1"
name: mattermost-dialog-tests
approval_policies:
  - name: mm-reason
    approvers: [alice@acme.test, bob@acme.test]
    timeout: 1h
    channels: [mattermost]
    require_decline_reason: true
tools:
  - name: drop_table
    action: require_approval
    approval_policy: mm-reason
defaults:
  unknown_tools: deny
"""
ACTIONS = "/api/v1/integrations/mattermost/actions"
DIALOGS = "/api/v1/integrations/mattermost/dialogs"


def _submit(state: str, user: str, reason: str) -> dict[str, Any]:
    """The JSON Mattermost posts to a dialog's URL when it is submitted."""
    return {"type": "dialog_submission", "callback_id": "preloop_decline", "state": state, "user_id": user,
            "channel_id": CHANNEL, "team_id": "team0001", "submission": {"reason": reason}, "cancelled": False}


async def test_decline_reason_dialog_and_refusals(
    client: Any, org: Org, hub: Any, mattermost_api: MattermostApi
) -> None:
    await apply_policy(client, org, POLICY)
    body = {"url": mattermost_api.url, "token": MM_TOKEN, "channel": CHANNEL}
    assert (await client.put("/api/v1/channels/mattermost", json=body, headers=auth(org.admin_token))).is_success
    rid = (await create(client, org, "drop_table", {"table": "users"}))["id"]
    later = (await create(client, org, "drop_table", {"table": "orders"}))["id"]
    async with worker_running(hub):
        posts = await mattermost_api.wait_for("POST", "/api/v4/posts", 2)
        await settled(rid, 1)
        await settled(later, 1)
    post = next(p for p in posts if "table: users" in p["message"])
    post_id = f"post{posts.index(post) + 1:04d}"
    later_id = f"post{2 - posts.index(post):04d}"
    tokens = _tokens(post)

    # Someone who may not decline is not asked why: refused like any click, and audited.
    carol = await client.post(ACTIONS, json=_click(tokens["decline"], post_id, "mmcarol"))
    assert carol.json() == {"ephemeral_text": "you are not an approver of this request"}
    assert mattermost_api.of("POST", "/api/v4/actions/dialogs/open") == []
    assert "not_eligible" in await _whys(org, rid, "approval.vote_rejected")

    opened = await client.post(ACTIONS, json={**_click(tokens["decline"], post_id, "mmalice"), "trigger_id": "trig-1"})
    assert opened.status_code == 200 and opened.json() == {}, opened.text
    [dialog] = mattermost_api.of("POST", "/api/v4/actions/dialogs/open")
    assert dialog["trigger_id"] == "trig-1" and dialog["url"].endswith(DIALOGS)
    state = dialog["dialog"]["state"]
    assert state not in {r["token_hash"] for r in await ChatActionToken.select(ChatActionToken.token_hash)}
    assert await Vote.count() == 0  # opening the dialog decides nothing

    # The dialog's token is not a button's, is Alice's alone, and an empty reason is asked again.
    as_button = await client.post(ACTIONS, json=_click(state, post_id, "mmalice"))
    assert as_button.status_code == 401 and as_button.json()["error"]["code"] == "token_wrong_kind"
    bob = await client.post(DIALOGS, json=_submit(state, "mmbob", "taking over"))
    assert bob.status_code == 401 and bob.json()["error"]["code"] == "token_wrong_user"
    empty = await client.post(DIALOGS, json=_submit(state, "mmalice", "   "))
    assert empty.json() == {"errors": {"reason": "This policy requires a reason to decline."}}
    assert await Vote.count() == 0

    done = await client.post(DIALOGS, json=_submit(state, "mmalice", "users is the production table"))
    assert done.status_code == 200 and done.json() == {}, done.text
    row = await flows.load_row(rid)
    assert row is not None and row["status"] == "declined"
    assert row["outcome"]["reason"] == "users is the production table"
    vote = await Vote.select(Vote.user.email, Vote.channel, Vote.reason).where(Vote.request == rid).first()
    assert vote == {"user.email": "alice@acme.test", "channel": "mattermost", "reason": "users is the production table"}
    again = await client.post(DIALOGS, json=_submit(state, "mmalice", "once more"))
    assert again.status_code == 401 and again.json()["error"]["code"] == "token_used"
    unknown = await client.post(DIALOGS, json=_submit("made-up-state", "mmalice", "x"))
    assert unknown.status_code == 401 and unknown.json()["error"]["code"] == "bad_token"

    # A made-up button token sent for one of our posts is audited on that post's request.
    forged = await client.post(ACTIONS, json=_click("made-up-token", later_id, "mmbob"))
    assert forged.status_code == 401 and forged.json()["error"]["code"] == "bad_token"
    # A button outliving its request's deadline decides nothing.
    await ChatActionToken.update({ChatActionToken.expires_at: datetime.now(UTC) - timedelta(seconds=1)}).where(
        ChatActionToken.request == later)
    later_tokens = _tokens(next(p for p in posts if p is not post))
    expired = await client.post(ACTIONS, json=_click(later_tokens["decline"], later_id, "mmbob"))
    assert expired.status_code == 401 and expired.json()["error"]["code"] == "token_expired"
    assert (await flows.load_row(later))["status"] == "pending"  # type: ignore[index]
    assert await Vote.count().where(Vote.request == later) == 0

    assert sorted(await _whys(org, rid, "chat.callback_rejected")) == ["token_used", "token_wrong_kind",
                                                                      "token_wrong_user"]
    assert sorted(await _whys(org, later, "chat.callback_rejected")) == ["bad_token", "token_expired"]
