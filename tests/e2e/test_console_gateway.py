"""The console with a real agent: a call through the real gateway (Python MCP SDK client over streamable
HTTP, a real upstream) is held by a quorum-2 policy, rings the console's bell without a reload, two
approvers decide it on its page, and the agent's call completes with the upstream's own answer."""

from __future__ import annotations

import queue
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import LiveHub
from tests.e2e.test_console import sign_in
from tests.e2e.test_gateway_passkey import agent, answer
from tests.helpers import Org, auth, make_org, structured
from tests.integration.gateway.test_held_calls import text_of
from tests.interop.conftest import PROBE, PYTHON

pytestmark = pytest.mark.e2e

POLICY = f"""
version: "1"
servers:
  - name: probe
    command: [{PYTHON}, {PROBE}]
approval_policies:
  - {{name: pair, teams: [sre], quorum: 2, timeout: 10m}}
tools:
  - name: show_args
    rules:
      - {{when: "args.value.startsWith('held')", action: require_approval, approval_policy: pair, risk: high,
         description: "held calls need two people"}}
      - {{action: allow}}
defaults: {{unknown_tools: deny, justification: none}}
"""


def test_a_gateway_held_call_rings_the_bell_and_two_approvers_release_it(
    live_hub: LiveHub, browser: Any, tmp_path: Path
) -> None:
    org: Org = live_hub.call(make_org())
    with httpx.Client(base_url=live_hub.url, timeout=10) as http:
        applied = http.post("/api/v1/policies", json={"source": POLICY}, headers=auth(org.admin_token))
        assert applied.status_code == 201, applied.text

    alice = sign_in(browser, live_hub.url, "alice@acme.test", "pw-alice")
    alice.wait_for_selector("body[data-live=on]")
    alice.wait_for_selector("#bell-count[data-count='0']")

    answers: queue.Queue[Any] = queue.Queue()
    calls = [{"value": "held-rotate", "n": 7}]
    thread = threading.Thread(target=agent, args=(live_hub.url, org.agent_token, tmp_path / "gw", calls, answers),
                              daemon=True)
    thread.start()

    # No reload: the hub's event makes the console fetch its bell again.
    alice.wait_for_selector("#bell-count[data-count='1']", timeout=30_000)
    item = alice.locator("#bell-menu li[data-id]").first
    rid = item.get_attribute("data-id")
    alice.click("#bell-button")
    alice.click(f"#bell-menu li[data-id='{rid}'] a")
    alice.wait_for_selector("#fact-tool")
    assert alice.inner_text("#fact-tool") == "show_args"
    assert "held calls need two people" in alice.inner_text("#fact-rule")
    alice.click("button[value=approve]")
    alice.wait_for_selector("#votes li:has-text('alice@acme.test')")
    assert answers.empty()  # one vote of two: the call is still held

    bob = sign_in(browser, live_hub.url, "bob@acme.test", "pw-bob")
    bob.goto(f"{live_hub.url}/console/approvals/{rid}")
    bob.click("button[value=approve]")
    released = answer(answers)
    assert not released.is_error, text_of(released)
    assert structured(released)["received"] == {"value": "held-rotate", "n": 7}  # the upstream's own answer
    alice.wait_for_selector("#bell-count[data-count='0']", timeout=10_000)
    thread.join(timeout=20)
    assert not thread.is_alive()

    with httpx.Client(base_url=live_hub.url, headers=auth(org.admin_token), timeout=10) as http:
        ran = http.get(f"/api/v1/approvals/{rid}").json()
    assert ran["status"] == "executed"
    assert [(v["user"]["email"], v["decision"]) for v in ran["votes"]] == [
        ("alice@acme.test", "approve"), ("bob@acme.test", "approve")]
