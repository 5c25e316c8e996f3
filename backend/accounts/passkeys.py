"""Passkeys (WebAuthn): enrolment, sign-in, and step-up confirmations bound to the exact call."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from redis.asyncio import Redis
from webauthn import (
    generate_authentication_options,
    generate_registration_options,
    options_to_json,
    verify_authentication_response,
    verify_registration_response,
)
from webauthn.helpers.exceptions import InvalidAuthenticationResponse, InvalidRegistrationResponse, WebAuthnException
from webauthn.helpers.structs import (
    AuthenticatorSelectionCriteria,
    PublicKeyCredentialDescriptor,
    ResidentKeyRequirement,
    UserVerificationRequirement,
)

from backend.accounts.service import Principal, open_session
from backend.accounts.tables import User, WebAuthnCredential
from backend.audit.service import Actor, record
from backend.errors import Forbidden, NotAuthenticated, NotFound, ValidationFailed

# Sign-in and enrolment ceremonies get five minutes; a step-up confirms one decision now.
CEREMONY_SECONDS = 300
STEP_UP_SECONDS = 120
NAME_RE = re.compile(r"^[^\x00-\x1f\x7f]{1,100}$")
STEP_UP_PURPOSE = "preloop.step-up/v1"


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class RelyingParty:
    """Whom passkeys are bound to: the hub's web origin and its host name (the RP id)."""

    origin: str
    name: str = "Preloop"

    @property
    def id(self) -> str:
        return urlsplit(self.origin).hostname or ""

    @classmethod
    def for_origin(cls, origin: str) -> RelyingParty:
        return cls(origin=origin.rstrip("/"))


# --- the challenge a step-up signs (pure: the offline verifier recomputes it) -----------------


def step_up_statement(requests: list[tuple[str, str]], decision: str, nonce: str) -> bytes:
    """Canonical bytes naming the requests (id, arguments hash), the decision and a server nonce."""
    body = {
        "purpose": STEP_UP_PURPOSE,
        "decision": decision,
        "requests": sorted([str(rid), str(digest)] for rid, digest in requests),
        "nonce": nonce,
    }
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def step_up_challenge(requests: list[tuple[str, str]], decision: str, nonce: str) -> bytes:
    """The WebAuthn challenge of a step-up: SHA-256 of the statement, so a signature covers it."""
    return hashlib.sha256(step_up_statement(requests, decision, nonce)).digest()


# --- challenges kept server-side, single use, short-lived --------------------------------------


def _key(kind: str, challenge: str) -> str:
    return f"preloop:webauthn:{kind}:{challenge}"


async def _remember(redis: Redis, kind: str, challenge: bytes, payload: dict[str, Any], seconds: int) -> None:
    await redis.set(_key(kind, b64url(challenge)), json.dumps(payload), ex=seconds)


async def _take(redis: Redis, kind: str, challenge: str) -> dict[str, Any] | None:
    """Remove and return the pending ceremony; a second presentation finds nothing."""
    raw = await redis.getdel(_key(kind, challenge))
    return json.loads(raw) if raw else None


def client_challenge(credential: dict[str, Any]) -> str:
    """The challenge the browser signed, read from clientDataJSON (base64url text)."""
    try:
        client_data = json.loads(unb64url(credential["response"]["clientDataJSON"]))
        challenge = client_data["challenge"]
    except (KeyError, TypeError, ValueError) as exc:
        raise ValidationFailed(
            "the passkey response is malformed: response.clientDataJSON must be base64url JSON with a challenge",
            code="passkey_malformed",
            detail={"field": "response.clientDataJSON", "hint": "send the PublicKeyCredential as JSON"},
        ) from exc
    if not isinstance(challenge, str) or not challenge:
        raise ValidationFailed("the passkey response has no challenge", code="passkey_malformed")
    return challenge


def _descriptor(credential_id: str) -> PublicKeyCredentialDescriptor:
    return PublicKeyCredentialDescriptor(id=unb64url(credential_id))


def _options_json(options: Any) -> dict[str, Any]:
    return json.loads(options_to_json(options))  # type: ignore[no-any-return]


def require_session(principal: Principal, what: str) -> None:
    if principal.via != "session":
        raise Forbidden(
            f"{what} needs a signed-in session in the Preloop app, not an API key",
            code="session_required",
            detail={"hint": "sign in at /app/ and use Settings"},
        )


# --- enrolment ---------------------------------------------------------------------------------


async def registration_options(redis: Redis, principal: Principal, rp: RelyingParty) -> dict[str, Any]:
    require_session(principal, "adding a passkey")
    existing = await WebAuthnCredential.select(WebAuthnCredential.credential_id).where(
        WebAuthnCredential.user == principal.user_id
    )
    challenge = secrets.token_bytes(32)
    options = generate_registration_options(
        rp_id=rp.id,
        rp_name=rp.name,
        user_id=principal.user_id.bytes,
        user_name=principal.email,
        user_display_name=principal.email,
        challenge=challenge,
        timeout=CEREMONY_SECONDS * 1000,
        exclude_credentials=[_descriptor(row["credential_id"]) for row in existing],
        authenticator_selection=AuthenticatorSelectionCriteria(
            resident_key=ResidentKeyRequirement.REQUIRED,
            user_verification=UserVerificationRequirement.REQUIRED,
        ),
    )
    payload = {"user": str(principal.user_id), "origin": rp.origin}
    await _remember(redis, "register", challenge, payload, CEREMONY_SECONDS)
    return _options_json(options)


def check_name(name: str) -> str:
    name = name.strip()
    if not NAME_RE.match(name):
        raise ValidationFailed(
            "a passkey name is 1-100 characters without control characters",
            detail={"field": "name", "hint": "e.g. 'work laptop' or 'phone'"},
        )
    return name


async def register(
    redis: Redis, principal: Principal, credential: dict[str, Any], name: str
) -> dict[str, Any]:
    """Verify an attestation (user verified) against its pending challenge and keep the public key."""
    require_session(principal, "adding a passkey")
    name = check_name(name or "Passkey")
    pending = await _take(redis, "register", client_challenge(credential))
    if pending is None or pending["user"] != str(principal.user_id):
        raise ValidationFailed(
            "this passkey enrolment has expired or was already used",
            code="challenge_expired",
            detail={"hint": "start again: POST /api/v1/webauthn/register/options"},
        )
    rp = RelyingParty.for_origin(pending["origin"])
    try:
        verified = verify_registration_response(
            credential=credential,
            expected_challenge=unb64url(client_challenge(credential)),
            expected_rp_id=rp.id,
            expected_origin=rp.origin,
            require_user_verification=True,
        )
    except (InvalidRegistrationResponse, WebAuthnException, KeyError, TypeError, ValueError) as exc:
        raise ValidationFailed(
            f"the passkey was not accepted: {exc}", code="passkey_invalid", detail={"field": "credential"}
        ) from exc
    credential_id = b64url(verified.credential_id)
    if await WebAuthnCredential.exists().where(WebAuthnCredential.credential_id == credential_id):
        raise ValidationFailed("this passkey is already registered", code="passkey_exists")
    transports = credential.get("response", {}).get("transports") or []
    row = WebAuthnCredential(
        user=principal.user_id,
        credential_id=credential_id,
        public_key=b64url(verified.credential_public_key),
        sign_count=verified.sign_count,
        transports=[str(t) for t in transports][:8],
        name=name,
        created_at=now(),
    )
    await row.save()
    await record(
        principal.org_id,
        "passkey.added",
        principal.actor,
        subject_type="user",
        subject_id=principal.user_id,
        data={"credential_id": credential_id, "name": name, "public_key": row.public_key},
    )
    return _present(row.to_dict())


# --- listing, renaming, removing one's own ------------------------------------------------------


def _present(row: dict[str, Any]) -> dict[str, Any]:
    def iso(value: Any) -> str | None:
        return value.isoformat() if isinstance(value, datetime) else (str(value) if value else None)

    return {
        "id": str(row["id"]),
        "name": row["name"],
        "credential_id": row["credential_id"],
        "created_at": iso(row["created_at"]),
        "last_used_at": iso(row["last_used_at"]),
    }


async def list_own(principal: Principal) -> list[dict[str, Any]]:
    rows = await WebAuthnCredential.select().where(WebAuthnCredential.user == principal.user_id).order_by(
        WebAuthnCredential.created_at
    )
    return [_present(row) for row in rows]


async def _own(principal: Principal, passkey_id: str) -> dict[str, Any]:
    try:
        pid = uuid.UUID(passkey_id)
    except ValueError:
        pid = None
    row = None
    if pid is not None:
        row = await WebAuthnCredential.select().where(
            (WebAuthnCredential.id == pid) & (WebAuthnCredential.user == principal.user_id)
        ).first()
    if row is None:
        raise NotFound(f"you have no passkey {passkey_id}", detail={"hint": "GET /api/v1/webauthn/credentials"})
    return row


async def rename(principal: Principal, passkey_id: str, name: str) -> dict[str, Any]:
    require_session(principal, "renaming a passkey")
    row = await _own(principal, passkey_id)
    name = check_name(name)
    await WebAuthnCredential.update({WebAuthnCredential.name: name}).where(WebAuthnCredential.id == row["id"])
    await record(principal.org_id, "passkey.renamed", principal.actor, subject_type="user",
                 subject_id=principal.user_id, data={"credential_id": row["credential_id"], "name": name})
    return _present({**row, "name": name})


async def remove(principal: Principal, passkey_id: str) -> None:
    require_session(principal, "removing a passkey")
    row = await _own(principal, passkey_id)
    await WebAuthnCredential.delete().where(WebAuthnCredential.id == row["id"])
    await record(principal.org_id, "passkey.removed", principal.actor, subject_type="user",
                 subject_id=principal.user_id, data={"credential_id": row["credential_id"], "name": row["name"]})


# --- assertions ----------------------------------------------------------------------------------


async def _credential_row(credential: dict[str, Any]) -> dict[str, Any] | None:
    credential_id = credential.get("id") or credential.get("rawId")
    if not isinstance(credential_id, str) or not credential_id or len(credential_id) > 512:
        return None
    return await WebAuthnCredential.select(
        *WebAuthnCredential.all_columns(), WebAuthnCredential.user.org.as_alias("org"),
        WebAuthnCredential.user.email.as_alias("email"), WebAuthnCredential.user.role.as_alias("role"),
        WebAuthnCredential.user.is_active.as_alias("is_active"),
    ).where(WebAuthnCredential.credential_id == credential_id).first()


def _check_assertion(
    credential: dict[str, Any], row: dict[str, Any], challenge: bytes, rp: RelyingParty
) -> int:
    """Verify signature, RP, origin, UV flag and sign count; return the new sign count."""
    handle = (credential.get("response") or {}).get("userHandle")
    if handle and unb64url(handle) != uuid.UUID(str(row["user"])).bytes:
        raise InvalidAuthenticationResponse("the user handle does not match the passkey's owner")
    verified = verify_authentication_response(
        credential=credential,
        expected_challenge=challenge,
        expected_rp_id=rp.id,
        expected_origin=rp.origin,
        credential_public_key=unb64url(row["public_key"]),
        credential_current_sign_count=int(row["sign_count"] or 0),
        require_user_verification=True,
    )
    if not verified.user_verified:  # the library checks it too; fail closed either way
        raise InvalidAuthenticationResponse("the authenticator did not verify the user")
    return int(verified.new_sign_count)


async def _mark_used(row: dict[str, Any], sign_count: int) -> None:
    await WebAuthnCredential.update(
        {WebAuthnCredential.sign_count: sign_count, WebAuthnCredential.last_used_at: now()}
    ).where(WebAuthnCredential.id == row["id"])


# --- sign-in with a discoverable credential --------------------------------------------------------


async def sign_in_options(redis: Redis, rp: RelyingParty) -> dict[str, Any]:
    challenge = secrets.token_bytes(32)
    options = generate_authentication_options(
        rp_id=rp.id,
        challenge=challenge,
        timeout=CEREMONY_SECONDS * 1000,
        user_verification=UserVerificationRequirement.REQUIRED,
    )
    await _remember(redis, "signin", challenge, {"origin": rp.origin}, CEREMONY_SECONDS)
    return _options_json(options)


async def sign_in(redis: Redis, credential: dict[str, Any], *, hours: int) -> tuple[str, Principal]:
    challenge = client_challenge(credential)
    pending = await _take(redis, "signin", challenge)
    if pending is None:
        raise NotAuthenticated(
            "this passkey sign-in has expired or was already used",
            code="challenge_expired",
            detail={"hint": "start again: POST /api/v1/webauthn/authenticate/options"},
        )
    row = await _credential_row(credential)
    if row is None or not row["is_active"]:
        raise NotAuthenticated("this passkey is not registered with this hub", code="passkey_unknown")
    try:
        count = _check_assertion(credential, row, unb64url(challenge), RelyingParty.for_origin(pending["origin"]))
    except (InvalidAuthenticationResponse, WebAuthnException, KeyError, TypeError, ValueError) as exc:
        await record(row["org"], "session.passkey_refused", Actor("user", str(row["user"]), row["email"]),
                     subject_type="user", subject_id=row["user"],
                     data={"credential_id": row["credential_id"], "why": str(exc)[:200]})
        raise NotAuthenticated(f"the passkey was not accepted: {exc}", code="passkey_invalid") from exc
    await _mark_used(row, count)
    user = await User.select().where(User.id == row["user"]).first()
    assert user is not None
    return await open_session(user, hours=hours, method="passkey")


# --- step-up: a decision confirmed with a passkey --------------------------------------------------


@dataclass(frozen=True)
class StepUpProof:
    """A verified step-up: who confirmed which decision on which (request id, arguments hash) pairs."""

    user_id: str
    decision: str
    requests: dict[str, str]
    evidence: dict[str, Any]

    def covers(self, request_id: str, arguments_hash: str, decision: str) -> bool:
        return decision == self.decision and self.requests.get(request_id) == arguments_hash


async def step_up_options(
    redis: Redis,
    principal: Principal,
    requests: list[tuple[str, str]],
    decision: str,
    rp: RelyingParty,
) -> dict[str, Any]:
    """A challenge derived from the requests, their argument hashes, the decision and a nonce."""
    require_session(principal, "confirming a decision with a passkey")
    if decision not in {"approve", "decline"}:
        raise ValidationFailed("decision must be approve or decline", detail={"field": "decision"})
    mine = await WebAuthnCredential.select(WebAuthnCredential.credential_id).where(
        WebAuthnCredential.user == principal.user_id
    )
    if not mine:
        raise ValidationFailed(
            "you have no passkey to confirm with",
            code="no_passkey",
            detail={"hint": "add one in the app: Settings → Passkeys"},
        )
    nonce = b64url(secrets.token_bytes(16))
    challenge = step_up_challenge(requests, decision, nonce)
    options = generate_authentication_options(
        rp_id=rp.id,
        challenge=challenge,
        timeout=STEP_UP_SECONDS * 1000,
        allow_credentials=[_descriptor(r["credential_id"]) for r in mine],
        user_verification=UserVerificationRequirement.REQUIRED,
    )
    payload = {
        "user": str(principal.user_id),
        "decision": decision,
        "requests": [list(item) for item in requests],
        "nonce": nonce,
        "origin": rp.origin,
    }
    await _remember(redis, "stepup", challenge, payload, STEP_UP_SECONDS)
    return {
        "public_key": _options_json(options),
        "decision": decision,
        "requests": [{"id": rid, "arguments_hash": digest} for rid, digest in requests],
        "nonce": nonce,
        "expires_in": STEP_UP_SECONDS,
    }


class StepUpRefused(Forbidden):
    """A step-up assertion that does not confirm this decision; `code` says why."""


async def verify_step_up(
    redis: Redis, principal: Principal, decision: str, assertion: dict[str, Any]
) -> StepUpProof:
    """Check a step-up assertion once: its challenge is consumed whatever the outcome."""
    if not isinstance(assertion, dict):
        raise StepUpRefused("assertion must be the PublicKeyCredential as JSON", code="passkey_malformed")
    try:
        challenge = client_challenge(assertion)
    except ValidationFailed as exc:
        raise StepUpRefused(exc.message, code="passkey_malformed") from exc
    pending = await _take(redis, "stepup", challenge)
    if pending is None:
        raise StepUpRefused(
            "this passkey confirmation was already used or has expired; confirm again",
            code="passkey_replayed",
        )
    if pending["user"] != str(principal.user_id):
        raise StepUpRefused("this passkey confirmation was issued to someone else", code="passkey_invalid")
    if pending["decision"] != decision:
        raise StepUpRefused(
            f"this passkey confirmation is for {pending['decision']}, not {decision}", code="passkey_wrong_decision"
        )
    requests = [(str(a), str(b)) for a, b in pending["requests"]]
    expected = step_up_challenge(requests, decision, pending["nonce"])
    if b64url(expected) != challenge:
        raise StepUpRefused("the signed challenge does not match the confirmation", code="passkey_invalid")
    row = await _credential_row(assertion)
    if row is None or str(row["user"]) != str(principal.user_id):
        raise StepUpRefused("this passkey is not one of yours", code="passkey_invalid")
    rp = RelyingParty.for_origin(pending["origin"])
    try:
        count = _check_assertion(assertion, row, expected, rp)
    except (InvalidAuthenticationResponse, WebAuthnException, KeyError, TypeError, ValueError) as exc:
        raise StepUpRefused(f"the passkey confirmation was not accepted: {exc}", code="passkey_invalid") from exc
    await _mark_used(row, count)
    response = assertion["response"]
    evidence = {
        "credential_id": row["credential_id"],
        "authenticator_data": response["authenticatorData"],
        "client_data_json": response["clientDataJSON"],
        "signature": response["signature"],
        "user_handle": response.get("userHandle"),
        "decision": decision,
        "requests": sorted([rid, digest] for rid, digest in requests),
        "nonce": pending["nonce"],
        "rp_id": rp.id,
        "origin": rp.origin,
    }
    return StepUpProof(str(principal.user_id), decision, dict(requests), evidence)


async def public_keys(org_id: uuid.UUID) -> list[dict[str, Any]]:
    """Every passkey of the org's people, with its public key (COSE, base64url), for the audit export."""
    rows = await WebAuthnCredential.select(
        WebAuthnCredential.credential_id, WebAuthnCredential.public_key, WebAuthnCredential.name,
        WebAuthnCredential.created_at, WebAuthnCredential.user, WebAuthnCredential.user.email.as_alias("email"),
    ).where(WebAuthnCredential.user.org == org_id)
    return [
        {
            "credential_id": r["credential_id"],
            "user_id": str(r["user"]),
            "email": r["email"],
            "name": r["name"],
            "public_key": r["public_key"],
            "created_at": r["created_at"].isoformat() if isinstance(r["created_at"], datetime) else r["created_at"],
        }
        for r in rows
    ]
