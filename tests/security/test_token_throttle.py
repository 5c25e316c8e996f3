"""Every token-checking endpoint shares the sign-in throttle: a flood of bad invite tokens, email
links, passkey assertions, TOTP codes or agent keys from one address answers 429 + Retry-After,
and then even a good token from that address waits. SQLite and PostgreSQL."""

from __future__ import annotations

import dataclasses
from typing import Any

import pyotp
import pytest

from backend.accounts import service as accounts
from backend.accounts import totp
from backend.settings import Settings
from tests.helpers import auth
from tests.security.support import clean_counters  # noqa: F401 - autouse: failure counters cleared per test

LIMIT = 6  # failures per address in these tests


@pytest.fixture
def settings(settings: Settings) -> Settings:
    security = dataclasses.replace(settings.security, login_max_failures=3, address_max_failures=LIMIT)
    return dataclasses.replace(settings, security=security)


def assert_throttled(response: Any) -> None:
    assert response.status_code == 429, response.text
    assert 0 < int(response.headers["retry-after"]) <= 900


async def test_bad_invite_tokens_are_throttled_and_then_a_good_one_waits(client: Any, org: Any) -> None:
    await accounts.add_user(org.id, "newbie@acme.test", role="viewer")
    link = await client.post("/api/v1/users/newbie@acme.test/invite", json={}, headers=auth(org.admin_token))
    good = link.json()["link"].rpartition("#invite=")[2]
    for n in range(LIMIT):
        bad = await client.post("/api/v1/auth/invite", json={"token": f"guess-{n}", "password": "a-long-password"})
        assert bad.status_code == 401, bad.text
    flooded = await client.post("/api/v1/auth/invite", json={"token": "guess-x", "password": "a-long-password"})
    assert_throttled(flooded)
    assert flooded.json()["error"]["code"] == "rate_limited"
    waiting = await client.post("/api/v1/auth/invite", json={"token": good, "password": "a-long-password"})
    assert_throttled(waiting)


async def test_bad_email_links_are_throttled_on_the_page_and_the_vote(client: Any, org: Any) -> None:
    for n in range(LIMIT // 2):
        page = await client.get(f"/email/v/not-a-link-{n}")
        assert page.status_code == 404, page.text
        vote = await client.post(f"/email/v/not-a-link-{n}", data={"reason": ""})
        assert vote.status_code == 404, vote.text
    page = await client.get("/email/v/not-a-link-x")
    assert_throttled(page)
    assert page.headers["content-type"].startswith("text/html")
    assert_throttled(await client.post("/email/v/not-a-link-y", data={"reason": ""}))


async def test_bad_passkey_assertions_are_throttled(client: Any, org: Any) -> None:
    for _ in range(LIMIT):
        bad = await client.post("/api/v1/webauthn/authenticate/verify", json={"credential": {"id": "forged"}})
        assert 400 <= bad.status_code < 500 and bad.status_code != 429, bad.text
    assert_throttled(await client.post("/api/v1/webauthn/authenticate/verify", json={"credential": {"id": "f"}}))


async def test_wrong_totp_codes_at_login_lock_the_account(client: Any, org: Any) -> None:
    login = await client.post("/api/v1/auth/login", json={"email": "alice@acme.test", "password": "pw-alice"})
    principal = await accounts.principal_for_session(str(login.cookies["preloop_session"]))
    client.cookies.clear()
    secret = (await totp.begin(principal))["secret"]
    await totp.confirm(principal, pyotp.TOTP(secret).now())
    body = {"email": "alice@acme.test", "password": "pw-alice"}
    for code in ("000000", "111111", "222222"):
        wrong = await client.post("/api/v1/auth/login", json={**body, "totp_code": code})
        assert wrong.status_code == 401, wrong.text
    # The right password and a current code now wait too: the account is locked.
    assert_throttled(await client.post("/api/v1/auth/login", json={**body, "totp_code": pyotp.TOTP(secret).now()}))


async def test_bad_agent_keys_on_agents_me_are_throttled(client: Any, org: Any) -> None:
    for n in range(LIMIT - 1):  # a wrong key is counted, then the count is read: the sixth is refused
        bad = await client.get("/api/v1/agents/me", headers=auth(f"pl_deadbeef_guess{n}"))
        assert bad.status_code == 401, bad.text
    assert_throttled(await client.get("/api/v1/agents/me", headers=auth("pl_deadbeef_guessx")))
    # A valid agent key is never slowed: the counter is read only after a failure.
    assert (await client.get("/api/v1/agents/me", headers=auth(org.agent_token))).status_code == 200
