"""The approver's inbox in real Chromium: progress, time left, server, arguments with defaults, the rule
as written, a confirmation, errors that clear, "All pending" without buttons, sign out, invite links."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.conftest import LiveHub
from tests.e2e.test_approver_app import sign_in
from tests.helpers import auth, make_org

pytestmark = pytest.mark.e2e

POLICY = """
version: "1"
servers:
  - {name: db, command: [db-mcp]}
approval_policies:
  - name: pair
    approvers: [alice@acme.test, bob@acme.test]
    quorum: 2
    timeout: 10m
    require_decline_reason: true
    escalation:
      - {after: 5m, to: [admin@acme.test]}
tools:
  - name: drop_table
    server: db
    rules:
      - {when: "args.table.startsWith('old_')", action: require_approval, approval_policy: pair,
         description: "old tables need two people"}
      - {action: deny}
"""
SCHEMA = {"type": "object", "properties": {"table": {"type": "string"},
                                           "database": {"type": "string", "default": "orders"}}}


def test_inbox_cards_decisions_all_pending_and_sign_out(live_hub: LiveHub, browser: Any) -> None:
    org = live_hub.call(make_org())
    with httpx.Client(base_url=live_hub.url, timeout=10) as http:
        assert http.post("/api/v1/policies", json={"source": POLICY}, headers=auth(org.admin_token)).status_code == 201
        held = http.post("/api/v1/approvals", headers=auth(org.agent_token), json={
            "tool": "drop_table", "server": "db", "arguments": {"table": "old_users"}, "input_schema": SCHEMA})
        assert held.status_code == 201, held.text
        request_id = held.json()["id"]

    page = browser.new_page()
    page.goto(f"{live_hub.url}/app/")
    sign_in(page, "alice@acme.test", "pw-alice")
    card = page.locator(f"article[data-id='{request_id}']")
    card.wait_for()
    text = card.inner_text()
    assert "0 of 2 approved" in text
    assert "times out in 10 min" in text and "escalates in 5 min" in text
    assert card.locator(".server").inner_text() == "db"
    assert 'table: "old_users"' in text and 'database: "orders"   (default)' in text
    assert "when args.table.startsWith('old_')" in text and "old tables need two people" in text

    # Declining needs a reason: the error shows, and goes away as soon as the reason is typed.
    card.locator("button[data-action=decline]").click()
    error = card.locator(".error")
    error.locator("text=reason").wait_for()
    card.locator("textarea").type("n")
    assert error.inner_text() == ""
    card.locator("textarea").fill("")

    card.locator("button[data-action=approve]").click()
    page.wait_for_selector("#notice:has-text('Approved drop_table: 1 of 2 approved — you approved.')")
    page.wait_for_selector(f"article[data-id='{request_id}']", state="detached")
    page.wait_for_selector("#empty:visible")

    page.click("#tab-all")
    card.wait_for()
    assert "1 of 2 approved — you approved" in card.inner_text()
    assert card.locator("button").count() == 0
    assert "You cannot vote: you approved" in card.inner_text()

    session = {c["name"]: c["value"] for c in page.context.cookies()}
    page.click("#signout")
    page.wait_for_selector("#login:visible")
    assert page.locator("#login-note").inner_text() == "You are signed out."
    with httpx.Client(base_url=live_hub.url, cookies=session) as http:
        assert http.get("/api/v1/me").status_code == 401  # the session ended on the hub, not only in the page

    # Someone who may not vote sees nothing in their inbox and the request, without buttons, under All pending.
    sign_in(page, "carol@acme.test", "pw-carol")
    page.wait_for_selector("#empty:visible")
    page.click("#tab-all")
    card.wait_for()
    assert card.locator("button").count() == 0
    assert "You cannot vote: you are not an approver of this request" in card.inner_text()


def test_invite_link_sets_a_password_then_sign_in(live_hub: LiveHub, browser: Any) -> None:
    org = live_hub.call(make_org())
    with httpx.Client(base_url=live_hub.url, timeout=10) as http:
        link = http.post("/api/v1/users/dev@acme.test/invite", headers=auth(org.admin_token)).json()["link"]
    token = link.split("#invite=")[1]
    page = browser.new_page()
    page.goto(f"{live_hub.url}/app/#invite={token}")
    page.wait_for_selector("#invite:visible")
    page.fill("#invite-form input[name=password]", "dev-password-1")
    page.fill("#invite-form input[name=confirm]", "dev-password-2")
    page.click("#invite-form button[type=submit]")
    page.wait_for_selector("#invite-error:has-text('The two passwords differ.')")
    page.fill("#invite-form input[name=confirm]", "dev-password-1")
    assert page.locator("#invite-error").inner_text() == ""
    page.click("#invite-form button[type=submit]")
    # Signed in with the new password and offered a passkey at once; "Later" goes to the inbox.
    page.wait_for_selector("#enrol:visible")
    page.click("#enrol-skip")
    page.wait_for_selector("#who:has-text('dev@acme.test')")
