"""Console sign-in with a passkey or a two-step code, a passkey step-up before a vote, red flags."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest

from tests.conftest import LiveHub
from tests.e2e.test_approver_app import sign_in as app_sign_in
from tests.e2e.test_console import hold, serious_violations
from tests.e2e.test_passkeys import POLICY, virtual_authenticator
from tests.helpers import auth, make_org

pytestmark = pytest.mark.e2e


def test_passkey_sign_in_step_up_vote_and_red_flags(live_hub: LiveHub, browser: Any) -> None:
    org = live_hub.call(make_org())
    base = live_hub.url.replace("127.0.0.1", "localhost")  # passkeys need a domain name as RP id
    applied = httpx.post(f"{live_hub.url}/api/v1/policies", json={"source": POLICY}, headers=auth(org.admin_token))
    assert applied.status_code == 201, applied.text
    rid = hold(live_hub.url, org, "deploy", {"env": "production", "replicas": 3})
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    cdp, authenticator = virtual_authenticator(page)
    # The passkey is added in the approver app (Settings), the console signs in with it.
    page.goto(f"{base}/app/")
    app_sign_in(page, "alice@acme.test", "pw-alice")
    page.click("#nav-settings")  # passkeys live on the app's Settings screen
    page.wait_for_selector("#settings:visible")
    page.click("#passkeys summary")
    page.click("#passkey-add")
    page.wait_for_selector("#passkey-list .passkey-name")
    context.clear_cookies()

    page.goto(f"{base}/console/approvals/{rid}")
    page.wait_for_url(re.compile(r"/console/login\?next="))
    assert serious_violations(page) == []
    page.click("#passkey-signin")
    page.wait_for_url(re.compile(rf"/console/approvals/{rid}$"))
    assert page.inner_text("header .who").startswith("alice@acme.test")

    # Red flags on the detail page: the agent's first call of this tool, and production in the arguments.
    codes = page.locator("#red-flags li").evaluate_all("items => items.map(i => i.dataset.code)")
    assert {"first_call", "production"} <= set(codes)
    assert "never called deploy before" in page.inner_text("#red-flags")
    assert serious_violations(page) == []

    # Without the passkey the hub refuses the console vote (the server decides, not the page).
    token = page.evaluate("() => JSON.parse(document.body.getAttribute('hx-headers'))['X-CSRF-Token']")
    bare = page.request.post(f"{base}/console/approvals/{rid}/vote", form={"decision": "approve", "csrf": token},
                             headers={"Origin": base})  # same-origin, as the page's own form sends
    assert bare.status == 422 and "passkey" in bare.text()

    page.click("button[name=decision][value=approve]")
    page.wait_for_selector(".status-approved")
    assert "(confirmed with a passkey)" in page.inner_text("#votes")
    with httpx.Client(base_url=live_hub.url, headers=auth(org.admin_token)) as http:
        approved = http.get(f"/api/v1/approvals/{rid}").json()
    assert approved["status"] == "approved"
    assert [(v["user"]["email"], v["channel"], v["passkey_confirmed"]) for v in approved["votes"]] == [
        ("alice@acme.test", "app", True)]
    [credential] = cdp.send("WebAuthn.getCredentials", {"authenticatorId": authenticator})["credentials"]
    assert credential["signCount"] >= 3  # enrol, sign-in, step-up
    context.close()


def test_two_step_code_at_console_sign_in(live_hub: LiveHub, browser: Any) -> None:
    import pyotp

    from backend.accounts import service, totp

    org = live_hub.call(make_org())
    user = live_hub.call(service.get_user(org.id, "bob@acme.test"))
    bob = service.Principal(org_id=org.id, user_id=user["id"], email="bob@acme.test", role="approver", via="session")
    secret = live_hub.call(totp.begin(bob))["secret"]
    code = pyotp.TOTP(secret)
    import time

    live_hub.call(totp.confirm(bob, code.at(time.time() - 30)))

    page = browser.new_context().new_page()
    page.goto(f"{live_hub.url}/console/login")
    page.fill("#email", "bob@acme.test")
    page.fill("#password", "pw-bob")
    page.click("form[action='/console/login'] button[type=submit]")
    page.wait_for_selector("#login-error:has-text('6-digit code')")
    assert page.get_attribute("#totp_code", "aria-invalid") == "true"
    assert serious_violations(page) == []
    page.fill("#password", "pw-bob")
    page.fill("#totp_code", "000000" if code.now() != "000000" else "111111")
    page.click("form[action='/console/login'] button[type=submit]")
    page.wait_for_selector("#login-error:has-text('wrong, expired or already used')")
    page.fill("#password", "pw-bob")
    page.fill("#totp_code", code.now())
    page.click("form[action='/console/login'] button[type=submit]")
    page.wait_for_url(re.compile(r"/console/approvals$"))
    assert page.inner_text("header .who").startswith("bob@acme.test")
