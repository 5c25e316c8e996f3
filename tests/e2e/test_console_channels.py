"""The console's Channels page sets up Slack and Mattermost in real Chromium, against the local stand-ins
of tests/integration/chat (the real Web API and REST v4 wire formats): secrets are write-only, the test
button shows the channel's answer, and a held request's delivery shows up under the channel."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from tests.conftest import LiveHub
from tests.e2e.test_console import serious_violations, sign_in
from tests.helpers import Org, auth, make_org
from tests.integration.chat.conftest import (  # noqa: F401 - fixtures: the local Slack and Mattermost
    BOT_TOKEN,
    CHANNEL,
    MM_TOKEN,
    SIGNING_SECRET,
    MattermostApi,
    SlackApi,
    mattermost_api,
    settings,  # the hub's Slack client talks to the stand-in
    slack_api,
)

pytestmark = pytest.mark.e2e

POLICY = """\
version: "1"
approval_policies:
  - {name: chat, teams: [sre], quorum: 1, channels: [slack, mattermost]}
tools:
  - name: deploy
    rules:
      - {action: require_approval, approval_policy: chat}
"""


def wait_until(check: Any, timeout: float = 20) -> None:
    """Playwright's sync API holds this thread's loop: wait on the stand-in's records by polling them."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_slack_and_mattermost_set_up_tested_and_delivering_from_the_page(
    live_hub: LiveHub, browser: Any, slack_api: SlackApi, mattermost_api: MattermostApi  # noqa: F811
) -> None:
    org: Org = live_hub.call(make_org())
    page = sign_in(browser, live_hub.url, "admin@acme.test", "admin-password")
    page.goto(f"{live_hub.url}/console/channels")
    slack = page.locator("#channel-slack")
    assert "not configured" in slack.locator("h2").inner_text()

    # A wrong token is refused with the field named; nothing is stored.
    slack.locator("#slack-token").fill("not-a-bot-token")
    slack.locator("#slack-signing").fill(SIGNING_SECRET)
    slack.locator("#slack-channel").fill(CHANNEL)
    slack.locator("button[aria-label='Save slack settings']").click()
    page.wait_for_selector("#channels-error:has-text('slack bot_token must be a bot token')")

    # A well-formed token Slack does not know: saved, and the test shows Slack's own answer.
    page.locator("#slack-token").fill("xoxb-revoked-token")
    page.locator("#slack-signing").fill(SIGNING_SECRET)
    page.locator("#slack-channel").fill(CHANNEL)
    page.locator("button[aria-label='Save slack settings']").click()
    page.wait_for_selector("#channels-message:has-text('Saved the slack settings.')")
    page.locator("#channel-slack button:has-text('Send test notification')").click()
    page.wait_for_selector("#test-answer[data-kind=slack][data-ok=no]")
    assert "invalid_auth" in page.inner_text("#test-answer")

    # The right token (the signing secret left empty keeps the stored one): the test posts to the channel.
    page.locator("#slack-token").fill(BOT_TOKEN)
    page.locator("button[aria-label='Save slack settings']").click()
    page.wait_for_selector("#channels-message:has-text('Saved the slack settings.')")
    page.locator("#channel-slack button:has-text('Send test notification')").click()
    page.wait_for_selector("#test-answer[data-kind=slack][data-ok=yes]")
    [posted] = slack_api.of("chat.postMessage")
    assert posted["channel"] == CHANNEL
    assert "delivered" in page.inner_text("#test-answer")

    # Mattermost: URL, token and channel; the test is posted through REST v4 with the bot's token.
    page.locator("#mattermost-url").fill(mattermost_api.url)
    page.locator("#mattermost-token").fill(MM_TOKEN)
    page.locator("#mattermost-channel").fill("mmchannel01")
    page.locator("button[aria-label='Save mattermost settings']").click()
    page.wait_for_selector("#channels-message:has-text('Saved the mattermost settings.')")
    page.locator("#channel-mattermost button:has-text('Send test notification')").click()
    page.wait_for_selector("#test-answer[data-kind=mattermost][data-ok=yes]")
    [mm_post] = mattermost_api.of("POST", "/api/v4/posts")
    assert mm_post["channel_id"] == "mmchannel01"

    # Secrets never come back: not in the page, not in the fields; the page says they are set.
    html = page.content()
    for secret in (BOT_TOKEN, SIGNING_SECRET, MM_TOKEN, "xoxb-revoked-token"):
        assert secret not in html
    for field in ("#slack-token", "#slack-signing", "#mattermost-token"):
        assert page.input_value(field) == ""
    assert page.inner_text("#channel-slack .secret-state") == "set (never shown)"
    assert page.inner_text("#channel-mattermost .secret-state") == "set (never shown)"
    assert page.input_value("#slack-channel") == CHANNEL
    assert page.input_value("#mattermost-url") == mattermost_api.url

    # The page and the REST API went through the same service: the API reads what the page stored.
    with httpx.Client(base_url=live_hub.url, timeout=10, headers=auth(org.admin_token)) as http:
        listed = {c["kind"]: c for c in http.get("/api/v1/channels").json()}
        assert listed["slack"]["settings"] == {"channel": CHANNEL} and listed["slack"]["secret_set"] is True
        assert listed["mattermost"]["settings"] == {"url": mattermost_api.url, "channel": "mmchannel01"}
        assert listed["slack"]["source"] == listed["mattermost"]["source"] == "organization"
        assert BOT_TOKEN not in http.get("/api/v1/channels").text
        # A held request is delivered to both chats; the page shows it under each channel.
        assert http.post("/api/v1/policies", json={"source": POLICY}).status_code == 201
        held = http.post("/api/v1/approvals", headers=auth(org.agent_token),
                         json={"tool": "deploy", "arguments": {"env": "prod"}})
        assert held.status_code == 201, held.text
    wait_until(lambda: len(slack_api.of("chat.postMessage")) == 2)
    wait_until(lambda: len(mattermost_api.of("POST", "/api/v4/posts")) == 2)

    def shows_sent() -> bool:
        page.goto(f"{live_hub.url}/console/channels")
        return all(page.locator(f".counts[data-kind={k}] [data-status=sent]").count() == 1
                   and page.locator(f"#channel-{k} table.attempts tbody tr").count() == 1
                   for k in ("slack", "mattermost"))

    wait_until(shows_sent)
    assert "sent: 1" in page.inner_text(".counts[data-kind=slack]")
    attempts = page.locator("#channel-slack table.attempts tbody tr")
    assert "requested" in attempts.inner_text() and "ts=" in attempts.inner_text()
    assert serious_violations(page) == []
