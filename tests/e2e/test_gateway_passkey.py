"""The whole loop with a human and a passkey, in real Chromium: an agent (the Python MCP SDK's client) calls a
tool through the real gateway over streamable HTTP; the policy holds it with `require_passkey: true`; an
approver who enrolled a passkey in the app (CDP virtual authenticator) approves with the step-up and the
agent's call completes with the upstream's answer; a second call is declined with a preset reason chip and
the agent reads that reason."""

from __future__ import annotations

import queue
import threading
from pathlib import Path
from typing import Any

import anyio
import httpx
import mcp_types as types
import pytest
from mcp import Client

from mcp_gateway.app import Gateway
from mcp_gateway.config import GatewaySettings
from tests.conftest import LiveHub
from tests.e2e.test_approver_app import sign_in
from tests.e2e.test_passkeys import virtual_authenticator
from tests.helpers import Org, auth, make_org, structured
from tests.integration.gateway.test_held_calls import text_of
from tests.interop.conftest import PROBE, PYTHON, serving_http

pytestmark = pytest.mark.e2e

POLICY = f"""
version: "1"
servers:
  - name: probe
    command: [{PYTHON}, {PROBE}]
approval_policies:
  - name: strong
    teams: [sre]
    quorum: 1
    timeout: 10m
    require_passkey: true
    decline_reasons: ["Not during the freeze", "Wrong environment"]
tools:
  - name: show_args
    rules:
      - {{when: "args.value.startsWith('held')", action: require_approval, approval_policy: strong, risk: high}}
      - {{action: allow}}
defaults: {{unknown_tools: deny, justification: none}}
"""


def agent(hub_url: str, token: str, data_dir: Path, calls: list[dict[str, Any]], answers: queue.Queue[Any]) -> None:
    """The agent in its own thread and event loop: gateway (held calls wait up to a minute) + MCP client."""

    async def main() -> None:
        settings = GatewaySettings(api_url=hub_url, api_key=token, hold_window=60, data_dir=data_dir,
                                   startup_timeout=10)
        async with Gateway(settings) as gw, serving_http(gw) as url, Client(url) as client:
            for arguments in calls:
                answers.put(await client.call_tool("show_args", arguments))

    try:
        anyio.run(main)
    except BaseException as exc:  # handed to the test, which fails with it
        answers.put(exc)


def answer(answers: queue.Queue[Any]) -> types.CallToolResult:
    got = answers.get(timeout=60)
    if isinstance(got, BaseException):
        raise got
    assert isinstance(got, types.CallToolResult)
    return got


def test_a_gateway_held_call_approved_with_a_passkey_then_one_declined_with_a_chip(
    live_hub: LiveHub, browser: Any, tmp_path: Path
) -> None:
    org: Org = live_hub.call(make_org())
    with httpx.Client(base_url=live_hub.url, timeout=10) as http:
        applied = http.post("/api/v1/policies", json={"source": POLICY}, headers=auth(org.admin_token))
        assert applied.status_code == 201, applied.text

    # Alice enrols a passkey in the app (Settings) after a password sign-in. Passkeys need a domain name.
    base = live_hub.url.replace("127.0.0.1", "localhost")
    context = browser.new_context(viewport={"width": 390, "height": 844})
    page = context.new_page()
    cdp, authenticator = virtual_authenticator(page)
    page.goto(f"{base}/app/")
    sign_in(page, "alice@acme.test", "pw-alice")
    page.wait_for_selector("#inbox:visible")
    page.click("#nav-settings")
    page.click("#passkeys summary")
    page.fill("#passkey-name", "phone")
    page.click("#passkey-add")
    page.wait_for_selector("#passkey-list .passkey-name:has-text('phone')")
    page.click("#nav-inbox")

    # The agent calls through the gateway; the first call is held and lands in Alice's inbox live.
    answers: queue.Queue[Any] = queue.Queue()
    calls = [{"value": "held-deploy", "n": 3}, {"value": "held-drop"}]
    thread = threading.Thread(target=agent, args=(live_hub.url, org.agent_token, tmp_path / "gw", calls, answers),
                              daemon=True)
    thread.start()
    first = page.locator("#requests article").first
    first.wait_for(timeout=30_000)
    rid = first.get_attribute("data-id")
    assert "held-deploy" in first.inner_text()

    # Approve in the request's detail: the step-up asks the authenticator, the vote carries the assertion.
    page.goto(f"{base}/app/#/requests/{rid}")
    detail = page.locator(f"#detail-body article[data-id='{rid}'][data-passkey]")
    detail.wait_for()
    before = cdp.send("WebAuthn.getCredentials", {"authenticatorId": authenticator})["credentials"][0]["signCount"]
    detail.locator("button[data-action=approve]").click()
    page.wait_for_selector("#notice:has-text('Approved show_args')")
    approved = answer(answers)
    assert not approved.is_error, text_of(approved)
    assert structured(approved)["received"] == {"value": "held-deploy", "n": 3}  # the upstream's own answer
    after = cdp.send("WebAuthn.getCredentials", {"authenticatorId": authenticator})["credentials"][0]["signCount"]
    assert after > before  # the authenticator signed the approval

    # The second call: declined with a preset reason chip; the agent is told who declined and why.
    second = page.locator(f"#requests article:not([data-id='{rid}'])").first
    second.wait_for(timeout=30_000)
    declined_id = second.get_attribute("data-id")
    page.goto(f"{base}/app/#/requests/{declined_id}")
    detail = page.locator(f"#detail-body article[data-id='{declined_id}']")
    detail.wait_for()
    detail.locator(".chip:has-text('Wrong environment')").click()
    assert detail.locator("textarea[name=reason]").input_value() == "Wrong environment"
    detail.locator("button[data-action=decline]").click()
    declined = answer(answers)
    assert declined.is_error
    assert structured(declined)["status"] == "declined"
    assert "Wrong environment" in text_of(declined) and "alice@acme.test" in text_of(declined)
    thread.join(timeout=20)
    assert not thread.is_alive()

    with httpx.Client(base_url=live_hub.url, headers=auth(org.admin_token), timeout=10) as http:
        ran = http.get(f"/api/v1/approvals/{rid}").json()
        refused = http.get(f"/api/v1/approvals/{declined_id}").json()
    assert ran["status"] == "executed"
    assert [(v["user"]["email"], v["channel"], v["passkey_confirmed"]) for v in ran["votes"]] == [
        ("alice@acme.test", "app", True)
    ]
    assert refused["status"] == "declined" and refused["outcome"]["reason"] == "Wrong environment"
    assert refused["votes"][0]["passkey_confirmed"] is True
    context.close()
