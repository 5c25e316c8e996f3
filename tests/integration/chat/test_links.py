"""Chat accounts linked in the app: the one-time link an unmapped chat user is offered, and its misuse."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

from backend.accounts import service as accounts
from backend.approvals.tables import Vote
from backend.audit.tables import AuditEvent
from backend.notifications.chat_tables import ChatLink, ChatLinkToken
from tests.helpers import Org, auth, make_org
from tests.integration.approvals.support import apply_policy, create
from tests.integration.chat.conftest import MM_TOKEN, MattermostApi, SlackApi, click
from tests.integration.chat.test_mattermost import CHANNEL as MM_CHANNEL
from tests.integration.chat.test_mattermost import POLICY as MM_POLICY
from tests.integration.chat.test_mattermost import _click, _tokens
from tests.integration.chat.test_slack import _post, _setup
from tests.integration.notifications.conftest import worker_running
from tests.security.support import login, session_headers

LINKS = "/api/v1/me/chat-links"


def token_in(text: str) -> str:
    match = re.search(r"/app/#link\?token=([\w-]+)", text)
    assert match, text
    return match.group(1)


async def _events(org_id: Any, kind: str) -> list[dict[str, Any]]:
    rows = await AuditEvent.select(AuditEvent.data, AuditEvent.actor_label).where(
        (AuditEvent.org_id == str(org_id)) & (AuditEvent.kind == kind)
    )
    return [
        {**(r["data"] if isinstance(r["data"], dict) else json.loads(r["data"])), "actor": r["actor_label"]}
        for r in rows
    ]


async def _offered(client: Any, slack_api: SlackApi, rid: str, user: str, count: int) -> str:
    """Click as an unmapped Slack user; the ephemeral answer carries the one-time link."""
    assert (await _post(client, click(rid, "approve", user))).status_code == 200
    notes = await slack_api.wait_for("chat.postEphemeral", count, user=user)
    return token_in(notes[-1]["text"])


async def test_an_unmapped_slack_user_links_their_account_in_the_app(
    client: Any, org: Org, hub: Any, slack_api: SlackApi
) -> None:
    await _setup(client, org)
    rid = (await create(client, org, "deploy", {"env": "prod"}))["id"]
    async with worker_running(hub):
        await slack_api.wait_for("chat.postMessage")
    # Alice's Slack account uses another email than her Preloop one: her click counts for nothing...
    token = await _offered(client, slack_api, rid, "UALICEALT", 1)
    second = await _offered(client, slack_api, rid, "UALICEALT", 2)  # each click offers its own link
    assert await Vote.count() == 0
    assert "chat_user_unmapped" in {e["why"] for e in await _events(org.id, "approval.vote_rejected")}
    stored = await ChatLinkToken.select(ChatLinkToken.token_hash, ChatLinkToken.chat_user, ChatLinkToken.team)
    assert {(r["chat_user"], r["team"]) for r in stored} == {("UALICEALT", "T0ACME")}
    assert token not in json.dumps(stored)  # only its hash is kept

    alice = session_headers(await login(client, "alice@acme.test", "pw-alice", "acme"))
    bob = session_headers(await login(client, "bob@acme.test", "pw-bob", "acme"))
    # ...until she opens the link while signed in: she sees which account it is, then links it.
    shown = await client.post(f"{LINKS}/preview", json={"token": token}, headers=alice)
    assert shown.status_code == 200, shown.text
    assert {k: shown.json()[k] for k in ("chat", "team", "chat_user", "user")} == {
        "chat": "slack", "team": "T0ACME", "chat_user": "UALICEALT", "user": "alice@acme.test"}
    # An API key is not the person in the app: linking is for a signed-in session.
    keyed = await client.post(LINKS, json={"token": token}, headers=auth(org.approver_tokens["alice"]))
    assert keyed.status_code == 403
    linked = await client.post(LINKS, json={"token": token}, headers=alice)
    assert linked.status_code == 201, linked.text
    assert (linked.json()["chat"], linked.json()["chat_user"]) == ("slack", "UALICEALT")
    listed = (await client.get(LINKS, headers=alice)).json()
    assert [(link["chat"], link["chat_user"]) for link in listed] == [("slack", "UALICEALT")]
    assert (await client.get(LINKS, headers=bob)).json() == []

    # The same link again, by Bob: used, refused, audited; Bob gets nothing.
    again = await client.post(LINKS, json={"token": token}, headers=bob)
    assert again.status_code == 409 and again.json()["error"]["code"] == "link_used"
    assert (await client.get(LINKS, headers=bob)).json() == []

    # Now Alice's Slack account's clicks are Alice's votes (through the same eligibility checks).
    assert (await _post(client, click(rid, "approve", "UALICEALT", ts="1700000001.000200"))).status_code == 200
    votes = await Vote.select(Vote.user.email, Vote.channel).where(Vote.request == rid)
    assert votes == [{"user.email": "alice@acme.test", "channel": "slack"}]
    await slack_api.wait_for("chat.postMessage", text="alice approved — 1 of 2")

    # The second link offered before Alice linked cannot move her account to Bob.
    taken = await client.post(LINKS, json={"token": second}, headers=bob)
    assert taken.status_code == 409 and taken.json()["error"]["code"] == "linked_to_another_user"
    assert [(link["chat_user"]) for link in (await client.get(LINKS, headers=alice)).json()] == ["UALICEALT"]

    rid2 = (await create(client, org, "deploy", {"env": "staging"}))["id"]
    # Expired: ten minutes is all a link lives.
    late = await _offered(client, slack_api, rid2, "UGHOST", 1)
    await ChatLinkToken.update({ChatLinkToken.expires_at: datetime.now(UTC) - timedelta(seconds=1)}).where(
        ChatLinkToken.chat_user == "UGHOST")
    expired = await client.post(LINKS, json={"token": late}, headers=bob)
    assert expired.status_code == 410 and expired.json()["error"]["code"] == "link_expired"
    unknown = await client.post(LINKS, json={"token": "made-up"}, headers=bob)
    assert unknown.status_code == 404

    # Another organization's person cannot use this organization's link, nor learn whose it is.
    other = await make_org("other")
    await accounts.add_user(other.id, "eve@other.test", role="approver", password="pw-eve")
    eve = session_headers(await login(client, "eve@other.test", "pw-eve", "other"))
    for path in (f"{LINKS}/preview", LINKS):
        foreign = await client.post(path, json={"token": late}, headers=eve)
        assert foreign.status_code == 404 and "GHOST" not in foreign.text
    assert await ChatLink.count().where(ChatLink.org == other.id) == 0

    whys = sorted(e["why"] for e in await _events(org.id, "chat.link_rejected"))
    assert whys == ["link_expired", "link_unknown", "link_used", "linked_to_another_user"]
    assert [e["why"] for e in await _events(other.id, "chat.link_rejected")] == ["other_org", "other_org"]
    assert [e["chat_user"] for e in await _events(org.id, "chat.linked")] == ["UALICEALT"]

    # Unlinking is the owner's: Bob cannot remove Alice's link; Alice can, and her clicks map by email again.
    link_id = listed[0]["id"]
    assert (await client.delete(f"{LINKS}/{link_id}", headers=bob)).status_code == 404
    assert (await client.delete(f"{LINKS}/{link_id}", headers=alice)).status_code == 204
    assert (await client.get(LINKS, headers=alice)).json() == []
    assert [e["chat_user"] for e in await _events(org.id, "chat.unlinked")] == ["UALICEALT"]
    await _offered(client, slack_api, rid2, "UALICEALT", 3)  # unmapped again: offered a new link
    assert await Vote.count().where(Vote.request == rid2) == 0


async def test_a_mattermost_account_is_linked_per_team(
    client: Any, org: Org, hub: Any, mattermost_api: MattermostApi
) -> None:
    await apply_policy(client, org, MM_POLICY)
    body = {"url": mattermost_api.url, "token": MM_TOKEN, "channel": MM_CHANNEL}
    saved = await client.put("/api/v1/channels/mattermost", json=body, headers=auth(org.admin_token))
    assert saved.status_code == 200
    rid = (await create(client, org, "deploy", {"env": "prod"}))["id"]
    async with worker_running(hub):
        [post] = await mattermost_api.wait_for("POST", "/api/v4/posts")
    tokens = _tokens(post)
    actions = "/api/v1/integrations/mattermost/actions"
    # mmalt is Alice under another name: Mattermost does not know an email Preloop knows.
    offered = await client.post(actions, json=_click(tokens["approve"], "post0001", "mmalt"))
    assert offered.status_code == 200
    token = token_in(offered.json()["ephemeral_text"])
    alice = session_headers(await login(client, "alice@acme.test", "pw-alice", "acme"))
    linked = await client.post(LINKS, json={"token": token}, headers=alice)
    assert linked.status_code == 201, linked.text
    assert (linked.json()["chat"], linked.json()["team"], linked.json()["chat_user"]) == (
        "mattermost", "team0001", "mmalt")
    # The link is for that team: the same user id clicking from another team maps to nobody.
    elsewhere = {**_click(tokens["approve"], "post0001", "mmalt"), "team_id": "team0002"}
    refused = await client.post(actions, json=elsewhere)
    assert refused.json()["ephemeral_text"].startswith("you are not an approver")
    counted = await client.post(actions, json=_click(tokens["approve"], "post0001", "mmalt"))
    assert counted.status_code == 200 and counted.json()["ephemeral_text"] == "alice approved — 1 of 2"
    votes = await Vote.select(Vote.user.email, Vote.channel).where(Vote.request == rid)
    assert votes == [{"user.email": "alice@acme.test", "channel": "mattermost"}]


async def test_two_people_racing_for_one_chat_account_link_it_once(client: Any, org: Org, hub: Any) -> None:
    import asyncio

    from backend.notifications import chat_links

    urls = [await chat_links.offer(hub, org.id, "slack", "T0ACME", "URACE") for _ in range(2)]
    people = [session_headers(await login(client, f"{who}@acme.test", f"pw-{who}", "acme")) for who in ("alice", "bob")]
    answers = await asyncio.gather(
        *[client.post(LINKS, json={"token": token_in(url)}, headers=who) for url, who in zip(urls, people, strict=True)]
    )
    assert sorted(a.status_code for a in answers) == [201, 409], [a.text for a in answers]
    assert await ChatLink.count().where(ChatLink.chat_user == "URACE") == 1
    assert len(await _events(org.id, "chat.linked")) == 1
