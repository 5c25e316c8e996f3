"""An approver signs in to the hosted app in real Chromium and decides a held call."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import LiveHub
from tests.helpers import auth, make_org

pytestmark = pytest.mark.e2e

POLICY = """
version: "1"
approval_policies:
  - {name: sre, teams: [sre], quorum: 1, require_decline_reason: true}
tools:
  - name: drop_table
    rules:
      - {action: require_approval, approval_policy: sre, risk: critical, description: "dropping tables loses data"}
"""


@pytest.fixture
def held(live_hub: LiveHub) -> tuple[Any, list[str]]:
    org = live_hub.call(make_org())
    with httpx.Client(base_url=live_hub.url, timeout=10) as http:
        assert http.post("/api/v1/policies", json={"source": POLICY}, headers=auth(org.admin_token)).status_code == 201
        ids = []
        for table in ("old_users", "audit_2019"):
            created = http.post("/api/v1/approvals", headers=auth(org.agent_token),
                                json={"tool": "drop_table", "arguments": {"table": table}})
            assert created.status_code == 201, created.text
            ids.append(created.json()["id"])
    return org, ids


def sign_in(page: Any, email: str, password: str) -> None:
    """Submit the app's sign-in form."""
    page.fill("input[name=email]", email)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")


def test_approver_signs_in_and_decides_from_the_app(live_hub: LiveHub, held: tuple[Any, list[str]], browser: Any,
                                                     tmp_path: Path) -> None:
    org, (first, second) = held
    page = browser.new_page()
    console: list[str] = []
    page.on("console", lambda message: console.append(message.text))
    page.goto(f"{live_hub.url}/app/")
    sign_in(page, "alice@acme.test", "wrong")
    page.wait_for_selector("#login-error:has-text('wrong email or password')")

    sign_in(page, "alice@acme.test", "pw-alice")
    page.wait_for_selector(f"article[data-id='{first}']")
    card = page.locator(f"article[data-id='{first}']")
    assert "drop_table" in card.inner_text() and "old_users" in card.inner_text()
    assert "critical" in card.inner_text() and "dropping tables loses data" in card.inner_text()
    page.screenshot(path=str(tmp_path / "inbox.png"))

    card.locator("button[data-action=approve]").click()
    page.wait_for_selector(f"article[data-id='{first}']", state="detached")

    # Declining needs a reason under this policy: the app shows the hub's error, then succeeds.
    other = page.locator(f"article[data-id='{second}']")
    other.locator("button[data-action=decline]").click()
    other.locator(".error:has-text('reason')").wait_for()
    other.locator("textarea").fill("no backup of audit_2019")
    other.locator("button[data-action=decline]").click()
    page.wait_for_selector(f"article[data-id='{second}']", state="detached")
    page.wait_for_selector("#empty:visible")

    with httpx.Client(base_url=live_hub.url, headers=auth(org.admin_token)) as http:
        approved = http.get(f"/api/v1/approvals/{first}").json()
        declined = http.get(f"/api/v1/approvals/{second}").json()
    assert approved["status"] == "approved"
    assert [(v["user"]["email"], v["decision"], v["channel"]) for v in approved["votes"]] == [
        ("alice@acme.test", "approve", "app")
    ]
    assert declined["status"] == "declined"
    assert declined["outcome"]["reason"] == "no backup of audit_2019"
    # The app runs under the hub's CSP and same-site checks without a single violation.
    assert not [line for line in console if "Content Security Policy" in line or "csrf" in line.lower()], console


def test_new_requests_appear_live(live_hub: LiveHub, held: tuple[Any, list[str]], browser: Any) -> None:
    org, _ = held
    page = browser.new_page()
    page.goto(f"{live_hub.url}/app/")
    sign_in(page, "bob@acme.test", "pw-bob")
    page.wait_for_selector("article >> nth=1")
    with httpx.Client(base_url=live_hub.url, timeout=10) as http:
        created = http.post("/api/v1/approvals", headers=auth(org.agent_token),
                            json={"tool": "drop_table", "arguments": {"table": "sessions"}}).json()
    # No reload: the event stream brings it in.
    page.wait_for_selector(f"article[data-id='{created['id']}']", timeout=10_000)
