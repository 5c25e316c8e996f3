"""TOTP (RFC 6238) as a second factor at password login, with one-time recovery codes."""

from __future__ import annotations

import hashlib
import hmac
import io
import re
import secrets
import time
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pyotp
import segno

from backend.accounts.tables import RecoveryCode, TotpFactor
from backend.audit.service import Actor, record
from backend.errors import Conflict, NotAuthenticated, ValidationFailed

if TYPE_CHECKING:
    from backend.accounts.service import Principal

STEP_SECONDS = 30
WINDOW = 1  # accept the previous and the next step too: clocks drift
RECOVERY_CODES = 10
CODE_RE = re.compile(r"^\d{6}$")


def now() -> datetime:
    return datetime.now(UTC)


def _hash(code: str) -> str:
    return hashlib.sha256(code.strip().lower().replace("-", "").encode()).hexdigest()


def _otpauth_uri(secret: str, email: str, issuer: str) -> str:
    return pyotp.TOTP(secret).provisioning_uri(name=email, issuer_name=issuer)


def qr_svg(text: str) -> str:
    """The QR code as an inline SVG, drawn here: the page needs no script or outside service."""
    out = io.BytesIO()
    segno.make(text, error="m").save(out, kind="svg", scale=4, border=2, xmldecl=False, svgns=True)
    return out.getvalue().decode()


async def factor(user_id: uuid.UUID | str) -> dict[str, Any] | None:
    return await TotpFactor.select().where(TotpFactor.user == user_id).first()


async def enrolled(user_id: uuid.UUID | str) -> bool:
    row = await factor(user_id)
    return row is not None and row["confirmed_at"] is not None


async def begin(principal: Principal, issuer: str = "Preloop") -> dict[str, Any]:
    """A new secret (not active until confirmed with a code): the otpauth URI and its QR code."""
    existing = await factor(principal.user_id)
    if existing is not None and existing["confirmed_at"] is not None:
        raise Conflict(
            "TOTP is already on for you", code="totp_enrolled",
            detail={"hint": "turn it off first: DELETE /api/v1/totp with a current code"},
        )
    secret = pyotp.random_base32()
    if existing is None:
        await TotpFactor(user=principal.user_id, secret=secret, created_at=now()).save()
    else:
        await TotpFactor.update({TotpFactor.secret: secret, TotpFactor.created_at: now()}).where(
            TotpFactor.id == existing["id"]
        )
    uri = _otpauth_uri(secret, principal.email, issuer)
    return {"secret": secret, "otpauth_uri": uri, "qr_svg": qr_svg(uri)}


def _matching_step(secret: str, code: str, at: float | None = None) -> int | None:
    if not CODE_RE.match(code):
        return None
    totp = pyotp.TOTP(secret)
    current = int((at if at is not None else time.time()) // STEP_SECONDS)
    for step in range(current - WINDOW, current + WINDOW + 1):
        if hmac.compare_digest(totp.generate_otp(step), code):
            return step
    return None


async def _use_step(row: dict[str, Any], step: int) -> bool:
    """Record the step as used; False if it (or a later one) already was: a code works once."""
    moved = await TotpFactor.update({TotpFactor.last_step: step}).where(
        (TotpFactor.id == row["id"]) & (TotpFactor.last_step < step)
    ).returning(TotpFactor.id)
    return bool(moved)


async def confirm(principal: Principal, code: str) -> list[str]:
    """Turn TOTP on with a first valid code; return the recovery codes (shown once, stored hashed)."""
    row = await factor(principal.user_id)
    if row is None:
        raise ValidationFailed("start TOTP enrolment first", code="totp_not_started",
                               detail={"hint": "POST /api/v1/totp/enrol"})
    if row["confirmed_at"] is not None:
        raise Conflict("TOTP is already on for you", code="totp_enrolled")
    step = _matching_step(row["secret"], code.strip())
    if step is None or not await _use_step(row, step):
        raise ValidationFailed("that code is not valid now; check the device's clock and try the next one",
                               code="totp_invalid", detail={"field": "code"})
    await TotpFactor.update({TotpFactor.confirmed_at: now()}).where(TotpFactor.id == row["id"])
    codes = [f"{secrets.token_hex(4)}-{secrets.token_hex(4)}" for _ in range(RECOVERY_CODES)]
    await RecoveryCode.delete().where(RecoveryCode.user == principal.user_id)
    await RecoveryCode.insert(
        *[RecoveryCode(user=principal.user_id, code_hash=_hash(c), created_at=now()) for c in codes]
    )
    await record(principal.org_id, "totp.enabled", principal.actor, subject_type="user", subject_id=principal.user_id)
    return codes


async def check(user: dict[str, Any], code: str | None) -> str:
    """At login of a user with TOTP on: accept a current code once, or an unused recovery code.

    Returns how ("totp" or "recovery_code"); raises NotAuthenticated otherwise.
    """
    row = await factor(user["id"])
    assert row is not None
    code = (code or "").strip()
    if not code:
        raise NotAuthenticated(
            "this account has a second factor: send the 6-digit code from your authenticator app",
            code="totp_required", detail={"field": "totp_code"},
        )
    step = _matching_step(row["secret"], code)
    if step is not None and await _use_step(row, step):
        return "totp"
    used = await RecoveryCode.update({RecoveryCode.used_at: now()}).where(
        (RecoveryCode.user == user["id"]) & (RecoveryCode.code_hash == _hash(code)) & (RecoveryCode.used_at.is_null())
    ).returning(RecoveryCode.id)
    if used:
        return "recovery_code"
    actor = Actor("user", str(user["id"]), str(user.get("email", "")))
    await record(user["org"], "session.totp_refused", actor, subject_type="user", subject_id=user["id"],
                 data={"why": "wrong, expired or already used code"})
    raise NotAuthenticated("the code is wrong, expired or already used", code="totp_invalid",
                           detail={"field": "totp_code"})


async def disable(principal: Principal, code: str) -> None:
    row = await factor(principal.user_id)
    if row is None or row["confirmed_at"] is None:
        raise ValidationFailed("TOTP is not on for you", code="totp_not_enrolled")
    await check({"id": principal.user_id, "org": principal.org_id, "email": principal.email}, code)
    await RecoveryCode.delete().where(RecoveryCode.user == principal.user_id)
    await TotpFactor.delete().where(TotpFactor.id == row["id"])
    await record(principal.org_id, "totp.disabled", principal.actor, subject_type="user", subject_id=principal.user_id)


async def status(principal: Principal) -> dict[str, Any]:
    row = await factor(principal.user_id)
    left = await RecoveryCode.count().where(
        (RecoveryCode.user == principal.user_id) & (RecoveryCode.used_at.is_null())
    )
    return {"enrolled": bool(row and row["confirmed_at"]), "recovery_codes_left": left}
