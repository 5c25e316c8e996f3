"""Gradual autonomy, the dry run and the structured rule view, in real Chromium."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import LiveHub
from tests.e2e.test_console import serious_violations, sign_in
from tests.e2e.test_push_notifications import _wait
from tests.helpers import Org, auth, make_org
from tests.integration.console.test_autonomy_and_dry_run import POLICY

pytestmark = pytest.mark.e2e



def _history(url: str, org: Org) -> None:
    with httpx.Client(base_url=url, timeout=10) as http:
        applied = http.post("/api/v1/policies", json={"source": POLICY}, headers=auth(org.admin_token))
        assert applied.status_code == 201, applied.text

        def ask(tool: str, args: dict[str, Any], decision: str, reason: str = "") -> None:
            made = http.post("/api/v1/approvals", json={"tool": tool, "arguments": args},
                             headers=auth(org.agent_token))
            assert made.status_code == 201, made.text
            voted = http.post(f"/api/v1/approvals/{made.json()['id']}/{decision}",
                              json={"reason": reason} if reason else {}, headers=auth(org.approver_tokens["alice"]))
            assert voted.status_code == 200, voted.text

        for amount in (20, 75, 120.5, 40, 99):
            ask("refund", {"amount": amount}, "approve")
        for n in range(5):
            ask("drop_table", {"table": f"t{n}"}, "decline", "never drop tables")


@pytest.fixture
def org(live_hub: LiveHub) -> Org:
    made: Org = live_hub.call(make_org())
    _history(live_hub.url, made)
    return made


def _rules(page: Any, entry: int) -> list[str]:
    return list(page.locator(f"#rules ol[data-entry='{entry}'] li .action").all_inner_texts())


def test_autonomy_suggestion_opens_in_editor_dry_run_and_reorder(live_hub: LiveHub, org: Org, browser: Any) -> None:
    page = sign_in(browser, live_hub.url, "admin@acme.test", "admin-password")
    page.click("nav a:has-text('Autonomy')")
    page.wait_for_url(re.compile(r"/console/autonomy$"))
    refund = page.locator("#autonomy tr[data-tool='refund'][data-rule='1']")
    assert "100.0%" in refund.locator(".rate").inner_text() and "(5 of 5)" in refund.inner_text()
    drop = page.locator("#autonomy tr[data-tool='drop_table']")
    assert "5 \u00d7 never drop tables" in drop.inner_text() and "0.0%" in drop.inner_text()
    assert page.locator("section.suggestion[data-kind='tighten'] pre").inner_text().count("+") >= 1
    relax = page.locator("section.suggestion[data-kind='relax']")
    assert "amount <= 120.5" in relax.inner_text()
    assert serious_violations(page) == []

    relax.locator("a:has-text('Review in the policy editor')").click()
    page.wait_for_url(re.compile(r"/console/policies\?suggestion="))
    assert "Suggestion loaded into the editor, not applied" in page.inner_text("#apply-message")
    assert "double(args.amount) <= 120.5" in page.input_value("#source")
    assert page.inner_text("#active-version") == "1"  # nothing applied

    page.click("#dry-run-button")
    page.wait_for_selector("#dry-run-status")
    assert "5 of 10 recorded calls" in page.inner_text("#dry-run-status")
    assert page.inner_text("#dry-run-transitions") == "5 \u00d7 require_approval → allow"
    assert page.locator("#dry-run-examples tbody tr").count() == 5

    # The structured view: refund's three rules; the draft has no comments (it was rewritten).
    page.wait_for_selector("#rules ol[data-entry='0'] li")
    assert _rules(page, 0) == ["deny", "allow", "require_approval"]
    assert serious_violations(page) == []

    # Keyboard: move the new allow rule down; the YAML follows, is checked again and announced.
    button = page.locator("#rules ol[data-entry='0'] li[data-rule='1'] button[data-move='down']")
    button.focus()
    page.keyboard.press("Enter")
    _wait(page, lambda: "moved" in page.inner_text("#rules-status"))
    assert page.inner_text("#rules-status") == "refund: rule 2 moved to position 3"
    assert _rules(page, 0) == ["deny", "require_approval", "allow"]
    moved = yaml.safe_load(page.input_value("#source"))
    assert [r["action"] for r in moved["tools"][0]["rules"]] == ["deny", "require_approval", "allow"]
    assert page.evaluate("() => document.activeElement.closest('li').dataset.rule") == "2"
    assert page.evaluate("() => document.activeElement.dataset.move") == "up"  # "down" is disabled at the end
    page.keyboard.press("Enter")  # and back up, still from the keyboard
    _wait(page, lambda: "rule 3 moved" in page.inner_text("#rules-status"))
    assert _rules(page, 0) == ["deny", "allow", "require_approval"]

    # Drag the last rule onto the first.
    page.drag_and_drop("#rules ol[data-entry='0'] li[data-rule='2']", "#rules ol[data-entry='0'] li[data-rule='0']")
    _wait(page, lambda: "rule 3 moved to position 1" in page.inner_text("#rules-status"))
    assert _rules(page, 0) == ["require_approval", "deny", "allow"]
    assert [r["action"] for r in yaml.safe_load(page.input_value("#source"))["tools"][0]["rules"]] == [
        "require_approval", "deny", "allow"]
    # The live check ran on the moved draft: the dry run now shows no change for refunds.
    page.wait_for_selector("#check-status:has-text('Valid')")
    page.click("#dry-run-button")
    page.wait_for_selector("#dry-run-status:has-text('0 of 10')")

    # A move the draft cannot take is refused with the reason, and the rules are still listed.
    token = page.evaluate("() => JSON.parse(document.body.getAttribute('hx-headers'))['X-CSRF-Token']")
    refused = page.request.post(f"{live_hub.url}/console/policies/rules/move",
                                headers={"X-CSRF-Token": token, "Origin": live_hub.url},
                                form={"source": page.input_value("#source"), "entry": "0", "rule": "0", "to": "7"})
    assert refused.status == 422 and "has rules 1 to 3" in refused.text() and 'data-rule="2"' in refused.text()

    # Typing in the editor refreshes the rule list; a comment brings the warning about rewriting.
    page.fill("#source", "# keep me\n" + POLICY)
    page.locator("#source").press("End")
    page.keyboard.type(" ")
    page.wait_for_selector("#rules-comments")
    assert _rules(page, 0) == ["deny", "require_approval"]
    page.fill("#source", "tools: [")
    page.keyboard.type(" ")
    page.locator("#source").press("End")
    page.keyboard.type(" ")
    page.wait_for_selector("#rules-error")


def test_suggestion_is_applied_only_by_an_admin_pressing_apply(live_hub: LiveHub, org: Org, browser: Any) -> None:
    page = sign_in(browser, live_hub.url, "admin@acme.test", "admin-password")
    page.goto(f"{live_hub.url}/console/autonomy")
    page.locator("section.suggestion[data-kind='relax'] a").click()
    page.wait_for_selector("#apply-message")
    with httpx.Client(base_url=live_hub.url, timeout=10) as http:
        versions = http.get("/api/v1/policies/versions", headers=auth(org.admin_token)).json()
        assert len(versions) == 1
        page.click("#apply")
        page.wait_for_selector("#apply-message:has-text('Applied as version 2')")
        active = http.get("/api/v1/policies/active", headers=auth(org.admin_token)).json()
        assert "double(args.amount) <= 120.5" in active["source"]
    stale = page.goto(f"{live_hub.url}/console/policies?suggestion=relax:refund::1")
    assert stale is not None and "no longer matches" in page.inner_text("#apply-message")
