"""The pure parts of passkeys: the step-up challenge and where the relying party comes from."""

from __future__ import annotations

from backend.accounts.passkeys import RelyingParty, step_up_challenge
from backend.settings import load_settings


def test_step_up_challenge_names_requests_decision_and_nonce() -> None:
    pair = [("r1", "a" * 64), ("r2", "b" * 64)]
    base = step_up_challenge(pair, "approve", "n1")
    assert len(base) == 32
    assert step_up_challenge(list(reversed(pair)), "approve", "n1") == base  # order of the list does not matter
    assert step_up_challenge(pair, "decline", "n1") != base
    assert step_up_challenge(pair, "approve", "n2") != base
    assert step_up_challenge([("r1", "a" * 64), ("r2", "c" * 64)], "approve", "n1") != base
    assert step_up_challenge(pair[:1], "approve", "n1") != base


def test_relying_party_from_public_url_or_request() -> None:
    assert RelyingParty.for_origin("https://approvals.example.com/").id == "approvals.example.com"
    assert RelyingParty.for_origin("http://localhost:8686").id == "localhost"
    public = load_settings({"PRELOOP_PUBLIC_URL": "https://approvals.example.com/base"})
    assert public.server.web_origin("http://10.0.0.5:8686/") == "https://approvals.example.com"
    unset = load_settings({})
    assert unset.server.web_origin("http://localhost:8686/") == "http://localhost:8686"
