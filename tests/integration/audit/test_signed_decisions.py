"""`preloop audit verify --signatures`: passkey-confirmed decisions re-verified offline from an export."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from backend.audit.service import event_hash
from backend.audit.signatures import verify_export
from backend.cli import app
from tests.helpers import auth
from tests.integration.accounts.passkey_support import enrol, held, session, setup_policy, step_up


def _rehash(export: dict[str, Any]) -> dict[str, Any]:
    """Re-chain an edited export, as a forger who rewrote the log would: only the signatures can tell."""
    previous = "0" * 64
    for event in export["events"]:
        event["prev_hash"] = previous
        event["hash"] = previous = event_hash(event)
    return export


def _vote_event(export: dict[str, Any], request_id: str) -> dict[str, Any]:
    return next(e for e in export["events"] if e["kind"].startswith("approval.vote_") and e["subject_id"] == request_id)


def _cli(path: Path) -> Any:
    return CliRunner().invoke(app, ["audit", "verify", "--signatures", str(path)])


async def test_an_export_alone_proves_who_signed_which_decision(client: Any, org: Any, tmp_path: Path) -> None:
    await setup_policy(client, org)
    approved_id = await held(client, org, arguments={"env": "prod", "replicas": 3})
    declined_id = await held(client, org, arguments={"env": "prod", "replicas": 300})
    async with session(client.hub, "alice@acme.test", "pw-alice") as alice:
        key = await enrol(alice, "laptop")
        ok = await alice.post(f"/api/v1/approvals/{approved_id}/approve",
                              json={"channel": "app", "assertion": await step_up(alice, key, approved_id)})
        assert ok.status_code == 200, ok.text
    async with session(client.hub, "bob@acme.test", "pw-bob") as bob:
        bob_key = await enrol(bob, "phone")
        no = await bob.post(f"/api/v1/approvals/{declined_id}/decline",
                            json={"channel": "app", "reason": "too many",
                                  "assertion": await step_up(bob, bob_key, declined_id, "decline")})
        assert no.status_code == 200, no.text
        # Bob removes his passkey afterwards: the key named when it was added still verifies his vote.
        [mine] = (await bob.get("/api/v1/webauthn/credentials")).json()
        assert (await bob.delete(f"/api/v1/webauthn/credentials/{mine['id']}")).status_code == 204
    refused = await client.get("/api/v1/audit/export", headers=auth(org.approver_tokens["alice"]))
    assert refused.status_code == 403
    response = await client.get("/api/v1/audit/export", headers=auth(org.admin_token))
    assert response.status_code == 200, response.text
    export = response.json()
    assert [p["name"] for p in export["passkeys"]] == ["laptop"]
    path = tmp_path / "audit.json"
    path.write_text(json.dumps(export))
    result = _cli(path)
    assert result.exit_code == 0, result.output
    assert "passkey-confirmed decisions: 2 of 2 verified" in result.output
    assert "chain: ok" in result.output

    # A rewritten decision (approve -> decline), re-chained so the hashes hold: the signature does not.
    forged = _rehash(copy.deepcopy(export))
    vote = _vote_event(forged, approved_id)
    vote["kind"] = "approval.vote_decline"
    report = verify_export(_rehash(forged))
    assert report.chain_ok and not report.ok
    assert "'approve' but the vote is 'decline'" in report.problems[0]["problem"]

    # Other arguments substituted in the request: the signed hash no longer matches.
    forged = copy.deepcopy(export)
    requested = next(e for e in forged["events"] if e["kind"] == "approval.requested"
                     and e["subject_id"] == approved_id)
    requested["data"]["arguments_hash"] = "0" * 64
    report = verify_export(_rehash(forged))
    assert [p["request_id"] for p in report.problems] == [approved_id]

    # The vote attributed to someone else (bob), or a signature altered by one bit.
    forged = copy.deepcopy(export)
    vote = _vote_event(forged, approved_id)
    vote["actor_id"] = _vote_event(forged, declined_id)["actor_id"]
    assert "someone other than the voter" in verify_export(_rehash(forged)).problems[0]["problem"]
    forged = copy.deepcopy(export)
    step = _vote_event(forged, approved_id)["data"]["step_up"]
    signature = bytearray(step["signature"].encode())
    signature[10] = ord("A") if signature[10] != ord("A") else ord("B")
    step["signature"] = signature.decode()
    report = verify_export(_rehash(forged))
    assert "signature does not verify" in report.problems[0]["problem"]

    # An edit without re-chaining is caught by the chain itself, and the CLI fails.
    tampered = copy.deepcopy(export)
    _vote_event(tampered, declined_id)["data"]["reason"] = "fine"
    path.write_text(json.dumps(tampered))
    result = _cli(path)
    assert result.exit_code == 1 and "chain: BROKEN" in result.output

    # A vote on a passkey-required request that carries no confirmation is reported.
    forged = copy.deepcopy(export)
    del _vote_event(forged, approved_id)["data"]["step_up"]
    report = verify_export(_rehash(forged))
    assert "required a passkey" in report.problems[0]["problem"]


def test_verify_explains_a_file_that_is_not_an_export(tmp_path: Path) -> None:
    bad = tmp_path / "x.json"
    bad.write_text("{not json")
    result = CliRunner().invoke(app, ["audit", "verify", "--signatures", str(bad)])
    assert result.exit_code == 1 and "is not JSON" in result.output
    bad.write_text("[]")
    result = CliRunner().invoke(app, ["audit", "verify", "--signatures", str(bad)])
    assert result.exit_code == 1 and "needs an 'events' list" in result.output
