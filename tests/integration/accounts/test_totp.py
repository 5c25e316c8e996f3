"""TOTP as the second factor at password login: ±1 step, a used code refused, recovery codes."""

from __future__ import annotations

import time
from typing import Any

import pyotp

from backend.accounts.tables import RecoveryCode, TotpFactor
from backend.audit.tables import AuditEvent
from tests.helpers import auth
from tests.integration.accounts.passkey_support import session


async def _login(http: Any, code: str | None, password: str = "pw-alice") -> Any:
    body: dict[str, Any] = {"email": "alice@acme.test", "password": password}
    if code is not None:
        body["totp_code"] = code
    return await http.post("/api/v1/auth/login", json=body)


async def test_totp_enrolment_and_login(client: Any, org: Any) -> None:
    async with session(client.hub, "alice@acme.test", "pw-alice") as alice:
        started = (await alice.post("/api/v1/totp/enrol")).json()
        assert started["otpauth_uri"].startswith("otpauth://totp/Preloop:alice%40acme.test?secret=")
        assert started["qr_svg"].startswith("<svg") and "<path" in started["qr_svg"]
        totp = pyotp.TOTP(started["secret"])
        t0 = time.time()
        current = {totp.at(t0 + d) for d in (-30, 0, 30)}
        wrong_code = next(c for c in ("000000", "111111", "222222", "333333") if c not in current)
        wrong = await alice.post("/api/v1/totp/confirm", json={"code": wrong_code})
        assert wrong.status_code == 422 and wrong.json()["error"]["code"] == "totp_invalid"
        confirmed = await alice.post("/api/v1/totp/confirm", json={"code": totp.at(t0 - 30)})
        assert confirmed.status_code == 200, confirmed.text
        codes = confirmed.json()["recovery_codes"]
        assert len(codes) == 10 and len(set(codes)) == 10
    # Stored hashed, never in the clear.
    stored = {r["code_hash"] for r in await RecoveryCode.select(RecoveryCode.code_hash)}
    assert not stored & set(codes)

    async with session(client.hub) as browser:
        missing = await _login(browser, None)
        assert missing.status_code == 401 and missing.json()["error"]["code"] == "totp_required"
        bad_password = await _login(browser, totp.at(t0), password="nope")
        assert bad_password.status_code == 401 and bad_password.json()["error"]["code"] == "not_authenticated"
        too_far = await _login(browser, totp.at(t0 + 90))
        assert too_far.status_code == 401 and too_far.json()["error"]["code"] == "totp_invalid"
        ok = await _login(browser, totp.at(t0))
        assert ok.status_code in (200, 201), ok.text
        replay = await _login(browser, totp.at(t0))
        assert replay.status_code == 401 and replay.json()["error"]["code"] == "totp_invalid"
        next_step = await _login(browser, totp.at(t0 + 30))  # one step of clock drift is accepted
        assert next_step.status_code in (200, 201), next_step.text
        recovery = await _login(browser, codes[0].upper())
        assert recovery.status_code in (200, 201), recovery.text
        reused = await _login(browser, codes[0])
        assert reused.status_code == 401
        status = (await browser.get("/api/v1/totp")).json()
        assert status == {"enrolled": True, "recovery_codes_left": 9}
        again = await browser.post("/api/v1/totp/enrol")
        assert again.status_code == 409 and again.json()["error"]["code"] == "totp_enrolled"
        off = await browser.post("/api/v1/totp/disable", json={"code": codes[1]})
        assert off.status_code == 204
    assert await TotpFactor.count() == 0
    refused = await AuditEvent.count().where(AuditEvent.kind == "session.totp_refused")
    assert refused == 3  # the code too far ahead, the replayed code, the reused recovery code
    async with session(client.hub) as browser:
        assert (await _login(browser, None)).status_code in (200, 201)
    # People without TOTP log in as before; an API key cannot turn it on.
    async with session(client.hub, "bob@acme.test", "pw-bob"):
        pass
    by_key = await client.post("/api/v1/totp/enrol", headers=auth(org.approver_tokens["bob"]))
    assert by_key.status_code == 403 and by_key.json()["error"]["code"] == "session_required"
