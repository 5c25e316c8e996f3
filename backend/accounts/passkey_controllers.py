"""REST for passkeys (enrol, sign in, list, rename, remove) and the TOTP second factor."""

from __future__ import annotations

import msgspec
from litestar import Controller, Request, Response, delete, get, patch, post
from redis.asyncio import Redis

from backend.accounts import passkeys, totp
from backend.accounts.passkey_schemas import (
    AuthenticateBody,
    Options,
    Passkey,
    RecoveryCodes,
    RegisterBody,
    RenameBody,
    SignedIn,
    TotpCodeBody,
    TotpEnrolment,
    TotpStatus,
)
from backend.accounts.service import Principal
from backend.deps import people_guard, session_cookie, token_attempt
from backend.hub import Hub


def relying_party(hub: Hub, request: Request) -> passkeys.RelyingParty:  # type: ignore[type-arg]
    return passkeys.RelyingParty.for_origin(hub.settings.server.web_origin(str(request.base_url)))


def redis_of(hub: Hub) -> Redis:
    assert hub.redis is not None
    return hub.redis.client


class WebAuthnController(Controller):
    path = "/api/v1/webauthn"
    tags = ["passkeys"]

    @post("/register/options", operation_id="passkey_register_options", status_code=200,
          summary="Options for navigator.credentials.create(): a resident key, user verification required")
    async def register_options(self, request: Request, principal: Principal, hub: Hub) -> Options:  # type: ignore[type-arg]
        return Options(await passkeys.registration_options(redis_of(hub), principal, relying_party(hub, request)))

    @post("/register/verify", operation_id="passkey_register_verify", status_code=201,
          summary="Keep the new passkey (attestation checked, user verified)")
    async def register_verify(self, data: RegisterBody, principal: Principal, hub: Hub) -> Passkey:
        return msgspec.convert(await passkeys.register(redis_of(hub), principal, data.credential, data.name), Passkey)

    @post("/authenticate/options", operation_id="passkey_sign_in_options", status_code=200, exclude_from_auth=True,
          summary="Options for navigator.credentials.get() with a discoverable credential")
    async def authenticate_options(self, request: Request, hub: Hub) -> Options:  # type: ignore[type-arg]
        return Options(await passkeys.sign_in_options(redis_of(hub), relying_party(hub, request)))

    @post("/authenticate/verify", operation_id="passkey_sign_in", status_code=200, exclude_from_auth=True,
          summary="Sign in with a passkey: starts a session (cookie)")
    async def authenticate_verify(
        self, data: AuthenticateBody, hub: Hub, request: Request  # type: ignore[type-arg]
    ) -> Response[SignedIn]:
        hours = hub.settings.security.session_hours
        async with token_attempt(request):
            token, principal = await passkeys.sign_in(redis_of(hub), data.credential, hours=hours)
        return Response(SignedIn(principal.email, principal.role, "passkey"), cookies=[session_cookie(hub, token)])

    @get("/credentials", operation_id="list_passkeys", guards=[people_guard], summary="My passkeys, with last use")
    async def list_credentials(self, principal: Principal) -> list[Passkey]:
        return msgspec.convert(await passkeys.list_own(principal), list[Passkey])

    @patch("/credentials/{passkey_id:str}", operation_id="rename_passkey")
    async def rename(self, passkey_id: str, data: RenameBody, principal: Principal) -> Passkey:
        return msgspec.convert(await passkeys.rename(principal, passkey_id, data.name), Passkey)

    @delete("/credentials/{passkey_id:str}", operation_id="remove_passkey", status_code=204)
    async def remove(self, passkey_id: str, principal: Principal) -> None:
        await passkeys.remove(principal, passkey_id)


class TotpController(Controller):
    path = "/api/v1/totp"
    tags = ["passkeys"]

    @get("", operation_id="totp_status", guards=[people_guard])
    async def status(self, principal: Principal) -> TotpStatus:
        return msgspec.convert(await totp.status(principal), TotpStatus)

    @post("/enrol", operation_id="totp_enrol", status_code=200,
          summary="A new TOTP secret with its otpauth URI and QR code (SVG); active once confirmed")
    async def enrol(self, principal: Principal) -> TotpEnrolment:
        passkeys.require_session(principal, "turning on TOTP")
        return msgspec.convert(await totp.begin(principal), TotpEnrolment)

    @post("/confirm", operation_id="totp_confirm", status_code=200,
          summary="Turn TOTP on with a first code; returns the recovery codes once")
    async def confirm(self, data: TotpCodeBody, principal: Principal) -> RecoveryCodes:
        passkeys.require_session(principal, "turning on TOTP")
        return RecoveryCodes(await totp.confirm(principal, data.code))

    @post("/disable", operation_id="totp_disable", status_code=204, summary="Turn TOTP off with a current code")
    async def disable(self, data: TotpCodeBody, principal: Principal) -> None:
        passkeys.require_session(principal, "turning off TOTP")
        await totp.disable(principal, data.code)
