"""Decided in chat, end to end: an agent's MCP call held by the real gateway completes from a chat click.

The hub is the real app under uvicorn (worker included), the gateway runs with the agent's key, the
upstream is a real MCP stdio server; only Slack and Mattermost are local stand-ins speaking their wire
formats. The test plays the chat: it reads what the hub posted and sends the callbacks Slack
(signed `payload=` form) and Mattermost (action and dialog JSON) would send.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import httpx
import mcp_types as types
import pytest
from mcp import Client

from backend.notifications.chat_tables import ChatActionToken
from tests.conftest import LiveHub
from tests.helpers import Org, auth, make_org, structured
from tests.integration.chat.conftest import (
    BOT_TOKEN,
    MM_TOKEN,
    SIGNING_SECRET,
    MattermostApi,
    SlackApi,
    click,
    signed,
    submission,
)
from tests.integration.gateway.test_held_calls import gateway, text_of
from tests.interop.conftest import PROBE, PYTHON

CHANNEL = "C0PRELOOP"
MM_CHANNEL = "mmchannel0001"
POLICY = f"""
version: "1"
servers:
  - name: probe
    command: [{PYTHON}, {PROBE}]
approval_policies:
  - {{name: slack, approvers: [alice@acme.test], timeout: 10m, channels: [slack]}}
  - {{name: slack-reason, approvers: [alice@acme.test], timeout: 10m, channels: [slack], require_decline_reason: true}}
  - {{name: mm, approvers: [alice@acme.test], timeout: 10m, channels: [mattermost]}}
  - {{name: mm-reason, approvers: [alice@acme.test], timeout: 10m, channels: [mattermost],
      require_decline_reason: true}}
tools:
  - name: show_args
    rules:
      - {{when: "args.value.startsWith('slack-reason')", action: require_approval, approval_policy: slack-reason}}
      - {{when: "args.value.startsWith('slack')", action: require_approval, approval_policy: slack}}
      - {{when: "args.value.startsWith('mm-reason')", action: require_approval, approval_policy: mm-reason}}
      - {{when: "args.value.startsWith('mm')", action: require_approval, approval_policy: mm}}
      - {{action: allow}}
  - name: count_calls
    action: allow
defaults: {{unknown_tools: deny, justification: none}}
"""
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


@pytest.fixture
def org(live_hub: LiveHub, slack_api: SlackApi, mattermost_api: MattermostApi) -> Org:
    org = live_hub.call(make_org())
    admin = auth(org.admin_token)
    for path, body in (
        ("/api/v1/policies", {"source": POLICY}),
        ("/api/v1/channels/slack", {"channel": CHANNEL, "bot_token": BOT_TOKEN, "signing_secret": SIGNING_SECRET}),
        ("/api/v1/channels/mattermost", {"url": mattermost_api.url, "token": MM_TOKEN, "channel": MM_CHANNEL}),
    ):
        send = httpx.post if path.endswith("policies") else httpx.put
        response = send(f"{live_hub.url}{path}", json=body, headers=admin, timeout=10)
        assert response.status_code in {200, 201}, response.text
    return org


async def held_call(
    client: Client, value: str, decide: Callable[[], Awaitable[None]]
) -> types.CallToolResult:
    """The agent calls a held tool; `decide` plays the chat while the call waits."""
    results: list[types.CallToolResult] = []

    async def agent() -> None:
        results.append(await client.call_tool("show_args", {"value": value}))

    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            tg.start_soon(agent)
            await decide()
    return results[0]


async def slack_interaction(hub: LiveHub, body: bytes) -> httpx.Response:
    async with httpx.AsyncClient(base_url=hub.url) as http:
        return await http.post("/api/v1/integrations/slack/interactions", content=body,
                               headers={**FORM, **signed(body)})


async def posted_request(slack_api: SlackApi, count: int) -> str:
    """The request id the newest Slack message's Approve button carries."""
    with anyio.fail_after(20):
        while len(posts := [p for p in slack_api.of("chat.postMessage") if "blocks" in p]) < count:
            await anyio.sleep(0.05)
    actions = next(b for b in posts[-1]["blocks"] if b["type"] == "actions")["elements"]
    return str(actions[0]["value"])


async def test_slack_approve_and_decline_reach_the_agent(
    live_hub: LiveHub, org: Org, tmp_path: Path, slack_api: SlackApi
) -> None:
    async with gateway(live_hub, org, tmp_path) as gw, Client(gw.server.server) as client:
        async def approve() -> None:
            rid = await posted_request(slack_api, 1)
            answer = await slack_interaction(live_hub, click(rid, "approve", "UALICE"))
            assert answer.status_code == 200, answer.text

        approved = await held_call(client, "slack-1", approve)
        assert not approved.is_error, text_of(approved)
        assert structured(approved)["received"] == {"value": "slack-1"}  # the upstream's own answer

        async def decline_with_reason() -> None:
            rid = await posted_request(slack_api, 2)
            opened = await slack_interaction(live_hub, click(rid, "decline", "UALICE", ts="1700000002.000100"))
            assert opened.status_code == 200, opened.text
            [modal] = await slack_api.wait_for("views.open")
            assert modal["view"]["private_metadata"] == rid
            done = await slack_interaction(live_hub, submission(rid, "UALICE", "the change window is closed"))
            assert done.status_code == 200 and done.content == b"", done.text

        declined = await held_call(client, "slack-reason-2", decline_with_reason)
        assert declined.is_error
        assert structured(declined)["status"] == "declined"
        assert "alice@acme.test" in text_of(declined) and "the change window is closed" in text_of(declined)
        # The upstream saw the approved call and this count, never the declined call.
        assert structured(await client.call_tool("count_calls", {}))["count"] == 2


async def mattermost_buttons(hub: LiveHub, mattermost_api: MattermostApi, count: int) -> tuple[str, dict[str, str]]:
    """The newest post's id and button tokens, once the hub has bound them to the post Mattermost made."""
    posts = [p for p in await mattermost_api.wait_for("POST", "/api/v4/posts", count) if not p.get("root_id")]
    post = posts[-1]
    post_id = f"post{mattermost_api.of('POST', '/api/v4/posts').index(post) + 1:04d}"
    actions = post["props"]["attachments"][0]["actions"]
    tokens = {a["id"]: a["integration"]["context"]["token"] for a in actions}
    async def bound() -> int:
        return await ChatActionToken.count().where(ChatActionToken.post_id == post_id)

    with anyio.fail_after(20):
        while await anyio.to_thread.run_sync(lambda: hub.call(bound())) < len(tokens):
            await anyio.sleep(0.05)
    return post_id, tokens


def mattermost_click(token: str, post_id: str, user: str) -> dict[str, Any]:
    return {"user_id": user, "user_name": user, "channel_id": MM_CHANNEL, "team_id": "team0001", "post_id": post_id,
            "trigger_id": f"trigger-{user}", "type": "", "context": {"token": token}}


async def test_mattermost_approve_and_decline_reach_the_agent(
    live_hub: LiveHub, org: Org, tmp_path: Path, mattermost_api: MattermostApi
) -> None:
    async with gateway(live_hub, org, tmp_path) as gw, Client(gw.server.server) as client, \
            httpx.AsyncClient(base_url=live_hub.url) as http:
        async def approve() -> None:
            post_id, tokens = await mattermost_buttons(live_hub, mattermost_api, 1)
            answer = await http.post("/api/v1/integrations/mattermost/actions",
                                     json=mattermost_click(tokens["approve"], post_id, "mmalice"))
            assert answer.status_code == 200, answer.text

        approved = await held_call(client, "mm-1", approve)
        assert not approved.is_error, text_of(approved)
        assert structured(approved)["received"] == {"value": "mm-1"}

        async def decline_with_reason() -> None:
            with anyio.fail_after(20):
                while True:  # the second request's post (the first one's thread has replies too)
                    roots = [p for p in mattermost_api.of("POST", "/api/v4/posts") if not p.get("root_id")]
                    if len(roots) >= 2:
                        break
                    await anyio.sleep(0.05)
            post_id, tokens = await mattermost_buttons(live_hub, mattermost_api, 1)
            clicked = await http.post("/api/v1/integrations/mattermost/actions",
                                      json=mattermost_click(tokens["decline"], post_id, "mmalice"))
            assert clicked.status_code == 200 and clicked.json() == {}, clicked.text
            [opened] = await mattermost_api.wait_for("POST", "/api/v4/actions/dialogs/open")
            assert opened["trigger_id"] == "trigger-mmalice"
            assert opened["url"].endswith("/api/v1/integrations/mattermost/dialogs")
            dialog = opened["dialog"]
            assert [e["name"] for e in dialog["elements"]] == ["reason"]
            submitted = {"type": "dialog_submission", "callback_id": dialog["callback_id"], "state": dialog["state"],
                         "user_id": "mmalice", "channel_id": MM_CHANNEL, "team_id": "team0001",
                         "submission": {"reason": "no rollback plan"}, "cancelled": False}
            done = await http.post("/api/v1/integrations/mattermost/dialogs", json=submitted)
            assert done.status_code == 200 and done.json() == {}, done.text

        declined = await held_call(client, "mm-reason-2", decline_with_reason)
        assert declined.is_error
        assert structured(declined)["status"] == "declined"
        assert "alice@acme.test" in text_of(declined) and "no rollback plan" in text_of(declined)
