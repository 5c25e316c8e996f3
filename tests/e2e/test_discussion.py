"""A request's discussion in real Chromium: the app's detail and the console's approval page show it,
signed-in people add to it from either, and each open page gets the other's comment live (event stream)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.conftest import LiveHub
from tests.e2e.test_approver_app import sign_in as app_sign_in
from tests.e2e.test_console import hold, org, serious_violations, sign_in  # noqa: F401 - `org` is a fixture
from tests.helpers import Org, auth

pytestmark = pytest.mark.e2e

HOSTILE = '<img src=x onerror="window.__pwned=1"><script>window.__pwned=2</script> & "quotes"'


def test_comments_from_the_app_and_the_console_appear_live_as_text(
    live_hub: LiveHub, org: Org, browser: Any  # noqa: F811 - the imported fixture
) -> None:
    rid = hold(live_hub.url, org, "drop_table", {"table": "old_users"})

    # Alice (approver) has the request open in the app; the admin has it open in the console.
    app = browser.new_context(viewport={"width": 390, "height": 844}).new_page()
    app.goto(f"{live_hub.url}/app/")
    app_sign_in(app, "alice@acme.test", "pw-alice")
    app.wait_for_selector(f"article[data-id='{rid}']")
    app.goto(f"{live_hub.url}/app/#/requests/{rid}")
    app.wait_for_selector("#detail-body .no-comments")
    console = sign_in(browser, live_hub.url, "admin@acme.test", "admin-password")
    console.goto(f"{live_hub.url}/console/approvals/{rid}")
    console.wait_for_selector("#comments-none")
    console.wait_for_selector("body[data-live=on]")
    # Neither page may reload to show a new comment: these markers would be gone.
    app.evaluate("() => { window.__stayed = true; }")
    console.evaluate("() => { window.__stayed = true; }")

    # Alice writes markup in the app: it is stored and shown as the text she typed, nowhere run.
    app.fill("#detail-body .comment-form textarea", HOSTILE)
    app.click("#detail-body .comment-form button[type=submit]")
    app.wait_for_selector("#detail-body .comments li[data-source=app]")
    assert app.inner_text("#detail-body .comments .comment-text") == HOSTILE
    assert app.input_value("#detail-body .comment-form textarea") == ""
    console.wait_for_selector("#comment-list li[data-source=app]", timeout=10_000)
    assert console.inner_text("#comment-list .comment-text") == HOSTILE
    assert "alice@acme.test" in console.inner_text("#comment-list")
    for page in (app, console):
        assert page.evaluate("() => window.__pwned") is None
        assert page.evaluate("() => window.__stayed") is True
        assert page.locator("#detail-body .comments img, #comment-list img, .comment-text script").count() == 0

    # The admin answers from the console: the form posts, the page comes back at the discussion,
    # and Alice's open detail shows the answer without a reload.
    console.fill("#comment-text", "Checked: old_users has a backup from today.")
    console.click("#comment-form button[type=submit]")
    console.wait_for_selector("#comment-list li[data-source=console]")
    assert console.url.endswith(f"/console/approvals/{rid}#discussion")
    app.wait_for_selector("#detail-body .comments li[data-source=console]", timeout=10_000)
    texts = app.locator("#detail-body .comments .comment-text").all_inner_texts()
    assert texts == [HOSTILE, "Checked: old_users has a backup from today."]
    assert app.evaluate("() => window.__stayed") is True
    # A reason typed for a decision is not a comment, and a comment box does not eat the reason.
    app.fill("#detail-body textarea[name=reason]", "needs a second look")
    app.fill("#detail-body .comment-form textarea", "draft comment")
    assert app.input_value("#detail-body textarea[name=reason]") == "needs a second look"

    # An empty comment is refused with a clear message, in both places.
    app.fill("#detail-body .comment-form textarea", "   ")
    app.click("#detail-body .comment-form button[type=submit]")
    app.wait_for_selector("#detail-body .comment-error:has-text('Write a comment first')")
    console.evaluate("() => document.getElementById('comment-text').removeAttribute('required')")
    console.fill("#comment-text", "  ")
    console.click("#comment-form button[type=submit]")
    console.wait_for_selector("#comment-error:has-text('a comment needs text')")

    assert serious_violations(console) == []
    assert serious_violations(app) == []

    with httpx.Client(base_url=live_hub.url, timeout=10) as http:
        listed = http.get(f"/api/v1/approvals/{rid}/comments", headers=auth(org.admin_token)).json()
        assert [(c["source"], c["author"], c["text"]) for c in listed] == [
            ("app", "alice@acme.test", HOSTILE),
            ("console", "admin@acme.test", "Checked: old_users has a backup from today."),
        ]
        # An approver's key may comment through the API (source "api"); the agent's key may not, nor read.
        added = http.post(f"/api/v1/approvals/{rid}/comments", headers=auth(org.approver_tokens["bob"]),
                          json={"text": "from the CLI"})
        assert added.status_code == 201 and added.json()["source"] == "api", added.text
        agent = http.post(f"/api/v1/approvals/{rid}/comments", headers=auth(org.agent_token), json={"text": "hi"})
        assert agent.status_code == 403
        assert http.get(f"/api/v1/approvals/{rid}/comments", headers=auth(org.agent_token)).status_code == 403
        too_long = http.post(f"/api/v1/approvals/{rid}/comments", headers=auth(org.admin_token),
                             json={"text": "x" * 4001})
        assert too_long.status_code == 422 and "4000" in too_long.json()["error"]["message"]
        # A viewer reads the discussion and may not write in it.
        signed = http.post("/api/v1/auth/login", json={"email": "vera@acme.test", "password": "pw-vera"})
        assert signed.status_code == 201, signed.text
        assert len(http.get(f"/api/v1/approvals/{rid}/comments").json()) == 3
        refused = http.post(f"/api/v1/approvals/{rid}/comments", json={"text": "me too"},
                            headers={"Origin": live_hub.url})
        assert refused.status_code == 403 and "viewers" in refused.json()["error"]["message"]
        audit = http.get("/api/v1/audit/events", params={"kind": "approval.commented", "subject_id": rid},
                         headers=auth(org.admin_token))
    assert audit.status_code == 200, audit.text
    events = audit.json()
    events = events.get("events", events) if isinstance(events, dict) else events
    assert sorted(e["data"]["source"] for e in events) == ["api", "app", "console"]
    # The viewer's console page shows the discussion without a form.
    viewer = sign_in(browser, live_hub.url, "vera@acme.test", "pw-vera")
    viewer.goto(f"{live_hub.url}/console/approvals/{rid}")
    viewer.wait_for_selector("#comment-viewer")
    assert viewer.locator("#comment-form").count() == 0
    assert viewer.locator("#comment-list li").count() == 3
