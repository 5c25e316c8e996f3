"""An approver opens the one-time link chat offered them in real Chromium, links the account, then unlinks it."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from backend.notifications import chat_links
from backend.notifications.chat_tables import ChatLink
from tests.conftest import LiveHub
from tests.e2e.test_approver_app import sign_in
from tests.e2e.test_console import serious_violations
from tests.helpers import make_org

pytestmark = pytest.mark.e2e


def test_a_chat_link_is_confirmed_in_settings_and_unlinked(live_hub: LiveHub, browser: Any) -> None:
    org = live_hub.call(make_org())
    hub = SimpleNamespace(settings=live_hub.settings)
    url = live_hub.call(chat_links.offer(hub, org.id, "slack", "T0ACME", "UALICEALT", "alice.personal"))  # type: ignore[arg-type]
    token = url.split("token=", 1)[1]
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(f"{live_hub.url}/app/#link?token={token}")
    assert token not in page.url  # taken out of the address at once
    sign_in(page, "alice@acme.test", "pw-alice")

    # Settings opens with the question naming the chat account; nothing is linked before the button.
    question = page.locator("#chat-link-question")
    question.wait_for()
    assert "Slack account alice.personal (UALICEALT) in workspace T0ACME" in question.inner_text()
    assert "alice@acme.test" in question.inner_text()
    assert page.locator("#settings").is_visible()
    assert serious_violations(page) == []  # settings with the question
    assert live_hub.call(ChatLink.count().run()) == 0
    page.click("#chat-link-confirm")
    page.wait_for_selector("#chat-link-list li:has-text('UALICEALT')")
    assert page.locator("#chat-link-offer").is_hidden()
    assert serious_violations(page) == []  # settings with a linked account and its Unlink button
    assert live_hub.call(ChatLink.count().where(ChatLink.chat_user == "UALICEALT").run()) == 1

    # The same link opened again in this tab: spent, and the app says so.
    page.goto(f"{live_hub.url}/app/#link?token={token}")
    page.wait_for_selector("#chat-link-status:has-text('already used')")
    assert page.locator("#chat-link-offer").is_hidden()

    page.click("#chat-link-list button[data-unlink]")
    page.wait_for_selector("#chat-link-list li:has-text('No linked chat accounts')")
    assert live_hub.call(ChatLink.count().run()) == 0
    assert errors == []
