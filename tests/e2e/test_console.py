"""The admin console in real Chromium: sign in, approvals live, history + export, policies, audit, keys."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Error as PlaywrightError

from tests.conftest import LiveHub
from tests.helpers import Org, auth, make_org

pytestmark = pytest.mark.e2e

AXE = Path(__file__).with_name("vendor") / "axe.min.js"

POLICY = """\
version: "1"
approval_policies:
  - {name: sre, teams: [sre], quorum: 2, require_decline_reason: true}
tools:
  - name: drop_table
    rules:
      - {action: require_approval, approval_policy: sre, risk: critical, description: "dropping tables loses data"}
  - name: deploy
    rules:
      - {action: require_approval, when: "args.env == 'prod'", approval_policy: sre, description: prod deploys}
      - {action: allow}
tests:
  - {tool: drop_table, args: {table: t}, expect: require_approval, approval_policy: sre}
  - {tool: deploy, args: {env: dev}, expect: allow}
"""


@pytest.fixture
def org(live_hub: LiveHub) -> Org:
    from backend.accounts import service

    made: Org = live_hub.call(make_org())
    live_hub.call(service.add_user(made.id, "vera@acme.test", role="viewer", password="pw-vera"))
    with httpx.Client(base_url=live_hub.url, timeout=10) as http:
        applied = http.post("/api/v1/policies", json={"source": POLICY, "message": "first"},
                            headers=auth(made.admin_token))
        assert applied.status_code == 201, applied.text
    return made


def sign_in(browser: Any, url: str, email: str, password: str) -> Any:
    page = browser.new_context(viewport={"width": 1280, "height": 860}).new_page()
    page.goto(f"{url}/console/")
    page.wait_for_url(re.compile(r"/console/login"))
    page.fill("#email", email)
    page.fill("#password", password)
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r"/console/approvals"))
    return page


def serious_violations(page: Any) -> list[dict[str, Any]]:
    """axe-core's serious and critical violations on the page as it is now (evaluated past any CSP)."""
    if not page.evaluate("() => typeof window.axe !== 'undefined'"):
        page.evaluate(AXE.read_text() + "\n;0")
    found: list[dict[str, Any]] = page.evaluate(
        """async () => (await axe.run(document, {resultTypes: ['violations']})).violations
            .filter(v => v.impact === 'serious' || v.impact === 'critical')
            .map(v => ({id: v.id, impact: v.impact, nodes: v.nodes.map(n => n.target.join(' '))}))"""
    )
    return found


def hold(url: str, org: Org, tool: str, arguments: dict[str, Any]) -> str:
    with httpx.Client(base_url=url, timeout=10) as http:
        created = http.post("/api/v1/approvals", headers=auth(org.agent_token),
                            json={"tool": tool, "arguments": arguments})
        assert created.status_code == 201, created.text
        return str(created.json()["id"])


def test_sign_in_navigation_and_every_page_passes_axe(live_hub: LiveHub, org: Org, browser: Any) -> None:
    page = browser.new_context().new_page()
    page.goto(f"{live_hub.url}/console/history")
    page.wait_for_url(re.compile(r"/console/login\?next=/console/history"))
    page.fill("#email", "admin@acme.test")
    page.fill("#password", "wrong")
    page.click("button[type=submit]")
    page.wait_for_selector("#login-error:has-text('wrong email or password')")
    assert serious_violations(page) == []
    page.fill("#password", "admin-password")
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r"/console/history$"))
    cookie = next(c for c in page.context.cookies() if c["name"] == "preloop_session")
    assert cookie["sameSite"] == "Strict" and cookie["httpOnly"]
    page.goto(f"{live_hub.url}/console/login")  # already signed in: on to the console
    page.wait_for_url(re.compile(r"/console/approvals$"))

    approval = hold(live_hub.url, org, "drop_table", {"table": "users"})
    for path in ("/console/approvals", f"/console/approvals/{approval}", "/console/history", "/console/policies",
                 "/console/policies/versions/1", "/console/audit", "/console/keys"):
        page.goto(live_hub.url + path)
        page.wait_for_selector("main h1")
        assert page.locator("header[role=banner]").count() == 1 and page.locator("nav").count() == 1
        assert serious_violations(page) == [], path
    # No inline scripts or handlers anywhere: every script is a file the hub serves.
    html = page.content()
    assert "<script>" not in html and not re.search(r"\son[a-z]+=", html)
    assert page.locator("script[src]").evaluate_all("s => s.map(e => e.getAttribute('src'))") == [
        "/console/static/htmx.min.js", "/console/static/console.js"]
    # Keyboard: the skip link is the first stop and lands in main.
    page.keyboard.press("Tab")
    assert page.evaluate("() => document.activeElement.textContent") == "Skip to content"


def test_held_call_rings_the_bell_live_and_two_approvers_decide(live_hub: LiveHub, org: Org, browser: Any) -> None:
    alice = sign_in(browser, live_hub.url, "alice@acme.test", "pw-alice")
    alice.wait_for_selector("body[data-live=on]")
    alice.wait_for_selector("#bell-count[data-count='0']")
    approval = hold(live_hub.url, org, "drop_table", {"table": "old_users"})
    # No reload: the SSE event makes htmx fetch the bell and the pending list again.
    alice.wait_for_selector("#bell-count[data-count='1']", timeout=10_000)
    alice.wait_for_selector(f"#pending tr[data-id='{approval}']")
    alice.click("#bell-button")
    assert alice.get_attribute("#bell-button", "aria-expanded") == "true"
    assert serious_violations(alice) == []
    alice.keyboard.press("Escape")
    assert alice.is_hidden("#bell-menu") and alice.evaluate("() => document.activeElement.id") == "bell-button"
    alice.keyboard.press("Enter")
    assert alice.get_attribute("#bell-button", "aria-expanded") == "true"
    alice.click(f"#bell-menu li[data-id='{approval}'] a")
    alice.wait_for_selector("#fact-tool")
    assert alice.inner_text("#fact-tool") == "drop_table"
    assert json.loads(alice.inner_text("#fact-arguments")) == {"table": "old_users"}
    assert alice.inner_text("#fact-requester") == "dev@acme.test"
    assert "dropping tables loses data" in alice.inner_text("#fact-rule")

    # The policy wants a reason to decline: the hub's error is shown and nothing is recorded.
    alice.click("button[value=decline]")
    alice.wait_for_selector(".error:has-text('reason')")
    alice.click("button[value=approve]")
    alice.wait_for_selector("#votes li:has-text('alice@acme.test')")
    assert alice.locator("button[value=approve]").count() == 0  # one vote per person

    bob = sign_in(browser, live_hub.url, "bob@acme.test", "pw-bob")
    bob.goto(f"{live_hub.url}/console/approvals/{approval}")
    bob.click("button[value=approve]")
    bob.wait_for_selector(".status-approved")
    alice.wait_for_selector("#bell-count[data-count='0']", timeout=10_000)

    # Carol is not in the team: no buttons, and a hand-made POST is refused by record_vote.
    other = hold(live_hub.url, org, "drop_table", {"table": "x"})
    carol = sign_in(browser, live_hub.url, "carol@acme.test", "pw-carol")
    carol.goto(f"{live_hub.url}/console/approvals/{other}")
    assert carol.locator("button[value=approve]").count() == 0
    csrf = carol.get_attribute("input[name=csrf]", "value")
    refused = carol.request.post(f"{live_hub.url}/console/approvals/{other}/vote",
                                 form={"csrf": csrf, "decision": "approve"}, headers={"Origin": live_hub.url})
    assert refused.status == 422 and "not an approver" in refused.text()

    with httpx.Client(base_url=live_hub.url, headers=auth(org.admin_token)) as http:
        decided = http.get(f"/api/v1/approvals/{approval}").json()
    assert decided["status"] == "approved"
    assert [(v["user"]["email"], v["decision"], v["channel"]) for v in decided["votes"]] == [
        ("alice@acme.test", "approve", "app"), ("bob@acme.test", "approve", "app")]


def test_history_filters_and_exports_match_the_api(
    live_hub: LiveHub, org: Org, browser: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = hold(live_hub.url, org, "drop_table", {"table": "a"})
    hold(live_hub.url, org, "drop_table", {"table": "b"})
    hold(live_hub.url, org, "deploy", {"env": "prod"})
    with httpx.Client(base_url=live_hub.url, timeout=10) as http:
        for who in ("alice", "bob"):
            voted = http.post(f"/api/v1/approvals/{first}/approve", headers=auth(org.approver_tokens[who]))
            assert voted.status_code == 200, voted.text
    page = sign_in(browser, live_hub.url, "admin@acme.test", "admin-password")
    page.goto(f"{live_hub.url}/console/history")
    assert page.locator("#history tbody tr[data-id]").count() == 3

    page.fill("#tool", "drop_*")
    page.select_option("#status", "pending")
    page.click("form[role=search] button[type=submit]")
    page.wait_for_url(re.compile(r"status=pending"))
    shown = page.locator("#history tbody tr[data-id]").evaluate_all("rows => rows.map(r => r.dataset.id)")
    query = {"tool": "drop_*", "status": "pending", "scope": "all"}
    with httpx.Client(base_url=live_hub.url, headers=auth(org.admin_token)) as http:
        api_rows = http.get("/api/v1/approvals", params=query).json()
        assert shown == [row["id"] for row in api_rows] and len(shown) == 1
        api_csv = http.get("/api/v1/approvals/export", params={**query, "format": "csv"}).text
        by_alice = [row["id"] for row in http.get("/api/v1/approvals", params={"approver": "alice@acme.test"}).json()]
    with page.expect_download() as download:
        page.click("#export-csv")
    exported = Path(download.value.path()).read_text()
    assert [r["id"] for r in csv.DictReader(io.StringIO(exported))] == [
        r["id"] for r in csv.DictReader(io.StringIO(api_csv))] == shown
    page.goto(f"{live_hub.url}/console/history?approver=alice@acme.test&status=approved")
    approved = page.locator("#history tbody tr[data-id]").evaluate_all("r => r.map(x => x.dataset.id)")
    assert approved == by_alice == [first]
    with page.expect_download() as download:
        page.click("#export-json")
    assert [r["id"] for r in json.loads(Path(download.value.path()).read_text())] == [first]

    page.goto(f"{live_hub.url}/console/history?start_date=yesterday")
    assert "start_date must be an ISO date" in page.inner_text(".error")

    # Long histories come in pages, newest first, with the filters kept across pages.
    from backend.console import controllers

    monkeypatch.setattr(controllers, "HISTORY_PAGE", 2)
    with httpx.Client(base_url=live_hub.url, headers=auth(org.admin_token)) as http:
        newest_first = [row["id"] for row in http.get("/api/v1/approvals", params={"tool": "*"}).json()]
    page.goto(f"{live_hub.url}/console/history?tool=*")
    ids = "rows => rows.map(r => r.dataset.id)"
    assert page.locator("#history tbody tr[data-id]").evaluate_all(ids) == newest_first[:2]
    page.click("#older")
    page.wait_for_url(re.compile(r"offset=2"))
    assert page.locator("#history tbody tr[data-id]").evaluate_all(ids) == newest_first[2:]
    assert page.locator("#older").count() == 0 and page.input_value("#tool") == "*"
    page.click("#newer")
    page.wait_for_url(re.compile(r"offset=0"))
    assert page.locator("#history tbody tr[data-id]").evaluate_all(ids) == newest_first[:2]


def test_policy_editor_validates_live_explains_applies_and_rolls_back(
    live_hub: LiveHub, org: Org, browser: Any
) -> None:
    page = sign_in(browser, live_hub.url, "admin@acme.test", "admin-password")
    page.goto(f"{live_hub.url}/console/policies")
    assert page.inner_text("#check-status").startswith("Valid: 2/2 tests pass")
    editor = page.locator("#source")

    # A typo in an action: the engine's line and column appear as the text changes, no submit.
    broken = POLICY.replace("- {action: allow}", "- {action: alow}")
    editor.fill(broken)
    page.wait_for_selector("#issues li.issue")
    issue = page.locator("#issues li.issue").first
    line = broken.splitlines().index("      - {action: alow}") + 1
    assert issue.get_attribute("data-line") == str(line)
    assert issue.get_attribute("data-column") not in (None, "", "None", "0")
    assert f"line {line}, column" in issue.inner_text()
    issue.locator("a.goto").click()  # puts the cursor at that line and column
    column = int(issue.get_attribute("data-column") or 0)
    offset = sum(len(text) + 1 for text in broken.splitlines()[: line - 1]) + column - 1
    assert page.evaluate("() => document.activeElement.id") == "source"
    assert page.evaluate("() => document.getElementById('source').selectionStart") == offset

    # Valid again but one of the file's own tests fails: shown as it is typed.
    failing = POLICY.replace("{tool: deploy, args: {env: dev}, expect: allow}",
                             "{tool: deploy, args: {env: dev}, expect: deny}")
    editor.fill(failing)
    page.wait_for_selector("#check-status:has-text('tests fail')")
    assert page.locator("#tests li.fail").count() == 1

    # Explain a call against the draft in the editor.
    edited = POLICY.replace("{name: sre, teams: [sre], quorum: 2", "{name: sre, teams: [sre], quorum: 1")
    editor.fill(edited)
    page.wait_for_selector("#check-status:has-text('2/2 tests pass')")
    page.fill("#ex-tool", "deploy")
    page.fill("#ex-args", '{"env": "prod"}')
    page.click("#explain-form button[type=submit]")
    page.wait_for_selector("#explain-decision")
    assert "require_approval" in page.inner_text("#explain-decision")
    assert "prod deploys" in page.inner_text("#explain-rule")
    assert page.inner_text("#explain-approvers") == "alice@acme.test, bob@acme.test"
    assert page.inner_text("#explain-why")
    page.fill("#ex-args", "not json")
    page.click("#explain-form button[type=submit]")
    page.wait_for_selector("#explain .error:has-text('JSON')")

    assert serious_violations(page) == []  # with the explain panel and check results showing
    page.fill("#message", "quorum 1")
    page.click("#apply")
    page.wait_for_selector("#apply-message:has-text('Applied as version 2')")
    assert page.inner_text("#active-version") == "2"
    page.goto(f"{live_hub.url}/console/policies/versions/1")
    assert "quorum: 2" in page.inner_text("#diff") and "quorum: 1" in page.inner_text("#diff")
    page.click("button:has-text('Roll back to this version')")
    page.wait_for_url(re.compile(r"/console/policies$"))
    assert page.inner_text("#active-version") == "3"
    with httpx.Client(base_url=live_hub.url, headers=auth(org.admin_token)) as http:
        active = http.get("/api/v1/policies/active").json()
    assert active["version"] == 3 and active["source"] == POLICY and active["rolled_back_from"] == 1

    # An invalid policy is never applied, and the text the admin typed stays in the editor.
    page.locator("#source").fill(broken)
    page.click("#apply")
    page.wait_for_selector("#apply-message:has-text('Not applied')")
    assert page.input_value("#source") == broken and page.inner_text("#active-version") == "3"


def test_audit_page_shows_chain_status_and_filters(live_hub: LiveHub, org: Org, browser: Any) -> None:
    page = sign_in(browser, live_hub.url, "admin@acme.test", "admin-password")
    page.goto(f"{live_hub.url}/console/audit")
    assert page.inner_text("#chain").startswith("Chain verified")
    page.fill("#kind", "policy.")
    page.click("form[role=search] button[type=submit]")
    page.wait_for_url(re.compile(r"kind=policy"))
    kinds = page.locator("#events tbody tr[data-kind]").evaluate_all("r => r.map(x => x.dataset.kind)")
    assert kinds == ["policy.applied"]


def test_keys_token_shown_once_and_revoke(live_hub: LiveHub, org: Org, browser: Any) -> None:
    page = sign_in(browser, live_hub.url, "admin@acme.test", "admin-password")
    page.goto(f"{live_hub.url}/console/keys")
    page.fill("#key-name", "release-bot")
    page.click("form[action='/console/keys'] button[type=submit]")
    token = page.inner_text("#new-token")
    assert token.startswith("pl_")
    with httpx.Client(base_url=live_hub.url) as http:
        assert http.get("/api/v1/policies/active", headers=auth(token)).status_code == 200
        page.goto(f"{live_hub.url}/console/keys")
        assert token not in page.content()
        page.click("button[aria-label='Revoke key release-bot']")
        page.wait_for_selector("tr[data-name='release-bot'] td:has-text('revoked')")
        assert http.get("/api/v1/policies/active", headers=auth(token)).status_code == 401


def test_viewer_sees_everything_but_the_server_refuses_its_posts(
    live_hub: LiveHub, org: Org, browser: Any
) -> None:
    markup = "<img src=x id=injected>"
    approval = hold(live_hub.url, org, "drop_table", {"table": markup})
    page = sign_in(browser, live_hub.url, "vera@acme.test", "pw-vera")
    page.goto(f"{live_hub.url}/console/approvals/{approval}")  # what agents send is text, never markup
    assert markup in page.inner_text("#fact-arguments") and page.locator("#injected").count() == 0
    for path in ("/console/policies", f"/console/approvals/{approval}", "/console/keys"):
        page.goto(live_hub.url + path)
        assert page.locator("#apply, button[value=approve], form[action='/console/keys']").count() == 0
    page.goto(f"{live_hub.url}/console/policies")
    csrf = page.get_attribute("input[name=csrf]", "value")
    assert csrf
    forged = {
        "/console/policies/apply": {"source": POLICY},
        "/console/policies/rollback": {"version": "1"},
        f"/console/approvals/{approval}/vote": {"decision": "approve"},
        "/console/keys": {"name": "sneaky", "scope": "agent"},
    }
    for path, form in forged.items():
        answer = page.request.post(live_hub.url + path, form={"csrf": csrf, **form}, headers={"Origin": live_hub.url})
        assert answer.status == 403, (path, answer.status, answer.text())
    with httpx.Client(base_url=live_hub.url, headers=auth(org.admin_token)) as http:
        assert http.get("/api/v1/policies/active").json()["version"] == 1
        assert http.get(f"/api/v1/approvals/{approval}").json()["votes"] == []
        assert all(k["name"] != "sneaky" for k in http.get("/api/v1/keys").json())


def test_console_posts_need_the_sessions_csrf_token(live_hub: LiveHub, org: Org, browser: Any) -> None:
    page = sign_in(browser, live_hub.url, "admin@acme.test", "admin-password")
    page.goto(f"{live_hub.url}/console/keys")
    for form in ({"name": "no-token"}, {"name": "bad-token", "csrf": "0" * 64}):
        answer = page.request.post(f"{live_hub.url}/console/keys", form=form, headers={"Origin": live_hub.url})
        assert answer.status == 403 and "csrf" in answer.text().lower()
    # Signing out ends the session on the server: the old cookie opens nothing.
    old = next(c for c in page.context.cookies() if c["name"] == "preloop_session")["value"]
    page.click("button:has-text('Sign out')")
    page.wait_for_url(re.compile(r"/console/login"))
    with httpx.Client(base_url=live_hub.url, cookies={"preloop_session": old}) as http:
        assert http.get("/console/keys").status_code in (302, 303, 307)
    # Without a session nothing is served but the sign-in page.
    with httpx.Client(base_url=live_hub.url) as http:
        assert http.get("/console/keys").status_code in (302, 303, 307)
        assert http.post("/console/keys", data={"name": "x"}, headers={"Origin": live_hub.url}).status_code == 401
        # A bearer key is not a console session.
        assert http.get("/console/keys", headers=auth(org.admin_token)).status_code in (302, 303, 307)


CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'")


def test_console_works_under_a_csp_without_unsafe_inline(live_hub: LiveHub, org: Org, browser: Any) -> None:
    """The policy hub-sec adds: no inline script, handler or style may be needed for any feature."""
    context = browser.new_context()

    def with_csp(route: Any) -> None:
        answer = route.fetch()
        route.fulfill(response=answer, headers={**answer.headers, "content-security-policy": CSP})

    context.route(re.compile(r"/console(/(?!static/)|$)"), with_csp)
    page = context.new_page()
    refused: list[str] = []
    page.on("console", lambda message: refused.append(message.text) if "Content Security Policy" in message.text
            else None)
    page.goto(f"{live_hub.url}/console/login")
    page.fill("#email", "alice@acme.test")
    page.fill("#password", "pw-alice")
    page.click("button[type=submit]")
    page.wait_for_selector("body[data-live=on]")
    page.wait_for_selector("#bell-count[data-count='0']")
    hold(live_hub.url, org, "drop_table", {"table": "csp"})
    page.wait_for_selector("#bell-count[data-count='1']", timeout=10_000)
    page.goto(f"{live_hub.url}/console/policies")
    page.locator("#source").fill("version: 1\ntools: 3\n")
    page.wait_for_selector("#issues li.issue")
    assert refused == []


def test_an_expired_session_goes_back_to_sign_in_even_mid_edit(live_hub: LiveHub, org: Org, browser: Any) -> None:
    from datetime import UTC, datetime, timedelta

    from backend.accounts.tables import UserSession

    page = sign_in(browser, live_hub.url, "admin@acme.test", "admin-password")
    page.goto(f"{live_hub.url}/console/policies")
    page.wait_for_selector("body[data-live=on]")
    past = datetime.now(UTC) - timedelta(minutes=1)
    live_hub.call(UserSession.update({UserSession.expires_at: past}, force=True).run())
    # The live check is an htmx request: its 401 carries HX-Redirect, so the browser leaves the page.
    # (The bell's own refresh may get there first; either way an htmx request found the session gone.)
    with contextlib.suppress(PlaywrightError):
        page.locator("#source").fill("version: 1\n", timeout=5_000)
    page.wait_for_url(re.compile(r"/console/login"))
    page.goto(f"{live_hub.url}/console/audit")
    page.wait_for_url(re.compile(r"/console/login\?next=/console/audit"))
