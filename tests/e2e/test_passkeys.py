"""Passkeys in real Chromium with the CDP virtual authenticator: enrol, sign in, approve with a step-up."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import LiveHub
from tests.e2e.test_approver_app import sign_in
from tests.helpers import auth, make_org

pytestmark = pytest.mark.e2e

POLICY = """
version: "1"
approval_policies:
  - {name: strong, teams: [sre], quorum: 1, require_passkey: true}
tools:
  - name: deploy
    rules:
      - {action: require_approval, approval_policy: strong, risk: high}
"""


def virtual_authenticator(page: Any) -> tuple[Any, str]:
    """A platform authenticator (internal transport) that holds resident keys and verifies the user."""
    cdp = page.context.new_cdp_session(page)
    cdp.send("WebAuthn.enable", {"enableUI": False})
    added = cdp.send("WebAuthn.addVirtualAuthenticator", {"options": {
        "protocol": "ctap2", "transport": "internal", "hasResidentKey": True, "hasUserVerification": True,
        "isUserVerified": True, "automaticPresenceSimulation": True,
    }})
    return cdp, added["authenticatorId"]


def test_enrol_sign_in_and_approve_with_a_step_up(live_hub: LiveHub, browser: Any, tmp_path: Path) -> None:
    org = live_hub.call(make_org())
    # Passkeys need a domain name as RP id (not an IP): the app is opened at localhost.
    base = live_hub.url.replace("127.0.0.1", "localhost")
    with httpx.Client(base_url=live_hub.url, timeout=10) as http:
        assert http.post("/api/v1/policies", json={"source": POLICY}, headers=auth(org.admin_token)).status_code == 201
        held = http.post("/api/v1/approvals", headers=auth(org.agent_token),
                         json={"tool": "deploy", "arguments": {"env": "prod", "replicas": 3}})
        assert held.status_code == 201, held.text
        rid = held.json()["id"]
    context = browser.new_context(viewport={"width": 390, "height": 844})
    page = context.new_page()
    cdp, authenticator = virtual_authenticator(page)

    # Enrol a passkey from Settings after a password sign-in.
    page.goto(f"{base}/app/")
    sign_in(page, "alice@acme.test", "pw-alice")
    page.wait_for_selector(f"article[data-id='{rid}']")
    page.click("#nav-settings")
    page.click("#passkeys summary")
    page.fill("#passkey-name", "laptop")
    page.click("#passkey-add")
    page.wait_for_selector("#passkey-list .passkey-name:has-text('laptop')")
    [credential] = cdp.send("WebAuthn.getCredentials", {"authenticatorId": authenticator})["credentials"]
    assert credential["isResidentCredential"] is True

    # Sign out (drop the session cookie) and sign in with the passkey alone.
    context.clear_cookies()
    page.reload()
    page.wait_for_selector("#passkey-signin")
    page.click("#passkey-signin")
    page.wait_for_selector("#who:has-text('alice@acme.test')")
    page.click("#nav-inbox")
    # The app fetches the card's step-up challenges ahead, so the tap goes straight to the authenticator.
    page.wait_for_selector(f"article[data-id='{rid}'][data-step-up-ready]")
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))

    # A vote without an assertion on this policy is refused, even from the signed-in session.
    bare = page.request.post(f"{base}/api/v1/approvals/{rid}/approve", data={"channel": "app"},
                             headers={"Origin": base})  # same-origin, as the app's own fetch sends
    assert bare.status == 403 and bare.json()["error"]["code"] == "passkey_required"

    # Approve from the card: the app asks the authenticator, the hub checks it, the card leaves.
    card = page.locator(f"article[data-id='{rid}']")
    card.wait_for()
    page.screenshot(path=str(tmp_path / "step-up.png"))
    card.locator("button[data-action=approve]").click()
    page.wait_for_selector(f"article[data-id='{rid}']", state="detached")
    assert [u for u in requested if "step-up" in u] == []
    assert any(u.endswith(f"/approvals/{rid}/approve") for u in requested)
    with httpx.Client(base_url=live_hub.url, headers=auth(org.admin_token)) as http:
        approved = http.get(f"/api/v1/approvals/{rid}").json()
        export = http.get("/api/v1/audit/export").json()
    assert approved["status"] == "approved"
    assert [(v["user"]["email"], v["channel"], v["passkey_confirmed"]) for v in approved["votes"]] == [
        ("alice@acme.test", "app", True)
    ]
    [after] = cdp.send("WebAuthn.getCredentials", {"authenticatorId": authenticator})["credentials"]
    assert after["signCount"] >= 2  # sign-in and step-up

    # The decision Chromium's authenticator signed verifies offline from the export.
    from backend.audit.signatures import verify_export

    report = verify_export(export)
    assert report.ok and report.verified == 1, report.to_dict()
    context.close()


def test_turn_on_two_step_codes_and_sign_in_with_one(live_hub: LiveHub, browser: Any) -> None:
    import time

    import pyotp

    live_hub.call(make_org())
    context = browser.new_context(viewport={"width": 390, "height": 844})
    page = context.new_page()
    page.goto(f"{live_hub.url}/app/")
    sign_in(page, "bob@acme.test", "pw-bob")
    page.wait_for_selector("#inbox:visible")
    page.click("#nav-settings")
    page.click("#totp summary")
    page.wait_for_selector("#totp-state:has-text('Off.')")
    page.click("#totp-start")
    page.wait_for_selector("#totp-qr svg")
    secret = page.inner_text("#totp-secret").strip()
    totp = pyotp.TOTP(secret)
    now = time.time()
    page.fill("#totp-code", totp.at(now - 30))
    page.click("#totp-confirm")
    page.wait_for_selector("#totp-recovery:visible")
    assert len(page.inner_text("#totp-recovery-codes").split()) == 10
    page.wait_for_selector("#totp-state:has-text('On. 10 recovery codes left.')")

    context.clear_cookies()
    page.reload()
    sign_in(page, "bob@acme.test", "pw-bob")
    page.wait_for_selector("#login-error:has-text('6-digit code')")
    page.fill("input[name=totp_code]", totp.at(now))
    page.click("button[type=submit]")
    page.wait_for_selector("#who:has-text('bob@acme.test')")
    context.close()
