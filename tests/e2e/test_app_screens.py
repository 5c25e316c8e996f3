"""The approver app's screens in real Chromium: detail with a passkey step-up, preset decline reasons that
reach the agent, batch decisions with one assertion, push to decision in two interactions, offline
reload, installability, first-load weight and axe-core on every screen."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import LiveHub
from tests.e2e.test_approver_app import sign_in
from tests.e2e.test_console import serious_violations
from tests.e2e.test_passkeys import virtual_authenticator
from tests.e2e.test_push_notifications import _wait, deliver_push
from tests.helpers import auth, make_org
from tests.integration.notifications.conftest import new_browser, push_service  # noqa: F401 - fixture

pytestmark = pytest.mark.e2e

POLICY = """
version: "1"
approval_policies:
  - name: strong
    teams: [sre]
    require_passkey: true
    channels: [web, push]
    decline_reasons: ["Not during a freeze", "Wrong environment"]
  - name: plain
    teams: [sre]
    decline_reasons: ["Not during a freeze", "Ask the owner first"]
tools:
  - name: deploy
    rules:
      - {action: require_approval, approval_policy: strong, risk: high, description: "ships to users"}
  - name: drop_table
    rules:
      - {action: require_approval, approval_policy: plain, risk: critical, description: "dropping tables loses data"}
"""


def hold(url: str, agent_token: str, tool: str, arguments: dict[str, Any], justification: str | None = None) -> str:
    with httpx.Client(base_url=url, timeout=10) as http:
        body: dict[str, Any] = {"tool": tool, "arguments": arguments}
        if justification:
            body["justification"] = justification
        created = http.post("/api/v1/approvals", headers=auth(agent_token), json=body)
        assert created.status_code == 201, created.text
        return str(created.json()["id"])


@pytest.fixture
def org(live_hub: LiveHub) -> Any:
    org = live_hub.call(make_org())
    with httpx.Client(base_url=live_hub.url, timeout=10) as http:
        applied = http.post("/api/v1/policies", json={"source": POLICY}, headers=auth(org.admin_token))
        assert applied.status_code == 201, applied.text
    return org


def enrolled_page(
    browser: Any, base: str, email: str = "alice@acme.test", password: str = "pw-alice"
) -> tuple[Any, Any, Any, str]:
    """A phone-sized page signed in by password with a passkey added in Settings."""
    context = browser.new_context(viewport={"width": 390, "height": 844})
    page = context.new_page()
    cdp, authenticator = virtual_authenticator(page)
    page.goto(f"{base}/app/")
    sign_in(page, email, password)
    page.wait_for_selector("#inbox:visible")
    page.click("#nav-settings")
    page.wait_for_selector("#settings:visible")
    page.click("#passkeys summary")
    page.fill("#passkey-name", "phone")
    page.click("#passkey-add")
    page.wait_for_selector("#passkey-list .passkey-name:has-text('phone')")
    page.click("#nav-inbox")
    page.wait_for_selector("#inbox:visible")
    return context, page, cdp, authenticator


def sign_count(cdp: Any, authenticator: str) -> int:
    [credential] = cdp.send("WebAuthn.getCredentials", {"authenticatorId": authenticator})["credentials"]
    return int(credential["signCount"])


def test_detail_step_up_preset_decline_reason_and_batch(live_hub: LiveHub, org: Any, browser: Any) -> None:
    base = live_hub.url.replace("127.0.0.1", "localhost")  # passkeys need a domain name as RP id
    rid = hold(live_hub.url, org.agent_token, "deploy", {"env": "production", "replicas": 3},
               justification="release 4.2 is tagged")
    context, page, cdp, authenticator = enrolled_page(browser, base)

    # The card shows the red flags with their one-line why; its title opens the detail view.
    card = page.locator(f"#requests article[data-id='{rid}']")
    card.locator(".flags li[data-flag='first_call']").wait_for()
    assert "ci-bot has never called deploy before" in card.inner_text()
    card.locator(f"a[href='#/requests/{rid}']").click()
    detail = page.locator(f"#detail-body article[data-id='{rid}']")
    detail.wait_for()
    text = detail.inner_text()
    for expected in ("deploy", "ci-bot", "release 4.2 is tagged", "env: \"production\"", "replicas: 3", "high",
                     "ships to users", "rule 1", "never called deploy before", "No votes yet.", "Notifications sent"):
        assert expected in text, (expected, text)
    assert detail.locator(".flags li[data-flag='production']").count() == 1
    # The preset reasons are chips on the detail too.
    assert detail.locator(".chip").all_inner_texts() == ["Not during a freeze", "Wrong environment"]

    # Approve from the detail: one passkey assertion bound to this request; back to the inbox.
    before = sign_count(cdp, authenticator)
    detail.locator("button[data-action=approve]").click()
    page.wait_for_selector("#inbox:visible")
    page.wait_for_selector("#notice:has-text('Approved deploy')")
    assert sign_count(cdp, authenticator) == before + 1
    with httpx.Client(base_url=live_hub.url, headers=auth(org.admin_token)) as http:
        approved = http.get(f"/api/v1/approvals/{rid}").json()
    assert approved["status"] == "approved"
    assert [(v["user"]["email"], v["channel"], v["passkey_confirmed"]) for v in approved["votes"]] == [
        ("alice@acme.test", "app", True)
    ]

    # Decline with a preset reason: the chip fills the reason and the agent reads it in the outcome.
    did = hold(live_hub.url, org.agent_token, "drop_table", {"table": "sessions"})
    card = page.locator(f"#requests article[data-id='{did}']")
    card.locator(".chip:has-text('Ask the owner first')").click()
    assert card.locator("textarea").input_value() == "Ask the owner first"
    card.locator("button[data-action=decline]").click()
    page.wait_for_selector(f"#requests article[data-id='{did}']", state="detached")
    with httpx.Client(base_url=live_hub.url, headers=auth(org.agent_token)) as http:
        outcome = http.get(f"/api/v1/approvals/{did}/outcome").json()
    assert outcome["status"] == "declined"
    assert outcome["outcome"]["kind"] == "declined" and outcome["outcome"]["reason"] == "Ask the owner first"

    # Batch: select three passkey requests, approve them together with ONE assertion.
    ids = [hold(live_hub.url, org.agent_token, "deploy", {"env": "staging", "shard": n}) for n in range(3)]
    for bid in ids:
        page.locator(f"#requests article[data-id='{bid}'] input.pick").check()
    page.wait_for_selector("#batch:visible #batch-count:has-text('3 selected')")
    before = sign_count(cdp, authenticator)
    page.click("#batch-approve")
    for bid in ids:
        page.wait_for_selector(f"#requests article[data-id='{bid}']", state="detached")
    page.wait_for_selector("#notice:has-text('Approved 3 of 3')")
    assert sign_count(cdp, authenticator) == before + 1
    with httpx.Client(base_url=live_hub.url, headers=auth(org.admin_token)) as http:
        for bid in ids:
            item = http.get(f"/api/v1/approvals/{bid}").json()
            assert item["status"] == "approved"
            assert [(v["channel"], v["passkey_confirmed"]) for v in item["votes"]] == [("app", True)]

    # My history lists the five decisions, newest first.
    page.click("#nav-history")
    page.wait_for_selector("#history-list li >> nth=4")
    history = page.inner_text("#history-list")
    assert "drop_table" in history and "Ask the owner first" in history
    context.close()


def test_a_typed_reason_and_an_error_survive_live_updates(live_hub: LiveHub, org: Any, browser: Any) -> None:
    """The old race: a late event-stream re-render wiped a card's error and typed reason."""
    first = hold(live_hub.url, org.agent_token, "drop_table", {"table": "old_users"})
    page = browser.new_page()
    page.goto(f"{live_hub.url}/app/")
    sign_in(page, "bob@acme.test", "pw-bob")
    card = page.locator(f"#requests article[data-id='{first}']")
    card.locator("textarea").fill("checking with the owner")
    # The hub refuses this one vote (as it would a stale or unauthorised one); the card shows why.
    page.route(f"**/api/v1/approvals/{first}/decline", lambda route: route.fulfill(
        status=409, content_type="application/json",
        body=json.dumps({"error": {"code": "conflict", "message": "refused for the test"}})))
    card.locator("button[data-action=decline]").click()
    card.locator(".error:has-text('refused for the test')").wait_for()
    # A live event re-renders the whole list: the typed reason and the error are still there.
    second = hold(live_hub.url, org.agent_token, "drop_table", {"table": "other"})
    page.wait_for_selector(f"#requests article[data-id='{second}']")
    assert card.locator("textarea").input_value() == "checking with the owner"
    assert card.locator(".error").inner_text() == "refused for the test"
    # Newest first.
    assert page.locator("#requests article").first.get_attribute("data-id") == second
    # Typing again clears the error (it was about the previous attempt).
    card.locator("textarea").type(".")
    assert card.locator(".error").inner_text() == ""


def test_push_to_recorded_decision_in_two_interactions(
    live_hub: LiveHub, org: Any, browser: Any, push_service: Any,  # noqa: F811 - the imported fixture
) -> None:
    base = live_hub.url.replace("127.0.0.1", "localhost")
    context, page, cdp, authenticator = enrolled_page(browser, base)
    context.grant_permissions(["notifications"], origin=base)
    page.evaluate("navigator.serviceWorker.ready.then(() => true)")
    sw = context.new_cdp_session(page)
    registrations: list[dict[str, Any]] = []
    sw.on("ServiceWorker.workerRegistrationUpdated", lambda e: registrations.extend(e["registrations"]))
    sw.send("ServiceWorker.enable")
    registration = _wait(page, lambda: next((r for r in registrations if r["scopeURL"].endswith("/app/")), None))
    device = new_browser(push_service.origin)
    with httpx.Client(base_url=live_hub.url, timeout=10) as http:
        saved = http.post("/api/v1/push/subscriptions", json=device.to_json(),
                          headers=auth(org.approver_tokens["alice"]))
        assert saved.status_code == 201, saved.text
    rid = hold(live_hub.url, org.agent_token, "deploy", {"env": "staging"})
    _wait(page, lambda: push_service.calls)
    payload = device.decrypt(push_service.calls[0][2])
    assert [a["action"] for a in payload["notification"]["actions"]] == ["approve", "decline"]
    worker = _wait(page, lambda: next((w for w in context.service_workers if w.url.endswith("/app/sw.js")), None))
    deliver_push(page, sw, base, registration, payload,
                 lambda: worker.evaluate("self.registration.getNotifications().then((ns) => ns.length)"))

    interactions = 0
    signed_before = sign_count(cdp, authenticator)
    # 1: tap "Approve" on the notification (dispatched in the worker: headless has no notification UI).
    worker.evaluate("""self.registration.getNotifications().then((ns) => self.dispatchEvent(
        new NotificationEvent("notificationclick", {notification: ns[0], action: "approve"})))""")
    interactions += 1
    # 2: confirm with the passkey (the virtual authenticator's user verification; no other tap).
    _wait(page, lambda: sign_count(cdp, authenticator) > signed_before)
    interactions += sign_count(cdp, authenticator) - signed_before
    page.wait_for_selector("#notice:has-text('Approved deploy')")
    with httpx.Client(base_url=live_hub.url, headers=auth(org.admin_token)) as http:
        item = http.get(f"/api/v1/approvals/{rid}").json()
    assert item["status"] == "approved"
    assert [(v["user"]["email"], v["channel"], v["passkey_confirmed"]) for v in item["votes"]] == [
        ("alice@acme.test", "app", True)
    ]
    assert interactions == 2
    context.close()


@pytest.fixture
def profile_context(tmp_path: Path) -> Iterator[Any]:
    """A Chromium with a real profile on disk: installability is never offered in an incognito context
    (which is what Browser.new_context gives), so this one is launched persistent."""
    from tests.e2e.conftest import CHROMIUM

    if not shutil.which(CHROMIUM):
        pytest.skip(f"Chromium not found at {CHROMIUM}")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True,
            viewport={"width": 390, "height": 844},
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run", "--disable-quic"],
        )
        yield context
        context.close()


def test_offline_installable_light_and_accessible(live_hub: LiveHub, org: Any, profile_context: Any) -> None:
    rid = hold(live_hub.url, org.agent_token, "drop_table", {"table": "old_users"})
    base = live_hub.url.replace("127.0.0.1", "localhost")
    context = profile_context
    page = context.pages[0] if context.pages else context.new_page()
    cdp = context.new_cdp_session(page)
    cdp.send("Network.enable")
    transferred: list[int] = []
    cdp.on("Network.loadingFinished", lambda e: transferred.append(int(e["encodedDataLength"])))
    page.goto(f"{base}/app/")
    page.wait_for_selector("#login:visible")
    page.wait_for_load_state("networkidle")
    assert sum(transferred) < 100_000, sum(transferred)
    assert serious_violations(page) == []  # sign-in screen

    # Chromium's own installability check (manifest, icons, service worker, standalone).
    page.evaluate("navigator.serviceWorker.ready.then(() => true)")
    deadline = time.monotonic() + 20
    while (errors := cdp.send("Page.getInstallabilityErrors")["installabilityErrors"]) and time.monotonic() < deadline:
        page.wait_for_timeout(250)
    assert errors == []
    manifest = page.evaluate("fetch('/app/manifest.webmanifest').then((r) => r.json())")
    assert manifest["display"] == "standalone" and manifest["theme_color"]
    sizes = {(i["sizes"], i["purpose"]) for i in manifest["icons"]}
    assert {("192x192", "any"), ("512x512", "any"), ("512x512", "maskable")} <= sizes

    sign_in(page, "alice@acme.test", "pw-alice")
    page.wait_for_selector(f"#requests article[data-id='{rid}']")
    assert serious_violations(page) == []  # inbox
    page.locator(f"#requests article[data-id='{rid}'] input.pick").check()
    assert serious_violations(page) == []  # inbox with the batch bar
    page.click(f"a[href='#/requests/{rid}']")
    page.wait_for_selector(f"#detail-body article[data-id='{rid}']")
    assert serious_violations(page) == []  # detail
    page.click("#nav-history")
    page.wait_for_selector("#history:visible")
    assert serious_violations(page) == []  # history
    page.click("#nav-settings")
    page.wait_for_selector("#settings:visible")
    page.click("#passkeys summary")
    page.click("#totp summary")
    assert serious_violations(page) == []  # settings

    # Notification preferences: a wrong time zone is refused with the hub's words, then a good one saves.
    page.uncheck("#prefs-form input[value=email]")
    page.fill("#prefs-form input[name=quiet_start]", "22:00")
    page.fill("#prefs-form input[name=quiet_end]", "07:00")
    page.fill("#prefs-form input[name=timezone]", "Mars/Olympus")
    page.click("#prefs-form button[type=submit]")
    page.wait_for_selector("#prefs-status:has-text('unknown timezone')")
    page.fill("#prefs-form input[name=timezone]", "Europe/Paris")
    page.click("#prefs-form button[type=submit]")
    page.wait_for_selector("#prefs-status:has-text('Saved.')")
    with httpx.Client(base_url=live_hub.url, headers=auth(org.approver_tokens["alice"])) as http:
        prefs = http.get("/api/v1/me/notifications").json()
    assert "email" not in prefs["channels"] and "push" in prefs["channels"]
    assert prefs["quiet_hours"] == {"start": "22:00", "end": "07:00"} and prefs["timezone"] == "Europe/Paris"

    # Keyboard: Tab reaches the Approve button of the card, Enter on it decides.
    page.click("#nav-inbox")
    page.wait_for_selector(f"#requests article[data-id='{rid}']")
    page.focus(f"#requests article[data-id='{rid}'] textarea")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.dataset.action") == "approve"

    # Offline: the service worker serves the shell and the last-known inbox, with the banner.
    _wait(page, lambda: page.evaluate("navigator.serviceWorker.controller !== null"))
    page.reload()
    page.wait_for_selector(f"#requests article[data-id='{rid}']")
    assert page.is_hidden("#offline")
    context.set_offline(True)
    page.reload()
    page.wait_for_selector("#offline:visible")
    page.wait_for_selector(f"#requests article[data-id='{rid}']")
    assert "old_users" in page.inner_text(f"#requests article[data-id='{rid}']")
    context.set_offline(False)


def test_invite_link_sets_a_password_then_enrols_a_passkey(live_hub: LiveHub, org: Any, browser: Any) -> None:
    with httpx.Client(base_url=live_hub.url, headers=auth(org.admin_token)) as http:
        added = http.post("/api/v1/users", json={"email": "dana@acme.test", "role": "approver"})
        assert added.status_code in (200, 201), added.text
        link = http.post("/api/v1/users/dana@acme.test/invite").json()["link"]
    base = live_hub.url.replace("127.0.0.1", "localhost")
    context = browser.new_context(viewport={"width": 390, "height": 844})
    page = context.new_page()
    cdp, authenticator = virtual_authenticator(page)
    page.goto(base + link[link.index("/app/"):])
    page.fill("#invite-form input[name=password]", "dana-secret-pw")
    page.fill("#invite-form input[name=confirm]", "dana-secret-pw")
    page.click("#invite-form button[type=submit]")
    page.wait_for_selector("#enrol:visible")
    assert serious_violations(page) == []
    page.fill("#enrol-name", "dana phone")
    page.click("#enrol-add")
    page.wait_for_selector("#inbox:visible")
    page.wait_for_selector("#who:has-text('dana@acme.test')")
    [credential] = cdp.send("WebAuthn.getCredentials", {"authenticatorId": authenticator})["credentials"]
    assert credential["isResidentCredential"] is True
    with httpx.Client(base_url=live_hub.url, headers=auth(org.admin_token)) as http:
        signed = http.post("/api/v1/auth/login", json={"email": "dana@acme.test", "password": "dana-secret-pw"})
        assert signed.status_code == 201, signed.text
    context.close()
