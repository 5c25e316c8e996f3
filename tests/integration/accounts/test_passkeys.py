"""Passkeys: enrol several, sign in with a discoverable credential, list, rename, remove."""

from __future__ import annotations

from typing import Any

from backend.accounts.tables import UserSession, WebAuthnCredential
from backend.audit.tables import AuditEvent
from tests.helpers import auth
from tests.integration.accounts.passkey_support import enrol, session
from tests.soft_authenticator import SoftAuthenticator


async def test_enrol_sign_in_rename_and_remove(client: Any, org: Any) -> None:
    async with session(client.hub, "alice@acme.test", "pw-alice") as alice:
        laptop = await enrol(alice, "laptop")
        phone = await enrol(alice, "phone")
        listed = (await alice.get("/api/v1/webauthn/credentials")).json()
        assert [p["name"] for p in listed] == ["laptop", "phone"]
        assert all(p["last_used_at"] is None for p in listed)
        renamed = await alice.patch(f"/api/v1/webauthn/credentials/{listed[1]['id']}", json={"name": "pixel"})
        assert renamed.status_code == 200 and renamed.json()["name"] == "pixel"
        bad_name = await alice.patch(f"/api/v1/webauthn/credentials/{listed[1]['id']}", json={"name": "a\x00b"})
        assert bad_name.status_code == 400 and bad_name.json()["error"]["detail"]["field"] == "name"

    # A browser with no session signs in with the discoverable credential alone.
    async with session(client.hub) as browser:
        options = (await browser.post("/api/v1/webauthn/authenticate/options")).json()["public_key"]
        assert options["userVerification"] == "required"
        assert options.get("allowCredentials", []) == []
        assertion = laptop.get(options)
        signed = await browser.post("/api/v1/webauthn/authenticate/verify", json={"credential": assertion})
        assert signed.status_code == 200, signed.text
        assert signed.json() == {"email": "alice@acme.test", "role": "approver", "method": "passkey"}
        assert (await browser.get("/api/v1/webauthn/credentials")).status_code == 200
        # The same assertion again: its challenge was used up.
        again = await browser.post("/api/v1/webauthn/authenticate/verify", json={"credential": assertion})
        assert again.status_code == 401 and again.json()["error"]["code"] == "challenge_expired"
    assert await UserSession.count().where(UserSession.passkey_verified_at.is_not_null()) == 1
    row = await WebAuthnCredential.select().where(WebAuthnCredential.credential_id == laptop.id).first()
    assert row is not None and row["sign_count"] == 1 and row["last_used_at"] is not None

    # A cloned authenticator (sign count not moving forward) is refused.
    async with session(client.hub) as browser:
        laptop.sign_count = 0
        options = (await browser.post("/api/v1/webauthn/authenticate/options")).json()["public_key"]
        cloned = await browser.post("/api/v1/webauthn/authenticate/verify", json={"credential": laptop.get(options)})
        assert cloned.status_code == 401 and cloned.json()["error"]["code"] == "passkey_invalid"

    async with session(client.hub, "alice@acme.test", "pw-alice") as alice:
        gone = await alice.delete(f"/api/v1/webauthn/credentials/{listed[1]['id']}")
        assert gone.status_code == 204
        assert [p["name"] for p in (await alice.get("/api/v1/webauthn/credentials")).json()] == ["laptop"]
    async with session(client.hub) as browser:
        options = (await browser.post("/api/v1/webauthn/authenticate/options")).json()["public_key"]
        removed = await browser.post("/api/v1/webauthn/authenticate/verify", json={"credential": phone.get(options)})
        assert removed.status_code == 401 and removed.json()["error"]["code"] == "passkey_unknown"
    kinds = [r["kind"] for r in await AuditEvent.select(AuditEvent.kind).where(AuditEvent.kind.like("passkey.%"))]
    assert sorted(kinds) == ["passkey.added", "passkey.added", "passkey.removed", "passkey.renamed"]


async def test_enrolment_needs_user_verification_a_session_and_a_fresh_challenge(client: Any, org: Any) -> None:
    async with session(client.hub, "bob@acme.test", "pw-bob") as bob:
        no_uv = SoftAuthenticator(user_verified=False)
        options = (await bob.post("/api/v1/webauthn/register/options")).json()["public_key"]
        assert options["authenticatorSelection"]["userVerification"] == "required"
        assert options["authenticatorSelection"]["residentKey"] == "required"
        refused = await bob.post("/api/v1/webauthn/register/verify", json={"credential": no_uv.create(options)})
        assert refused.status_code == 422 and refused.json()["error"]["code"] == "passkey_invalid"
        # The challenge was spent by the refused attempt: a good authenticator must start again.
        good = SoftAuthenticator()
        stale = await bob.post("/api/v1/webauthn/register/verify", json={"credential": good.create(options)})
        assert stale.status_code == 422 and stale.json()["error"]["code"] == "challenge_expired"
        # Another origin (a phishing page) is refused.
        options = (await bob.post("/api/v1/webauthn/register/options")).json()["public_key"]
        phish = good.create(options, origin="http://evil.test")
        wrong = await bob.post("/api/v1/webauthn/register/verify", json={"credential": phish})
        assert wrong.status_code == 422 and wrong.json()["error"]["code"] == "passkey_invalid"
        malformed = await bob.post("/api/v1/webauthn/register/verify", json={"credential": {"response": {}}})
        assert malformed.status_code == 422 and malformed.json()["error"]["code"] == "passkey_malformed"
    # An API key cannot enrol a passkey for its user.
    by_key = await client.post("/api/v1/webauthn/register/options", headers=auth(org.approver_tokens["bob"]))
    assert by_key.status_code == 403 and by_key.json()["error"]["code"] == "session_required"
    assert await WebAuthnCredential.count() == 0


async def test_rp_id_and_origin_come_from_the_public_url(client: Any, org: Any, settings: Any) -> None:
    from dataclasses import replace

    hub = client.hub
    original = hub.settings
    hub.settings = replace(original, server=replace(original.server, public_url="https://approvals.example.com"))
    try:
        # The request reaches the hub under an internal name; the public URL is what counts.
        async with session(hub, "alice@acme.test", "pw-alice", base_url="https://hub.internal") as alice:
            options = (await alice.post("/api/v1/webauthn/register/options")).json()["public_key"]
            assert options["rp"]["id"] == "approvals.example.com"
            authenticator = SoftAuthenticator(origin="https://approvals.example.com")
            created = authenticator.create(options)
            ok = await alice.post("/api/v1/webauthn/register/verify", json={"credential": created})
            assert ok.status_code == 201, ok.text
    finally:
        hub.settings = original
