"""Offline checks of an audit export: the hash chain, and every passkey-confirmed decision's signature."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from webauthn import verify_authentication_response
from webauthn.helpers.exceptions import WebAuthnException

from backend.accounts.passkeys import step_up_challenge, unb64url
from backend.audit.service import GENESIS, event_hash

VOTE_KINDS = {"approval.vote_approve": "approve", "approval.vote_decline": "decline"}


@dataclass
class SignatureReport:
    events: int = 0
    chain_ok: bool = True
    signed_decisions: int = 0
    verified: int = 0
    problems: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.chain_ok and not self.problems

    def problem(self, event: dict[str, Any], text: str) -> None:
        self.problems.append({"seq": event.get("seq"), "request_id": event.get("subject_id"), "problem": text})

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "events": self.events,
            "chain_ok": self.chain_ok,
            "signed_decisions": self.signed_decisions,
            "verified": self.verified,
            "problems": self.problems,
        }


def _check_chain(events: list[dict[str, Any]], report: SignatureReport) -> None:
    previous = GENESIS
    for position, event in enumerate(events, start=1):
        if event.get("seq") != position:
            report.chain_ok = False
            report.problem(event, f"event {position} is missing from the chain")
            return
        if event.get("prev_hash") != previous or event_hash(event) != event.get("hash"):
            report.chain_ok = False
            report.problem(event, "event content or its link to the previous event does not match its hash")
            return
        previous = event["hash"]


def _known_keys(export: dict[str, Any]) -> dict[str, dict[str, str]]:
    """credential id -> {user_id, public_key}: the exported list, plus keys named when added (removed ones)."""
    keys: dict[str, dict[str, str]] = {}
    for event in export.get("events", []):
        data = event.get("data") or {}
        if event.get("kind") == "passkey.added" and data.get("public_key"):
            keys[data["credential_id"]] = {"user_id": str(event["subject_id"]), "public_key": data["public_key"]}
    for item in export.get("passkeys", []):
        keys[item["credential_id"]] = {"user_id": str(item["user_id"]), "public_key": item["public_key"]}
    return keys


def _check_decision(
    event: dict[str, Any], decision: str, hashes: dict[str, str], keys: dict[str, dict[str, str]]
) -> str | None:
    """None when the step-up in this vote event was signed by the voter over this request, decision, hash."""
    step = event["data"]["step_up"]
    request_id = str(event["subject_id"])
    requested_hash = hashes.get(request_id)
    if requested_hash is None:
        return "the export has no approval.requested event for this request"
    if step.get("decision") != decision:
        return f"the passkey confirmed {step.get('decision')!r} but the vote is {decision!r}"
    named = {str(rid): str(digest) for rid, digest in step.get("requests", [])}
    if named.get(request_id) != requested_hash:
        return "the passkey confirmation does not name this request with the arguments hash it was created with"
    key = keys.get(step.get("credential_id", ""))
    if key is None:
        return "the export has no public key for the passkey that signed"
    if key["user_id"] != str(event.get("actor_id")):
        return "the passkey that signed belongs to someone other than the voter"
    requests = list(named.items())
    challenge = step_up_challenge(requests, decision, str(step.get("nonce", "")))
    credential = {
        "id": step["credential_id"],
        "rawId": step["credential_id"],
        "type": "public-key",
        "response": {
            "authenticatorData": step["authenticator_data"],
            "clientDataJSON": step["client_data_json"],
            "signature": step["signature"],
            **({"userHandle": step["user_handle"]} if step.get("user_handle") else {}),
        },
    }
    try:
        verify_authentication_response(
            credential=credential,
            expected_challenge=challenge,
            expected_rp_id=step["rp_id"],
            expected_origin=step["origin"],
            credential_public_key=unb64url(key["public_key"]),
            credential_current_sign_count=0,
            require_user_verification=True,
        )
    except (WebAuthnException, KeyError, TypeError, ValueError) as exc:
        return f"the signature does not verify: {exc}"
    if step.get("user_handle") and unb64url(step["user_handle"]) != _uuid_bytes(key["user_id"]):
        return "the user handle does not match the passkey's owner"
    return None


def _uuid_bytes(text: str) -> bytes:
    return uuid.UUID(text).bytes


def verify_export(export: dict[str, Any]) -> SignatureReport:
    """Check the chain, then every vote that carries a step-up; a passkey-required vote without one fails."""
    report = SignatureReport()
    events = sorted(export.get("events", []), key=lambda e: int(e.get("seq") or 0))
    report.events = len(events)
    _check_chain(events, report)
    keys = _known_keys(export)
    hashes: dict[str, str] = {}
    strict: set[str] = set()
    for event in events:
        data = event.get("data") or {}
        if event.get("kind") == "approval.requested":
            hashes[str(event["subject_id"])] = str(data.get("arguments_hash"))
            if data.get("require_passkey"):
                strict.add(str(event["subject_id"]))
            continue
        decision = VOTE_KINDS.get(str(event.get("kind")))
        if decision is None:
            continue
        if "step_up" not in data:
            if str(event["subject_id"]) in strict:
                report.problem(event, "the policy required a passkey but this vote carries no confirmation")
            continue
        report.signed_decisions += 1
        problem = _check_decision(event, decision, hashes, keys)
        if problem:
            report.problem(event, problem)
        else:
            report.verified += 1
    return report
