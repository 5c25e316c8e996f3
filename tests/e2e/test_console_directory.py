"""The console's people, teams, channels and keys pages in real Chromium, with axe on every page."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest

from tests.conftest import LiveHub
from tests.e2e.test_console import hold, serious_violations, sign_in
from tests.helpers import Org, auth, make_org
from tests.integration.notifications.conftest import Mailbox, mailbox  # noqa: F401 - the real SMTP server

pytestmark = pytest.mark.e2e

FIVE = ["pat", "quinn", "rosa", "sam", "tess"]

PAYMENTS_POLICY = """\
version: "1"
approval_policies:
  - name: payments-approvals
    teams: [payments]
    quorum: 1
    escalation:
      - {after: 10m, to: [carol@acme.test]}
tools:
  - name: refund
    rules:
      - {action: require_approval, approval_policy: payments-approvals}
"""


def wait_for_mail(box: Mailbox, count: int) -> None:
    """Playwright's sync API keeps a loop running in this thread, so wait on the mailbox's condition."""
    with box.arrived:
        assert box.arrived.wait_for(lambda: len(box.messages) >= count, timeout=20), box.messages


@pytest.fixture
def org(live_hub: LiveHub) -> Org:
    from backend.accounts import service

    made: Org = live_hub.call(make_org())
    live_hub.call(service.add_user(made.id, "vera@acme.test", role="viewer", password="pw-vera"))
    return made


def test_team_of_five_and_quorum_two_through_the_ui(live_hub: LiveHub, org: Org, browser: Any) -> None:
    from backend.accounts import service

    page = sign_in(browser, live_hub.url, "admin@acme.test", "admin-password")
    # Five people, each invited through the form; the one-time link is shown once and works once.
    page.goto(f"{live_hub.url}/console/people")
    links: dict[str, str] = {}
    for name in FIVE:
        page.fill("#person-email", f"{name}@acme.test")
        page.select_option("#person-role", "approver")
        page.click("#add-person button[type=submit]")
        page.wait_for_selector(f"#people-message:has-text('Added {name}@acme.test as approver')")
        links[name] = page.inner_text("#invite-link")
    assert serious_violations(page) == []
    page.goto(f"{live_hub.url}/console/people")
    assert links["pat"] not in page.content()
    token = links["pat"].split("#invite=", 1)[1]
    with httpx.Client(base_url=live_hub.url, timeout=10) as http:
        assert http.post("/api/v1/auth/invite", json={"token": token, "password": "pat-password-1"}).status_code == 200
        assert http.post("/api/v1/auth/invite", json={"token": token, "password": "pat-password-2"}).status_code == 401

    # The team, with its five members, through the Teams page.
    page.goto(f"{live_hub.url}/console/teams")
    page.fill("#team-name", "payments")
    page.click("#add-team button[type=submit]")
    page.wait_for_selector("#teams-message:has-text('Team payments created')")
    for name in FIVE:
        section = page.locator("section[data-team='payments']")
        section.locator("select[name=email]").select_option(f"{name}@acme.test")
        section.locator("button[aria-label='Add to payments']").click()
        page.wait_for_selector(f"section[data-team='payments'] li[data-member='{name}@acme.test']")
    assert page.locator("section[data-team='payments'] li[data-member]").count() == 5
    assert serious_violations(page) == []

    # The policy in the editor (quorum 1), applied; then quorum 2 with the structured field, applied.
    page.goto(f"{live_hub.url}/console/policies")
    page.locator("#source").fill(PAYMENTS_POLICY)
    page.click("#apply")
    page.wait_for_selector("#apply-message:has-text('Applied as version 1')")
    page.select_option("#quorum-policy", "payments-approvals")
    page.fill("#quorum-value", "0")
    page.click("#set-quorum")
    page.wait_for_selector("#apply-message:has-text('Not changed: a quorum is at least 1')")
    page.fill("#quorum-value", "2")
    page.click("#set-quorum")
    page.wait_for_selector("#apply-message:has-text('Quorum of payments-approvals set to 2 in the draft')")
    assert "quorum: 2" in page.input_value("#source") and page.inner_text("#active-version") == "1"
    assert serious_violations(page) == []
    page.click("#apply")
    page.wait_for_selector("#apply-message:has-text('Applied as version 2')")

    # Who can vote where, from the active policy: team members directly, carol by escalation.
    page.goto(f"{live_hub.url}/console/people")
    rights = page.locator("tr[data-email='rosa@acme.test'] td.rights").inner_text()
    assert "payments-approvals" in rights and "quorum 2" in rights and "team payments" in rights
    assert "escalation after 600s" in page.locator("tr[data-email='carol@acme.test'] td.rights").inner_text()
    assert "viewers never vote" in page.locator("tr[data-email='vera@acme.test'] td.rights").inner_text()
    assert page.locator("tr[data-email='bob@acme.test'] td.rights").inner_text().strip() == "—"

    # A held request now needs two approvals (asserted through the API).
    tokens = {}
    for name in ("pat", "quinn"):
        user = live_hub.call(service.get_user(org.id, f"{name}@acme.test"))
        tokens[name], _ = live_hub.call(service.create_key(org.id, user["id"], f"{name}-key", scope="approver"))
    approval = hold(live_hub.url, org, "refund", {"amount": 40})
    with httpx.Client(base_url=live_hub.url, timeout=10) as http:
        first = http.post(f"/api/v1/approvals/{approval}/approve", json={}, headers=auth(tokens["pat"]))
        assert first.status_code == 200, first.text
        state = http.get(f"/api/v1/approvals/{approval}", headers=auth(org.admin_token)).json()
        assert state["status"] == "pending" and state["quorum"]["required"] == 2
        second = http.post(f"/api/v1/approvals/{approval}/approve", json={}, headers=auth(tokens["quinn"]))
        assert second.status_code == 200, second.text
        assert http.get(f"/api/v1/approvals/{approval}", headers=auth(org.admin_token)).json()["status"] == "approved"


def test_roles_deactivation_and_team_changes(live_hub: LiveHub, org: Org, browser: Any) -> None:
    page = sign_in(browser, live_hub.url, "admin@acme.test", "admin-password")
    page.goto(f"{live_hub.url}/console/people")
    row = page.locator("tr[data-email='carol@acme.test']")
    row.locator("select[name=role]").select_option("viewer")
    row.locator("button[aria-label='Set role of carol@acme.test']").click()
    page.wait_for_selector("#people-message:has-text('carol@acme.test is now viewer')")
    assert page.locator("tr[data-email='carol@acme.test'] td.role").inner_text() == "viewer"
    # The last admin keeps the organization administrable.
    page.locator("tr[data-email='admin@acme.test'] select[name=role]").select_option("approver")
    page.click("button[aria-label='Set role of admin@acme.test']")
    page.wait_for_selector("#people-error:has-text('last active admin')")
    # Deactivating ends alice's keys at once; reactivating brings her back.
    page.click("button[aria-label='Deactivate alice@acme.test']")
    page.wait_for_selector("tr[data-email='alice@acme.test'] td.state:has-text('deactivated')")
    with httpx.Client(base_url=live_hub.url, timeout=10) as http:
        assert http.get("/api/v1/approvals", headers=auth(org.approver_tokens["alice"])).status_code == 401
        page.click("button[aria-label='Reactivate alice@acme.test']")
        page.wait_for_selector("tr[data-email='alice@acme.test'] td.state:has-text('active')")
        assert http.get("/api/v1/approvals", headers=auth(org.approver_tokens["alice"])).status_code == 200

    page.goto(f"{live_hub.url}/console/teams")
    page.click("button[aria-label='Remove bob@acme.test from sre']")
    page.wait_for_selector("#teams-message:has-text('bob@acme.test removed from sre')")
    sre = page.locator("section[data-team='sre']")
    sre.locator("input[name=name]").fill("platform")
    sre.locator("button[aria-label='Rename sre']").click()
    page.wait_for_selector("section[data-team='platform'] li[data-member='alice@acme.test']")
    page.click("button[aria-label='Delete team platform']")
    page.wait_for_selector("#teams-message:has-text('Team platform deleted')")
    with httpx.Client(base_url=live_hub.url, timeout=10) as http:
        assert http.get("/api/v1/teams", headers=auth(org.admin_token)).json() == []
        kinds = [e["kind"] for e in http.get("/api/v1/audit/events", headers=auth(org.admin_token),
                                              params={"limit": 1000}).json()]
    for kind in ("user.role_changed", "user.deactivated", "user.reactivated", "team.member_removed",
                 "team.renamed", "team.deleted"):
        assert kind in kinds


def test_channel_settings_test_button_and_recent_deliveries(
    live_hub: LiveHub, org: Org, browser: Any, mailbox: Mailbox  # noqa: F811
) -> None:
    page = sign_in(browser, live_hub.url, "admin@acme.test", "admin-password")
    page.goto(f"{live_hub.url}/console/channels")
    secret_url = f"smtp://mailer:s3cret-pw@127.0.0.1:{mailbox.port}"
    page.fill("#email-smtp", secret_url)
    page.fill("#email-from", "Preloop <preloop@acme.test>")
    page.click("button[aria-label='Save email settings']")
    page.wait_for_selector("#channels-message:has-text('Saved the email settings')")
    assert "s3cret-pw" not in page.content() and page.input_value("#email-smtp") == ""
    assert "set (never shown)" in page.locator("#channel-email").inner_text()
    # Saving again with the secret field empty keeps the stored SMTP URL.
    page.fill("#email-from", "Approvals <approvals@acme.test>")
    page.click("button[aria-label='Save email settings']")
    page.wait_for_selector("#channels-message")
    page.click("button[aria-label='Send test notification (email, to me)']")
    page.wait_for_selector("#test-answer[data-ok=yes]")
    assert "admin@acme.test" in page.inner_text("#test-answer")
    wait_for_mail(mailbox, 1)
    sent = mailbox.messages[0]
    assert sent["To"] == "admin@acme.test" and "approvals@acme.test" in sent["From"]
    assert mailbox.logins == [("mailer", "s3cret-pw")]
    # A webhook without a secret is refused with the field's reason, and nothing is lost.
    page.fill("#webhook-url", "https://hooks.example.test/preloop")
    page.click("button[aria-label='Save webhook settings']")
    page.wait_for_selector("#channels-error:has-text('webhook needs secret')")
    assert serious_violations(page) == []

    # A held request's email deliveries show up in the counts and the attempts, and on its detail page.
    policy = PAYMENTS_POLICY.replace("teams: [payments]", "approvers: [admin@acme.test]").replace(
        "    escalation:\n      - {after: 10m, to: [carol@acme.test]}\n", "    channels: [email]\n")
    with httpx.Client(base_url=live_hub.url, timeout=10) as http:
        applied = http.post("/api/v1/policies", json={"source": policy}, headers=auth(org.admin_token))
        assert applied.status_code == 201, applied.text
    approval = hold(live_hub.url, org, "refund", {"amount": 7})
    wait_for_mail(mailbox, 2)
    page.goto(f"{live_hub.url}/console/approvals/{approval}")
    page.wait_for_selector("#deliveries tr[data-channel=email][data-status=sent]", timeout=15_000)
    assert serious_violations(page) == []
    page.goto(f"{live_hub.url}/console/channels")
    assert "sent: 1" in page.locator("#channel-email .counts").inner_text()
    assert page.locator("#channel-email table.attempts tbody tr").count() == 1
    assert serious_violations(page) == []


def test_keys_show_labels_scope_and_calls_per_day(live_hub: LiveHub, org: Org, browser: Any) -> None:
    page = sign_in(browser, live_hub.url, "admin@acme.test", "admin-password")
    page.goto(f"{live_hub.url}/console/keys")
    page.fill("#key-name", "billing-bot")
    page.fill("#key-labels", "team=payments, env=prod")
    page.click("form[action='/console/keys'] button[type=submit]")
    token = page.inner_text("#new-token")
    row = page.locator("tr[data-name='billing-bot']")
    assert sorted(row.locator("td.labels").inner_text().split()) == ["env=prod", "team=payments"]
    assert row.locator("td.scope").inner_text() == "agent"
    page.fill("#key-name", "bad-labels")
    page.fill("#key-labels", "team")
    page.click("form[action='/console/keys'] button[type=submit]")
    page.wait_for_selector(".error:has-text('key=value pairs')")
    # Three call records reported by the key: the page counts them under today.
    records = [{"event_id": f"ev-{n}", "tool": "refund", "decision": "allow", "arguments": {"n": n}}
               for n in range(3)]
    with httpx.Client(base_url=live_hub.url, timeout=10) as http:
        answer = http.post("/api/v1/audit/calls", json={"records": records}, headers=auth(token))
        assert answer.status_code == 200 and answer.json()["accepted"] == 3, answer.text
    page.goto(f"{live_hub.url}/console/keys")
    calls = page.locator("tr[data-name='billing-bot'] td.calls")
    assert calls.get_attribute("data-total") == "3"
    assert page.locator("tr[data-name='billing-bot'] td").nth(6).inner_text() != "never"
    assert serious_violations(page) == []


def test_viewer_sees_people_teams_channels_but_forged_posts_are_refused(
    live_hub: LiveHub, org: Org, browser: Any
) -> None:
    page = sign_in(browser, live_hub.url, "vera@acme.test", "pw-vera")
    for path in ("/console/people", "/console/teams", "/console/channels"):
        page.goto(live_hub.url + path)
        page.wait_for_selector("main h1")
        assert page.locator("main form").count() == 0, path
        assert serious_violations(page) == [], path
    csrf = page.get_attribute("input[name=csrf]", "value")  # the sign-out form's
    assert csrf
    forged = {
        "/console/people": {"email": "mallory@acme.test", "role": "admin"},
        "/console/people/role": {"email": "vera@acme.test", "role": "admin"},
        "/console/people/active": {"email": "admin@acme.test", "active": "0"},
        "/console/people/invite": {"email": "alice@acme.test"},
        "/console/teams": {"name": "sneaky"},
        "/console/teams/members": {"team": "sre", "email": "vera@acme.test"},
        "/console/teams/members/remove": {"team": "sre", "email": "alice@acme.test"},
        "/console/teams/rename": {"team": "sre", "name": "gone"},
        "/console/teams/delete": {"team": "sre"},
        "/console/channels/webhook": {"url": "https://evil.test/", "secret": "x" * 20, "enabled": "on"},
        "/console/channels/email/test": {},
    }
    for path, form in forged.items():
        answer = page.request.post(live_hub.url + path, form={"csrf": csrf, **form}, headers={"Origin": live_hub.url})
        assert answer.status == 403, (path, answer.status, answer.text())
        assert "viewer_read_only" in answer.text()
    with httpx.Client(base_url=live_hub.url, headers=auth(org.admin_token), timeout=10) as http:
        users = {u["email"]: u for u in http.get("/api/v1/users").json()}
        assert "mallory@acme.test" not in users and users["vera@acme.test"]["role"] == "viewer"
        assert users["admin@acme.test"]["is_active"]
        assert http.get("/api/v1/teams").json() == [{"name": "sre", "members": ["alice@acme.test", "bob@acme.test"]}]
        assert not next(c for c in http.get("/api/v1/channels").json() if c["kind"] == "webhook")["configured"]
    # An approver (not admin) is refused too: people, teams and channels are the admins'.
    approver = sign_in(browser, live_hub.url, "alice@acme.test", "pw-alice")
    approver.goto(f"{live_hub.url}/console/teams")
    csrf = approver.get_attribute("input[name=csrf]", "value")
    answer = approver.request.post(f"{live_hub.url}/console/teams", form={"csrf": csrf or "", "name": "mine"},
                                   headers={"Origin": live_hub.url})
    assert answer.status == 403


def test_new_pages_link_from_the_nav(live_hub: LiveHub, org: Org, browser: Any) -> None:
    page = sign_in(browser, live_hub.url, "admin@acme.test", "admin-password")
    for label, path in (("People", "/console/people"), ("Teams", "/console/teams"), ("Channels", "/console/channels")):
        page.click(f"nav a:has-text('{label}')")
        page.wait_for_url(re.compile(path + "$"))
        assert page.get_attribute(f"nav a[href='{path}']", "aria-current") == "page"
