"""Request and response shapes of the passkey (WebAuthn) and TOTP endpoints."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec


class RegisterBody(msgspec.Struct, forbid_unknown_fields=True):
    """The browser's PublicKeyCredential from navigator.credentials.create(), as JSON."""

    credential: dict[str, Any]
    name: Annotated[str, msgspec.Meta(max_length=200)] = "Passkey"


class AuthenticateBody(msgspec.Struct, forbid_unknown_fields=True):
    """The browser's PublicKeyCredential from navigator.credentials.get(), as JSON."""

    credential: dict[str, Any]


class RenameBody(msgspec.Struct, forbid_unknown_fields=True):
    name: Annotated[str, msgspec.Meta(max_length=200)]


class StepUpBody(msgspec.Struct, forbid_unknown_fields=True):
    decision: Literal["approve", "decline"]


class BatchStepUpBody(msgspec.Struct, forbid_unknown_fields=True):
    ids: list[str]
    decision: Literal["approve", "decline"]


class Options(msgspec.Struct):
    """WebAuthn options for navigator.credentials.create/get (base64url for binary fields)."""

    public_key: dict[str, Any]


class StepUpRequest(msgspec.Struct):
    id: str
    arguments_hash: str


class StepUpOptions(msgspec.Struct):
    """A step-up challenge = SHA-256 of {purpose, decision, requests (id, arguments hash), nonce}."""

    public_key: dict[str, Any]
    decision: str
    requests: list[StepUpRequest]
    nonce: str
    expires_in: int


class Passkey(msgspec.Struct):
    id: str
    name: str
    credential_id: str
    created_at: str | None
    last_used_at: str | None


class SignedIn(msgspec.Struct):
    email: str
    role: str
    method: str


class TotpCodeBody(msgspec.Struct, forbid_unknown_fields=True):
    code: str


class TotpEnrolment(msgspec.Struct):
    """Scan `qr_svg` (or type `secret`) into an authenticator app, then confirm with a code."""

    secret: str
    otpauth_uri: str
    qr_svg: str


class RecoveryCodes(msgspec.Struct):
    """Shown once; each works once in place of a TOTP code."""

    recovery_codes: list[str]


class TotpStatus(msgspec.Struct):
    enrolled: bool
    recovery_codes_left: int
