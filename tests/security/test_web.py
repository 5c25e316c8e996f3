"""Web security: headers on every response, cookies only from the hub's own pages, throttled
credentials (429 + Retry-After), scrypt off the event loop and for unknown emails too, and a
secret key generated 0600 on first start. SQLite and PostgreSQL."""

from __future__ import annotations

import dataclasses
import stat
import threading
from typing import Any

import pytest

from backend.accounts import service as accounts
from backend.settings import Settings, load_settings
from tests.helpers import auth
from tests.security.support import clean_counters  # noqa: F401 - autouse: failure counters cleared per test

ORIGIN = "http://hub.test"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Low limits so the tests reach them: 3 wrong passwords per account, 6 failures per address."""
    security = dataclasses.replace(settings.security, login_max_failures=3, address_max_failures=6)
    return dataclasses.replace(settings, security=security)


async def _session(client: Any, email: str, password: str) -> str:
    response = await client.post("/api/v1/auth/login", json={"email": email, "password": password})
    assert response.status_code == 201, response.text
    token = str(response.cookies["preloop_session"])
    client.cookies.clear()
    return token


async def test_every_response_carries_the_security_headers(client: Any, org: Any) -> None:
    responses = [
        await client.get("/app/"),  # the approver app's HTML
        await client.get("/health"),
        await client.get("/api/v1/me"),  # 401
        await client.get("/api/v1/nowhere"),  # 404
        await client.post("/api/v1/auth/login", content="{", headers={"content-type": "application/json"}),  # 400
        await client.get("/api/v1/approvals", headers=auth(org.admin_token)),
    ]
    for response in responses:
        headers = response.headers
        csp = headers["content-security-policy"]
        directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
        assert directives["script-src"] == "'self'", (response.url, csp)
        assert directives["frame-ancestors"] == "'none'"
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["referrer-policy"] == "same-origin"
    schema = await client.get("/schema")
    csp = schema.headers["content-security-policy"]
    script_src = next(d for d in csp.split(";") if d.strip().startswith("script-src"))
    assert "unsafe-inline" not in script_src and "frame-ancestors 'none'" in csp


async def test_a_cross_site_request_cannot_ride_the_admin_cookie(client: Any, org: Any) -> None:
    cookie = {"Cookie": f"preloop_session={await _session(client, 'admin@acme.test', 'admin-password')}"}
    body = {"email": "mallory@acme.test", "role": "admin"}
    for extra in ({"Origin": "https://evil.test"}, {}, {"Referer": "https://evil.test/page"}, {"Origin": "null"},
                  {"Sec-Fetch-Site": "cross-site"}, {"Sec-Fetch-Site": "same-site", "Origin": "https://sub.evil.test"}):
        refused = await client.post("/api/v1/users", json=body, headers={**cookie, **extra})
        assert refused.status_code == 403, (extra, refused.text)
        assert refused.json()["error"]["code"] == "csrf_failed"
    # A classic HTML form (form-encoded or text/plain) is refused too, whatever its origin claims.
    form = await client.post("/api/v1/users", data=body, headers={**cookie, "Origin": ORIGIN})
    assert form.status_code == 415
    users = [u["email"] for u in (await client.get("/api/v1/users", headers=auth(org.admin_token))).json()]
    assert "mallory@acme.test" not in users
    # The hub's own pages (same Origin or Referer) and API keys (no cookie) are unaffected.
    same = await client.post("/api/v1/users", json=body, headers={**cookie, "Origin": ORIGIN})
    assert same.status_code == 201, same.text
    referer = await client.post(
        "/api/v1/teams", json={"name": "t1"}, headers={**cookie, "Referer": f"{ORIGIN}/app/"}
    )
    assert referer.status_code == 201
    # A browser's own fetch metadata (a service worker's fetch may carry no Origin) counts as same-origin.
    metadata = {**cookie, "Sec-Fetch-Site": "same-origin"}
    fetched = await client.post("/api/v1/teams", json={"name": "t0"}, headers=metadata)
    assert fetched.status_code == 201, fetched.text
    # Signing in again while holding an old cookie is not a cookie-authenticated change.
    again = await client.post(
        "/api/v1/auth/login", json={"email": "admin@acme.test", "password": "admin-password"}, headers=cookie
    )
    assert again.status_code == 201
    client.cookies.clear()
    assert (await client.post("/api/v1/teams", json={"name": "t2"}, headers=auth(org.admin_token))).status_code == 201


async def test_a_body_less_cross_site_vote_is_refused(client: Any, org: Any) -> None:
    from tests.integration.approvals.support import apply_policy, create

    await apply_policy(client, org)
    request = await create(client, org, "deploy")
    cookie = {"Cookie": f"preloop_session={await _session(client, 'alice@acme.test', 'pw-alice')}"}
    forged = await client.post(f"/api/v1/approvals/{request['id']}/approve", headers={**cookie, "Origin": "https://evil.test"})
    assert forged.status_code == 403
    assert (await client.get(f"/api/v1/approvals/{request['id']}", headers=auth(org.admin_token))).json()["votes"] == []


async def test_logins_lock_out_per_account_and_per_address(client: Any, org: Any) -> None:
    for _ in range(3):
        wrong = await client.post("/api/v1/auth/login", json={"email": "alice@acme.test", "password": "nope"})
        assert wrong.status_code == 401
    locked = await client.post("/api/v1/auth/login", json={"email": "alice@acme.test", "password": "pw-alice"})
    assert locked.status_code == 429, locked.text
    assert locked.json()["error"]["code"] == "rate_limited"
    assert 0 < int(locked.headers["retry-after"]) <= 900
    # Another account from the same address still signs in: the lockout is per account.
    await _session(client, "bob@acme.test", "pw-bob")
    # Unknown emails and wrong API keys count against the address: 3 more failures reach its limit of 6.
    unknown = await client.post("/api/v1/auth/login", json={"email": "nobody@acme.test", "password": "x"})
    assert unknown.status_code == 401
    assert (await client.get("/api/v1/me", headers=auth("pl_deadbeef_wrong"))).status_code == 401
    over = await client.get("/api/v1/me", headers=auth("pl_deadbeef_wrong2"))
    assert over.status_code == 429
    assert int(over.headers["retry-after"]) > 0
    refused = await client.post("/api/v1/auth/login", json={"email": "bob@acme.test", "password": "pw-bob"})
    assert refused.status_code == 429
    # Valid keys are not slowed or refused: the address counter is read only after a failure.
    assert (await client.get("/api/v1/me", headers=auth(org.admin_token))).status_code == 200


async def test_passwords_are_checked_in_a_thread_and_for_unknown_emails_too(
    client: Any, org: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[str, bool]] = []
    original = accounts.check_password
    loop_thread = threading.get_ident()

    def spy(password: str, stored: str | None) -> bool:
        calls.append((password, threading.get_ident() != loop_thread))
        return original(password, stored)

    monkeypatch.setattr(accounts, "check_password", spy)
    unknown = await client.post("/api/v1/auth/login", json={"email": "ghost@acme.test", "password": "guess"})
    wrong = await client.post("/api/v1/auth/login", json={"email": "alice@acme.test", "password": "guess"})
    assert unknown.status_code == wrong.status_code == 401
    assert unknown.json() == wrong.json()
    # One scrypt check each, both off the event loop's thread.
    assert calls == [("guess", True), ("guess", True)]


async def test_the_secret_key_is_generated_and_stored_0600_on_first_start(
    database_url: str, redis_url: str, tmp_path: Any
) -> None:
    from backend.hub import Hub

    env = {"PRELOOP_DATABASE_URL": database_url, "PRELOOP_REDIS_URL": redis_url,
           "PRELOOP_DATA_DIR": str(tmp_path / "data"), "PRELOOP_DEMO": "false"}
    hub = Hub(load_settings(env))
    await hub.start()
    await hub.stop()
    key_file = tmp_path / "data" / "secret_key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    first = key_file.read_text()
    assert len(first) >= 48
    again = Hub(load_settings(env))
    await again.start()
    await again.stop()
    assert key_file.read_text() == first  # kept, not regenerated


async def test_console_email_link_pages_and_metrics_carry_the_security_headers(client: Any, org: Any) -> None:
    responses = [
        await client.get("/console/", follow_redirects=True),  # the console (its sign-in page)
        await client.get("/email/v/not-a-link"),  # an email-link page (404 page)
        await client.post("/email/v/not-a-link", data={"reason": ""}),
        await client.get("/metrics"),
    ]
    for response in responses:
        headers = response.headers
        csp = headers["content-security-policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp, (response.url, csp)
        assert "unsafe-inline" not in csp.split("script-src", 1)[1].split(";", 1)[0]
        assert headers["x-content-type-options"] == "nosniff", response.url
        assert headers["x-frame-options"] == "DENY", response.url
        # email-link pages send no referrer at all (the token is in their URL); the rest same-origin
        assert headers["referrer-policy"] in {"same-origin", "no-referrer"}, response.url
